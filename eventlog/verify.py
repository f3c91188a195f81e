"""``verify``: the database is sound and every record links to the one before it.

Detects an edited field (the record's hash no longer matches), a removed or reordered record
(the sequence has a gap or a link points elsewhere), a forged hash (the next link breaks),
records cut off the end (the head witness that every append writes to ``meta`` names a
later record) and an archive anchor moved by hand (it must match the chain's last
``log.archived`` record). Without a secret key, someone who rewrites the chain from a point
on *and* the witness is not detected; comparing with a head recorded elsewhere
(``--anchor``, the head that ``onestorpool log stats`` prints) covers that.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from onestorpool.eventlog.record import chain_hash
from onestorpool.eventlog.store import ARCHIVED, COLUMNS, EventLog


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad: int | None = None
    reason: str = ""
    head: str = ""  # hex hash of the last record checked
    head_seq: int = 0


class _Bad(Exception):
    def __init__(self, seq: int | None, reason: str):
        super().__init__(reason)
        self.seq, self.reason = seq, reason


def verify(log: EventLog, *, anchors: Sequence[tuple[int, bytes]] = (),
           integrity: bool = True, batch: int = 5000) -> VerifyResult:
    """Check the database, then the chain from the archive anchor to the head witness.

    ``anchors``: (seq, hash) pairs recorded outside the log; each must still be in the chain.
    """
    checked = 0
    try:
        if integrity:
            problems = [row[0] for row in log.db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise _Bad(None, "database integrity check: " + "; ".join(problems[:5]))
        meta = dict(log.db.execute("SELECT key, value FROM meta").fetchall())
        anchor_seq, prev = log.anchor()
        wanted = dict(anchors)
        archived = sorted(seq for seq in wanted if seq <= anchor_seq)
        if archived:
            raise _Bad(archived[0], f"anchor record {archived[0]} is archived; verify the "
                                    "archive that holds it")
        expected_seq, last_cut = anchor_seq, None
        # Records at or below the anchor are archived; a purge may still be removing them.
        cursor = log.db.execute(f"SELECT {COLUMNS} FROM events WHERE seq > ? ORDER BY seq",
                                (anchor_seq,))
        while rows := cursor.fetchmany(batch):
            for row in rows:
                seq = row[0]
                if seq != expected_seq + 1:
                    raise _Bad(expected_seq + 1,
                               f"record {expected_seq + 1} is missing (next is {seq})")
                if row[14] != prev:
                    raise _Bad(seq, f"record {seq} does not link to record {seq - 1}")
                if chain_hash(*row[:15]) != row[15]:
                    raise _Bad(seq, f"record {seq} was altered (hash mismatch)")
                if seq in wanted and wanted.pop(seq) != row[15]:
                    raise _Bad(seq, f"record {seq} is not the one anchored (hash differs)")
                if row[5] == ARCHIVED:
                    last_cut = row
                prev, expected_seq = row[15], seq
                checked += 1
        if wanted:
            seq = min(wanted)
            raise _Bad(seq, f"anchor record {seq} is missing: the log ends at record "
                            f"{expected_seq}")
        _check_cut(anchor_seq, meta.get("anchor_hash"), last_cut)
        # Schema 1 logs have no head witness until their first writer migrates them.
        if log.db.execute("PRAGMA user_version").fetchone()[0] >= 2:
            _check_head(meta.get("head"), expected_seq, prev)
    except _Bad as bad:
        return VerifyResult(False, checked, bad.seq, bad.reason)
    except sqlite3.DatabaseError as exc:  # a corrupt file fails reads, not only the check
        return VerifyResult(False, checked, None, f"database unreadable: {exc}")
    return VerifyResult(True, checked, head=prev.hex(), head_seq=expected_seq)


def _check_cut(anchor_seq: int, anchor_hex: str | None, last_cut: tuple | None) -> None:
    """The anchor moves only with a ``log.archived`` record after it that names it."""
    if anchor_seq == 0:
        return
    if last_cut is None:
        raise _Bad(anchor_seq + 1, f"records up to {anchor_seq} are marked archived, but no "
                                   "archive record in the chain says so")
    cut = msgpack.unpackb(last_cut[13], raw=False)
    if cut.get("through") != anchor_seq or cut.get("head_hash") != anchor_hex:
        raise _Bad(last_cut[0], f"the archive anchor (record {anchor_seq}) differs from the "
                                f"last archive record {last_cut[0]}")


def _check_head(witness: str | None, last_seq: int, last_hash: bytes) -> None:
    if witness is None:  # schema 2 creates it, every append rewrites it
        raise _Bad(None, "the head witness is missing from meta")
    seq_text, _, hash_hex = witness.partition(" ")
    head_seq = int(seq_text)
    if head_seq > last_seq:
        raise _Bad(last_seq + 1, f"record {last_seq + 1} is missing: the log ends at record "
                                 f"{last_seq} but its head was record {head_seq}")
    if head_seq < last_seq:
        raise _Bad(head_seq + 1, f"record {head_seq + 1} was added bypassing the log")
    if hash_hex != last_hash.hex():
        raise _Bad(last_seq, f"record {last_seq} was replaced (the head witness differs)")
