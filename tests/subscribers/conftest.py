"""Fixtures of the subscriber tests: a cloud on the oned sandbox with the real datastore and
TM drivers, a second StorPool sandbox as the remote backup location, and the subscriber
daemon run as a real process (``onestorpool subscriber run``) with a systemd notify socket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from onestorpool.eventlog import EventLog
from tests.sandbox.test_tm_lifecycle import storpool_remotes

# make_world comes from tests.sandbox.conftest_oned: each test module names it in its
# pytest_plugins (pytest refuses pytest_plugins in a conftest below the root)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """``onestorpool subscriber run`` in its own process, telling systemd (this socket)."""

    def __init__(self, env: dict[str, str], log: Path, notify: Path, *args: str):
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.unlink(missing_ok=True)
        self.notify.bind(str(notify))
        self.notify.settimeout(0.1)
        self.messages: list[str] = []
        self.out = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "onestorpool.cli", "subscriber", "run", *args],
            env={**env, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "2000000",
                 "PYTHONUNBUFFERED": "1"},
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.log = log

    def read_notify(self) -> list[str]:
        while self.notify.fileno() >= 0:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                break
        return self.messages

    def notified(self, line: str) -> bool:
        return any(line in m.splitlines() for m in self.read_notify())

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            return self.notified("READY=1")
        wait_for(ready, "READY=1", timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.read_notify()
        self.notify.close()
        self.out.close()
        return code


@pytest.fixture
def cloud(make_world, tmp_path, storpool_sandbox_factory):
    """(world, image_ds, system_ds, hosts, remote cluster): REMOTE_BACKUP_DELETE sends to
    the second StorPool sandbox, registered as location ``backup-site``."""
    w = make_world(remotes=storpool_remotes(tmp_path / "r"), live_disk_snapshots={"kvm-storpool"})
    remote = storpool_sandbox_factory("remote", token="remote-token")
    w.frontend.sandbox.add_remote_location("backup-site", remote)
    w.frontend.write_rc('ONE_PX=one\nDELAY_DELETE=0\nREMOTE_BACKUP_DELETE="backup-site"\n')
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    hosts = [w.oned.create_host(name) for name in ("node1", "node2")]
    return w, image_ds, system_ds, hosts, remote


def subscriber_env(w) -> dict[str, str]:
    return {**w.frontend.env, "ONE_XMLRPC": w.oned.endpoint,
            "ONE_AUTH": str(w.oned.directory / "one_auth"), "ONE_ZMQ": w.oned.hook_endpoint}


@pytest.fixture
def start_daemon(cloud, tmp_path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str, wait: bool = True) -> Daemon:
        w = cloud[0]
        daemon = Daemon(subscriber_env(w), tmp_path / "subscriber.log",
                        tmp_path / f"notify{len(started)}", *args)
        started.append(daemon)
        if wait:
            daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)


def events(w, *types: str) -> list:
    path = Path(w.frontend.env["ONESTORPOOL_EVENTLOG"])
    if not path.exists():
        return []
    with EventLog(path, readonly=True) as log:
        return [r for r in log.read() if not types or r.type in types]


def remote_copies(remote) -> list[dict[str, Any]]:
    with remote.cluster.lock:
        return [dict(s) for s in remote.cluster.snapshots.values() if not s.get("deleted")]


def deploy(w, system_ds: int, host: int, *disks: str) -> int:
    vm_id = w.oned.instantiate(w.vm_template("vm", *disks), host, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    return vm_id


__all__ = ["Daemon", "deploy", "events", "os", "remote_copies", "subscriber_env", "wait_for"]
