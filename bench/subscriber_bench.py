"""Subscriber benchmark: hook-bus messages through decode, the durable log append and a no-op
handler, on real ZeroMQ sockets over loopback.

Run: ``.venv/bin/python bench/subscriber_bench.py [--quick] [--write]`` (``--write`` updates
the ``## Subscriber`` section of BENCHMARKS.md). The daemon (:class:`Daemon`, its loop turn
``step``) runs in this process with one no-op route; the publisher is another process
binding a PUB socket as one_hm does, sending VM DONE messages (two frames, base64
HOOK_MESSAGE). Goals (issue 13): at least 5,000 events/s sustained; p99 from publish to
handled under 50 ms at 1,000 events/s; a burst of 100,000 with none lost.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eventlog_bench import write_named_section

from onestorpool.eventlog import EventLog
from onestorpool.subscribers.daemon import Daemon, Route
from onestorpool.subscribers.notify import Notifier

PUBLISHER = r'''
import base64, json, sys, time, zmq
count, rate, port = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
pub = zmq.Context().socket(zmq.PUB)
pub.setsockopt(zmq.SNDHWM, 0)  # one_hm -h: a burst is queued, not dropped, at the sender
pub.bind(f"tcp://127.0.0.1:{port}")
sys.stdin.readline()  # the subscriber is connected and subscribed
sent, start = [], time.time()
for i in range(count):
    if rate:
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
    body = (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
            f"<STATE>DONE</STATE><LCM_STATE>LCM_INIT</LCM_STATE><RESOURCE_ID>{i}</RESOURCE_ID>"
            f"<REMOTE_HOST/><VM><ID>{i}</ID></VM></HOOK_MESSAGE>")
    sent.append(time.time())
    pub.send_multipart([f"EVENT STATE VM/DONE/LCM_INIT/{i} ".encode(),
                        base64.b64encode(body.encode())])
sys.stdin.readline()  # everything was received (or the subscriber gave up)
print(json.dumps(sent))
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(count: int, rate: float, timeout: float) -> tuple[list[float], float, int]:
    """Latencies (ms, by message), wall time from the first publish to the last handled,
    and how many were handled."""
    handled: dict[int, float] = {}
    route = Route("vm.done", b"EVENT STATE VM/DONE/", lambda e: True,
                  lambda d, e, seq: handled.__setitem__(e.object_id, time.time()))
    port = free_port()
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(count), str(rate),
                                  str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    context = zmq.Context()
    with tempfile.TemporaryDirectory() as directory, \
            EventLog(Path(directory) / "events.db") as log:
        daemon = Daemon(f"tcp://127.0.0.1:{port}", log, routes=(route,),
                        reconcile=lambda log, why: {}, reconcile_every=3600,
                        checkpoint_every=0, notifier=Notifier({}), context=context,
                        leader=None)
        daemon.connect()
        deadline = time.monotonic() + 10
        while not daemon._connected and time.monotonic() < deadline:
            daemon.step(0.05)
        time.sleep(0.5)  # past the slow joiner
        assert publisher.stdin is not None
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        deadline = time.monotonic() + timeout
        while len(handled) < count and time.monotonic() < deadline:
            daemon.step(0.05)
        daemon.close()
        out, _ = publisher.communicate("done\n", timeout=60)
    context.term()
    sent = json.loads(out)
    latencies = [(handled[i] - sent[i]) * 1000 for i in range(count) if i in handled]
    wall = max(handled.values(), default=sent[0]) - sent[0]
    return latencies, wall, len(handled)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    sustained_n = 5_000 if args.quick else 30_000
    burst_n = 10_000 if args.quick else 100_000
    paced_n = 1_000 if args.quick else 5_000
    _, wall, got = run(sustained_n, 0, 120)
    sustained = got / wall if wall > 0 else float("inf")
    paced, _, paced_got = run(paced_n, 1000, 60)
    _, burst_wall, burst_got = run(burst_n, 0, 300)
    p50, p99 = percentile(paced, 0.5), percentile(paced, 0.99)
    lines = [
        "| measure | figure | goal |",
        "|---|---:|---|",
        f"| sustained: {sustained_n:,} messages published at once, decoded, appended, "
        f"handled | {sustained:,.0f} events/s | 5,000/s: "
        f"{'met' if sustained >= 5000 else 'not met'} |",
        f"| publish to handled at 1,000 events/s ({paced_got:,} of {paced_n:,}): p50 | "
        f"{p50:.1f} ms | |",
        f"| publish to handled at 1,000 events/s: p99 | {p99:.1f} ms | 50 ms: "
        f"{'met' if p99 <= 50 else 'not met'} |",
        f"| burst of {burst_n:,}: handled | {burst_got:,} in {burst_wall:.1f} s | none lost: "
        f"{'met' if burst_got == burst_n else 'not met'} |",
    ]
    table = "\n".join(lines)
    notes = ["The p99 at 1,000/s varies between runs on this shared machine (1-2 ms in a "
             "quiet run, 100-185 ms in others): the log's durable append (fsync) stalls now and "
             "then, as a bare loop of single appends shows too (p99 under 1 ms, yet one append "
             "in a few thousand takes 90-400 ms). The daemon journals a batch before acting on "
             "it, so one stall delays every message behind it.",
             "one_hm's default send high-water mark is 1,000 messages per subscriber: with it a "
             "burst beyond that is dropped at the sender whatever the subscriber does "
             "(reconciliation catches up); the burst here runs with `-h 0` (SNDHWM 0)."]
    print(table)
    for note in notes:
        print(f"- {note}")
    if args.write:
        note = (f"Measured {time.strftime('%Y-%m-%d')}, development virtualenv, "
                f"{'quick' if args.quick else 'full'} run; `.venv/bin/python "
                "bench/subscriber_bench.py --write`. The daemon with one no-op route in this "
                "process, the publisher in another, loopback TCP.")
        write_named_section("Subscriber", f"{note}\n\n{table}\n\n"
                            + "\n".join(f"- {n}" for n in notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
