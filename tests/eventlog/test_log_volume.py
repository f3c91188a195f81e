"""The event log on a StorPool volume (eventlog/volume.py) on the StorPool sandbox, with real
ext4 filesystems on loop devices (root and e2fsprogs needed): init, acquire (forced exclusive
attach, fsck, mount, verify), release, and every refusal leaving nothing mounted or attached."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from onestorpool import config
from onestorpool.eventlog import Event, EventLog
from onestorpool.eventlog.volume import (
    FS_IOC_SHUTDOWN,
    MARKER,
    Ext4,
    LogVolume,
    LogVolumeError,
    check_mounted,
)
from onestorpool.sandbox.hosts import env as sandbox_hosts_env
from onestorpool.storpool import StorPoolClient

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("chattr") is None,
    reason="mounting a filesystem needs root and e2fsprogs")

SIZE = 64 << 20
NAME = "one-eventlog"


def crash(directory: Path) -> None:
    """A front-end's death as its StorPool volume sees it. On a cluster the forced attach
    elsewhere takes the device away (every later write fails); the sandbox's device is a
    link to a file, which a loop device keeps open, so its machine is stopped here instead:
    the filesystem shut down without flushing its journal (FS_IOC_SHUTDOWN NOLOGFLUSH, as
    xfstests' godown), then dropped from the mount table."""
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(directory)],
                            capture_output=True, text=True, check=True).stdout.strip()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", 2))
    finally:
        os.close(fd)
    subprocess.run(["umount", "-l", str(directory)], check=True)
    subprocess.run(["losetup", "-d", source], check=True)  # freed when its last file closes


def release_loop_devices(root: Path) -> None:
    """Detach (lazily, when still in use) the loop devices of files under ``root``."""
    listed = subprocess.run(["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"],
                            capture_output=True, text=True, check=False).stdout
    for line in listed.splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(str(root) + "/"):
            subprocess.run(["losetup", "-d", name], capture_output=True, check=False)


def unmount_everything_under(root: Path) -> None:
    """Teardown: no mount, no immutable directory left under ``root`` whatever failed."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in reversed(points):
        if point.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", point], check=False)
    release_loop_devices(root)
    for directory, _dirs, _files in os.walk(root):
        subprocess.run(["chattr", "-i", directory], check=False, capture_output=True)


@pytest.fixture
def no_mounts_left(tmp_path: Path) -> Iterator[None]:
    yield
    unmount_everything_under(tmp_path)


@pytest.fixture
def sp(storpool_sandbox, no_mounts_left) -> Iterator[StorPoolClient]:
    with StorPoolClient(storpool_sandbox.host, storpool_sandbox.port,
                        storpool_sandbox.token) as client:
        client.volume_template_create("eventlog", replication=3)
        yield client


def front_end(tmp_path: Path, sandbox, client: int, monkeypatch) -> Path:
    """A front-end directory: its StorPool client's devices under ``hosts/localhost``."""
    root = tmp_path / f"fe{client}"
    (root / "hosts" / "localhost").mkdir(parents=True)
    sandbox.add_client(client, root / "hosts" / "localhost")
    for key, value in sandbox_hosts_env(root / "hosts").items():
        monkeypatch.setenv(key, value)
    return root / "log" / "events.db"


def attached(sp: StorPoolClient) -> list[int]:
    return sorted(a["client"] for a in sp.attachments_list() if a["volume"] == NAME)


def test_init_acquire_release_and_take_over(tmp_path, storpool_sandbox, sp, monkeypatch):
    path_a = front_end(tmp_path, storpool_sandbox, 11, monkeypatch)
    a = LogVolume(NAME, path_a, 11, sp)
    a.init(size=SIZE, template="eventlog")
    assert sp.volume(NAME)["templateName"] == "eventlog" and attached(sp) == []
    assert not a.filesystem.is_mounted(a.directory)
    with pytest.raises(LogVolumeError, match="is not StorPool volume one-eventlog"):
        check_mounted(a.directory, NAME)  # a writer here now fails ...
    with pytest.raises(OSError):
        (a.directory / "events.db").touch()  # ... and cannot create a local log
    sp.attach(NAME, 11)  # the filesystem's root as init leaves it to oneadmin: here uid 4321
    a.filesystem.mount(a.device(), tmp_path / "fe11")
    os.chown(tmp_path / "fe11", 4321, 4321)
    a.filesystem.unmount(tmp_path / "fe11")
    summary = a.acquire()
    assert summary["records"] == 0 and attached(sp) == [11]
    check_mounted(a.directory, NAME)
    with EventLog(path_a) as log:  # the subscriber (root) writes first
        log.append_batch([Event("ds.rm", "ds/rm", {"n": n}, image=n) for n in range(5)])
        head = log.head()
        for name in ("events.db", "events.db-wal", "events.db-shm", "events.db.lock"):
            made = (a.directory / name).stat()  # the drivers' (oneadmin's), made by root
            assert (made.st_uid, made.st_gid) == (4321, 4321), name

    crash(a.directory)  # A dies holding the volume
    path_b = front_end(tmp_path, storpool_sandbox, 12, monkeypatch)
    b = LogVolume(NAME, path_b, 12, sp)
    summary = b.acquire()  # A never released: taken by force, its journal replayed
    assert attached(sp) == [12]
    assert (summary["head"], summary["head_hash"], summary["records"]) == (
        head[0], head[1].hex(), 5)
    with EventLog(path_b) as log:
        assert [r.payload["n"] for r in log.read()] == list(range(5))
    a.release()  # A's late release touches nothing of B's
    assert attached(sp) == [12] and b.filesystem.is_mounted(b.directory)
    b.release()
    assert attached(sp) == [] and not b.filesystem.is_mounted(b.directory)
    assert list(b.directory.iterdir()) == []


def test_a_missing_volume_is_one_error_and_nothing_done(tmp_path, storpool_sandbox, sp,
                                                        monkeypatch):
    path = front_end(tmp_path, storpool_sandbox, 11, monkeypatch)
    volume = LogVolume(NAME, path, 11, sp)
    with pytest.raises(LogVolumeError, match="one-eventlog does not exist in StorPool: create"):
        volume.acquire()
    assert not path.parent.exists() or list(path.parent.iterdir()) == []


def test_a_refused_attach_leaves_nothing_mounted(tmp_path, storpool_sandbox, sp, monkeypatch):
    path = front_end(tmp_path, storpool_sandbox, 11, monkeypatch)
    LogVolume(NAME, path, 11, sp).init(size=SIZE, template="eventlog")
    stranger = LogVolume(NAME, path, 99, sp)  # not a client of this cluster
    with pytest.raises(LogVolumeError, match="attaching it to client 99 was refused"):
        stranger.acquire()
    assert attached(sp) == [] and not stranger.filesystem.is_mounted(stranger.directory)


def test_a_log_that_does_not_verify_is_refused(tmp_path, storpool_sandbox, sp, monkeypatch):
    path = front_end(tmp_path, storpool_sandbox, 11, monkeypatch)
    volume = LogVolume(NAME, path, 11, sp)
    volume.init(size=SIZE, template="eventlog")
    volume.acquire()
    with EventLog(path) as log:
        log.append_batch([Event("ds.rm", "ds/rm", {"n": n}) for n in range(3)])
    db = sqlite3.connect(path)  # around the code: the triggers dropped, a record edited
    db.execute("DROP TRIGGER events_append_only")
    db.execute("UPDATE events SET type = 'ds.cp' WHERE seq = 2")
    db.commit()
    db.close()
    volume.release()
    with pytest.raises(LogVolumeError, match=r"does not verify: record 2 was altered.*nothing "
                                             "was done"):
        volume.acquire()
    assert attached(sp) == [] and not volume.filesystem.is_mounted(volume.directory)


def test_a_damaged_filesystem_is_refused(tmp_path, storpool_sandbox, sp, monkeypatch):
    path = front_end(tmp_path, storpool_sandbox, 11, monkeypatch)
    volume = LogVolume(NAME, path, 11, sp)
    volume.init(size=SIZE, template="eventlog")
    backing = storpool_sandbox.cluster.object_path(storpool_sandbox.cluster.volumes[NAME])
    with open(backing, "r+b") as disk:  # the primary superblock and group descriptors
        disk.seek(1024)
        disk.write(os.urandom(8192))
    with pytest.raises(LogVolumeError, match=r"filesystem check of .*e2fsck -f"):
        volume.acquire()
    assert attached(sp) == [] and not volume.filesystem.is_mounted(volume.directory)


def test_a_volume_without_the_marker_is_not_taken(tmp_path, storpool_sandbox, sp, monkeypatch):
    path = front_end(tmp_path, storpool_sandbox, 11, monkeypatch)
    sp.volume_create(NAME, size=SIZE, template="eventlog")  # someone else's filesystem
    sp.attach(NAME, 11)
    device = str(tmp_path / "fe11/hosts/localhost/dev/storpool" / NAME)
    Ext4().make(device)
    sp.detach(NAME)
    volume = LogVolume(NAME, path, 11, sp)
    with pytest.raises(LogVolumeError, match="is not StorPool volume one-eventlog"):
        volume.acquire()
    assert attached(sp) == [] and not volume.filesystem.is_mounted(volume.directory)
    assert not (path.parent / MARKER).exists()


def test_a_local_log_in_the_way_is_refused(tmp_path, storpool_sandbox, sp, monkeypatch):
    path = front_end(tmp_path, storpool_sandbox, 11, monkeypatch)
    volume = LogVolume(NAME, path, 11, sp)
    volume.init(size=SIZE, template="eventlog")
    subprocess.run(["chattr", "-i", str(path.parent)], check=True)
    path.write_bytes(b"")  # a front-end that wrote a log of its own
    with pytest.raises(LogVolumeError, match=r"holds events\.db outside the volume"):
        volume.acquire()
    assert attached(sp) == []


def test_drivers_refuse_a_log_that_is_not_the_volume(tmp_path, monkeypatch):
    rc = tmp_path / "rc"
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    rc.write_text(f"EVENT_LOG={log_dir}/events.db\nEVENT_LOG_VOLUME=yes\nONE_PX=two\n")
    loaded = config.load(rc_paths=[rc], storpool_paths=[], environ={})
    monkeypatch.delenv("ONESTORPOOL_EVENTLOG", raising=False)
    with pytest.raises(LogVolumeError, match="is not StorPool volume two-eventlog"):
        config.event_log_path(loaded)
    assert list(log_dir.iterdir()) == []
    for value, expected in (("", ""), ("no", ""), ("1", "yes"), ("my-log.1", "my-log.1")):
        rc.write_text(f"EVENT_LOG_VOLUME={value}\n")
        assert config.load(rc_paths=[rc], storpool_paths=[], environ={})[
            "EVENT_LOG_VOLUME"] == expected
    for bad in ("a/b", "list", "x" * 200, "$(reboot)"):
        rc.write_text(f"EVENT_LOG_VOLUME='{bad}'\n")
        with pytest.raises(config.ConfigError, match="EVENT_LOG_VOLUME: expected yes, no or"):
            config.load(rc_paths=[rc], storpool_paths=[], environ={})


def test_the_command_makes_the_volume_and_tells_where_it_is(tmp_path, storpool_sandbox, sp,
                                                           monkeypatch, capsys):
    import argparse

    from onestorpool.eventlog import volume

    path = front_end(tmp_path, storpool_sandbox, 11, monkeypatch)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/storpool.conf").write_text(
        f"SP_API_HTTP_HOST={storpool_sandbox.host}\nSP_API_HTTP_PORT={storpool_sandbox.port}\n"
        f"SP_AUTH_TOKEN={storpool_sandbox.token}\nSP_OURID=11\n")
    (tmp_path / "var/lib/one/remotes").mkdir(parents=True)
    (tmp_path / "var/lib/one/remotes/addon-storpoolrc").write_text(
        f"ONE_PX=one\nEVENT_LOG_VOLUME=yes\nEVENT_LOG={path}\n")
    monkeypatch.setenv("ONESTORPOOL_ROOT", str(tmp_path))
    monkeypatch.delenv("ONESTORPOOL_EVENTLOG", raising=False)
    parser = argparse.ArgumentParser()
    volume.configure(parser)
    for bad in ("12", "1X", "-5G"):
        with pytest.raises((LogVolumeError, SystemExit)):
            volume.run(parser.parse_args(["init", "--size", bad, "--template", "eventlog"]))
    assert not sp.volume_exists(NAME)
    assert volume.run(parser.parse_args(["init", "--size", "64M", "--template",
                                         "eventlog"])) == 0
    assert sp.volume(NAME)["size"] == 64 << 20
    assert volume.run(parser.parse_args(["status"])) == 0
    out = capsys.readouterr().out
    assert "one-eventlog created (67108864 bytes" in out
    assert "exists; attached to client(s) none; not mounted" in out
    with pytest.raises(LogVolumeError, match="exists already"):
        volume.run(parser.parse_args(["init", "--size", "64M", "--template", "eventlog"]))
    from onestorpool.doctor import Doctor

    def doctor() -> tuple[str, str]:
        checks = Doctor(user="root")
        checks.config, checks.storpool = config.load(), sp
        checks.event_log()
        (check,) = checks.checks
        return check.status, check.detail

    assert doctor() == ("ok", "one-eventlog (mount point "
                        f"{path.parent}, client 11): a standby here; held by no front-end")
    LogVolume.from_config(config.load(), sp).acquire()
    assert doctor() == ("ok", f"one-eventlog (mount point {path.parent}, client 11): mounted "
                        f"here (the leader), {path}")
    storpool_sandbox.add_client(12, tmp_path / "fe12")
    sp.volumes_reassign_wait([{"volume": NAME, "detach": "all", "rw": [12], "force": True}])
    assert doctor()[0] == "fail"  # another front-end took it: this one must let go
