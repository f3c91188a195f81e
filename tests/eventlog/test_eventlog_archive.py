"""Retention: archives hold the old records, the live log shrinks, the chain still verifies."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from onestorpool.eventlog import Event, EventLog, EventLogError
from onestorpool.eventlog import archive as archive_module
from onestorpool.eventlog import replay as replay_module
from onestorpool.eventlog.archive import archive, verify_archive, verify_archives
from onestorpool.eventlog.cli import main
from onestorpool.eventlog.projections import pending_effects
from onestorpool.eventlog.verify import verify
from tests.eventlog.helpers import effect, fill


def test_archive_keeps_the_chain_verifiable(filled_log, tmp_path, capsys):
    with EventLog(filled_log) as log:
        result = archive(log, tmp_path / "archive", through_seq=4)
        assert (result.first, result.through, result.count) == (1, 4, 4)
        assert [r.seq for r in log.read()] == list(range(5, 12))
        cut = log.get(11)
        assert cut.type == "log.archived" and cut.payload["through"] == 4
        assert cut.payload["file"] == result.path.name
        assert verify(log).ok
        log.append(Event("after", "t", {}))
        assert verify(log).ok and log.head()[0] == 12
    assert result.path.stat().st_mode & 0o777 == 0o640
    assert result.path.parent.stat().st_mode & 0o777 == 0o750
    check = verify_archive(result.path)
    assert check.ok and (check.first, check.through) == (1, 4)
    code = main(["--log", str(filled_log), "verify", "--archive", str(result.path)])
    out = capsys.readouterr().out
    assert code == 0 and "records 1..4 ok" in out and "ok: 8 records" in out
    # The archived records may go (they are gone), the live ones still may not.
    drop = subprocess.run(["sqlite3", str(filled_log), "DELETE FROM events WHERE seq = 6"],
                          capture_output=True, text=True)
    assert "append-only" in drop.stderr


def test_archive_lines_are_export_lines_with_the_exact_payload(filled_log, tmp_path, capsys):
    main(["--log", str(filled_log), "export"])
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()[:3]]
    with EventLog(filled_log) as log:
        result = archive(log, tmp_path / "archive", through_seq=3)
    with gzip.open(result.path, "rt") as handle:
        header, *records, trailer = [json.loads(line) for line in handle]
    assert header["first"] == 1 and header["through"] == 3 and trailer["through"] == 3
    assert [{k: v for k, v in r.items() if k != "raw"} for r in records] == exported
    assert trailer["head_hash"] == records[-1]["hash"]


def test_successive_archives_join_up_and_a_missing_one_is_noticed(filled_log, tmp_path):
    with EventLog(filled_log) as log:
        first = archive(log, tmp_path / "a", through_seq=3)
        second = archive(log, tmp_path / "a", through_seq=6)
        third = archive(log, tmp_path / "a", through_seq=11)  # includes the first cut record
        assert verify(log).ok
        assert [c.ok for c in verify_archives([third.path, first.path, second.path], log)] == [
            True, True, True]
        gap = verify_archives([first.path, third.path], log)
        assert not all(c.ok for c in gap) and any("no archive joins" in c.message for c in gap)
        # The archives are one chain from record 1 to the live log: a subset is not enough.
        older_only = verify_archives([first.path], log)
        assert any("the archives end at record 3" in c.message for c in older_only)
        newer_only = verify_archives([second.path, third.path], log)
        assert any("no archive starts the chain" in c.message for c in newer_only)
        assert all(c.ok for c in verify_archives([tmp_path / "a"], log))  # a directory
        assert verify(log, archives=[tmp_path / "a"]).ok


@pytest.mark.parametrize("damage", ["edit", "truncate", "reorder"])
def test_a_damaged_archive_is_detected(filled_log, tmp_path, damage):
    with EventLog(filled_log) as log:
        result = archive(log, tmp_path / "archive", through_seq=5)
    with gzip.open(result.path, "rt") as handle:
        lines = handle.read().splitlines()
    if damage == "edit":
        record = json.loads(lines[2])
        record["type"] = "forged"
        lines[2] = json.dumps(record)
        expected = "record 2 was altered"
    elif damage == "truncate":
        lines = lines[:-2]
        expected = "truncated after record 4"
    else:
        lines[2], lines[3] = lines[3], lines[2]
        expected = "record 2 is missing or relinked"
    with gzip.open(result.path, "wt") as out:
        out.write("\n".join(lines) + "\n")
    check = verify_archive(result.path)
    assert not check.ok and expected in check.message
    with EventLog(filled_log, readonly=True) as log:
        assert not all(c.ok for c in verify_archives([result.path], log))


def test_archive_by_age(tmp_path, capsys):
    path = tmp_path / "events.db"
    now = time.time()
    with EventLog(path) as log, log.transaction() as tx:
        for age_days in (200, 120, 100, 10, 1):
            tx.append(Event("old", "t", {"age": age_days}), now=now - age_days * 86400)
    code = main(["--log", str(path), "archive", "--dir", str(tmp_path / "a"),
                 "--older-than-days", "90"])
    assert code == 0 and "archived records 1..3 (3)" in capsys.readouterr().out
    main(["--log", str(path), "archive", "--dir", str(tmp_path / "a"),
          "--older-than-days", "90"])
    assert "nothing to archive" in capsys.readouterr().out
    with EventLog(path, readonly=True) as log:
        assert [r.payload.get("age") for r in log.read()] == [10, 1, None]


def test_the_live_log_gets_smaller(tmp_path):
    path = tmp_path / "events.db"
    with EventLog(path) as log:
        for _ in range(10):
            log.append_batch([Event("ds.cp", "t", {"pad": "x" * 300}, image=n)
                              for n in range(1000)])
        pages = log.db.execute("PRAGMA page_count").fetchone()[0]
        archive(log, tmp_path / "a", through_seq=9500)
        assert log.db.execute("PRAGMA page_count").fetchone()[0] < pages / 5
        assert verify(log).ok and log.count() == 501


def test_a_crash_between_the_anchor_and_the_purge_is_harmless(filled_log, tmp_path,
                                                               monkeypatch):
    with EventLog(filled_log) as log:
        calls = []

        def crash(log):
            calls.append(1)
            if len(calls) == 2:  # the purge after moving the anchor
                raise KeyboardInterrupt

        monkeypatch.setattr(archive_module, "purge", crash)
        with pytest.raises(KeyboardInterrupt):
            archive(log, tmp_path / "a", through_seq=4)
        assert log.count() == 11 and log.anchor()[0] == 4  # moved, not yet purged
        assert verify(log).ok  # the archived records still there are skipped
        monkeypatch.undo()
        archive(log, tmp_path / "a", through_seq=7)  # finishes the purge first
        assert [r.seq for r in log.read()][:3] == [8, 9, 10] and verify(log).ok
    checks = verify_archives(sorted((tmp_path / "a").glob("*.gz")), None)
    assert [(c.first, c.through) for c in checks] == [(1, 4), (5, 7)]


def test_archive_refuses_a_chain_that_does_not_verify(filled_log, tmp_path):
    subprocess.run(["sqlite3", str(filled_log), "DROP TRIGGER events_append_only; "
                    "UPDATE events SET type = 'x' WHERE seq = 3"], check=True)
    with EventLog(filled_log) as log:
        with pytest.raises(EventLogError, match="record 3 does not verify"):
            archive(log, tmp_path / "a", through_seq=5)
        assert log.count() == 10 and log.anchor()[0] == 0  # the evidence stays
    assert list((tmp_path / "a").glob("events-*")) == []  # no archive, no temporary file


def test_one_archive_run_per_directory(filled_log, tmp_path):
    (tmp_path / "a").mkdir()
    fd = os.open(tmp_path / "a" / ".archive.lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another run is busy
        with EventLog(filled_log) as log, pytest.raises(EventLogError, match="another"):
            archive(log, tmp_path / "a", through_seq=5)
    finally:
        os.close(fd)
    with EventLog(filled_log) as log:
        assert archive(log, tmp_path / "a", through_seq=5).count == 5


APPENDER = """
import sys
from onestorpool.eventlog import Event, EventLog
with EventLog(sys.argv[1]) as log:
    for n in range(300):
        log.append(Event("during", "child", {"n": n}))
"""


def test_drivers_keep_appending_while_an_archive_runs(tmp_path):
    path = fill(tmp_path / "events.db", 30_000)
    child = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)])
    try:
        with EventLog(path) as log:
            result = archive(log, tmp_path / "a", through_seq=29_000)
    finally:
        assert child.wait(timeout=60) == 0
    with EventLog(path, readonly=True) as log:
        assert verify(log).ok
        assert [r.payload["n"] for r in log.read(types=["during"])] == list(range(300))
    assert verify_archive(result.path).ok and result.count == 29_000


def test_archive_stops_before_an_effect_not_done(tmp_path):
    path = tmp_path / "events.db"
    with EventLog(path) as log:
        log.append_batch([Event("ds.cp", "t", {"n": n}) for n in range(3)])
        log.append(Event("ds.rm", "t", effect("k1")))  # 4: pending
        log.append_batch([Event("ds.cp", "t", {"n": n}) for n in range(4)])
        result = archive(log, tmp_path / "a", through_seq=8)
        assert (result.first, result.through) == (1, 3)
        assert [p.key for p in pending_effects(log)] == ["k1"]
        assert archive(log, tmp_path / "a", through_seq=8) is None
        replay_module.register_handler("test_effect", lambda record, log: {})
        assert [o.status for o in replay_module.replay(log, dry_run=False)] == ["done"]
        assert archive(log, tmp_path / "a", through_seq=8).through == 8
        assert verify(log).ok


def test_verify_with_an_empty_archive_directory(filled_log, tmp_path):
    (tmp_path / "archive").mkdir()
    with EventLog(filled_log) as log:
        assert verify(log, archives=[tmp_path / "archive"]).ok  # nothing archived yet
        archive(log, tmp_path / "other", through_seq=3)
        result = verify(log, archives=[tmp_path / "archive"])
        assert not result.ok and "no archive found" in result.reason
