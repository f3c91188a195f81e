"""``verify``: the database is sound and every record links to the one before it.

Detects an edited field (the record's hash no longer matches), a removed or reordered record
(the sequence has a gap or a link points elsewhere) and a forged hash (the next link breaks).
Without a secret key, someone who rewrites the whole chain from a point on is not detected;
anchoring the head elsewhere (``onestorpool log stats`` prints it) covers that.
"""

from __future__ import annotations

from dataclasses import dataclass

from onestorpool.eventlog.record import chain_hash
from onestorpool.eventlog.store import COLUMNS, EventLog


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad: int | None = None
    reason: str = ""
    head: str = ""


def verify(log: EventLog, batch: int = 5000) -> VerifyResult:
    integrity = log.db.execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        return VerifyResult(False, 0, None, f"database integrity check: {integrity}")
    expected_seq, prev = log.anchor()
    checked = 0
    cursor = log.db.execute(f"SELECT {COLUMNS} FROM events ORDER BY seq")
    while rows := cursor.fetchmany(batch):
        for row in rows:
            seq = row[0]
            if seq != expected_seq + 1:
                return VerifyResult(False, checked, seq,
                                    f"record {expected_seq + 1} is missing (next is {seq})")
            if row[14] != prev:
                return VerifyResult(False, checked, seq,
                                    f"record {seq} does not link to record {seq - 1}")
            if chain_hash(*row[:15]) != row[15]:
                return VerifyResult(False, checked, seq,
                                    f"record {seq} was altered (hash mismatch)")
            prev, expected_seq = row[15], seq
            checked += 1
    return VerifyResult(True, checked, head=prev.hex())
