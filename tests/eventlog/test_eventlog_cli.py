"""The admin side on a log made here: the CLI, the projections, replay of side effects."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from onestorpool.errors import AddonError
from onestorpool.eventlog import Event, EventLog
from onestorpool.eventlog import replay as replay_module
from onestorpool.eventlog.cli import main
from onestorpool.eventlog.projections import believed_objects, history, pending_effects
from onestorpool.eventlog.verify import verify
from tests.eventlog.helpers import effect


@pytest.fixture
def log_path(tmp_path):
    """Image 1 made and deleted (tombstone t1 to send), image 2 cloned for VM 7 then
    deleted (a second send), one failed import, one unrelated effect type."""
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
                  volume="one-img-1", snapshot="t1"),
            Event("ds.rm", "ds/rm", {"removed": ["one-img-2"], **effect("k2", target="b")},
                  image=2, volume="one-img-2"),
            Event("vm.fix", "sub/x", {**effect("k3", kind="domain_fix")}, vm=7),
        ])
    return path


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def lines(out: str) -> list[str]:
    return out.splitlines()


def test_show_filters(log_path, capsys):
    log = ["--log", str(log_path)]
    code, out = run(capsys, *log, "show", "--image", "2")
    assert code == 0 and [line.split()[0] for line in lines(out)] == ["2", "4", "6"]
    assert [line.split()[0] for line in lines(run(capsys, *log, "show", "--vm", "7")[1])] == [
        "4", "7"]
    _, out = run(capsys, *log, "show", "--failed")
    assert len(lines(out)) == 1 and "MD5 mismatch" in out
    _, out = run(capsys, *log, "show", "--type", "ds.rm", "--type", "tm.clone", "--since", "1h")
    assert len(lines(out)) == 3
    assert run(capsys, *log, "show", "--since", "2999-01-01")[1] == ""
    assert len(lines(run(capsys, *log, "show", "--volume", "one-img-1")[1])) == 2
    assert len(lines(run(capsys, *log, "show", "--snapshot", "t1")[1])) == 1
    assert len(lines(run(capsys, *log, "show", "--from-seq", "5")[1])) == 2
    # --log after the command works too.
    assert len(lines(run(capsys, "show", "--datastore", "1", *log)[1])) == 3


def test_tail_prints_the_last_matching_records(log_path, capsys):
    _, out = run(capsys, "--log", str(log_path), "tail", "-n", "2")
    assert [line.split()[0] for line in lines(out)] == ["6", "7"]
    _, out = run(capsys, "--log", str(log_path), "tail", "-n", "2", "--type", "ds.cp")
    assert [line.split()[0] for line in lines(out)] == ["2"]


def test_tail_follow_prints_new_matching_records(log_path):
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


def test_export_is_valid_json_lines(log_path, capsys):
    code, out = run(capsys, "--log", str(log_path), "export", "--format", "jsonl")
    records = [json.loads(line) for line in lines(out)]
    assert code == 0 and [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert records[0]["payload"] == {"created": ["one-img-1"]}
    assert records[4]["effect_key"] == "k1" and records[4]["snapshot"] == "t1"
    with EventLog(log_path, readonly=True) as log:
        assert [r["hash"] for r in records] == [r.hash.hex() for r in log.read()]
    _, out = run(capsys, "--log", str(log_path), "export", "--vm", "7")
    assert [json.loads(line)["seq"] for line in lines(out)] == [4, 7]


def test_stats_and_verify(log_path, capsys):
    code, out = run(capsys, "--log", str(log_path), "stats")
    assert code == 0 and "records: 7 live" in out and "0 done, 3 pending" in out
    with EventLog(log_path, readonly=True) as log:
        head = f"{log.head()[0]}:{log.head()[1].hex()}"
    assert f"chain head: {head}" in out
    code, out = run(capsys, "--log", str(log_path), "verify", "--anchor", head)
    assert code == 0 and out == f"ok: 7 records, chain head {head}\n"


def test_projections(log_path):
    with EventLog(log_path, readonly=True) as log:
        assert [r.seq for r in history(log, volume="one-img-1")] == [1, 5]
        assert [r.seq for r in history(log, vm=7)] == [4, 7]
        assert [r.seq for r in history(log, image=2)] == [2, 4, 6]
        assert set(believed_objects(log)) == {"one-img-2-7-0", "t1"}
        assert believed_objects(log)["t1"]["seq"] == 5
        assert [p.key for p in pending_effects(log)] == ["k1", "k2", "k3"]
        assert [p.key for p in pending_effects(log, effect_type="domain_fix")] == ["k3"]
        assert [p.key for p in pending_effects(log, since_seq=5)] == ["k2", "k3"]


def _sender(calls: list[str]):
    def send(record, log):
        calls.append(record.effect_key)
        return {"sent": record.payload["effect"]["target"]}
    return send


def test_replay_dry_run_lists_exactly_the_effects_not_done(log_path, capsys):
    calls: list[str] = []
    replay_module.register_handler("test_effect", _sender(calls))
    with EventLog(log_path) as log:
        outcome = replay_module.run_effect(log, next(log.read(effect_key="k1")))
        assert (outcome.status, outcome.request_seq) == ("done", 5)
        # The subscriber seeing the request again: the handler is not run a second time.
        again = replay_module.run_effect(log, next(log.read(effect_key="k1")), "subscriber")
        assert (again.status, calls) == ("skipped", ["k1"])
    code, out = run(capsys, "--log", str(log_path), "replay")
    # k1 is done; k2 would run; k3 has no handler here, which a dry run says (exit 1).
    assert [line.split()[:3] for line in lines(out)] == [
        ["would-run", "test_effect", "k2"], ["no-handler", "domain_fix", "k3"]]
    assert "target=b" in out and code == 1
    assert calls == ["k1"]  # the dry run did nothing
    with EventLog(log_path, readonly=True) as log:
        assert log.count() == 8  # and wrote nothing
    replay_module.register_handler("domain_fix", lambda record, log: {"fixed": True})
    code, out = run(capsys, "--log", str(log_path), "replay", "--execute")
    assert code == 0 and [line.split()[0] for line in lines(out)] == ["done", "done"]
    assert calls == ["k1", "k2"]
    code, out = run(capsys, "--log", str(log_path), "replay", "--execute")
    assert "nothing to do" in out and calls == ["k1", "k2"]  # idempotent
    with EventLog(log_path, readonly=True) as log:
        assert verify(log).ok and log.done_keys() == {"k1", "k2", "k3"}
        done = list(log.read(types=["effect.done"]))
        assert [(r.payload["key"], r.payload["request_seq"]) for r in done] == [
            ("k1", 5), ("k2", 6), ("k3", 7)]
        assert done[0].payload["sent"] == "a" and done[0].volume == "one-img-1"
        assert log.position(replay_module.EFFECTS) == 7


def test_a_replay_from_a_position_skips_earlier_requests(log_path, capsys):
    replay_module.register_handler("test_effect", _sender([]))
    _, out = run(capsys, "--log", str(log_path), "replay", "--from-seq", "5",
                 "--effect", "test_effect")
    assert [line.split()[2] for line in lines(out)] == ["k2"]


def test_a_failing_handler_leaves_the_effect_pending(log_path, capsys):
    def broken(record, log):
        raise AddonError("remote unreachable")

    replay_module.register_handler("test_effect", broken)
    replay_module.register_handler("domain_fix", lambda record, log: 1 / 0)  # a bug
    code, out = run(capsys, "--log", str(log_path), "replay", "--execute")
    assert code == 1 and [line.split()[0] for line in lines(out)] == ["failed"] * 3
    assert "ZeroDivisionError" in out  # a bug is recorded, and the others still ran
    with EventLog(log_path, readonly=True) as log:
        pending = pending_effects(log)
        assert [p.key for p in pending] == ["k1", "k2", "k3"]
        assert [(p.failures, p.last_error) for p in pending[:2]] == [
            (1, "remote unreachable")] * 2
    code, out = run(capsys, "--log", str(log_path), "pending")
    assert "k1  test_effect  requested by #5  failures=1 remote unreachable" in out


def test_a_concurrent_runner_records_the_effect_once(log_path):
    """Replay and the subscriber both run k1: the second to record it is refused."""
    with EventLog(log_path) as first, EventLog(log_path) as second:
        request = next(first.read(effect_key="k1"))

        def slow(record, log):
            # The other runner finishes while this one is still working.
            replay_module.register_handler("test_effect", lambda r, lg: {"by": "fast"})
            assert replay_module.run_effect(second, record, "subscriber").status == "done"
            return {"by": "slow"}

        replay_module.register_handler("test_effect", slow)
        outcome = replay_module.run_effect(first, request, "replay")
        assert (outcome.status, outcome.detail) == ("skipped", "done concurrently")
        done = list(first.read(types=["effect.done"]))
        assert [(r.payload["by"], r.writer.split("/")[0]) for r in done] == [
            ("fast", "subscriber")]


def test_objects_and_pending_commands(log_path, capsys):
    _, out = run(capsys, "--log", str(log_path), "objects")
    assert [line.split()[0] for line in lines(out)] == ["one-img-2-7-0", "t1"]
    _, out = run(capsys, "--log", str(log_path), "pending", "--effect", "domain_fix")
    assert lines(out) == ["k3  domain_fix  requested by #7  failures=0"]


def test_onestorpool_log_entry_point(log_path):
    result = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "--log",
                             str(log_path), "stats"], capture_output=True, text=True)
    assert result.returncode == 0 and "records: 7" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "--log",
                              str(log_path) + ".nope", "show"], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("ERROR: no event log")
    assert len(missing.stderr.splitlines()) == 1


def test_bad_arguments_are_refused(log_path, capsys):
    with pytest.raises(SystemExit):
        main(["--log", str(log_path), "show", "--since", "yesterday"])
    with pytest.raises(SystemExit):
        main(["--log", str(log_path), "verify", "--anchor", "7"])
    with pytest.raises(AddonError, match="older-than-days"):
        main(["--log", str(log_path), "archive", "--dir", "x"])
