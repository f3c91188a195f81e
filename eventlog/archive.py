"""Retention: move old records to a compressed JSON-lines archive, keep the chain anchor.

The archive's first line is a header (range and the hashes at both ends); each following
line is one record with its exact payload bytes (base64) so its hash can be recomputed. The
live log keeps ``archived_through`` and ``anchor_hash`` in ``meta``; ``verify`` of the live
log starts from that anchor, and :func:`verify_archive` checks an archive on its own and
against the live log's anchor. The archive is written and synced before anything is removed;
the removal and the anchor commit in one transaction (the delete trigger allows removing
only records at or below ``archived_through``).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from onestorpool.eventlog.record import chain_hash
from onestorpool.eventlog.store import COLUMNS, EventLog, EventLogError


@dataclass(frozen=True)
class ArchiveResult:
    path: Path
    first: int
    through: int
    count: int


def archive(log: EventLog, directory: Path, *, older_than: float | None = None,
            through_seq: int | None = None) -> ArchiveResult | None:
    """Archive records older than ``older_than`` seconds (or up to ``through_seq``)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    with log.transaction():
        db = log.db
        if through_seq is None:
            if older_than is None:
                raise EventLogError("archive: give an age or a sequence number")
            row = db.execute("SELECT MAX(seq) FROM events WHERE time < ?",
                             (time.time() - older_than,)).fetchone()
            through_seq = row[0]
        first_row = db.execute("SELECT MIN(seq) FROM events").fetchone()
        if through_seq is None or first_row[0] is None or through_seq < first_row[0]:
            return None
        first = first_row[0]
        rows = db.execute(f"SELECT {COLUMNS} FROM events WHERE seq <= ? ORDER BY seq",
                          (through_seq,)).fetchall()
        through = rows[-1][0]
        path = directory / f"events-{first:012d}-{through:012d}.jsonl.gz"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as out:
            header = {"archive": 1, "first": first, "through": through,
                      "prev_hash": rows[0][14].hex(), "head_hash": rows[-1][15].hex()}
            out.write((json.dumps(header) + "\n").encode())
            for row in rows:
                out.write((json.dumps(_row_json(row)) + "\n").encode())
            out.flush()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
        _fsync_dir(directory)
        for key, value in (("archived_through", str(through)),
                           ("anchor_hash", rows[-1][15].hex())):
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) "
                       "DO UPDATE SET value = excluded.value", (key, value))
        db.execute("DELETE FROM events WHERE seq <= ?", (through,))
    return ArchiveResult(path, first, through, len(rows))


def _row_json(row: tuple) -> dict:
    names = [c.strip() for c in COLUMNS.split(",")]
    data = dict(zip(names, row, strict=True))
    data["payload"] = base64.b64encode(row[13]).decode()
    data["prev_hash"], data["hash"] = row[14].hex(), row[15].hex()
    return data


def verify_archive(path: Path, log: EventLog | None = None) -> tuple[bool, str]:
    """Recompute an archive's chain; with ``log``, check it ends where the log's anchor is
    (for the most recent archive) or precedes it."""
    with gzip.open(path, "rt") as handle:
        header = json.loads(handle.readline())
        prev = bytes.fromhex(header["prev_hash"])
        expected = header["first"]
        for line in handle:
            record = json.loads(line)
            fields = (record["seq"], record["time"], record["writer"], record["host"],
                      record["pid"], record["type"], record["vm"], record["image"],
                      record["datastore"], record["volume"], record["snapshot"],
                      record["effect_key"], record["schema"],
                      base64.b64decode(record["payload"]), bytes.fromhex(record["prev_hash"]))
            if record["seq"] != expected or fields[14] != prev:
                return False, f"archive {path.name}: record {expected} missing or relinked"
            digest = chain_hash(*fields)
            if digest.hex() != record["hash"]:
                return False, f"archive {path.name}: record {record['seq']} was altered"
            prev, expected = digest, expected + 1
    if prev.hex() != header["head_hash"] or expected - 1 != header["through"]:
        return False, f"archive {path.name}: truncated"
    if log is not None:
        through, anchor = log.anchor()
        if through == header["through"] and anchor != prev:
            return False, f"archive {path.name} does not end at the live log's anchor"
    return True, f"archive {path.name}: records {header['first']}..{header['through']} ok"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
