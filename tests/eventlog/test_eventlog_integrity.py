"""Tampering through the ``sqlite3`` shell, bypassing the code, is refused or detected."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from onestorpool.eventlog import EventLog
from onestorpool.eventlog.record import chain_hash
from onestorpool.eventlog.store import COLUMNS
from onestorpool.eventlog.verify import verify
from tests.eventlog.helpers import fill

DROP_TRIGGERS = ("DROP TRIGGER events_append_only; DROP TRIGGER events_no_delete; "
                 "DROP TRIGGER meta_no_delete; DROP TRIGGER meta_no_insert; "
                 "DROP TRIGGER meta_follows_chain; DROP TRIGGER events_extend_chain; ")

# (what, SQL on a log of records 1..10, the first bad record verify must name)
TAMPERING = [
    ("edit a payload", "UPDATE events SET payload = x'81a16e05' WHERE seq = 4", 4),
    ("edit a subject", "UPDATE events SET image = 99 WHERE seq = 7", 7),
    ("edit the time", "UPDATE events SET time = time - 3600 WHERE seq = 2", 2),
    ("edit the writer", "UPDATE events SET writer = 'someone' WHERE seq = 10", 10),
    ("delete a record", "DELETE FROM events WHERE seq = 5", 5),
    ("delete the first record", "DELETE FROM events WHERE seq = 1", 1),
    ("delete the last record", "DELETE FROM events WHERE seq = 10", 10),
    ("delete the last two records", "DELETE FROM events WHERE seq >= 9", 9),
    ("delete every record", "DELETE FROM events", 1),
    ("reorder two records",
     "UPDATE events SET seq = -1 WHERE seq = 3; UPDATE events SET seq = 3 WHERE seq = 4; "
     "UPDATE events SET seq = 4 WHERE seq = -1", 3),
    ("swap two payloads",
     "UPDATE events SET payload = (SELECT payload FROM events WHERE seq = 6) WHERE seq = 5", 5),
    ("forge a hash", "UPDATE events SET hash = zeroblob(32) WHERE seq = 6", 6),
    ("move the anchor to drop old records",
     "UPDATE meta SET value = '4' WHERE key = 'archived_through'; UPDATE meta SET value = "
     "(SELECT lower(hex(hash)) FROM events WHERE seq = 4) WHERE key = 'anchor_hash'; "
     "DELETE FROM events WHERE seq <= 4", 5),
]


def shell(path: Path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sqlite3", str(path), sql], capture_output=True, text=True)


@pytest.mark.parametrize(("what", "sql", "first_bad"), TAMPERING,
                         ids=[t[0] for t in TAMPERING])
def test_tampering_through_the_sqlite_shell_is_detected(filled_log, what, sql, first_bad):
    refused = shell(filled_log, sql)
    assert "append-only" in refused.stderr
    with EventLog(filled_log, readonly=True) as log:
        assert verify(log).ok and log.count() == 10
    done = shell(filled_log, DROP_TRIGGERS + sql)  # someone determined drops them first
    assert done.returncode == 0, done.stderr
    with EventLog(filled_log, readonly=True) as log:
        result = verify(log)
    assert not result.ok
    assert result.first_bad == first_bad, result.reason


def _rehash(path: Path, seq: int, payload: dict) -> None:
    """Edit a record and recompute its own hash correctly (the tamperer knows the format)."""
    db = sqlite3.connect(path)
    db.executescript(DROP_TRIGGERS)
    row = list(db.execute(f"SELECT {COLUMNS} FROM events WHERE seq = ?", (seq,)).fetchone())
    row[13] = msgpack.packb(payload)
    row[15] = chain_hash(*row[:15])
    db.execute("UPDATE events SET payload = ?, hash = ? WHERE seq = ?", (row[13], row[15], seq))
    db.commit()
    db.close()


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(filled_log):
    _rehash(filled_log, 6, {"n": 666})
    with EventLog(filled_log, readonly=True) as log:
        result = verify(log)
    assert not result.ok and result.first_bad == 7 and "link" in result.reason


def test_replacing_the_last_record_is_caught_by_the_head_witness(filled_log):
    _rehash(filled_log, 10, {"n": 666})
    with EventLog(filled_log, readonly=True) as log:
        result = verify(log)
    assert not result.ok and result.first_bad == 10 and "replaced" in result.reason


def test_an_external_anchor_catches_a_rewritten_tail(filled_log):
    with EventLog(filled_log, readonly=True) as log:
        anchor = (7, log.get(7).hash)
    # Rewrite 7..10 as a valid chain and the witness with it: only the anchor tells.
    db = sqlite3.connect(filled_log)
    db.executescript(DROP_TRIGGERS)
    prev = db.execute("SELECT hash FROM events WHERE seq = 6").fetchone()[0]
    for seq in range(7, 11):
        row = list(db.execute(f"SELECT {COLUMNS} FROM events WHERE seq = ?",
                              (seq,)).fetchone())
        row[13], row[14] = msgpack.packb({"n": -seq}), prev
        prev = row[15] = chain_hash(*row[:15])
        db.execute("UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                   (row[13], row[14], row[15], seq))
    db.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"10 {prev.hex()}",))
    db.commit()
    db.close()
    with EventLog(filled_log, readonly=True) as log:
        assert verify(log).ok
        result = verify(log, anchors=[anchor])
    assert not result.ok and result.first_bad == 7
    cli = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "--log",
                          str(filled_log), "verify", "--anchor", f"7:{anchor[1].hex()}"],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and "FAILED at record 7" in cli.stdout


def test_verify_cli_names_the_first_bad_record(filled_log):
    shell(filled_log, "DROP TRIGGER events_append_only; "
                      "UPDATE events SET type = 'ds.rm' WHERE seq = 8")
    result = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "--log",
                             str(filled_log), "verify"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "FAILED at record 8" in result.stdout and "altered" in result.stdout


def test_a_corrupt_database_file_fails_verify(tmp_path):
    path = fill(tmp_path / "events.db", 3000)  # closed: everything is in the main file
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # garbage over a page in the middle
        handle.seek(size // 2 // 4096 * 4096)
        handle.write(b"\xa5" * 4096)
    cli = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "--log", str(path),
                          "verify"], capture_output=True, text=True)
    assert cli.returncode == 1
    assert "FAILED" in cli.stdout or "malformed" in cli.stderr
