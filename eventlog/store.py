"""The append-only event log on SQLite (WAL mode, ``synchronous=FULL``).

SQLite gives atomic appends, locking between the many driver processes and the subscriber,
crash recovery and an admin shell; this module adds the record format, the hash chain and
the rules: triggers refuse every ``UPDATE`` and every ``DELETE`` except of records already
archived (:mod:`onestorpool.eventlog.archive`), and the code has no other write path.

Appends take SQLite's write lock (``BEGIN IMMEDIATE``), read the chain head, insert and
commit: concurrent writers serialise, nothing interleaves, and the record is on disk when
:meth:`EventLog.append` returns.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from onestorpool.errors import AddonError
from onestorpool.eventlog.record import (
    GENESIS,
    SCHEMA_VERSION,
    Record,
    chain_hash,
    pack_payload,
)

DB_SCHEMA = 1
BUSY_TIMEOUT_MS = 30_000

SCHEMA_SQL = """
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    time       REAL    NOT NULL,
    writer     TEXT    NOT NULL,
    host       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    type       TEXT    NOT NULL,
    vm         INTEGER,
    image      INTEGER,
    datastore  INTEGER,
    volume     TEXT,
    snapshot   TEXT,
    effect_key TEXT,
    schema     INTEGER NOT NULL,
    payload    BLOB    NOT NULL,
    prev_hash  BLOB    NOT NULL,
    hash       BLOB    NOT NULL
);
CREATE INDEX events_vm ON events(vm) WHERE vm IS NOT NULL;
CREATE INDEX events_image ON events(image) WHERE image IS NOT NULL;
CREATE INDEX events_datastore ON events(datastore) WHERE datastore IS NOT NULL;
CREATE INDEX events_volume ON events(volume) WHERE volume IS NOT NULL;
CREATE INDEX events_snapshot ON events(snapshot) WHERE snapshot IS NOT NULL;
CREATE INDEX events_effect ON events(effect_key) WHERE effect_key IS NOT NULL;
CREATE INDEX events_type ON events(type);
CREATE INDEX events_time ON events(time);
CREATE TABLE tracking (
    consumer TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (consumer, key)
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER events_append_only BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.seq > COALESCE((SELECT CAST(value AS INTEGER) FROM meta
                         WHERE key = 'archived_through'), 0)
BEGIN SELECT RAISE(ABORT, 'the event log is append-only (archive first)'); END;
CREATE TRIGGER tracking_append_only BEFORE UPDATE ON tracking
BEGIN SELECT RAISE(ABORT, 'tracking is append-only'); END;
CREATE TRIGGER tracking_no_delete BEFORE DELETE ON tracking
BEGIN SELECT RAISE(ABORT, 'tracking is append-only'); END;
CREATE TRIGGER meta_archive_only_grows BEFORE UPDATE ON meta
WHEN NEW.key = 'archived_through'
     AND CAST(NEW.value AS INTEGER) < CAST(OLD.value AS INTEGER)
BEGIN SELECT RAISE(ABORT, 'archived_through only grows'); END;
"""

COLUMNS = ("seq, time, writer, host, pid, type, vm, image, datastore, volume, snapshot, "
           "effect_key, schema, payload, prev_hash, hash")


class EventLogError(AddonError):
    """The event log cannot be opened, read or written."""


class AlreadyDone(EventLogError):
    """A consumer already recorded this idempotency key: the effect happened before."""


@dataclass(frozen=True)
class Event:
    """An event to append. Subjects are indexed; ``payload`` is any msgpack-able dict."""

    type: str
    writer: str
    payload: dict[str, Any] = field(default_factory=dict)
    vm: int | None = None
    image: int | None = None
    datastore: int | None = None
    volume: str | None = None
    snapshot: str | None = None

    @property
    def effect_key(self) -> str | None:
        effect = self.payload.get("effect")
        return str(effect["key"]) if isinstance(effect, dict) and "key" in effect else None


_HOST = socket.gethostname()
_new_record = tuple.__new__  # a row is exactly a Record's fields: replay is hot


def _row_to_record(row: Sequence[Any]) -> Record:
    return _new_record(Record, row)


class EventLog:
    """One event log database. Safe to use from several processes at once."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False):
        self.path = os.fspath(path)
        self.readonly = readonly
        try:
            if not readonly:
                _prepare_file(self.path)
            uri = f"file:{self.path}{'?mode=ro' if readonly else ''}"
            self.db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                                      isolation_level=None, check_same_thread=False)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = FULL")
                self._ensure_schema()
        except (sqlite3.Error, OSError) as exc:
            raise EventLogError(f"event log {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ensure_schema(self) -> None:
        if self.db.execute("PRAGMA user_version").fetchone()[0] == DB_SCHEMA:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self.db.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _statements(SCHEMA_SQL):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {DB_SCHEMA}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- writing --------------------------------------------------------------------------

    def append(self, event: Event) -> int:
        """Append one event durably; returns its sequence number."""
        with self.transaction() as tx:
            return tx.append(event)

    def append_batch(self, events: Sequence[Event]) -> list[int]:
        """Append several events in one transaction (one fsync)."""
        with self.transaction() as tx:
            return [tx.append(event) for event in events]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction: events and tracking rows commit together or not at all."""
        if self.readonly:
            raise EventLogError(f"event log {self.path} is open read-only")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise EventLogError(f"event log {self.path}: {exc}") from None
        tx = Transaction(self.db)
        try:
            yield tx
            self.db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise AlreadyDone(str(exc)) from None
            if isinstance(exc, sqlite3.Error):
                raise EventLogError(f"event log {self.path}: {exc}") from None
            raise

    # -- reading --------------------------------------------------------------------------

    def read(self, *, since_seq: int = 0, since_time: float | None = None,
             types: Sequence[str] | None = None, vm: int | None = None,
             image: int | None = None, datastore: int | None = None,
             volume: str | None = None, snapshot: str | None = None,
             effect_key: str | None = None, effects_only: bool = False,
             limit: int | None = None, batch: int = 5000) -> Iterator[Record]:
        """Records in sequence order, filtered by the indexed columns (``effects_only``:
        the records that request a side effect, through their partial index)."""
        where, args = ["seq > ?"], [since_seq]
        if effects_only:
            where.append("effect_key IS NOT NULL")
        if since_time is not None:
            where.append("time >= ?")
            args.append(since_time)
        for column, value in (("vm", vm), ("image", image), ("datastore", datastore),
                              ("volume", volume), ("snapshot", snapshot),
                              ("effect_key", effect_key)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            args.extend(types)
        sql = f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            cursor = self.db.execute(sql, args)
            while rows := cursor.fetchmany(batch):
                yield from map(_row_to_record, rows)
        except sqlite3.Error as exc:
            raise EventLogError(f"event log {self.path}: {exc}") from None

    def head(self) -> tuple[int, bytes]:
        """The last sequence number and hash (the chain anchor when the log is empty)."""
        row = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
                              ).fetchone()
        if row is not None:
            return row[0], row[1]
        return self.anchor()

    def anchor(self) -> tuple[int, bytes]:
        """The (seq, hash) of the last archived record, or (0, genesis)."""
        values = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN "
                                      "('archived_through', 'anchor_hash')").fetchall())
        if "archived_through" in values:
            return int(values["archived_through"]), bytes.fromhex(values["anchor_hash"])
        return 0, GENESIS

    def done_keys(self, consumer: str | None = None) -> set[str]:
        sql, args = "SELECT key FROM tracking", ()
        if consumer is not None:
            sql, args = sql + " WHERE consumer = ?", (consumer,)
        return {row[0] for row in self.db.execute(sql, args)}

    def is_done(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM tracking WHERE key = ? LIMIT 1", (key,)
                               ).fetchone() is not None

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


class Transaction:
    """Appends inside :meth:`EventLog.transaction`."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self._head: tuple[int, bytes] | None = None

    def append(self, event: Event, *, now: float | None = None) -> int:
        if self._head is None:
            row = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
                                  ).fetchone()
            if row is None:
                values = dict(self.db.execute(
                    "SELECT key, value FROM meta WHERE key IN ('archived_through', "
                    "'anchor_hash')").fetchall())
                row = (int(values.get("archived_through", 0)),
                       bytes.fromhex(values["anchor_hash"]) if "anchor_hash" in values
                       else GENESIS)
            self._head = (row[0], row[1])
        seq, prev = self._head[0] + 1, self._head[1]
        when = time.time() if now is None else now
        payload = pack_payload(event.payload)
        fields = (seq, when, event.writer, _HOST, os.getpid(), event.type, event.vm,
                  event.image, event.datastore, event.volume, event.snapshot,
                  event.effect_key, SCHEMA_VERSION, payload, prev)
        digest = chain_hash(*fields)
        self.db.execute(f"INSERT INTO events ({COLUMNS}) VALUES "
                        "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (*fields, digest))
        self._head = (seq, digest)
        return seq

    def track(self, consumer: str, key: str, seq: int) -> None:
        """Record that ``consumer`` did the effect ``key`` (event ``seq``); a second time
        for the same key raises :class:`AlreadyDone` and rolls the transaction back."""
        self.db.execute("INSERT INTO tracking (consumer, key, seq) VALUES (?,?,?)",
                        (consumer, key, seq))


def _statements(script: str) -> list[str]:
    """Split the schema script (triggers contain ';' inside BEGIN...END)."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current)
        if sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    return statements


def _prepare_file(path: str) -> None:
    """Create the directory (0750) and the database file (0640) before SQLite does, so
    neither is left world-readable whatever the umask."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o750, exist_ok=True)
        os.chmod(directory, 0o750)
    if not os.path.exists(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
            os.close(fd)
            os.chmod(path, 0o640)
        except FileExistsError:
            pass  # another process won the race
    _share_with_oneadmin(directory, path)


def _share_with_oneadmin(directory: str, path: str) -> None:
    if os.geteuid() != 0:
        return
    try:
        import grp

        gid = grp.getgrnam("oneadmin").gr_gid
    except (ImportError, KeyError):
        return
    for target in (directory, path):
        with contextlib.suppress(OSError):
            os.chown(target, -1, gid)
