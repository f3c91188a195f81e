"""Retention: move old records to a compressed JSON-lines archive, keep the chain anchor.

An archive is ``events-<first>-<through>.jsonl.gz``: a header line (range, and the hashes
at both ends), then one record per line as ``onestorpool log export`` prints it plus
``raw``, the exact payload bytes (base64), so every hash can be recomputed.

Order of work, so that a crash at any point loses nothing and leaves a log that verifies:

1. the records are read from a snapshot (no write lock: drivers keep appending), their
   chain is checked from the current anchor, and the file is written, synced and renamed;
2. one short transaction appends a ``log.archived`` record naming the cut (range, head
   hash, the file's name and SHA-256), then moves the anchor (``archived_through``,
   ``anchor_hash`` in meta): the database's triggers let the anchor move only behind such
   a record, so every cut moves the chain's head;
3. the archived records are deleted in small transactions (the delete trigger allows only
   records at or below ``archived_through``; ``verify`` starts after it), then the freed
   pages are returned to the file system.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onestorpool.eventlog.events import LogArchived
from onestorpool.eventlog.projections import pending_effects
from onestorpool.eventlog.record import GENESIS, Record, chain_hash
from onestorpool.eventlog.store import ARCHIVED, COLUMNS, HOST, EventLog, EventLogError

ARCHIVE_FORMAT = 1
PURGE_CHUNK = 5000  # records deleted per transaction: drivers never wait long for the lock
ARCHIVE_GLOB = "events-*.jsonl.gz"


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
    digest = _file_digest(path)
    with log.transaction() as tx:
        if log.anchor() != (anchor_seq, anchor_hash):
            # Another run, into another directory (this one is locked), got there first.
            path.unlink()
            raise EventLogError("another archive run moved the anchor meanwhile; try again")
        # The chain itself testifies to the cut, and the triggers want it first.
        tx.append(LogArchived.new(f"archive@{HOST}:{os.getpid()}",
                                  first=anchor_seq + 1, through=through, file=path.name,
                                  dir=str(path.parent.resolve()), head_hash=head_hash.hex(),
                                  sha256=digest))
        log.db.execute("UPDATE meta SET value = ? WHERE key = 'archived_through'",
                       (str(through),))
        log.db.execute("UPDATE meta SET value = ? WHERE key = 'anchor_hash'",
                       (head_hash.hex(),))
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
    return (json.dumps(data, sort_keys=True, allow_nan=False) + "\n").encode()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
    sha256: str = ""
    name: str = ""


@dataclass
class ArchiveContents:
    """What verify needs from the archived records besides their chain."""

    cuts: list[dict[str, Any]] = field(default_factory=list)  # log.archived payloads
    requests: dict[str, int] = field(default_factory=dict)  # effect key -> first request
    records: dict[int, Record] = field(default_factory=dict)  # the ones asked for


def verify_archive(path: Path, contents: ArchiveContents | None = None,
                   wanted: Collection[int] = ()) -> ArchiveCheck:
    """Recompute an archive's chain on its own; collect into ``contents`` its cut records,
    effect requests and the records numbered in ``wanted``."""
    name = path.name
    try:
        file_digest = _file_digest(path)
        with gzip.open(path, "rt") as handle:
            header = json.loads(handle.readline(), parse_constant=_refuse)
            first, through = header["first"], header["through"]
            start = prev = bytes.fromhex(header["prev_hash"])
            expected, trailer = first, None
            for line in handle:
                record = json.loads(line, parse_constant=_refuse)
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
                if contents is not None:
                    _collect(contents, Record(*fields, digest), wanted)
                prev, expected = digest, expected + 1
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        return ArchiveCheck(False, f"archive {name}: unreadable ({exc})")
    if trailer is None or expected - 1 != through or trailer.get("head_hash") != prev.hex():
        return ArchiveCheck(False, f"archive {name}: truncated after record {expected - 1}")
    return ArchiveCheck(True, f"archive {name}: records {first}..{through} ok", first,
                        through, start, prev, file_digest, name)


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _collect(contents: ArchiveContents, record: Record, wanted: Collection[int]) -> None:
    if record.type == ARCHIVED:
        contents.cuts.append(record.payload)
    if record.effect_key is not None:
        contents.requests.setdefault(record.effect_key, record.seq)
    if record.seq in wanted:
        contents.records[record.seq] = record


def named_directories(directory: Path) -> set[str]:
    """The directories that the cut records inside the archives of ``directory`` name."""
    named = set()
    for path in sorted(directory.glob(ARCHIVE_GLOB)):
        # An unreadable archive is reported by verify_archive, not here.
        with contextlib.suppress(OSError, EOFError, ValueError), gzip.open(path, "rt") as lines:
            for line in lines:
                if f'"type": "{ARCHIVED}"' in line:
                    cut = json.loads(line).get("payload", {})
                    if isinstance(cut.get("dir"), str):
                        named.add(cut["dir"])
    return named


def archive_paths(paths: Iterable[Path]) -> list[Path]:
    """Archive files: the given files, and the archives inside the given directories."""
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.glob(ARCHIVE_GLOB)) if path.is_dir() else [path])
    return found


def verify_archives(paths: Iterable[Path], log: EventLog | None = None, *,
                    contents: ArchiveContents | None = None,
                    wanted: Collection[int] = ()) -> list[ArchiveCheck]:
    """Check each archive (directories give all theirs), then that together they are one
    chain from the genesis to the live log's anchor, and that each is the file a
    ``log.archived`` record of the chain names (its SHA-256)."""
    contents = ArchiveContents() if contents is None else contents
    checks = sorted((verify_archive(path, contents, wanted) for path in archive_paths(paths)),
                    key=lambda c: c.first)
    results = list(checks)

    def fail(message: str) -> None:
        results.append(ArchiveCheck(False, message))

    good = [check for check in checks if check.ok]
    if not good:
        if not checks and (log is None or log.anchor()[0]):
            fail("no archive found")
        return results
    if good[0].first != 1 or good[0].prev_hash != GENESIS:
        fail(f"records 1..{good[0].first - 1}: no archive starts the chain")
    for before, after in itertools.pairwise(good):
        if after.first != before.through + 1 or after.prev_hash != before.head_hash:
            fail(f"records {before.through + 1}..{after.first - 1}: no archive joins "
                 f"{before.through} to {after.first}")
    if log is None:
        return results
    through, anchor = log.anchor()
    last = good[-1]
    if last.through != through or last.head_hash != anchor:
        fail(f"the archives end at record {last.through}, the live log's anchor is record "
             f"{through}" + ("" if last.through != through else " (hash differs)"))
    cuts = contents.cuts + [r.payload for r in log.read(types=[ARCHIVED])]
    named = {(c.get("first"), c.get("through"), c.get("head_hash")): c for c in cuts}
    for check in good:
        cut = named.get((check.first, check.through, check.head_hash.hex()))
        if cut is None:
            fail(f"archive {check.name}: no log.archived record names records "
                 f"{check.first}..{check.through}")
        elif cut.get("sha256", check.sha256) != check.sha256:  # older cuts have no digest
            fail(f"archive {check.name}: not the file archived (SHA-256 differs)")
    return results


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
