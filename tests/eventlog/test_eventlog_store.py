"""The event log: round trips, hash chain, tamper detection, crashes, concurrency."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onestorpool.eventlog import AlreadyDone, Event, EventLog, EventLogError, append_event
from onestorpool.eventlog.verify import verify

names = st.text(alphabet="abcdefghijklmnop-_.0123456789", min_size=1, max_size=20)
payload_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30)
    | st.binary(max_size=30) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12)
events = st.builds(
    Event, type=names, writer=names,
    payload=st.dictionaries(st.sampled_from(["a", "b", "size", "nested"]), payload_values,
                            max_size=4),
    vm=st.none() | st.integers(0, 10**6), image=st.none() | st.integers(0, 10**6),
    datastore=st.none() | st.integers(0, 1000), volume=st.none() | names,
    snapshot=st.none() | names)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(events, min_size=1, max_size=5), min_size=1, max_size=6))
def test_any_appends_read_back_identically_and_verify(tmp_path_factory, batches):
    path = tmp_path_factory.mktemp("log") / "events.db"
    expected = []
    with EventLog(path) as log:
        for batch in batches:
            if len(batch) == 1:
                log.append(batch[0])
            else:
                log.append_batch(batch)
            expected.extend(batch)
        records = list(log.read())
        assert [r.seq for r in records] == list(range(1, len(expected) + 1))
        for record, event in zip(records, expected, strict=True):
            assert (record.type, record.writer, record.vm, record.image, record.datastore,
                    record.volume, record.snapshot) == (
                event.type, event.writer, event.vm, event.image, event.datastore,
                event.volume, event.snapshot)
            assert record.payload == _as_read(event.payload)
        assert verify(log).ok


def _as_read(value):
    """msgpack reads tuples back as lists."""
    if isinstance(value, dict):
        return {k: _as_read(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_read(v) for v in value]
    return value


def test_secrets_are_scrubbed(tmp_path):
    path = tmp_path / "events.db"
    append_event("ds.cp", writer="t", path=str(path), payload={
        "SP_AUTH_TOKEN": "abc", "nested": {"auth": "x", "password": "y", "size": 1},
        "list": [{"token": "z"}]})
    with EventLog(path) as log:
        (record,) = log.read()
    assert record.payload == {"SP_AUTH_TOKEN": "***",
                              "nested": {"auth": "***", "password": "***", "size": 1},
                              "list": [{"token": "***"}]}
    assert b"abc" not in path.read_bytes()


def test_files_are_private_to_oneadmin(tmp_path):
    path = tmp_path / "var" / "onestorpool" / "events.db"
    append_event("x", writer="t", payload={}, path=str(path))
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.parent.stat().st_mode & 0o777 == 0o750


def filled_log(tmp_path: Path, count: int = 10) -> Path:
    path = tmp_path / "events.db"
    with EventLog(path) as log:
        log.append_batch([Event("ds.cp", "test", {"n": n}, image=n) for n in range(count)])
    return path


TAMPERING = [
    ("edit a payload", "UPDATE events SET payload = x'81a16e05' WHERE seq = 4"),
    ("edit a subject", "UPDATE events SET image = 99 WHERE seq = 7"),
    ("delete a record", "DELETE FROM events WHERE seq = 5"),
    ("delete the last record", "DELETE FROM events WHERE seq = 10"),
    ("reorder two records",
     "UPDATE events SET seq = -1 WHERE seq = 3; UPDATE events SET seq = 3 WHERE seq = 4; "
     "UPDATE events SET seq = 4 WHERE seq = -1"),
    ("forge a hash", "UPDATE events SET hash = zeroblob(32) WHERE seq = 6"),
]


@pytest.mark.parametrize(("what", "sql"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampering_through_the_sqlite_shell_is_detected(tmp_path, what, sql):
    path = filled_log(tmp_path)
    # The triggers refuse it; someone determined drops them first.
    refused = subprocess.run(["sqlite3", str(path), sql], capture_output=True, text=True)
    assert "append-only" in refused.stderr
    drop = ("DROP TRIGGER events_append_only; DROP TRIGGER events_no_delete; ")
    done = subprocess.run(["sqlite3", str(path), drop + sql], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with EventLog(path, readonly=True) as log:
        result = verify(log)
    if what == "delete the last record":
        # Truncating the tail leaves a valid shorter chain: only the head comparison shows
        # it, which is why `stats` prints the head for admins to anchor elsewhere.
        assert result.ok and result.checked == 9
        return
    assert not result.ok
    assert result.first_bad is not None and 3 <= result.first_bad <= 7


def test_verify_cli_names_the_first_bad_record(tmp_path):
    path = filled_log(tmp_path)
    subprocess.run(["sqlite3", str(path), "DROP TRIGGER events_append_only; "
                    "UPDATE events SET type = 'ds.rm' WHERE seq = 8"], check=True)
    result = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "--log",
                             str(path), "verify"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "record 8" in result.stdout and "altered" in result.stdout


def test_tracking_refuses_a_second_completion_and_rolls_back(tmp_path):
    with EventLog(tmp_path / "events.db") as log:
        with log.transaction() as tx:
            seq = tx.append(Event("effect.done", "h", {"key": "k1"}))
            tx.track("handler", "k1", seq)
        with pytest.raises(AlreadyDone), log.transaction() as tx:
            seq = tx.append(Event("effect.done", "h", {"key": "k1"}))
            tx.track("handler", "k1", seq)
        assert log.count() == 1  # the second "done" event was rolled back with it
        assert log.done_keys() == {"k1"}
        assert verify(log).ok


def test_write_errors_reach_the_caller_and_the_log_stays_readable(tmp_path):
    path = filled_log(tmp_path, 3)
    with EventLog(path) as log:
        log.db.execute("PRAGMA max_page_count = 1")  # a full disk, as SQLite sees it
        with pytest.raises(EventLogError):
            log.append(Event("big", "t", {"blob": b"x" * 100_000}))
    with EventLog(path, readonly=True) as log:
        assert log.count() == 3 and verify(log).ok


def test_unopenable_log_is_a_clear_error(tmp_path):
    (tmp_path / "dir-not-file").mkdir()
    with pytest.raises(EventLogError, match="dir-not-file"):
        EventLog(tmp_path / "dir-not-file")


def _appender(path: str, writer: str, count: int) -> None:
    with EventLog(path) as log:
        for n in range(count):
            log.append(Event("concurrent", writer, {"n": n}))


def test_eight_processes_appending_lose_nothing(tmp_path):
    path = str(tmp_path / "events.db")
    EventLog(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_appender, args=(path, f"w{i}", 40)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    with EventLog(path, readonly=True) as log:
        records = list(log.read())
        assert verify(log).ok
    assert len(records) == 320
    for i in range(8):
        mine = [r.payload["n"] for r in records if r.writer == f"w{i}"]
        assert mine == list(range(40))  # each writer's order kept, nothing lost


CHILD = """
import sys
from onestorpool.eventlog import EventLog, Event
with EventLog(sys.argv[1]) as log:
    n = 0
    while True:
        seq = log.append(Event("crash", "child", {"n": n, "pad": "x" * 200}))
        print(seq, flush=True)
        n += 1
"""


def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path):
    path = str(tmp_path / "events.db")
    rng = random.Random(1234)
    committed = 0
    for _round in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE,
                                 text=True)
        time.sleep(0.15 + rng.random() * 0.3)
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        acknowledged = [int(line) for line in out.split()]
        if acknowledged:
            committed = max(committed, acknowledged[-1])
        with EventLog(path) as log:
            assert verify(log).ok
            assert log.head()[0] >= committed  # every acknowledged append is there
            for record in log.read():
                assert record.payload["pad"] == "x" * 200  # whole records only
    assert committed > 0


def test_readonly_log_refuses_writes(tmp_path):
    path = filled_log(tmp_path, 1)
    with EventLog(path, readonly=True) as log, pytest.raises(EventLogError):
        log.append(Event("x", "t"))
    with pytest.raises(sqlite3.Error):
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute(
            "INSERT INTO tracking VALUES ('a', 'b', 1)")
