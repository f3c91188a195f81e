"""Retention: move old records to a compressed JSON-lines archive, keep the chain anchor.

An archive is ``events-<first>-<through>.jsonl.gz``: a header line (range, and the hashes
at both ends), then one record per line as ``onestorpool log export`` prints it plus
``raw``, the exact payload bytes (base64), so every hash can be recomputed.

Order of work, so that a crash at any point loses nothing and leaves a log that verifies:

1. the records are read from a snapshot (no write lock: drivers keep appending), their
   chain is checked from the current anchor, and the file is written, synced and renamed;
2. one short transaction moves the anchor (``archived_through``, ``anchor_hash`` in meta);
   and appends a ``log.archived`` record naming the cut;
3. the archived records are deleted in small transactions (the delete trigger allows only
   records at or below ``archived_through``; ``verify`` starts after it), then the freed
   pages are returned to the file system.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onestorpool.eventlog.projections import pending_effects
from onestorpool.eventlog.record import GENESIS, Record, chain_hash
from onestorpool.eventlog.store import ARCHIVED, COLUMNS, HOST, Event, EventLog, EventLogError

ARCHIVE_FORMAT = 1
PURGE_CHUNK = 5000  # records deleted per transaction: drivers never wait long for the lock
UPSERT_META = ("INSERT INTO meta (key, value) VALUES (?, ?) "
               "ON CONFLICT(key) DO UPDATE SET value = excluded.value")


@dataclass(frozen=True)
class ArchiveResult:
    path: Path
    first: int
    through: int
    count: int


def archive(log: EventLog, directory: Path, *, older_than: float | None = None,
            through_seq: int | None = None) -> ArchiveResult | None:
    """Archive the records older than ``older_than`` seconds, or up to ``through_seq``, but
    never an effect request not done yet (nor what follows it). Returns ``None`` when there
    is nothing to archive."""
    if log.readonly:
        raise EventLogError(f"event log {log.path} is open read-only")
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        with _exclusive(directory):
            return _archive(log, directory, older_than, through_seq)
    except sqlite3.Error as exc:
        raise EventLogError(f"event log {log.path}: {exc}") from None


def _archive(log: EventLog, directory: Path, older_than: float | None,
             through_seq: int | None) -> ArchiveResult | None:
    purge(log)  # finish an earlier run that stopped after moving the anchor
    anchor_seq, anchor_hash = log.anchor()
    through = _last_to_archive(log, anchor_seq, older_than, through_seq)
    if through is None:
        return None
    # One statement: a consistent snapshot while drivers go on appending after `through`.
    rows = log.db.execute(f"SELECT {COLUMNS} FROM events WHERE seq > ? AND seq <= ? "
                          "ORDER BY seq", (anchor_seq, through))
    path = directory / f"events-{anchor_seq + 1:012d}-{through:012d}.jsonl.gz"
    head_hash = _write(path, _checked(rows, anchor_seq, anchor_hash, through),
                       anchor_seq + 1, through, anchor_hash)
    with log.transaction() as tx:
        if log.anchor() != (anchor_seq, anchor_hash):
            # Another run, into another directory (this one is locked), got there first.
            path.unlink()
            raise EventLogError("another archive run moved the anchor meanwhile; try again")
        log.db.execute(UPSERT_META, ("archived_through", str(through)))
        log.db.execute(UPSERT_META, ("anchor_hash", head_hash.hex()))
        # The chain itself testifies to the cut: verify checks the anchor against it, so
        # moving the anchor by hand to drop records is detected.
        tx.append(Event(ARCHIVED, f"archive@{HOST}:{os.getpid()}",
                        {"first": anchor_seq + 1, "through": through, "file": path.name,
                         "head_hash": head_hash.hex()}))
    purge(log)
    return ArchiveResult(path, anchor_seq + 1, through, through - anchor_seq)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One archive run per directory at a time."""
    fd = os.open(directory / ".archive.lock", os.O_CREAT | os.O_RDWR, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EventLogError(f"another archive run is writing to {directory}") from None
        yield
    finally:
        os.close(fd)


def purge(log: EventLog) -> int:
    """Delete the records already archived, a chunk per transaction; give the space back."""
    through, _ = log.anchor()
    removed = 0
    while True:
        with log.transaction():
            cursor = log.db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ? "
                f"ORDER BY seq LIMIT {PURGE_CHUNK})", (through,))
        removed += cursor.rowcount
        if cursor.rowcount < PURGE_CHUNK:
            break
    if removed:
        # executescript steps the pragma to the end; execute() would free a single page.
        # A no-op on logs made before auto_vacuum was set (see docs/eventlog.md).
        try:
            log.db.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as exc:
            raise EventLogError(f"event log {log.path}: {exc}") from None
    return removed


def _last_to_archive(log: EventLog, anchor_seq: int, older_than: float | None,
                     through_seq: int | None) -> int | None:
    if through_seq is None:
        if older_than is None:
            raise EventLogError("archive: give an age or a sequence number")
        through_seq = log.db.execute("SELECT MAX(seq) FROM events WHERE time < ?",
                                     (time.time() - older_than,)).fetchone()[0]
        if through_seq is None:
            return None
    # The live log keeps every effect request not done yet: replay and the subscriber
    # find them there (projections.pending_effects reads the live log only).
    pending = [p.requested_by.seq for p in pending_effects(log)]
    if pending:
        through_seq = min(through_seq, min(pending) - 1)
    last = log.db.execute("SELECT MAX(seq) FROM events WHERE seq <= ?",
                          (through_seq,)).fetchone()[0]
    return last if last is not None and last > anchor_seq else None


def _checked(rows: Iterable[tuple[Any, ...]], anchor_seq: int, anchor_hash: bytes,
             through: int) -> Iterable[tuple[Any, ...]]:
    """The rows, refusing to archive (and so to delete) a chain that does not verify."""
    expected, prev = anchor_seq + 1, anchor_hash
    for row in rows:
        if row[0] != expected or row[14] != prev or chain_hash(*row[:15]) != row[15]:
            raise EventLogError(f"archive: record {expected} does not verify; run "
                                "'onestorpool log verify' and keep this log as evidence")
        prev, expected = row[15], expected + 1
        yield row
    if expected != through + 1:
        raise EventLogError(f"archive: record {expected} is missing")


def _write(path: Path, rows: Iterable[tuple[Any, ...]], first: int, through: int,
           prev_hash: bytes) -> bytes:
    tmp = path.with_name(path.name + ".tmp")
    head = prev_hash
    try:
        with open(tmp, "wb") as raw:
            os.fchmod(raw.fileno(), 0o640)
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as out:
                out.write(_line({"archive": ARCHIVE_FORMAT, "first": first,
                                 "through": through, "prev_hash": prev_hash.hex()}))
                for row in rows:
                    out.write(_line(_row_json(row)))
                    head = row[15]
                # The trailer repeats the head: a truncated file is told from a short one.
                out.write(_line({"head_hash": head.hex(), "through": through}))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return head


def _line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, default=repr) + "\n").encode()


def _row_json(row: tuple[Any, ...]) -> dict[str, Any]:
    data = Record(*row).to_json()
    data["raw"] = base64.b64encode(row[13]).decode()
    return data


def _fields(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["seq"], record["time"], record["writer"], record["host"], record["pid"],
            record["type"], record["vm"], record["image"], record["datastore"],
            record["volume"], record["snapshot"], record["effect_key"], record["schema"],
            base64.b64decode(record["raw"]), bytes.fromhex(record["prev_hash"]))


@dataclass(frozen=True)
class ArchiveCheck:
    ok: bool
    message: str
    first: int = 0
    through: int = 0
    prev_hash: bytes = b""
    head_hash: bytes = b""


def verify_archive(path: Path) -> ArchiveCheck:
    """Recompute an archive's chain on its own."""
    name = path.name
    try:
        with gzip.open(path, "rt") as handle:
            header = json.loads(handle.readline())
            first, through = header["first"], header["through"]
            start = prev = bytes.fromhex(header["prev_hash"])
            expected, trailer = first, None
            for line in handle:
                record = json.loads(line)
                if "seq" not in record:
                    trailer = record
                    break
                fields = _fields(record)
                if record["seq"] != expected or fields[14] != prev:
                    return ArchiveCheck(False, f"archive {name}: record {expected} is missing "
                                               "or relinked")
                digest = chain_hash(*fields)
                if digest.hex() != record["hash"]:
                    return ArchiveCheck(False, f"archive {name}: record {record['seq']} was "
                                               "altered")
                prev, expected = digest, expected + 1
    except (OSError, EOFError, ValueError, KeyError) as exc:
        return ArchiveCheck(False, f"archive {name}: unreadable ({exc})")
    if trailer is None or expected - 1 != through or trailer.get("head_hash") != prev.hex():
        return ArchiveCheck(False, f"archive {name}: truncated after record {expected - 1}")
    return ArchiveCheck(True, f"archive {name}: records {first}..{through} ok", first,
                        through, start, prev)


def verify_archives(paths: Iterable[Path], log: EventLog | None = None) -> list[ArchiveCheck]:
    """Check each archive, then that they join one another (in sequence order) and, with
    ``log``, that the last one ends at the live log's anchor."""
    checks = sorted((verify_archive(path) for path in paths), key=lambda c: c.first)
    results = list(checks)
    good = [check for check in checks if check.ok]
    for before, after in itertools.pairwise(good):
        if after.first != before.through + 1 or after.prev_hash != before.head_hash:
            results.append(ArchiveCheck(False, f"records {before.through + 1}.."
                                               f"{after.first - 1}: no archive joins "
                                               f"{before.through} to {after.first}"))
    if good and good[0].first == 1 and good[0].prev_hash != GENESIS:
        results.append(ArchiveCheck(False, f"archive of records 1..{good[0].through} does "
                                           "not start the chain"))
    if log is not None and good:
        through, anchor = log.anchor()
        last = good[-1]
        if last.through == through and last.head_hash != anchor:
            results.append(ArchiveCheck(False, f"the archive ending at {through} does not "
                                               "end at the live log's anchor"))
        elif last.through < through:
            # Verifying some old archives on their own is legitimate: say so, do not fail.
            results.append(ArchiveCheck(True, f"note: records {last.through + 1}..{through} "
                                              "are in archives not given here"))
    return results


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
