"""Driver start-up: what a datastore action costs as oned runs it, next to a bare interpreter.

Run: ``.venv/bin/python bench/driver_startup_bench.py [--write]`` (``--write`` updates the
``## Driver start-up`` section of BENCHMARKS.md). Measured: a bare ``python -c pass``, the
imports a datastore action needs, and a whole ``stat`` action (argument decoding, XML,
configuration, ``qemu-img info``, one durable event) against the StorPool sandbox. Medians
of interleaved rounds, bytecode compiled first, in one run.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from eventlog_bench import write_named_section  # noqa: E402

from onestorpool.sandbox.frontend import REMOTES, ds_action, image_xml, make_frontend  # noqa: E402
from onestorpool.sandbox.storpool import StorPoolSandbox  # noqa: E402

IMPORTS = ("import onestorpool.drivers.runtime, onestorpool.drivers.datastore, "
           "onestorpool.drivers.ds_request, onestorpool.eventlog, onestorpool.storpool")


def timed(argv: list[str], **kwargs) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - started


def run(rounds: int) -> list[tuple[str, float, str]]:
    for folder in ("onestorpool", "drivers", "eventlog"):
        compileall.compile_dir(REPO / folder, quiet=1)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        with StorPoolSandbox(root / "sp", "bench") as sandbox:
            frontend = make_frontend(root / "fe", sandbox)
            disk = root / "disk.raw"
            disk.write_bytes(b"\0" * (1 << 20))
            payload = base64.b64encode(ds_action(image_xml(-1, path=str(disk))).encode())
            stat = [sys.executable, str(REMOTES / "datastore/storpool/stat"), "0"]
            samples: dict[str, list[float]] = {"bare": [], "imports": [], "stat": []}
            for _ in range(rounds):
                samples["bare"].append(timed([sys.executable, "-c", "pass"]))
                samples["imports"].append(timed([sys.executable, "-c", IMPORTS]))
                samples["stat"].append(timed(stat, input=payload, env=frontend.env))
    bare, imports, action = (statistics.median(samples[k]) * 1000
                             for k in ("bare", "imports", "stat"))
    return [("bare interpreter (python -c pass)", bare, "1.00x"),
            ("datastore driver imports", imports, f"{imports / bare:.2f}x bare"),
            ("whole `stat` action (qemu-img info, one durable event)", action,
             f"{action / bare:.2f}x bare")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    results = run(args.rounds)
    lines = ["| measure | median ms | ratio |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.0f} | {ratio} |" for name, value, ratio in results]
    table = "\n".join(lines)
    print(table)
    if args.write:
        note = (f"Measured {time.strftime('%Y-%m-%d')}, {args.rounds} interleaved rounds, in "
                "the development virtualenv (its editable-install finder is part of every "
                "start); `bench/driver_startup_bench.py --write`.")
        write_named_section("Driver start-up", f"{note}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
