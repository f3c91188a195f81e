"""The append-only event log on SQLite (WAL mode, ``synchronous=FULL``).

SQLite gives atomic appends, locking between the many driver processes and the subscriber,
crash recovery and an admin shell; this module adds the record format, the hash chain and
the rules. Triggers refuse every ``UPDATE`` and every ``DELETE`` except of records already
archived (:mod:`onestorpool.eventlog.archive`), every insert that does not extend the chain
(REPLACE and upserts included), changes to ``meta`` other than the chain's own, and tracking
rows that do not name the record just appended; the code has no other write path.

Appends take SQLite's write lock (``BEGIN IMMEDIATE``), read the chain head, insert and
commit: concurrent writers serialise, nothing interleaves, and the record is on disk when
:meth:`EventLog.append` returns. Writers first queue in arrival order (:class:`_WriterQueue`):
SQLite's own busy handler lets a newcomer overtake a waiter again and again (seconds, under
load), the queue bounds a writer's wait by the transactions ahead of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from onestorpool.errors import AddonError
from onestorpool.eventlog.record import (
    GENESIS,
    SCHEMA_VERSION,
    Record,
    chain_hash,
    pack_payload,
)

ARCHIVED = "log.archived"  # the record that names an archive cut (archive.py, verify.py)
BUSY_TIMEOUT_MS = 30_000
# Records one transaction may append: every other writer waits for it (1000 take ~20 ms).
MAX_TRANSACTION_RECORDS = 10_000
PAGE_SIZE = 1024  # new logs: here reads are as fast as with 4096, appends cheaper

# Database schema, one step per version (PRAGMA user_version). A database is created by
# running every step, so new and migrated databases cannot differ.
SCHEMA_STEPS: tuple[str, ...] = (
    # 1: events, tracking, meta; append-only triggers.
    """
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
    """,
    # 2: the consumer's position in tracking; the head witness in meta ("<seq> <hash>" of
    # the last record, written with every append), so that cutting records off the end of
    # the chain is detected; meta rows stay.
    """
    ALTER TABLE tracking ADD COLUMN position INTEGER;
    CREATE INDEX tracking_position ON tracking(consumer, position);
    INSERT INTO meta (key, value) VALUES ('head', COALESCE(
        (SELECT seq || ' ' || lower(hex(hash)) FROM events ORDER BY seq DESC LIMIT 1),
        (SELECT a.value || ' ' || h.value FROM meta a, meta h
         WHERE a.key = 'archived_through' AND h.key = 'anchor_hash'),
        '0 ' || lower(hex(zeroblob(32)))));
    CREATE TRIGGER meta_no_delete BEFORE DELETE ON meta
    BEGIN SELECT RAISE(ABORT, 'the event log metadata is append-only'); END;
    """,
    # 3: guards against writes around the code (the sqlite3 shell). An insert must extend
    # the chain, which also refuses REPLACE and UPSERT (REPLACE's implicit delete fires no
    # delete trigger); meta only follows the chain (the witness is the head, the anchor
    # moves only behind a log.archived record); a tracking row names the record just
    # appended (its outcome, in the same transaction).
    """
    INSERT OR IGNORE INTO meta (key, value) VALUES ('archived_through', '0');
    INSERT OR IGNORE INTO meta (key, value) VALUES ('anchor_hash', lower(hex(zeroblob(32))));
    CREATE INDEX tracking_seq ON tracking(seq);
    CREATE TRIGGER events_extend_chain BEFORE INSERT ON events
    WHEN NEW.seq IS NOT COALESCE((SELECT seq FROM events ORDER BY seq DESC LIMIT 1),
                                 (SELECT CAST(value AS INTEGER) FROM meta
                                  WHERE key = 'archived_through')) + 1
      OR lower(hex(NEW.prev_hash)) IS NOT COALESCE(
             (SELECT lower(hex(hash)) FROM events ORDER BY seq DESC LIMIT 1),
             (SELECT value FROM meta WHERE key = 'anchor_hash'))
      OR typeof(NEW.hash) IS NOT 'blob' OR length(NEW.hash) IS NOT 32
    BEGIN SELECT RAISE(ABORT, 'append-only: a record must extend the chain'); END;
    CREATE TRIGGER meta_no_insert BEFORE INSERT ON meta
    BEGIN SELECT RAISE(ABORT, 'append-only: the event log metadata is fixed'); END;
    CREATE TRIGGER meta_follows_chain BEFORE UPDATE ON meta
    WHEN NEW.key IS NOT OLD.key
      OR OLD.key NOT IN ('head', 'archived_through', 'anchor_hash')
      OR (OLD.key = 'head' AND NEW.value IS NOT
          (SELECT seq || ' ' || lower(hex(hash)) FROM events ORDER BY seq DESC LIMIT 1))
      OR (OLD.key = 'archived_through' AND (
          (SELECT type FROM events ORDER BY seq DESC LIMIT 1) IS NOT 'log.archived'
          OR NEW.value IS NOT CAST(CAST(NEW.value AS INTEGER) AS TEXT)
          OR CAST(NEW.value AS INTEGER) <= CAST(OLD.value AS INTEGER)
          OR CAST(NEW.value AS INTEGER) >= (SELECT MAX(seq) FROM events)
          OR NOT EXISTS (SELECT 1 FROM events WHERE seq = CAST(NEW.value AS INTEGER))))
      OR (OLD.key = 'anchor_hash' AND (
          (SELECT type FROM events ORDER BY seq DESC LIMIT 1) IS NOT 'log.archived'
          OR NEW.value IS NOT (SELECT lower(hex(hash)) FROM events WHERE seq =
                               (SELECT CAST(value AS INTEGER) FROM meta
                                WHERE key = 'archived_through'))))
    BEGIN SELECT RAISE(ABORT, 'append-only: meta follows the chain (log archive)'); END;
    CREATE TRIGGER tracking_once BEFORE INSERT ON tracking
    WHEN EXISTS (SELECT 1 FROM tracking WHERE consumer = NEW.consumer AND key = NEW.key)
    BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: tracking.consumer, tracking.key');
    END;
    CREATE TRIGGER tracking_justified BEFORE INSERT ON tracking
    WHEN NEW.seq IS NOT (SELECT seq FROM events ORDER BY seq DESC LIMIT 1)
      OR NEW.position IS NULL OR NEW.position >= NEW.seq
      OR EXISTS (SELECT 1 FROM tracking WHERE seq = NEW.seq)
    BEGIN SELECT RAISE(ABORT, 'append-only: tracking must name a new outcome record'); END;
    """,
)
DB_SCHEMA = len(SCHEMA_STEPS)

COLUMNS = ("seq, time, writer, host, pid, type, vm, image, datastore, volume, snapshot, "
           "effect_key, schema, payload, prev_hash, hash")
INSERT_SQL = f"INSERT INTO events ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"


class EventLogError(AddonError):
    """The event log cannot be opened, read or written."""


class AlreadyDone(EventLogError):
    """A consumer already recorded this idempotency key: the effect happened before."""

    def __init__(self, consumer: str, key: str):
        super().__init__(f"{consumer} already recorded {key!r} as done")
        self.consumer, self.key = consumer, key


@contextlib.contextmanager
def lock_beside_log(log_path: str | os.PathLike[str], purpose: str) -> Iterator[None]:
    """One holder at a time on this front-end of ``<log>.<purpose>.lock`` (the daemon, a
    hook, ``log replay``, a local action); the kernel frees it if the holder dies."""
    fd = os.open(f"{os.fspath(log_path)}.{purpose}.lock",
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def default_path() -> str:
    """Where the add-on's log is: ``$ONESTORPOOL_EVENTLOG``, else ``EVENT_LOG`` of
    addon-storpoolrc, else ``/var/lib/one/onestorpool/events.db`` (under
    ``$ONESTORPOOL_ROOT``); resolved by :func:`onestorpool.config.event_log_path`."""
    from onestorpool.config import event_log_path

    return str(event_log_path())


class _EventFields(NamedTuple):
    type: str
    writer: str
    payload: dict[str, Any]
    vm: int | None
    image: int | None
    datastore: int | None
    volume: str | None
    snapshot: str | None
    schema: int


class Event(_EventFields):
    """An event to append (immutable). Subjects are indexed; ``payload`` is a dict of
    msgpack types (None, bool, int, float, str, bytes, list, dict); ``schema`` the version
    of its type's payload. Writers make events through their type's class
    (:meth:`onestorpool.eventlog.events.TypedEvent.new`), which checks the payload."""

    __slots__ = ()

    def __new__(cls, type: str, writer: str, payload: dict[str, Any] | None = None,
                vm: int | None = None, image: int | None = None, datastore: int | None = None,
                volume: str | None = None, snapshot: str | None = None,
                schema: int = SCHEMA_VERSION) -> Event:
        # A fresh dict per event: a shared default would leak one caller's keys to another.
        return super().__new__(cls, type, writer, {} if payload is None else payload, vm,
                               image, datastore, volume, snapshot, schema)

    @property
    def effect_key(self) -> str | None:
        """The idempotency key when this event requests a side effect (see projections)."""
        effect = self.payload.get("effect")
        return str(effect["key"]) if isinstance(effect, dict) and "key" in effect else None


# os.uname() is what socket.gethostname() returns on Linux, without importing socket.
HOST = os.uname().nodename
_new_record = tuple.__new__  # a row is exactly a Record's fields: replay is hot


def _row_to_record(row: Sequence[Any]) -> Record:
    return _new_record(Record, row)


class _WriterQueue:
    """Writers take turns in arrival order, through ``<log>.lock``.

    A writer draws a ticket (a counter in the file, under ``flock``), write-locks the byte
    of its ticket, waits until the byte of the ticket before it is free (that writer is
    done or dead: the kernel drops a dead process's locks), runs its transaction and frees
    its byte. Open-file-description locks, so two logs open in one process queue apart.
    """

    _FLOCK = "hhqqi4x"  # struct flock on Linux (64-bit off_t), padded to its size
    _SETLK = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)
    _SETLKW = getattr(fcntl, "F_OFD_SETLKW", fcntl.F_SETLKW)
    _SLOTS = 1 << 40  # ticket bytes, after the 8-byte counter

    def __init__(self, database: str):
        self.fd = os.open(database + ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o640)
        self.ticket: int | None = None
        if os.fstat(self.fd).st_size == 0:  # new: the database's owner and mode
            os.fchmod(self.fd, 0o640)
            if os.geteuid() == 0:  # as SQLite does for -wal and -shm
                owner = os.stat(database)
                with contextlib.suppress(OSError):
                    os.fchown(self.fd, owner.st_uid, owner.st_gid)

    def close(self) -> None:
        os.close(self.fd)

    def _byte(self, kind: int, ticket: int, wait: bool = False, fd: int | None = None
              ) -> bool:
        spec = struct.pack(self._FLOCK, kind, os.SEEK_SET, 8 + ticket % self._SLOTS, 1, 0)
        try:
            fcntl.fcntl(self.fd if fd is None else fd, self._SETLKW if wait else self._SETLK,
                        spec)
        except (BlockingIOError, PermissionError):  # EAGAIN, or EACCES on some systems
            return False
        return True

    def enter(self, deadline: float) -> None:
        if self.ticket is not None:
            raise EventLogError("a transaction is already open on this connection")
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # a few system calls long
        try:
            raw = os.pread(self.fd, 8, 0)
            ticket = int.from_bytes(raw, "little") + 1 if len(raw) == 8 else 1
            os.pwrite(self.fd, ticket.to_bytes(8, "little"), 0)
            while not self._byte(fcntl.F_WRLCK, ticket):  # held 2**40 tickets ago: never
                if time.monotonic() > deadline:
                    raise EventLogError("the writers' queue is stuck")
                time.sleep(0.001)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.ticket = ticket
        try:
            self._wait_turn(ticket - 1, deadline)
        except BaseException:
            self.leave()
            raise

    def _wait_turn(self, before: int, deadline: float) -> None:
        if self._byte(fcntl.F_RDLCK, before):  # the usual case: no one before us
            self._byte(fcntl.F_UNLCK, before)
            return
        # Else block in the kernel (woken the moment it is free), in a helper thread so
        # that a writer that never finishes costs a timeout, not a hang. The helper has its
        # own descriptor of the same open file (same locks), which outlives a close().
        import threading

        turn, lock = threading.Event(), threading.Lock()
        gave_up, fd = False, os.dup(self.fd)

        def wait() -> None:
            try:
                self._byte(fcntl.F_RDLCK, before, wait=True, fd=fd)
                with lock:
                    self._byte(fcntl.F_UNLCK, before, fd=fd)
            except OSError:
                pass  # no turn to wait for: SQLite's lock alone
            finally:
                os.close(fd)
                with lock:
                    if not gave_up:
                        turn.set()

        threading.Thread(target=wait, daemon=True).start()
        if not turn.wait(max(0.0, deadline - time.monotonic())):
            with lock:
                gave_up = not turn.is_set()
            if gave_up:
                raise EventLogError("waited too long for the writer before this one")

    def leave(self) -> None:
        if self.ticket is not None:
            self._byte(fcntl.F_UNLCK, self.ticket)
            self.ticket = None


class EventLog:
    """One event log database. Safe to use from several processes at once; one instance
    belongs to one thread at a time."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False):
        self.path = os.fspath(path)
        self.readonly = readonly
        self._writers: _WriterQueue | None = None
        try:
            if readonly:
                self.db = sqlite3.connect(_readonly_uri(self.path), uri=True,
                                          timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                          check_same_thread=False)
            else:
                fresh = _prepare_file(self.path)
                self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                          isolation_level=None, check_same_thread=False)
                if fresh:
                    # Before WAL, as both only apply to an empty file (and setting
                    # auto_vacuum on a full one costs a write): an append changes ~7 pages
                    # (the table, the subject, type and time index leaves, the head witness),
                    # each written to the WAL before the fsync, so smaller pages make durable
                    # appends cheaper (BENCHMARKS.md); incremental auto_vacuum lets archiving
                    # give space back (archive.py).
                    self.db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                    self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = FULL")
            self._check_schema()
        except (sqlite3.Error, OSError, EventLogError) as exc:
            if hasattr(self, "db"):
                self.db.close()
            if isinstance(exc, EventLogError):
                raise
            raise EventLogError(f"event log {self.path}: {exc}") from None

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *,
             readonly: bool = False) -> EventLog:
        """Open ``path``, or :func:`default_path` when it is ``None``."""
        return cls(default_path() if path is None else path, readonly=readonly)

    def close(self) -> None:
        self.db.close()
        if self._writers is not None:
            self._writers.close()
            self._writers = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_schema(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > DB_SCHEMA:
            raise EventLogError(f"event log {self.path} has schema {version}, newer than "
                                f"this version of the add-on ({DB_SCHEMA}); upgrade it")
        if version == 0 and self.readonly:
            self._check_tables(version)
            raise EventLogError(f"event log {self.path} is not initialised: the process "
                                "creating it stopped before its schema was committed; the "
                                "next writer (any driver action) creates it")
        if version:
            self._check_tables(version)
        if version == DB_SCHEMA or self.readonly:
            return  # an older schema reads fine; the next writer migrates it
        self.db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created or migrated it while we waited for the lock.
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            self._check_tables(version)
            for step in SCHEMA_STEPS[version:]:
                for statement in _statements(step):
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {DB_SCHEMA}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _check_tables(self, version: int) -> None:
        """A database of another kind is refused, not migrated or half read."""
        tables = {row[0] for row in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        ours = {"events", "tracking", "meta"}
        if (tables != ours) if version else bool(tables):
            raise EventLogError(f"{self.path} is not an event log (a database with tables "
                                f"{', '.join(sorted(tables)) or 'none'})")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, args)
        except sqlite3.Error as exc:
            raise EventLogError(f"event log {self.path}: {exc}") from None

    # -- writing --------------------------------------------------------------------------

    def append(self, event: Event) -> int:
        """Append one event durably; returns its sequence number."""
        with self.transaction() as tx:
            return tx.append(event)

    def append_batch(self, events: Sequence[Event]) -> list[int]:
        """Append several events in one transaction (one fsync): all or none."""
        with self.transaction() as tx:
            return [tx.append(event) for event in events]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction: events and tracking rows commit together or not at all.

        Holds the log's write lock until the block ends: do the slow work (API calls)
        before, and only record its outcome inside.
        """
        if self.readonly:
            raise EventLogError(f"event log {self.path} is open read-only")
        queue = self._queue()
        if queue is not None:
            try:
                queue.enter(time.monotonic() + BUSY_TIMEOUT_MS / 1000)
            except (EventLogError, OSError) as exc:  # OSError: the lock file's disk failed
                raise EventLogError(f"event log {self.path}: {exc}") from None
        try:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise EventLogError(f"event log {self.path}: {exc}") from None
            tx = Transaction(self)
            try:
                yield tx
                tx.write_witness()
                self.db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise EventLogError(f"event log {self.path}: {exc}") from None
                raise
        finally:
            if queue is not None:
                queue.leave()

    def _queue(self) -> _WriterQueue | None:
        if self._writers is None:
            try:
                self._writers = _WriterQueue(self.path)
            except OSError:
                return None  # e.g. a lock file this user may not write: SQLite's lock only
        return self._writers

    # -- reading --------------------------------------------------------------------------

    def read(self, *, since_seq: int = 0, until_seq: int | None = None,
             since_time: float | None = None, types: Sequence[str] | None = None,
             vm: int | None = None, image: int | None = None, datastore: int | None = None,
             volume: str | None = None, snapshot: str | None = None,
             effect_key: str | None = None, effects_only: bool = False,
             limit: int | None = None, batch: int = 5000) -> Iterator[Record]:
        """Records after ``since_seq`` (up to ``until_seq``) in sequence order, filtered by
        the indexed columns (``effects_only``: the records that request a side effect)."""
        where, args = ["seq > ?"], [since_seq]
        if until_seq is not None:
            where.append("seq <= ?")
            args.append(until_seq)
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
        cursor = self._query(sql, args)
        try:
            while rows := cursor.fetchmany(batch):
                yield from map(_row_to_record, rows)
        except sqlite3.Error as exc:
            raise EventLogError(f"event log {self.path}: {exc}") from None

    def iterate(self, *, since_seq: int = 0, follow: bool = False, interval: float = 1.0,
                should_stop: Callable[[], bool] | None = None,
                **filters: Any) -> Iterator[Record]:
        """Like :meth:`read`; with ``follow``, keeps polling for new records (``tail -f``,
        a consumer catching up) until ``should_stop()`` is true."""
        position = since_seq
        while True:
            # Sequence numbers are given under the write lock and committed in order, so
            # every record up to the head read here is visible to the query that follows.
            top = self.head()[0]
            yield from self.read(since_seq=position, until_seq=top, **filters)
            position = max(position, top)
            if not follow or (should_stop is not None and should_stop()):
                return
            time.sleep(interval)

    def get(self, seq: int) -> Record | None:
        row = self._query(f"SELECT {COLUMNS} FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else _row_to_record(row)

    def head(self) -> tuple[int, bytes]:
        """The last sequence number and hash (the archive anchor when the log is empty)."""
        row = self._query("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row is not None else self.anchor()

    def anchor(self) -> tuple[int, bytes]:
        """The (seq, hash) of the last archived record, or (0, genesis)."""
        return _anchor(self.meta())

    def meta(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM meta").fetchall())

    def done_keys(self, consumer: str | None = None) -> set[str]:
        """Idempotency keys recorded done (by ``consumer``, or by anyone)."""
        if consumer is None:
            return {row[0] for row in self._query("SELECT key FROM tracking")}
        return {row[0] for row in self._query("SELECT key FROM tracking WHERE consumer = ?",
                                              (consumer,))}

    def is_done(self, key: str, consumer: str | None = None) -> bool:
        sql, args = "SELECT 1 FROM tracking WHERE key = ?", [key]
        if consumer is not None:
            sql, args = sql + " AND consumer = ?", [key, consumer]
        return self._query(sql + " LIMIT 1", args).fetchone() is not None

    def position(self, consumer: str) -> int:
        """The highest log position ``consumer`` recorded (0: none): where it resumes."""
        row = self._query("SELECT MAX(position) FROM tracking WHERE consumer = ?",
                          (consumer,)).fetchone()
        return row[0] or 0

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM events").fetchone()[0]


class Transaction:
    """Appends and tracking rows inside :meth:`EventLog.transaction`."""

    def __init__(self, log: EventLog):
        self.log = log
        self._head: tuple[int, bytes] | None = None
        self._appended = False
        self._count = 0

    def append(self, event: Event, *, now: float | None = None) -> int:
        db = self.log.db
        seq, prev = self.head[0] + 1, self.head[1]
        self._count += 1
        if self._count > MAX_TRANSACTION_RECORDS:
            raise EventLogError(f"more than {MAX_TRANSACTION_RECORDS} records in one "
                                "transaction would hold every other writer: split it")
        _check_fields(event)
        try:
            payload = pack_payload(event.payload)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EventLogError(f"event {event.type}: payload cannot be stored: {exc}"
                                ) from None
        fields = (seq, time.time() if now is None else now, event.writer, HOST, os.getpid(),
                  event.type, event.vm, event.image, event.datastore, event.volume,
                  event.snapshot, event.effect_key, event.schema, payload, prev)
        digest = chain_hash(*fields)
        db.execute(INSERT_SQL, (*fields, digest))
        self._head, self._appended = (seq, digest), True
        return seq

    @property
    def head(self) -> tuple[int, bytes]:
        """The chain head as this transaction leaves it so far."""
        if self._head is None:
            row = self.log.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
                                      ).fetchone()
            self._head = (row[0], row[1]) if row is not None else self.log.anchor()
        return self._head

    def write_witness(self) -> None:
        """Record the new head in meta, once per transaction (this is the only write path;
        a trigger would cost every row more than the append's own indexes)."""
        if self._appended and self._head is not None:
            self.log.db.execute("UPDATE meta SET value = ? WHERE key = 'head'",
                                (f"{self._head[0]} {self._head[1].hex()}",))

    def track(self, consumer: str, key: str, *, position: int, seq: int) -> None:
        """Record that ``consumer`` handled log position ``position`` under the idempotency
        key ``key``, its outcome being event ``seq``: the last one appended in this
        transaction, whose payload has ``"key": key`` (verify checks it).

        A second time for the same consumer and key raises :class:`AlreadyDone`, and the
        whole transaction (the outcome event included) is rolled back.
        """
        try:
            self.log.db.execute(
                "INSERT INTO tracking (consumer, key, seq, position) VALUES (?,?,?,?)",
                (consumer, key, seq, position))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise AlreadyDone(consumer, key) from None
            raise


def _check_fields(event: Event) -> None:
    """The indexed fields have their column's type (SQLite would store anything)."""
    for name, kind in (("type", str), ("writer", str), ("vm", int), ("image", int),
                       ("datastore", int), ("volume", str), ("snapshot", str)):
        value = getattr(event, name)
        if value is None and name in ("type", "writer"):
            raise EventLogError(f"event {event.type}: {name} is required (NOT NULL)")
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise EventLogError(f"event {event.type}: {name} must be {kind.__name__}, not "
                                f"{type(value).__name__}")


def _anchor(meta: dict[str, str]) -> tuple[int, bytes]:
    if "archived_through" in meta:
        return int(meta["archived_through"]), bytes.fromhex(meta["anchor_hash"])
    return 0, GENESIS


def _statements(script: str) -> list[str]:
    """Split a schema step (triggers contain ';' inside BEGIN...END)."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current)
        if sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    return statements


def _readonly_uri(path: str) -> str:
    # Only these three characters mean something in a file: URI's path.
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode=ro"


def _prepare_file(path: str) -> bool:
    """Create the directory (0750) and the database file (0640) before SQLite does, so
    neither is left world-readable whatever the umask. SQLite gives its -wal and -shm files
    the database file's mode. True when the database is still empty."""
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
    return os.path.getsize(path) == 0


def _share_with_oneadmin(directory: str, path: str) -> None:
    """As root (packaging, tests run by root), hand the files to the oneadmin group."""
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
