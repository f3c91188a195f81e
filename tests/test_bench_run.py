"""``make bench`` runs: its recipe names bench/run.py, which runs every benchmark."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_make_target_runs_an_existing_script():
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None
    scripts = re.findall(r"(bench/\S+\.py)", recipe[1])
    assert scripts and all((REPO / s).is_file() for s in scripts), scripts


def test_run_lists_and_runs_the_benchmarks():
    listed = subprocess.run([sys.executable, "bench/run.py", "--list"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == sorted(p.name.removesuffix("_bench.py")
                           for p in (REPO / "bench").glob("*_bench.py"))
    ran = subprocess.run([sys.executable, "bench/run.py", "driver_startup"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "whole `stat` action" in ran.stdout and "driver_startup: exit 0" in ran.stdout
    wrong = subprocess.run([sys.executable, "bench/run.py", "nope"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "no benchmark named nope" in wrong.stderr
