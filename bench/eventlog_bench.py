"""Event log benchmark: our figures next to their floors, measured in the same run.

Run: ``.venv/bin/python bench/eventlog_bench.py [--quick] [--write]`` (``--write`` updates the
``## Event log`` section of BENCHMARKS.md). The write floors are a bare ``sqlite3`` insert of
the same row with the same durability settings (WAL, ``synchronous=FULL``, one transaction
per row) and a bare ``os.write`` + ``fsync`` of the same bytes; the read floor is a bare
``SELECT`` of the same rows. The ratios show what the log's own work costs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from onestorpool.eventlog import Event, EventLog, append_event, store
from onestorpool.eventlog import replay as replay_module
from onestorpool.eventlog.record import GENESIS, pack_payload
from onestorpool.eventlog.store import COLUMNS, HOST, PAGE_SIZE
from onestorpool.eventlog.verify import verify

PAYLOAD = {"volume": "one-img-42", "template": "one-ds-100", "size_mb": 10240,
           "format": "raw", "host": "node7", "created": ["one-img-42"], "duration_ms": 812}
EVENT = Event("ds.cp", "ds/cp@frontend:1234", PAYLOAD, image=42, datastore=100,
              volume="one-img-42")
# The row as the log stores it, for the floors.
ROW = (time.time(), EVENT.writer, HOST, 1234, EVENT.type, None, 42, 100, "one-img-42", None,
       None, 1, pack_payload(PAYLOAD), GENESIS, b"\1" * 32)
ROW_BYTES = msgpack.packb(ROW, use_bin_type=True)
EFFECT_EVERY = 100  # one record in a hundred asks for a side effect, as image deletions do

Result = tuple[str, float, str]


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_single(path: Path, count: int) -> float:
    with EventLog(path) as log:
        started = time.perf_counter()
        for _ in range(count):
            log.append(EVENT)
        return rate(count, time.perf_counter() - started)


def bench_append_event(path: Path, count: int, *, held: bool) -> float:
    """As a driver does it: open, append, close, every time. Closing the last connection
    to a WAL database checkpoints it (more fsyncs); with ``held``, another connection stays
    open throughout, as the subscriber's will."""
    EventLog(path).close()
    other = EventLog(path, readonly=True) if held else None
    try:
        started = time.perf_counter()
        for _ in range(count):
            append_event(EVENT.type, writer=EVENT.writer, payload=PAYLOAD, image=42,
                         datastore=100, volume="one-img-42", path=str(path))
        return rate(count, time.perf_counter() - started)
    finally:
        if other is not None:
            other.close()


FLOOR_INSERT = (f"INSERT INTO t ({COLUMNS.split(', ', 1)[1]}) "
                f"VALUES ({','.join('?' * len(ROW))})")


def _floor_connect(path: Path, *, create: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    if create:
        db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, time REAL, writer TEXT, "
                   "host TEXT, pid INTEGER, type TEXT, vm INTEGER, image INTEGER, "
                   "datastore INTEGER, volume TEXT, snapshot TEXT, effect_key TEXT, "
                   "schema INTEGER, payload BLOB, prev_hash BLOB, hash BLOB)")
    return db


def _floor_insert(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute(FLOOR_INSERT, ROW)
    db.execute("COMMIT")


def bench_sqlite_floor(path: Path, count: int) -> float:
    db = _floor_connect(path, create=True)
    started = time.perf_counter()
    for _ in range(count):
        _floor_insert(db)
    elapsed = time.perf_counter() - started
    db.close()
    return rate(count, elapsed)


def bench_sqlite_open_floor(path: Path, count: int) -> float:
    """The floor of a driver's append: connect, insert, close, every time (another
    connection stays open, as for ``append_event(held=True)``)."""
    other = _floor_connect(path, create=True)
    started = time.perf_counter()
    for _ in range(count):
        db = _floor_connect(path, create=False)
        _floor_insert(db)
        db.close()
    elapsed = time.perf_counter() - started
    other.close()
    return rate(count, elapsed)


def bench_fsync_floor(path: Path, count: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    started = time.perf_counter()
    for _ in range(count):
        os.write(fd, ROW_BYTES)
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


def fill_for_reading(path: Path, records: int) -> None:
    with EventLog(path) as log:
        for n in range(records // 5000):
            batch = [EVENT] * 5000
            for i in range(0, 5000, EFFECT_EVERY):
                batch[i] = Event("ds.rm", EVENT.writer, {**PAYLOAD, "effect": {
                    "type": "remote_backup", "key": f"k{n}-{i}", "location": "backup-site"}},
                                 image=i)
            log.append_batch(batch)


def per_second(work, records: int) -> tuple[float, object]:
    """Records per second of ``work()`` over a log of ``records``, and what it returned."""
    started = time.perf_counter()
    value = work()
    return rate(records, time.perf_counter() - started), value


def bench_reading(path: Path, records: int) -> dict[str, float]:
    fill_for_reading(path, records)
    replay_module.register_handler("remote_backup", lambda record, log: {})
    sql = f"SELECT {COLUMNS} FROM events WHERE seq > 0 ORDER BY seq"
    with EventLog(path, readonly=True) as log:

        def bare_select() -> int:
            cursor, count = log.db.execute(sql), 0
            while rows := cursor.fetchmany(5000):
                count += len(rows)
            return count

        rates: dict[str, float] = {}
        rates["floor"], count = per_second(bare_select, records)
        assert count == records
        rates["read"], count = per_second(lambda: sum(1 for _ in log.read()), records)
        assert count == records
        rates["decode"], _ = per_second(lambda: [r.payload for r in log.read()], records)
        rates["replay"], outcomes = per_second(lambda: replay_module.replay(log), records)
        assert len(outcomes) == records // EFFECT_EVERY  # type: ignore[arg-type]
        assert all(o.status == "would-run" for o in outcomes)  # type: ignore[attr-defined]
        rates["verify_chain"], result = per_second(lambda: verify(log, integrity=False),
                                                   records)
        assert result.ok and result.checked == records  # type: ignore[attr-defined]
        rates["verify"], result = per_second(lambda: verify(log), records)
        assert result.ok  # type: ignore[attr-defined]
    return rates


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


def _timed_appends(path: str, seconds: float, pause: float, results: Any,
                   queue: bool = True) -> None:
    """Append until ``seconds`` have passed (``pause`` between appends, 0: a tight loop);
    report how long each append took, waiting included. Without ``queue``, writers wait
    in SQLite's busy handler alone (this process only: it is a forked child)."""
    if not queue:
        store._WriterQueue.enter = lambda self, deadline: None  # type: ignore[method-assign]
        store._WriterQueue.leave = lambda self: None  # type: ignore[method-assign]
    waits = []
    with EventLog(path) as log:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            log.append(EVENT)
            waits.append(time.perf_counter() - started)
            if pause:
                time.sleep(pause)
    results.put(waits)


def _bulk_writer(path: str, seconds: float, size: int) -> None:
    with EventLog(path) as log:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            log.append_batch([EVENT] * size)


def _replayer(path: str, seconds: float) -> None:
    with EventLog(path) as log:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            replay_module.replay(log, dry_run=True)
            sum(1 for _ in log.read())


def waits_summary(waits: list[float]) -> dict[str, float]:
    waits = sorted(waits)
    return {"count": len(waits), "median": statistics.median(waits) * 1000,
            "p99": waits[int(len(waits) * 0.99)] * 1000, "max": waits[-1] * 1000}


def bench_contention(path: Path, processes: int, seconds: float,
                     queue: bool = True) -> dict[str, float]:
    """``processes`` writers appending in tight loops: every append's wait."""
    EventLog(path).close()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_timed_appends,
                               args=(str(path), seconds, 0, results, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    waits = [w for _ in workers for w in results.get()]
    for worker in workers:
        worker.join()
    summary = waits_summary(waits)
    summary["rate"] = rate(len(waits), seconds)
    return summary


def bench_driver_behind_bulk(path: Path, seconds: float, batch: int) -> dict[str, float]:
    """A driver appending every 10 ms while a bulk writer appends batches of ``batch`` in a
    tight loop and a replay dry run reads the whole log over and over."""
    fill_for_reading(path, 20_000)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    others = [context.Process(target=_bulk_writer, args=(str(path), seconds, batch)),
              context.Process(target=_replayer, args=(str(path), seconds))]
    driver = context.Process(target=_timed_appends, args=(str(path), seconds, 0.01, results))
    for process in (*others, driver):
        process.start()
    summary = waits_summary(results.get())
    for process in (*others, driver):
        process.join()
    return summary


def import_cost(rounds: int) -> tuple[float, float]:
    """Median ms of ``import onestorpool.eventlog`` in a fresh interpreter, and of the
    third-party and C modules it needs (msgpack, sqlite3, hashlib) alone."""
    def timed(code: str) -> float:
        script = f"import time; t = time.perf_counter(); {code}; " \
                 "print(time.perf_counter() - t)"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True).stdout
        return float(out) * 1000

    ours, deps = [], []
    for _ in range(rounds):
        ours.append(timed("import onestorpool.eventlog"))
        deps.append(timed("import msgpack, sqlite3, hashlib, typing"))
    return statistics.median(ours), statistics.median(deps)


def durable_rounds(d: Path, rounds: int, count: int) -> dict[str, list[float]]:
    """Durable appends are fsync-bound and the disk is shared and noisy: measure each kind
    in many short rounds, interleaved (the order rotating), so that a round's figures share
    the disk's state of the moment and can be compared pairwise."""
    kinds = {
        "single": lambda path: bench_single(path, count),
        "sqlite": lambda path: bench_sqlite_floor(path, count),
        "fsync": lambda path: bench_fsync_floor(path, count),
        "driver": lambda path: bench_append_event(path, count // 2, held=False),
        "driver_held": lambda path: bench_append_event(path, count // 2, held=True),
        "sqlite_open": lambda path: bench_sqlite_open_floor(path, count // 2),
    }
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    names = list(kinds)
    for n in range(rounds):
        for kind in names[n % len(names):] + names[:n % len(names)]:
            samples[kind].append(kinds[kind](d / f"{kind}{n}"))
    return samples


def paired(samples: dict[str, list[float]], kind: str, floor: str) -> float:
    """Median over rounds of the floor's rate over ours: our time per append in floors."""
    return statistics.median(f / o for o, f in zip(samples[kind], samples[floor],
                                                   strict=True))


def run(quick: bool) -> tuple[list[Result], list[str]]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as scratch:
        d = Path(scratch)
        samples = durable_rounds(d, 6 if quick else 15, 100)
        single, sqlite_floor, fsync_floor, driver, driver_held = (
            statistics.median(samples[k])
            for k in ("single", "sqlite", "fsync", "driver", "driver_held"))
        single_cost = paired(samples, "single", "sqlite")
        grouped = bench_grouped(d / "grouped.db", 20 if quick else 100, 100)
        reading = bench_reading(d / "read.db", 50_000 if quick else 200_000)
        concurrent = bench_concurrent(d / "concurrent.db", 8, 30 if quick else 100)
        contention = bench_contention(d / "contention.db", 8, 3 if quick else 10)
        unqueued = bench_contention(d / "unqueued.db", 8, 3 if quick else 10, queue=False)
        behind_bulk = bench_driver_behind_bulk(d / "bulk.db", 3 if quick else 10, 1000)
    ours_ms, deps_ms = import_cost(5 if quick else 15)
    results = [
        ("durable single append", single,
         f"{single_cost:.2f}x the sqlite floor's time per append (limit 2x)"),
        ("floor: bare sqlite3 insert, same row (WAL, synchronous=FULL)", sqlite_floor,
         "1.00x"),
        ("floor: os.write + fsync, same bytes", fsync_floor,
         f"the sqlite floor takes {paired(samples, 'sqlite', 'fsync'):.2f}x its time"),
        ("append_event(): open, append, close per call (a driver), log otherwise closed",
         driver, f"{paired(samples, 'driver', 'sqlite'):.2f}x the sqlite floor's time"),
        ("append_event() while another process keeps the log open (the subscriber)",
         driver_held, f"{paired(samples, 'driver_held', 'sqlite_open'):.2f}x the time of "
                      "the floor below"),
        ("floor: bare sqlite3 connect, insert, close, same row (another connection open)",
         statistics.median(samples["sqlite_open"]),
         f"{paired(samples, 'sqlite_open', 'sqlite'):.2f}x the sqlite floor's time"),
        ("grouped appends (100 per transaction)", grouped,
         f"{grouped / sqlite_floor:.1f}x the sqlite floor's rate"),
        ("8 concurrent appending processes (total)", concurrent,
         f"{concurrent / single:.2f}x one process"),
        ("8 processes appending in tight loops (total)", contention["rate"],
         f"wait per append: median {contention['median']:.1f} ms, p99 "
         f"{contention['p99']:.1f} ms, worst {contention['max']:.0f} ms"),
        ("floor: the same without the writers' queue (SQLite's busy handler)",
         unqueued["rate"], f"wait per append: median {unqueued['median']:.1f} ms, p99 "
                           f"{unqueued['p99']:.1f} ms, worst {unqueued['max']:.0f} ms"),
        ("a driver every 10 ms, beside a bulk writer (batches of 1000) and a replay",
         rate(behind_bulk["count"], 1), f"wait per append: median "
         f"{behind_bulk['median']:.1f} ms, p99 {behind_bulk['p99']:.1f} ms, worst "
         f"{behind_bulk['max']:.0f} ms (records/s column: appends measured)"),
        ("floor: bare SELECT of the same rows", reading["floor"], "1.00x"),
        ("read records (iterate the whole log)", reading["read"],
         f"{reading['read'] / reading['floor']:.2f}x the read floor"),
        ("read records and decode every payload (show, export)", reading["decode"],
         f"{reading['decode'] / reading['floor']:.2f}x the read floor"),
        (f"replay --dry-run from seq 0 (1 record in {EFFECT_EVERY} requests an effect)",
         reading["replay"], f"{reading['replay'] / reading['floor']:.1f}x the read floor "
                            "(log records covered)"),
        ("verify: hash chain", reading["verify_chain"],
         f"{reading['verify_chain'] / reading['floor']:.2f}x the read floor"),
        ("verify: hash chain + PRAGMA integrity_check", reading["verify"],
         f"{reading['verify'] / reading['floor']:.2f}x the read floor"),
    ]
    notes = [f"`import onestorpool.eventlog` in a fresh interpreter: {ours_ms:.1f} ms "
             f"(median), of which msgpack, sqlite3, hashlib and typing alone take "
             f"{deps_ms:.1f} ms.",
             f"Done when: durable single appends within 2x of the sqlite floor: "
             f"{'yes' if single_cost <= 2 else 'NO'} ({single_cost:.2f}x, the median of "
             f"the per-round ratios); replay reads at least 200,000 records/s: "
             f"{'yes' if reading['replay'] >= 200_000 else 'NO'} (a dry run from seq 0 "
             f"goes through {reading['replay']:,.0f} log records/s, reading the effect "
             f"requests through their index; reading every record runs at "
             f"{reading['read']:,.0f}/s, {reading['read'] / reading['floor']:.2f}x a bare "
             f"SELECT of the same rows).",
             f"Fairness: writers queue in arrival order (eventlog/store.py, _WriterQueue), so "
             f"an append waits at most for the transactions queued before it; the worst "
             f"wait of {contention['count']:,.0f} appends by 8 tight-loop writers was "
             f"{contention['max']:.0f} ms (bound 1 s: "
             f"{'yes' if contention['max'] < 1000 else 'NO'}; SQLite's busy handler alone: "
             f"{unqueued['max']:.0f} ms), and a driver's worst beside a bulk writer and "
             f"a replay {behind_bulk['max']:.0f} ms, against a 30 s busy timeout."]
    return results, notes


def table(results: list[Result]) -> str:
    lines = ["| measure | records/s | ratio (same run) |", "|---|---:|---|"]
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
    updated = pattern.sub(lambda _: section.rstrip("\n") + "\n", current, count=1) \
        if pattern.search(current) else current.rstrip("\n") + "\n\n" + section
    path.write_text(updated.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    results, notes = run(args.quick)
    body = table(results) + "\n\n" + "\n".join(f"- {note}" for note in notes)
    print(body)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.write:
        note = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
                f"{os.cpu_count()} cores, Python {platform.python_version()}, SQLite "
                f"{sqlite3.sqlite_version}, in a temporary directory on the local disk; "
                f"`.venv/bin/python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`"
                f". Durable appends: medians of {6 if args.quick else 15} interleaved "
                "rounds of 100 (50 for "
                "append_event), each ratio the median of the per-round ratios. The log "
                f"uses {PAGE_SIZE // 1024} KiB pages (an append changes ~7 of them), the "
                "floors SQLite's default 4 KiB. "
                "Ratios are within this one run (the machine is shared and noisy).")
        write_section(f"{note}\n\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
