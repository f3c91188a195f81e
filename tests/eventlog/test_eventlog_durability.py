"""Crashes, concurrent writers and failed writes: nothing committed is lost, nothing is torn."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

from onestorpool.eventlog import Event, EventLog
from onestorpool.eventlog.verify import verify
from tests.eventlog.helpers import fill

PAD = "x" * 200

# Appends forever, single events and batches, printing each sequence number once committed.
APPENDER = """
import random, sys
from onestorpool.eventlog import Event, EventLog
rng = random.Random(int(sys.argv[2]))
with EventLog(sys.argv[1]) as log:
    batch = 0
    while True:
        batch += 1
        size = rng.choice([1, 1, 1, 5, 20])
        name = f"{sys.argv[2]}-{batch}"
        seqs = log.append_batch([Event("crash", "child", {"batch": name, "i": i,
                                                           "size": size, "pad": "x" * 200})
                                 for i in range(size)])
        print(seqs[-1], flush=True)
"""


def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path):
    path = str(tmp_path / "events.db")
    rng = random.Random(1234)
    acknowledged = 0
    for round_ in range(6):
        child = subprocess.Popen([sys.executable, "-c", APPENDER, path, str(round_)],
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(0.2 + rng.random() * 0.4)
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        printed = [int(line) for line in out.split()]
        acknowledged = max([acknowledged, *printed])
        with EventLog(path) as log:  # opening as a writer runs SQLite's recovery
            assert verify(log).ok
            assert log.head()[0] >= acknowledged  # every acknowledged append is there
            batches: dict[str, list[int]] = {}
            sizes: dict[str, int] = {}
            for record in log.read():
                payload = record.payload  # whole records only: each decodes completely
                assert payload["pad"] == PAD
                batches.setdefault(payload["batch"], []).append(payload["i"])
                sizes[payload["batch"]] = payload["size"]
            for name, items in batches.items():  # a batch is all there or not at all
                assert items == list(range(sizes[name])), name
    assert acknowledged > 0


def _appender(path: str, writer: str, count: int) -> None:
    with EventLog(path) as log:
        for n in range(count):
            log.append(Event("concurrent", writer, {"n": n}))


def test_eight_processes_appending_at_once_lose_nothing(tmp_path):
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
    assert [r.seq for r in records] == list(range(1, 321))
    assert len({r.pid for r in records}) == 8
    for i in range(8):
        mine = [r.payload["n"] for r in records if r.writer == f"w{i}"]
        assert mine == list(range(40))  # each writer's order kept, nothing lost


# Appends until the file system refuses a write (RLIMIT_FSIZE: a full disk for this process).
FULL_DISK = """
import os, resource, signal, sys
from onestorpool.eventlog import Event, EventLog, EventLogError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), as on a full disk
with EventLog(sys.argv[1]) as log:
    limit = os.path.getsize(sys.argv[1]) + 256 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        while True:
            print(log.append(Event("fill", "child", {"blob": os.urandom(4096)})), flush=True)
    except EventLogError as exc:
        print("ERROR", exc, flush=True)
    print("READ", sum(1 for _ in log.read()), flush=True)
"""


def test_a_failed_write_is_an_error_and_the_log_stays_readable(tmp_path):
    path = fill(tmp_path / "events.db", 5)
    run = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    acknowledged = [int(line) for line in lines if line.isdigit()]
    (error,) = [line for line in lines if line.startswith("ERROR")]
    (read,) = [int(line.split()[1]) for line in lines if line.startswith("READ")]
    assert acknowledged and str(path) in error
    assert read >= acknowledged[-1]  # the writer itself can still read everything committed
    with EventLog(path) as log:
        assert verify(log).ok and log.head()[0] >= acknowledged[-1]
        assert log.append(Event("after", "t")) > acknowledged[-1]  # and it goes on


# Holds the log's write transaction until its stdin closes (a slow writer).
HOLDER = """
import sys
from onestorpool.eventlog import Event, EventLog
with EventLog(sys.argv[1]) as log, log.transaction() as tx:
    tx.append(Event("holder", "holder"))
    print("holding", flush=True)
    sys.stdin.read()
"""
# One append, timed, as a driver does it.
ONE_APPEND = """
import sys, time
from onestorpool.eventlog import append_event
started = time.monotonic()
append_event("queued", writer=sys.argv[2], payload={}, path=sys.argv[1])
print(time.monotonic() - started, flush=True)
"""


def _until_tickets_drawn(path: str, count: int) -> None:
    """Wait until ``count`` writers have queued (the counter at the start of the queue
    file)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(path + ".lock", "rb") as handle:
            if int.from_bytes(handle.read(8), "little") >= count:
                return
        time.sleep(0.01)
    raise AssertionError(f"{count} writers did not queue within 30 s")


def test_writers_are_served_in_the_order_they_arrive(tmp_path):
    """SQLite's busy handler lets a newcomer overtake a writer that waits; the log's queue
    does not: behind a slow writer, the ones that came first go first."""
    path = str(tmp_path / "events.db")
    EventLog(path).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "holding\n"
    waiters = []
    for drawn, name in enumerate(("first", "second", "third", "fourth"), start=2):
        waiters.append(subprocess.Popen([sys.executable, "-c", ONE_APPEND, path, name],
                                        stdout=subprocess.PIPE, text=True))
        _until_tickets_drawn(path, drawn)  # it waits in the queue before the next starts
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0
    for waiter in waiters:
        assert waiter.wait(timeout=60) == 0
    with EventLog(path, readonly=True) as log:
        assert [r.writer for r in log.read()] == ["holder", "first", "second", "third",
                                                  "fourth"]


def _timed_appender(path: str, seconds: float, results) -> None:
    waits = []
    with EventLog(path) as log:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            log.append(Event("busy", "w", {"pad": PAD}))
            waits.append(time.monotonic() - started)
    results.put(max(waits))


def test_the_worst_append_wait_under_eight_writers_is_bounded(tmp_path):
    """Eight writers in tight loops: none waits long (SQLite alone: seconds)."""
    path = str(tmp_path / "events.db")
    EventLog(path).close()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_timed_appender, args=(path, 3.0, results))
               for _ in range(8)]
    for worker in workers:
        worker.start()
    worst = max(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert worst < 1.0, f"an append waited {worst:.2f} s"


def test_the_queue_file_belongs_to_the_log_owner_and_is_optional(tmp_path):
    path = fill(tmp_path / "events.db", 1)
    lock = tmp_path / "events.db.lock"
    lock.unlink()
    if os.geteuid() == 0:  # root (an admin command) creates it for the log's owner
        os.chown(path, 4321, 4321)
        with EventLog(path) as log:
            log.append(Event("x", "t"))
        assert (lock.stat().st_uid, lock.stat().st_gid) == (4321, 4321)
        lock.unlink()
    lock.mkdir()  # a queue file that cannot be opened: appends still work, unqueued
    with EventLog(path) as log:
        log.append(Event("y", "t"))
        assert log.count() == (3 if os.geteuid() == 0 else 2)


def test_a_writer_that_never_finishes_costs_a_timeout_not_a_hang(tmp_path, monkeypatch):
    from onestorpool.eventlog import EventLogError, store

    path = str(tmp_path / "events.db")
    EventLog(path).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 500)
        started = time.monotonic()
        with EventLog(path) as log:
            try:
                log.append(Event("late", "t"))
            except EventLogError as exc:
                assert "waited too long" in str(exc)
            else:
                raise AssertionError("the append did not wait for the holder")
        assert 0.4 < time.monotonic() - started < 5
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with EventLog(path) as log:  # the queue goes on after the holder
        log.append(Event("after", "t"))
        assert [r.type for r in log.read()] == ["holder", "after"]
