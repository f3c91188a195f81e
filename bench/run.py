"""Run the benchmarks under ``bench/`` one after the other (``make bench``).

Run: ``.venv/bin/python bench/run.py [--write] [--list] [NAME ...]``. Every ``*_bench.py``
next to this file is a benchmark (``NAME`` is its file name without ``_bench.py``, e.g.
``eventlog``); each runs in its own interpreter, in turn, so they do not compete for the
machine's cores. ``--write`` is passed on: each benchmark then updates its section of
``BENCHMARKS.md``. The exit status is that of the first benchmark that failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def benchmarks() -> dict[str, Path]:
    return {path.name.removesuffix("_bench.py"): path
            for path in sorted(BENCH.glob("*_bench.py"))}


def main(argv: list[str] | None = None) -> int:
    found = benchmarks()
    parser = argparse.ArgumentParser(prog="bench/run.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(found)})")
    parser.add_argument("--write", action="store_true",
                        help="let each benchmark update its section of BENCHMARKS.md")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in found]
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)} (there are: "
                     f"{', '.join(found)})")
    if args.list:
        for name, path in found.items():
            print(f"{name:20} {path.relative_to(BENCH.parent)}")
        return 0
    status = 0
    for name in args.names or list(found):
        print(f"== {name} ({found[name].relative_to(BENCH.parent)})", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(found[name]),
                                 *(["--write"] if args.write else [])], check=False)
        print(f"== {name}: exit {result.returncode} after {time.monotonic() - started:.0f} s",
              flush=True)
        status = status or result.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
