"""The admin side: CLI, projections, replay of effects, archiving across the chain."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from onestorpool.eventlog import Event, EventLog
from onestorpool.eventlog import replay as replay_module
from onestorpool.eventlog.archive import archive, verify_archive
from onestorpool.eventlog.cli import main
from onestorpool.eventlog.projections import believed_objects, history, pending_effects
from onestorpool.eventlog.verify import verify


def effect(key: str, kind: str = "test_effect", **details) -> dict:
    return {"effect": {"type": kind, "key": key, **details}}


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "events.db"
    with EventLog(path) as log:
        log.append_batch([
            Event("ds.mkfs", "ds/mkfs", {"created": ["one-img-1"]}, image=1, datastore=1,
                  volume="one-img-1"),
            Event("ds.cp", "ds/cp", {"created": ["one-img-2"]}, image=2, datastore=1,
                  volume="one-img-2"),
            Event("ds.cp.failed", "ds/cp", {"error": "MD5 mismatch"}, image=3, datastore=1),
            Event("tm.clone", "tm/clone", {"created": ["one-img-2-7-0"]}, vm=7, image=2,
                  volume="one-img-2-7-0"),
            Event("ds.rm", "ds/rm", {"removed": ["one-img-1"], "created": ["t1"],
                                     **effect("k1", target="a")}, image=1,
                  volume="one-img-1"),
            Event("ds.rm", "ds/rm", {"removed": ["one-img-2"], **effect("k2", target="b")},
                  image=2, volume="one-img-2"),
        ])
    return path


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_show_filters(log_path, capsys):
    code, out = run(capsys, "--log", str(log_path), "show", "--image", "2")
    assert code == 0 and out.count("\n") == 3 and "one-img-2-7-0" in out
    _, out = run(capsys, "--log", str(log_path), "show", "--vm", "7")
    assert out.count("\n") == 1
    _, out = run(capsys, "--log", str(log_path), "show", "--failed")
    assert "MD5 mismatch" in out and out.count("\n") == 1
    _, out = run(capsys, "--log", str(log_path), "show", "--type", "ds.rm", "--since", "1h")
    assert out.count("\n") == 2
    _, out = run(capsys, "--log", str(log_path), "show", "--since", "2999-01-01")
    assert out == ""
    _, out = run(capsys, "--log", str(log_path), "tail", "-n", "2")
    assert out.count("\n") == 2


def test_export_is_json_lines(log_path, capsys):
    code, out = run(capsys, "--log", str(log_path), "export", "--format", "jsonl")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["payload"] == {"created": ["one-img-1"]}
    assert len(records[0]["hash"]) == 64


def test_stats_and_verify(log_path, capsys):
    code, out = run(capsys, "--log", str(log_path), "stats")
    assert code == 0 and "records: 6" in out and "chain head" in out
    code, out = run(capsys, "--log", str(log_path), "verify")
    assert code == 0 and out.startswith("ok: 6 records")


def test_projections(log_path):
    with EventLog(log_path, readonly=True) as log:
        assert [r.seq for r in history(log, volume="one-img-1")] == [1, 5]
        assert set(believed_objects(log)) == {"one-img-2-7-0", "t1"}
        assert {p.key for p in pending_effects(log)} == {"k1", "k2"}


def test_replay_dry_run_lists_exactly_the_effects_not_done(log_path, capsys):
    calls = []
    replay_module.register_handler("test_effect", lambda record, log: calls.append(
        record.effect_key) or {"sent": record.payload["effect"]["target"]})
    with EventLog(log_path) as log:
        outcome = replay_module.run_effect(log, next(log.read(effect_key="k1")))
        assert outcome.status == "done"
    code, out = run(capsys, "--log", str(log_path), "replay")
    assert code == 0 and "would-run" in out and "k2" in out and "k1" not in out
    assert calls == ["k1"]  # the dry run did nothing
    code, out = run(capsys, "--log", str(log_path), "replay", "--execute")
    assert code == 0 and "done" in out and calls == ["k1", "k2"]
    code, out = run(capsys, "--log", str(log_path), "replay", "--execute")
    assert "nothing to do" in out and calls == ["k1", "k2"]  # idempotent
    with EventLog(log_path, readonly=True) as log:
        assert verify(log).ok and log.done_keys() == {"k1", "k2"}
        done = list(log.read(types=["effect.done"]))
        assert [r.payload["sent"] for r in done] == ["a", "b"]


def test_failing_handler_leaves_the_effect_pending(log_path, capsys):
    from onestorpool.errors import AddonError

    def broken(record, log):
        raise AddonError("remote unreachable")

    replay_module.register_handler("test_effect", broken)
    code, out = run(capsys, "--log", str(log_path), "replay", "--execute")
    assert code == 1 and out.count("failed") == 2
    with EventLog(log_path, readonly=True) as log:
        pending = pending_effects(log)
        assert {p.key for p in pending} == {"k1", "k2"}
        assert all(p.failures == 1 and p.last_error == "remote unreachable" for p in pending)


def test_archive_keeps_the_chain_verifiable(log_path, tmp_path, capsys):
    with EventLog(log_path) as log:
        result = archive(log, tmp_path / "archive", through_seq=4)
        assert result is not None and (result.first, result.through) == (1, 4)
        assert log.count() == 2 and verify(log).ok
        log.append(Event("after", "t", {}))
        assert verify(log).ok and log.head()[0] == 7
        assert verify_archive(result.path, log)[0]
    code, out = run(capsys, "--log", str(log_path), "verify", "--archive", str(result.path))
    assert code == 0 and "records 1..4 ok" in out
    # The archived records may not come back, and the kept ones still may not go.
    drop = subprocess.run(["sqlite3", str(log_path), "DELETE FROM events WHERE seq = 6"],
                          capture_output=True, text=True)
    assert "append-only" in drop.stderr


def test_tampered_archive_is_detected(log_path, tmp_path):
    import gzip

    with EventLog(log_path) as log:
        result = archive(log, tmp_path / "archive", through_seq=3)
    with gzip.open(result.path, "rt") as handle:
        lines = handle.read().splitlines()
    record = json.loads(lines[2])
    record["type"] = "forged"
    lines[2] = json.dumps(record)
    with gzip.open(result.path, "wt") as out:
        out.write("\n".join(lines) + "\n")
    ok, message = verify_archive(result.path)
    assert not ok and "record 2 was altered" in message


def test_onestorpool_log_entry_point(log_path):
    result = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "--log",
                             str(log_path), "stats"], capture_output=True, text=True)
    assert result.returncode == 0 and "records: 6" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "--log",
                              str(log_path) + ".nope", "show"], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("ERROR: no event log")


def test_tail_follow_prints_new_records(log_path):
    import time

    follower = subprocess.Popen([sys.executable, "-m", "onestorpool.cli", "log", "--log",
                                 str(log_path), "tail", "-n", "0", "-f", "--interval", "0.1",
                                 "--type", "ds.cp"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        with EventLog(log_path) as log:
            log.append(Event("ds.rm", "t", {"n": 1}))  # filtered out
            log.append(Event("ds.cp", "t", {"n": 2}, image=77))
        line = follower.stdout.readline()
        assert "ds.cp" in line and "image=77" in line and '"n": 2' in line
    finally:
        follower.terminate()
        follower.wait(timeout=10)
