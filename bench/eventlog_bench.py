"""Event log benchmark: our figures next to their floors, measured in the same run.

Run: ``.venv/bin/python bench/eventlog_bench.py [--write]`` (``--write`` updates the
``## Event log`` section of BENCHMARKS.md). The floors are a bare ``sqlite3`` insert of the
same row with the same durability settings, and a bare ``os.write`` + ``fsync`` of the same
bytes, so the ratios show what the log's own work costs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from onestorpool.eventlog import Event, EventLog
from onestorpool.eventlog.projections import pending_effects
from onestorpool.eventlog.record import pack_payload
from onestorpool.eventlog.verify import verify

PAYLOAD = {"volume": "one-img-42", "template": "one-ds-100", "size_mb": 10240,
           "format": "raw", "host": "node7", "created": ["one-img-42"]}
EVENT = Event("ds.cp", "ds/cp@frontend:1234", PAYLOAD, image=42, datastore=100,
              volume="one-img-42")


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_single(path: Path, count: int) -> float:
    with EventLog(path) as log:
        started = time.perf_counter()
        for _ in range(count):
            log.append(EVENT)
        return rate(count, time.perf_counter() - started)


def bench_sqlite_floor(path: Path, count: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, time REAL, writer TEXT, host TEXT, "
               "pid INTEGER, type TEXT, vm INTEGER, image INTEGER, datastore INTEGER, "
               "volume TEXT, snapshot TEXT, effect_key TEXT, schema INTEGER, payload BLOB, "
               "prev_hash BLOB, hash BLOB)")
    payload = pack_payload(PAYLOAD)
    row = (time.time(), EVENT.writer, "frontend", 1, EVENT.type, None, 42, 100, "one-img-42",
           None, None, 1, payload, b"\0" * 32, b"\1" * 32)
    started = time.perf_counter()
    for _ in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (time, writer, host, pid, type, vm, image, datastore, "
                   "volume, snapshot, effect_key, schema, payload, prev_hash, hash) VALUES "
                   "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return rate(count, elapsed)


def bench_fsync_floor(path: Path, count: int) -> float:
    data = pack_payload(PAYLOAD) + b"\0" * 100
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    started = time.perf_counter()
    for _ in range(count):
        os.write(fd, data)
        os.fsync(fd)
    elapsed = time.perf_counter() - started
    os.close(fd)
    return rate(count, elapsed)


def bench_grouped(path: Path, batches: int, size: int) -> float:
    with EventLog(path) as log:
        started = time.perf_counter()
        for _ in range(batches):
            log.append_batch([EVENT] * size)
        return rate(batches * size, time.perf_counter() - started)


def bench_read_and_verify(path: Path, records: int) -> tuple[float, float, float, float]:
    request = Event("ds.rm", EVENT.writer, {**PAYLOAD, "effect": {
        "type": "remote_backup", "key": "", "location": "backup-site"}}, image=42)
    with EventLog(path) as log:
        for n in range(records // 5000):
            # One record in a hundred asks for a side effect, as image deletions would.
            batch = [EVENT] * 4950 + [
                Event(request.type, request.writer,
                      {**request.payload, "effect": {**request.payload["effect"],
                                                     "key": f"k{n}-{i}"}}, image=i)
                for i in range(50)]
            log.append_batch(batch)
        started = time.perf_counter()
        read = sum(1 for _ in log.read())
        read_rate = rate(read, time.perf_counter() - started)
        started = time.perf_counter()
        pending = pending_effects(log)
        replay_rate = rate(records, time.perf_counter() - started)
        assert len(pending) == records // 100
        started = time.perf_counter()
        decoded = sum(1 for record in log.read() if record.payload)
        decoded_rate = rate(decoded, time.perf_counter() - started)
        started = time.perf_counter()
        result = verify(log)
        assert result.ok
        return (read_rate, decoded_rate, replay_rate,
                rate(result.checked, time.perf_counter() - started))


def _appender(path: str, count: int) -> None:
    with EventLog(path) as log:
        for _ in range(count):
            log.append(EVENT)


def bench_concurrent(path: Path, processes: int, each: int) -> float:
    EventLog(path).close()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_appender, args=(str(path), each))
               for _ in range(processes)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    with EventLog(path, readonly=True) as log:
        assert log.count() == processes * each and verify(log).ok
    return rate(processes * each, elapsed)


def run(quick: bool) -> list[tuple[str, float, str]]:
    singles = 100 if quick else 300
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as scratch:
        d = Path(scratch)
        # Durable appends are fsync-bound and the disk is shared: interleave the three
        # measures over several rounds and keep each one's median.
        rounds: dict[str, list[float]] = {"single": [], "sqlite": [], "fsync": []}
        for n in range(5):
            rounds["single"].append(bench_single(d / f"single{n}.db", singles))
            rounds["sqlite"].append(bench_sqlite_floor(d / f"floor{n}.db", singles))
            rounds["fsync"].append(bench_fsync_floor(d / f"floor{n}.bin", singles))
        single, sqlite_floor, fsync_floor = (statistics.median(rounds[k])
                                             for k in ("single", "sqlite", "fsync"))
        grouped = bench_grouped(d / "grouped.db", 20 if quick else 100, 100)
        read_rate, decoded_rate, replay_rate, verify_rate = bench_read_and_verify(d / "read.db",
                                                       50_000 if quick else 200_000)
        concurrent = bench_concurrent(d / "concurrent.db", 8, 30 if quick else 100)
    return [
        ("durable single append", single, f"{single / sqlite_floor:.2f}x of the sqlite floor"),
        ("floor: bare sqlite3 insert (WAL, synchronous=FULL)", sqlite_floor, "1.00x"),
        ("floor: os.write + fsync", fsync_floor, f"sqlite floor is "
                                                 f"{sqlite_floor / fsync_floor:.2f}x of it"),
        ("grouped appends (100 per transaction)", grouped,
         f"{grouped / single:.0f}x single appends"),
        ("read records (iterate the whole log)", read_rate, ""),
        ("read records and decode every payload (show, export)", decoded_rate, ""),
        ("replay: find pending effects (1% of records request one)", replay_rate,
         "log records covered per second"),
        ("verify (hash chain)", verify_rate, ""),
        ("8 concurrent appending processes", concurrent,
         f"{concurrent / single:.2f}x one process"),
    ]


def table(results: list[tuple[str, float, str]]) -> str:
    lines = ["| measure | records/s | ratio |", "|---|---:|---|"]
    lines += [f"| {name} | {value:,.0f} | {ratio} |" for name, value, ratio in results]
    return "\n".join(lines)


def write_section(text: str) -> None:
    write_named_section("Event log", text)


def write_named_section(title: str, text: str) -> None:
    """Replace (or add) the ``## <title>`` section of BENCHMARKS.md, leaving the others."""
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{text}\n"
    pattern = re.compile(rf"## {re.escape(title)}\n.*?(?=\n## |\Z)", re.DOTALL)
    updated = pattern.sub(section.rstrip("\n"), current) if pattern.search(current) else (
        current.rstrip("\n") + "\n\n" + section)
    path.write_text(updated.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    results = run(args.quick)
    body = table(results)
    print(body)
    if args.write:
        note = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
                f"{os.cpu_count()} cores, Python {platform.python_version()}, SQLite "
                f"{sqlite3.sqlite_version}, in a temporary directory on the local disk; "
                f"`{' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`. Ratios are "
                "within this one run (the machine is shared and noisy).")
        write_section(f"{note}\n\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
