"""Anchoring the head outside the log: checkpoints, and the heads an admin kept.

Someone who can write the database can recompute every link of the chain; only a head
recorded elsewhere shows that what it covers was not rewritten, cut or replaced. A
checkpoint appends a ``log.checkpoint`` record and publishes its ``SEQ:HASH`` to syslog
(journald reads it), and to a file or a StorPool volume tag when configured. ``verify
--expect-head SEQ:HASH`` or ``--anchors FILE`` (any text with such tokens, e.g. that file
or a journal excerpt) fails when the record is missing or different.

Run ``onestorpool log checkpoint`` periodically (a timer; the subscriber can ask
:func:`checkpoint_due`): the interval is the window in which a rewrite of the latest
records goes unseen.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from onestorpool.eventlog.events import LogCheckpoint
from onestorpool.eventlog.store import HOST, EventLog, EventLogError

CHECKPOINT = LogCheckpoint.TYPE
TAG = "eventlog"  # the StorPool volume tag that holds the last checkpoint
SYSLOG_IDENT = "onestorpool-eventlog"
ANCHOR_RE = re.compile(r"\b(\d+):([0-9a-f]{64})\b")


class TagClient(Protocol):
    def volume_update(self, name: str, *, tags: dict[str, str]) -> Any: ...


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: bytes
    line: str  # as published

    @property
    def anchor(self) -> str:
        return f"{self.seq}:{self.hash.hex()}"


def checkpoint(log: EventLog, *, file: Path | None = None, volume: str | None = None,
               client: TagClient | None = None, syslog: bool = True) -> Checkpoint:
    """Append a checkpoint and publish its ``SEQ:HASH`` (syslog; ``file``; the ``eventlog``
    tag of StorPool volume ``volume`` through ``client``). The checkpoint record names the
    previous head, so consecutive checkpoints also vouch for each other."""
    previous_seq, previous_hash = log.head()
    with log.transaction() as tx:
        seq = tx.append(LogCheckpoint.new(f"checkpoint@{HOST}:{os.getpid()}",
                                          previous=f"{previous_seq}:{previous_hash.hex()}"))
        digest = tx.head[1]
    when = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    anchor = f"{seq}:{digest.hex()}"
    point = Checkpoint(seq, digest, f"{when} {HOST} event log {os.path.abspath(log.path)} "
                                    f"checkpoint {anchor}")
    if syslog:
        _to_syslog(point.line)
    if file is not None:
        _to_file(file, point.line)
    if volume is not None:
        if client is None:
            raise EventLogError("checkpoint: a StorPool client is needed for a volume tag")
        client.volume_update(volume, tags={TAG: point.anchor})
    return point


def checkpoint_due(log: EventLog, every: float, *, now: float | None = None) -> bool:
    """Whether a periodic runner (the subscriber, a timer) should checkpoint: records were
    appended since the last checkpoint, and it is ``every`` seconds old (or there is none)."""
    row = log.db.execute("SELECT seq, time FROM events WHERE type = ? ORDER BY seq DESC "
                         "LIMIT 1", (CHECKPOINT,)).fetchone()
    head = log.head()[0]
    if row is None:
        return head > 0
    return head > row[0] and (time.time() if now is None else now) - row[1] >= every


def configured_target(setting: str) -> tuple[str | None, str | None]:
    """``EVENT_LOG_ANCHOR``: ``file:/path`` or ``volume:NAME`` (empty: syslog only), as
    (file, volume)."""
    kind, _, where = setting.partition(":")
    if not setting:
        return None, None
    if kind == "file" and where.startswith("/"):
        return where, None
    if kind == "volume" and where:
        return None, where
    raise EventLogError(f"EVENT_LOG_ANCHOR: expected file:/PATH or volume:NAME, got "
                        f"{setting!r}")


def _to_syslog(line: str) -> None:
    import syslog

    syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_NOTICE, line)
    syslog.closelog()


def _to_file(path: Path, line: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise EventLogError(f"checkpoint: cannot write {path}: {exc}") from None


def parse_anchors(lines: Iterable[str]) -> list[tuple[int, bytes]]:
    """Every ``SEQ:HASH`` token in ``lines`` (checkpoint files, journal excerpts, notes)."""
    return [(int(seq), bytes.fromhex(digest)) for line in lines
            for seq, digest in ANCHOR_RE.findall(line.lower())]


def read_anchors(path: Path) -> list[tuple[int, bytes]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise EventLogError(f"anchors: cannot read {path}: {exc}") from None
    anchors = parse_anchors(text.splitlines())
    if not anchors:
        raise EventLogError(f"anchors: no SEQ:HASH in {path}")
    return anchors
