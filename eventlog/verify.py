"""``verify``: the database is sound, every record links to the one before it, and what
the log says was done is justified by the chain.

Detects an edited field (the record's hash no longer matches), a removed or reordered record
(the sequence has a gap or a link points elsewhere), a forged hash (the next link breaks),
records cut off the end (the head witness in ``meta`` names a later record), an archive
anchor moved by hand (it must match the chain's last ``log.archived`` record), a tracking
row that no outcome record justifies and, given the archives, any archive missing, altered
or replaced. Heads recorded elsewhere (``anchors``) catch a rewrite of the chain and its
witness from some point on, and a cut tail. See docs/eventlog.md for the threat model.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from onestorpool.eventlog.projections import EFFECT_DONE, EFFECTS
from onestorpool.eventlog.record import Record, chain_hash
from onestorpool.eventlog.store import ARCHIVED, COLUMNS, EventLog


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad: int | None = None
    reason: str = ""
    head: str = ""  # hex hash of the last record checked
    head_seq: int = 0
    notes: tuple[str, ...] = field(default=())  # archive checks and what was not checked


class _Bad(Exception):
    def __init__(self, seq: int | None, reason: str):
        super().__init__(reason)
        self.seq, self.reason = seq, reason


def verify(log: EventLog, *, anchors: Sequence[tuple[int, bytes]] = (),
           archives: Sequence[Path] | None = None, find_archives: bool = True,
           integrity: bool = True, batch: int = 5000) -> VerifyResult:
    """Check the database, the chain from the archive anchor to the head witness, the
    tracking rows, and the archived records as one chain from the genesis to the anchor:
    those in ``archives`` (files or directories), else (``find_archives``) those in the
    directories the ``log.archived`` records name.

    ``anchors``: (seq, hash) pairs recorded outside the log; each must still be in the chain.
    """
    checked, notes = 0, []
    try:
        if integrity:
            problems = [row[0] for row in log.db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise _Bad(None, "database integrity check: " + "; ".join(problems[:5]))
        meta = dict(log.db.execute("SELECT key, value FROM meta").fetchall())
        anchor_seq, prev = log.anchor()
        wanted = dict(anchors)
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
        live_missing = sorted(seq for seq in wanted if seq > expected_seq)
        if live_missing:
            raise _Bad(live_missing[0], f"anchor record {live_missing[0]} is missing: the log "
                                        f"ends at record {expected_seq}")
        _check_cut(anchor_seq, meta.get("anchor_hash"), last_cut)
        # Schema 1 logs have no head witness until their first writer migrates them.
        version = log.db.execute("PRAGMA user_version").fetchone()[0]
        if version >= 2:
            _check_head(meta.get("head"), expected_seq, prev)
        position = "position" if version >= 2 else "NULL"  # schema 1 had none
        tracking = log.db.execute(f"SELECT consumer, key, seq, {position} FROM tracking "
                                  "ORDER BY seq").fetchall()
        archived: dict[int, Record] = {}
        if archives is None and find_archives and last_cut is not None:
            archives = _recorded_archives(last_cut, anchor_seq)
        if archives is not None:
            archived = _check_archives(log, archives, notes, wanted, tracking, anchor_seq)
        elif wanted:  # anchors at or below the archive anchor
            seq = min(wanted)
            raise _Bad(seq, f"anchor record {seq} is archived; verify with the archives "
                            "(--archives DIR)")
        elif anchor_seq:
            notes.append(f"note: records 1..{anchor_seq} are archived and were not checked "
                         "(--archives DIR)")
        unchecked = _check_tracking(log, tracking, anchor_seq, archived, archives is not None)
        if unchecked:
            notes.append(f"note: {unchecked} tracking rows name archived records and were "
                         "not checked (--archives DIR)")
    except _Bad as bad:
        return VerifyResult(False, checked, bad.seq, bad.reason, notes=tuple(notes))
    except sqlite3.DatabaseError as exc:  # a corrupt file fails reads, not only the check
        return VerifyResult(False, checked, None, f"database unreadable: {exc}",
                            notes=tuple(notes))
    return VerifyResult(True, checked, head=prev.hex(), head_seq=expected_seq,
                        notes=tuple(notes))


def _check_cut(anchor_seq: int, anchor_hex: str | None, last_cut: tuple | None) -> None:
    """The anchor moves only with a ``log.archived`` record after it that names it."""
    if anchor_seq == 0:
        return
    if last_cut is None:
        raise _Bad(anchor_seq + 1, f"records up to {anchor_seq} are marked archived, but no "
                                   "archive record in the chain says so")
    cut = msgpack.unpackb(last_cut[13], raw=False, strict_map_key=False)
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


def _recorded_archives(last_cut: tuple, anchor_seq: int) -> list[Path] | None:
    """The archive directories the chain names: the last cut's, and those the cuts in its
    archives name, and so on (older cut records name none)."""
    from onestorpool.eventlog.archive import named_directories

    directory = msgpack.unpackb(last_cut[13], raw=False, strict_map_key=False).get("dir")
    if not isinstance(directory, str):
        return None
    found: list[Path] = []
    todo = [directory]
    while todo:
        path = Path(todo.pop())
        if path in found:
            continue
        if not path.is_dir():
            raise _Bad(None, f"records up to {anchor_seq} were archived to {path}, which is "
                             "missing (--archives DIR where they are now, or --no-archives)")
        found.append(path)
        todo.extend(named_directories(path))
    return found


def _check_archives(log: EventLog, archives: Sequence[Path], notes: list[str],
                    wanted: dict[int, bytes], tracking: list[tuple],
                    anchor_seq: int) -> dict[int, Record]:
    """The archives as one chain up to the anchor; anchors and effect requests in them."""
    from onestorpool.eventlog.archive import ArchiveContents, verify_archives

    contents = ArchiveContents()
    needed = set(wanted) | {row[2] for row in tracking if row[2] <= anchor_seq}
    failed = None
    for check in verify_archives(archives, log, contents=contents, wanted=needed):
        notes.append(check.message if check.ok else f"FAILED: {check.message}")
        failed = failed or (None if check.ok else check.message)
    if failed:
        raise _Bad(None, f"the archives do not verify: {failed}")
    for seq, digest in sorted(wanted.items()):
        record = contents.records.get(seq)
        if record is None or record.hash != digest:
            raise _Bad(seq, f"record {seq} is not the one anchored (archived "
                            f"{'hash differs' if record else 'record missing'})")
    done = {row[1] for row in tracking}
    for key, seq in sorted(contents.requests.items(), key=lambda item: item[1]):
        if key not in done:
            raise _Bad(seq, f"record {seq} requests effect {key!r}, not done, yet it was "
                            "archived (pending effects stay in the live log)")
    return contents.records


def _check_tracking(log: EventLog, tracking: list[tuple], anchor_seq: int,
                    archived: dict[int, Record], have_archives: bool) -> int:
    """Each tracking row is justified by its own outcome record: one that names the key,
    after the position handled, not a failure. Returns how many could not be checked."""
    unchecked, previous = 0, None
    for consumer, key, seq, position in tracking:
        where = f"tracking row ({consumer}, {key})"
        if seq == previous:
            raise _Bad(seq, f"{where}: record {seq} already justifies another row")
        previous = seq
        if seq <= anchor_seq and not have_archives:
            unchecked += 1
            continue
        record = log.get(seq) if seq > anchor_seq else archived.get(seq)
        if record is None:
            raise _Bad(seq, f"{where} names record {seq}, which is not in the log")
        payload = record.payload
        if (payload.get("key") != key or record.type.endswith(".failed")
                or (consumer == EFFECTS and record.type != EFFECT_DONE)
                or (position is not None and position >= seq)):
            raise _Bad(seq, f"{where} is not justified by record {seq} ({record.type})")
    return unchecked
