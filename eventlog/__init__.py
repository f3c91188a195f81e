"""The append-only, hash-chained event log (SQLite). See docs/eventlog.md.

Drivers call :func:`append_event` once per action; the subscriber and admin tools use
:class:`EventLog`. Importing this package loads sqlite3 and msgpack only.
"""

from __future__ import annotations

import os
from typing import Any

from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import AlreadyDone, Event, EventLog, EventLogError

DEFAULT_PATH = "/var/lib/one/onestorpool/events.db"

__all__ = ["AlreadyDone", "Event", "EventLog", "EventLogError", "Record", "append_event",
           "default_path"]


def default_path() -> str:
    """``$ONESTORPOOL_EVENTLOG``, else the standard location under ``ONESTORPOOL_ROOT``."""
    explicit = os.environ.get("ONESTORPOOL_EVENTLOG")
    if explicit:
        return explicit
    root = os.environ.get("ONESTORPOOL_ROOT", "/")
    return os.path.join(root, DEFAULT_PATH.lstrip("/"))


def append_event(type: str, *, writer: str, payload: dict[str, Any], vm: int | None = None,
                 image: int | None = None, datastore: int | None = None,
                 volume: str | None = None, snapshot: str | None = None,
                 path: str | None = None) -> int:
    """Append one event durably (on disk when this returns); returns its sequence number."""
    with EventLog(path or default_path()) as log:
        return log.append(Event(type, writer, payload, vm, image, datastore, volume,
                                snapshot))
