"""OpenNebula HA with the event log on a StorPool volume (EVENT_LOG_VOLUME): two emulated
front-ends, each a real ``onestorpool subscriber run`` process with its own root, StorPool
client id and leader address, sharing the StorPool and oned sandboxes.

Leadership is the floating address of ``RAFT_LEADER_IP`` (the Bash add-on's mechanism): each
front-end names its own TEST-NET address, and the test moves "the" address by putting it on
``lo``. A front-end's death is SIGKILL of its processes plus :func:`crash` of its filesystem
(the sandbox cannot take a loop device away as a cluster's forced detach takes the device).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from onestorpool.eventlog import Event, EventLog, EventLogError
from onestorpool.eventlog.volume import LogVolume
from tests.eventlog.test_log_volume import crash, unmount_everything_under
from tests.subscribers.conftest import Daemon, remote_copies, subscriber_env, wait_for

pytest_plugins = ["tests.sandbox.conftest_oned"]  # make_world

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("ip") is None,
    reason="mounting a filesystem and adding an address to lo need root")

VOLUME = "one-eventlog"
RC = 'ONE_PX=one\nDELAY_DELETE=0\nREMOTE_BACKUP_DELETE="backup-site"\nEVENT_LOG_VOLUME=yes\n'


class FrontEnds:
    """Front-end A (the world's, StorPool client 1) and B (its own root, client 21), each
    with its own leader address; the log volume made; subscribers killed at teardown."""

    def __init__(self, cloud, tmp_path: Path):
        self.w, self.image_ds, _system_ds, _hosts, self.remote = cloud
        self.tmp = tmp_path
        w, sandbox = self.w, self.w.frontend.sandbox
        self.sp = w.frontend.sp
        base = int(ipaddress.ip_address("198.18.0.0")) + (os.getpid() % 60000) * 2 + 2
        self.address_a, self.address_b = (str(ipaddress.ip_address(base)),
                                          str(ipaddress.ip_address(base + 1)))
        self.up: set[str] = set()
        self.daemons: list[Daemon] = []
        root_a, root_b = w.frontend.root, tmp_path / "fe-b"
        self.log_a, self.log_b = root_a / "log" / "events.db", root_b / "log" / "events.db"
        conf = (root_a / "etc/storpool.conf").read_text()
        (root_a / "etc/storpool.conf").write_text("SP_OURID=1\n" + conf)
        (root_b / "etc").mkdir(parents=True)
        (root_b / "etc/storpool.conf").write_text("SP_OURID=21\n" + conf)
        (root_b / "hosts/localhost").mkdir(parents=True)
        sandbox.add_client(21, root_b / "hosts/localhost")
        w.frontend.write_rc(RC + f"RAFT_LEADER_IP={self.address_a}\n")
        (root_b / "var/lib/one/remotes").mkdir(parents=True)
        (root_b / "var/lib/one/remotes/addon-storpoolrc").write_text(
            RC + f"RAFT_LEADER_IP={self.address_b}\n")
        w.oned.driver_env["ONESTORPOOL_EVENTLOG"] = str(self.log_a)  # oned A's drivers
        self.env_a = {**subscriber_env(w), "ONESTORPOOL_EVENTLOG": str(self.log_a)}
        self.env_b = {**self.env_a, "ONESTORPOOL_ROOT": str(root_b),
                      "ONESTORPOOL_EVENTLOG": str(self.log_b),
                      "ONESTORPOOL_SANDBOX_HOSTS": str(root_b / "hosts")}
        self.sp.volume_template_create("eventlog", replication=3)
        LogVolume(VOLUME, self.log_a, 1, self.sp,
                  device=str(w.frontend.device("localhost", VOLUME))
                  ).init(size=64 << 20, template="eventlog")

    def lead(self, address: str | None) -> None:
        """Put the floating address on ``lo`` for one front-end (``None``: for nobody)."""
        for old in list(self.up):
            subprocess.run(["ip", "addr", "del", f"{old}/32", "dev", "lo"], check=True)
            self.up.discard(old)
        if address is not None:
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
            self.up.add(address)

    def start(self, env: dict[str, str], name: str) -> Daemon:
        daemon = Daemon(env, self.tmp / f"subscriber-{name}.log", self.tmp / f"notify-{name}")
        self.daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    def attached(self) -> list[int]:
        return sorted(a["client"] for a in self.sp.attachments_list()
                      if a["volume"] == VOLUME)

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.stop(signal.SIGKILL)
        self.lead(None)
        unmount_everything_under(self.tmp)


@pytest.fixture
def front_ends(cloud, tmp_path) -> Iterator[FrontEnds]:
    ends = FrontEnds(cloud, tmp_path)
    try:
        yield ends
    finally:
        ends.close()


def records(path: Path) -> list:
    with EventLog(path, readonly=True) as log:
        return list(log.read())


def records_now(path: Path) -> list:
    """For polling: nothing while the log is not there or its schema not yet written."""
    try:
        return records(path) if path.exists() else []
    except EventLogError:
        return []


def done_keys(path: Path) -> list[str]:
    return [r.payload["key"] for r in records_now(path) if r.type == "effect.done"]


def test_the_log_survives_the_leader_and_only_the_leader_writes(front_ends, tmp_path):
    fe = front_ends
    w, image_ds, remote = fe.w, fe.image_ds, fe.remote
    log_a, log_b, env_a, env_b = fe.log_a, fe.log_b, fe.env_a, fe.env_b
    attached = fe.attached

    fe.lead(fe.address_a)
    a = fe.start(env_a, "a")
    wait_for(lambda: os.path.ismount(log_a.parent) and log_a.exists() and any(
        r.type == "subscriber.leader" for r in records_now(log_a)), "A leading with the log")
    b = fe.start(env_b, "b")  # a standby: READY at once, no log
    assert "standby" in "".join(b.read_notify())
    assert attached() == [1] and not os.path.ismount(log_b.parent)

    # A's drivers and subscriber append; the first tombstone is shipped by A.
    first = w.oned.create_image(image_ds, "first", size_mb=1)
    w.srv.image.delete(first)
    wait_for(lambda: len(done_keys(log_a)) == 1, "A shipping the first tombstone")
    a.stop(signal.SIGKILL)  # A's subscriber dies; its oned and drivers go on a moment
    second = w.oned.create_image(image_ds, "second", size_mb=1)
    w.srv.image.delete(second)
    wait_for(lambda: [r for r in records_now(log_a) if r.effect_key and r.image == second],
             "the second tombstone requested on A")
    before = [(r.seq, r.hash) for r in records(log_a)]
    assert len(remote_copies(remote)) == 1

    crash(log_a.parent)  # front-end A is gone, without releasing anything
    with pytest.raises(RuntimeError, match="is not StorPool volume one-eventlog"):
        w.oned.create_image(image_ds, "third", size_mb=1)  # oned A's drivers would fail ...
    assert list(log_a.parent.iterdir()) == []  # ... and leave no log of their own

    fe.lead(fe.address_b)
    wait_for(lambda: os.path.ismount(log_b.parent) and any(
        r.type == "subscriber.reconciled" for r in records_now(log_b)[len(before):]),
        "B taking the volume and reconciling", 90)
    assert attached() == [21]  # A's attachment taken by force
    after = records(log_b)
    assert [(r.seq, r.hash) for r in after[:len(before)]] == before  # every record of A's
    types = [r.type for r in after[len(before):]]
    assert types[:3] == ["log.volume.acquired", "subscriber.started", "subscriber.leader"]
    acquired = after[len(before)]
    assert acquired.payload["head"] == before[-1][0] and acquired.payload["client"] == 21
    # the new leader's reconciliation, before it acted on anything, shipped what A left
    assert types[3:5] == ["effect.done", "subscriber.reconciled"]
    assert after[len(before) + 4].payload["why"] == "start"
    keys = done_keys(log_b)
    assert len(keys) == len(set(keys)) == 2
    copies = remote_copies(remote)
    assert len(copies) == 2 and len({c["tags"]["tombstone"] for c in copies}) == 2
    verified = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "verify",
                               "--no-archives", "--log", str(log_b)], env=env_b,
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # A comes back (its machine rebooted): a standby, it takes nothing and writes nothing.
    head = records(log_b)[-1].seq
    a = fe.start(env_a, "a-again")
    assert "standby" in "".join(a.read_notify())
    assert attached() == [21] and not os.path.ismount(log_a.parent)
    assert list(log_a.parent.iterdir()) == []
    assert all(r.pid != a.process.pid for r in records(log_b) if r.seq > head)
    assert a.stop() == 0

    assert b.stop() == 0  # B releases: unmounted, detached
    assert attached() == [] and not os.path.ismount(log_b.parent)


def test_a_leader_that_loses_leadership_stops_writing_and_hands_over(front_ends):
    """No crash: A's subscriber sees it no longer leads, stops, and releases the volume; a
    driver that opened the log on A just before gets an error, not a write B never sees."""
    fe = front_ends
    fe.lead(fe.address_a)
    a = fe.start(fe.env_a, "a")
    wait_for(lambda: os.path.ismount(fe.log_a.parent) and fe.log_a.exists(),
             "A leading with the log")
    b = fe.start(fe.env_b, "b")
    late_driver = EventLog(fe.log_a)  # a driver of A's, started just before the change
    seq = late_driver.append(Event("ds.cp", "ds/cp", {"before": "the change"}, image=7))
    fe.lead(fe.address_b)
    wait_for(lambda: os.path.ismount(fe.log_b.parent) and any(
        r.type == "subscriber.reconciled" and r.seq > seq for r in records_now(fe.log_b)),
        "B taking the volume", 90)
    with pytest.raises(EventLogError):  # A shut its filesystem down on standing by
        late_driver.append(Event("ds.cp", "ds/cp", {"after": "the change"}, image=8))
    late_driver.close()
    assert a.process.poll() is None  # A runs on, as a standby
    assert not os.path.ismount(fe.log_a.parent) and list(fe.log_a.parent.iterdir()) == []
    assert fe.attached() == [21]
    shown = records(fe.log_b)
    assert [r.payload for r in shown if r.type == "ds.cp"] == [{"before": "the change"}]
    by_a = [r.type for r in shown if r.pid == a.process.pid]
    assert by_a[-2:] == ["subscriber.standby", "subscriber.stopped"]  # its last words
    assert a.stop() == 0 and b.stop() == 0
    assert fe.attached() == []


def test_a_leader_without_its_volume_acts_on_nothing_until_it_has_it(front_ends):
    fe = front_ends
    fe.sp.volume_update(VOLUME, rename="one-eventlog-away")
    fe.lead(fe.address_a)
    a = fe.start(fe.env_a, "a")  # READY all the same: it runs, and retries
    output = fe.tmp / "subscriber-a.log"
    wait_for(lambda: "ERROR: subscriber: event log volume one-eventlog does not exist"
             in output.read_text(), "the error")
    assert "cannot take the event log volume" in "".join(a.read_notify())
    with pytest.raises(RuntimeError, match="is not StorPool volume one-eventlog"):
        fe.w.oned.create_image(fe.image_ds, "lost", size_mb=1)  # drivers fail, loudly
    assert list(fe.log_a.parent.iterdir()) == [] and fe.attached() == []
    fe.sp.volume_update("one-eventlog-away", rename=VOLUME)  # the admin puts it back
    wait_for(lambda: fe.log_a.exists() and any(
        r.type == "subscriber.reconciled" for r in records_now(fe.log_a)), "A taking it", 60)
    assert fe.attached() == [1] and a.stop() == 0 and fe.attached() == []
