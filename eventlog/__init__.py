"""The append-only, hash-chained event log (SQLite). See docs/eventlog.md.

Drivers call :func:`append_event` once per action; the subscriber and admin tools use
:class:`EventLog`. Importing this package loads sqlite3 and msgpack only: it is on every
driver's start-up path.
"""

from __future__ import annotations

import os
from typing import Any

from onestorpool.eventlog.record import Record, scrub
from onestorpool.eventlog.store import (
    AlreadyDone,
    Event,
    EventLog,
    EventLogError,
    Transaction,
    default_path,
)

__all__ = ["AlreadyDone", "Event", "EventLog", "EventLogError", "Record",
           "Transaction", "append_event", "default_path", "scrub"]


def append_event(type: str, *, writer: str, payload: dict[str, Any], vm: int | None = None,
                 image: int | None = None, datastore: int | None = None,
                 volume: str | None = None, snapshot: str | None = None,
                 path: str | os.PathLike[str] | None = None) -> int:
    """Append one event durably (on disk when this returns); returns its sequence number."""
    with EventLog.open(path) as log:
        return log.append(Event(type, writer, payload, vm, image, datastore, volume,
                                snapshot))
