"""``onestorpool sandbox up/down`` bookkeeping (issue 8 §5): stale pid files, only the
processes 'up' started are signalled, ``sandbox.env`` goes with the sandbox, relative
directories work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onestorpool.sandbox import up

CLI = [sys.executable, "-m", "onestorpool.cli", "sandbox"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ONE_", "ONESTORPOOL_"))}


@pytest.fixture
def bystander():
    """A process that is not the sandbox's (its pid may be in a stale pid file)."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_down_signals_only_the_processes_up_started(tmp_path, bystander):
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / up.PIDS).write_text(json.dumps({
            "oned": {"pid": bystander.pid, "start": 1},  # the pid was reused since
            "storpool": other.pid}))  # an older file: no start time, not a sandbox command
        (tmp_path / up.ENV).write_text("export ONE_XMLRPC=http://127.0.0.1:1/RPC2\n")
        result = subprocess.run([*CLI, "down", "--dir", str(tmp_path)], capture_output=True,
                                text=True, timeout=60, env=_env())
        assert result.returncode == 0, result.stderr
        assert bystander.poll() is None and other.poll() is None  # both untouched
        assert not (tmp_path / up.PIDS).exists() and not (tmp_path / up.ENV).exists()
    finally:
        other.kill()
        other.wait()


def test_down_without_a_sandbox_removes_a_left_over_env_file(tmp_path):
    (tmp_path / up.ENV).write_text("export ONE_XMLRPC=http://127.0.0.1:1/RPC2\n")
    result = subprocess.run([*CLI, "down", "--dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, env=_env())
    assert "no sandbox runs" in result.stdout and not (tmp_path / up.ENV).exists()


def test_a_pid_file_of_processes_that_are_gone_is_stale(tmp_path, bystander):
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / up.PIDS).write_text(json.dumps({"oned": gone.pid,
                                                 "storpool": {"pid": bystander.pid,
                                                              "start": 1}}))
    assert up._started(tmp_path) == {}
    (tmp_path / up.PIDS).write_text(json.dumps(
        {"oned": {"pid": bystander.pid, "start": up._start_time(bystander.pid)}}))
    assert up._started(tmp_path) == {"oned": bystander.pid}


def test_up_in_a_relative_directory_over_a_stale_pid_file_then_down(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "sb").mkdir()
    (tmp_path / "sb" / up.PIDS).write_text(json.dumps({"oned": gone.pid}))
    started = subprocess.run([*CLI, "up", "--dir", "sb"], capture_output=True, text=True,
                             timeout=120, env=_env(), cwd=tmp_path)
    directory = tmp_path / "sb"
    try:
        assert started.returncode == 0, started.stderr
        assert "stale" in started.stdout
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in (directory / up.ENV).read_text().splitlines())
        assert exports["ONESTORPOOL_ROOT"] == str(directory)  # absolute
        pids = json.loads((directory / up.PIDS).read_text())
        assert set(pids) >= {"oned", "storpool"}
        assert all(up._start_time(e["pid"]) == e["start"] for e in pids.values())
    finally:
        stopped = subprocess.run([*CLI, "down", "--dir", "sb"], capture_output=True,
                                 text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert not (directory / up.PIDS).exists() and not (directory / up.ENV).exists()
    for entry in pids.values():
        assert not Path(f"/proc/{entry['pid']}").exists() or not up._alive(entry["pid"])


def test_driver_runs_go_to_oned_log(tmp_path):
    import time

    import pyone

    directory = tmp_path / "sb"
    started = subprocess.run([*CLI, "up", "--dir", str(directory)], capture_output=True,
                             text=True, timeout=120, env=_env())
    try:
        assert started.returncode == 0, started.stderr
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in (directory / up.ENV).read_text().splitlines())
        one = pyone.OneServer(exports["ONE_XMLRPC"], session=up.SESSION)
        ds = one.datastore.allocate('NAME="sp"\nDS_MAD="storpool"\nTM_MAD="storpool"\n'
                                    'DISK_TYPE="BLOCK"', -1)
        image = one.image.allocate('NAME="blank"\nTYPE="DATABLOCK"\nSIZE="8"', ds)
        deadline = time.monotonic() + 60
        while one.image.info(image).STATE not in (1, 5):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        subprocess.run([*CLI, "down", "--dir", str(directory)], capture_output=True,
                       timeout=60, env=_env())
    log = (directory / "oned.log").read_text()
    assert f"datastore/storpool/mkfs {image}:" in log, log
