"""The append-only, hash-chained event log (SQLite). See docs/eventlog.md.

Writers make events through their type's class (:mod:`onestorpool.eventlog.events`) and
append them with :class:`EventLog`; :func:`append_event` does both for one event.
Importing this package loads sqlite3 and msgpack only: it is on every driver's start-up
path.
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
    """Append one event durably (on disk when this returns); returns its sequence number.
    The event is checked by its type's class first."""
    from onestorpool.eventlog.events import class_of

    event = class_of(type).new(writer, payload, type=type, vm=vm, image=image,
                               datastore=datastore, volume=volume, snapshot=snapshot)
    with EventLog.open(path) as log:
        return log.append(event)
