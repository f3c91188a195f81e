"""Checkpoint relocation (:mod:`onestorpool.subscribers.checkpoint`) through whole lifecycles
on the oned sandbox: the real TM and datastore drivers, the add-on's ``tmsave``/``tmrestore``
local actions, the subscriber as a real process on the sandbox's hook bus.

The hosts' native ``save``/``restore`` are stand-ins that write a checkpoint of random bytes
(through the path oned gives, as ``virsh save`` does) and record the checksum of what they
read back at restore. OpenNebula: the checkpoint is ``<DATASTORE_LOCATION>/<DS>/<VM>/
checkpoint`` (``src/vm/History.cc``, release-6.10.5); SUSPENDED and STOPPED are published
as ``EVENT STATE VM/<STATE>/LCM_INIT/<id>`` (``src/hm_mad/one_hm.rb``); resume of a
SUSPENDED VM is the VMM ``restore`` alone (``DispatchManager::resume``), of a STOPPED one the
TM ``mv`` of PROLOG_RESUME then ``restore`` (``src/lcm/LifeCycleStates.cc``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.test_vmm_local import install_native, kvm_remotes
from tests.subscribers.conftest import Daemon, events, subscriber_env, wait_for

pytest_plugins = ["tests.sandbox.conftest_oned"]  # make_world

SIZE = 3 * 1024 * 1024 + 11  # bytes of "memory" the native save writes
NATIVE_SAVE = textwrap.dedent(f"""\
    #!/bin/sh
    # save <domain> <checkpoint> <host> <vm>: random memory through the checkpoint path
    set -e
    dir=$(dirname "$0")
    head -c {SIZE} /dev/urandom > "$dir/memory.$4"
    mkdir -p "$(dirname "$2")"
    dd if="$dir/memory.$4" of="$2" conv=notrunc,fsync status=none
    sha256sum < "$dir/memory.$4" | cut -d' ' -f1 > "$dir/saved.$4"
    """)
NATIVE_RESTORE = textwrap.dedent(f"""\
    #!/bin/sh
    # restore <checkpoint> <host> <domain> <vm>: reads the checkpoint back
    set -e
    dir=$(dirname "$0")
    [ -e "$1" ] || {{ echo "no checkpoint at $1" >&2; exit 1; }}
    head -c {SIZE} "$1" | sha256sum | cut -d' ' -f1 > "$dir/restored.$4"
    """)
# a host's rm that hangs on the checkpoint file: the subscriber is killed right there
HANGING_RM = textwrap.dedent("""\
    #!/bin/sh
    for last; do :; done
    case "$last" in
        */checkpoint) touch "$HANG_MARKER"; sleep 600 ;;
    esac
    exec /bin/rm "$@"
    """)


class Cloud:
    def __init__(self, make_world: Any, tmp_path: Path):
        self.tmp = tmp_path
        self.w = make_world(remotes=kvm_remotes(tmp_path / "r", tmp_path / "native.log"),
                            vmm_local="save=tmsave,restore=tmrestore")
        self.rc("SP_CHECKPOINT=yes")
        self.w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                     DISK_TYPE="BLOCK")
        self.system_ds = self.w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
        self.hosts = {name: self.w.oned.create_host(name) for name in ("node1", "node2")}
        self.native = {name: install_native(self.w, name, {"save": NATIVE_SAVE,
                                                           "restore": NATIVE_RESTORE})
                       for name in self.hosts}
        self.daemons: list[Daemon] = []

    def rc(self, *lines: str) -> None:
        self.w.frontend.write_rc("\n".join(["ONE_PX=one", "DELAY_DELETE=0", *lines]) + "\n")

    def daemon(self, **env: str) -> Daemon:
        daemon = Daemon({**subscriber_env(self.w), **env}, self.tmp / "subscriber.log",
                        self.tmp / f"notify{len(self.daemons)}")
        self.daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    def deploy(self, host: str = "node1") -> int:
        vm_id = self.w.oned.instantiate(
            self.w.vm_template("c", 'TYPE="fs",SIZE="2"', extra='MEMORY="64"\n'),
            self.hosts[host], self.system_ds)
        self.w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
        return vm_id

    def folder(self, host: str, vm_id: int) -> Path:
        return (self.w.frontend.root / "hosts" / host /
                f"var/lib/one/datastores/{self.system_ds}/{vm_id}")

    def saved(self, host: str, vm_id: int) -> str:
        return (self.native[host] / f"saved.{vm_id}").read_text().strip()

    def restored(self, host: str, vm_id: int) -> str:
        return (self.native[host] / f"restored.{vm_id}").read_text().strip()

    def done(self, vm_id: int, effect_type: str = "checkpoint_relocate") -> list[Any]:
        return [r for r in events(self.w, "effect.done")
                if r.vm == vm_id and r.payload["effect_type"] == effect_type]

    def relocated(self, vm_id: int, count: int = 1) -> dict[str, Any]:
        found = wait_for(lambda: len(self.done(vm_id)) >= count and self.done(vm_id),
                         "the relocation recorded")
        return found[count - 1].payload

    def archive(self, volume: str) -> tuple[list[tarfile.TarInfo], bytes]:
        """The volume's archive, read on the bridge as an admin would: members, content."""
        sp = self.w.frontend.sp
        sp.attach(volume, 2, mode="ro")  # bridge1
        try:
            device = self.w.frontend.device("bridge1", volume)
            lz4 = subprocess.run(["lz4", "-dc"], stdin=device.open("rb"), capture_output=True)
        finally:
            sp.detach(volume, [2])
        with tarfile.open(fileobj=io.BytesIO(lz4.stdout), mode="r:") as archive:
            members = archive.getmembers()
            content = archive.extractfile(members[0]).read()  # type: ignore[union-attr]
        return members, content

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.stop(signal.SIGKILL)


@pytest.fixture
def cloud(make_world, tmp_path):
    if subprocess.run(["sh", "-c", "command -v lz4"], capture_output=True).returncode:
        pytest.skip("lz4 is not installed")
    built = Cloud(make_world, tmp_path)
    yield built
    built.close()


def test_suspend_moves_the_checkpoint_and_resume_brings_it_back(cloud):
    cloud.daemon()
    vm_id = cloud.deploy()
    volume = f"one-sys-{vm_id}-checkpoint"
    cloud.w.srv.vm.action("suspend", vm_id)
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    outcome = cloud.relocated(vm_id)
    saved = cloud.saved("node1", vm_id)
    assert not (cloud.folder("node1", vm_id) / "checkpoint").exists()  # the host disk freed
    assert (outcome["bytes"], outcome["sha256"], outcome["removed_file"]) == (SIZE, saved, True)
    info = cloud.w.frontend.sp.volume(volume)
    assert info["templateName"] == f"one-ds-{cloud.system_ds}"
    assert info["size"] == 7 << 20  # twice the file, whole MiB
    assert {k: info["tags"].get(k) for k in ("virt", "nloc", "nvm", "type", "sha256")} == {
        "virt": "one", "nloc": "one", "nvm": str(vm_id), "type": "CHKPNT", "sha256": saved}
    assert not [a for a in cloud.w.frontend.sp.attachments_list() if a["volume"] == volume]
    # the Bash add-on's format: an lz4 tar of the file, named by its path without the "/"
    members, content = cloud.archive(volume)
    assert [m.name for m in members] == [
        f"var/lib/one/datastores/{cloud.system_ds}/{vm_id}/checkpoint"]
    assert hashlib.sha256(content).hexdigest() == saved and len(content) == SIZE

    cloud.w.srv.vm.action("resume", vm_id)
    cloud.w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert cloud.restored("node1", vm_id) == saved
    assert not cloud.w.frontend.sp.volume_exists(volume)
    restore = [e for e in cloud.w.frontend.events() if e.type == "vmm.restore"][-1]
    assert restore.payload["checkpoint_from"]["checkpoint"] == "volume"
    assert restore.payload["checkpoint_from"]["verified"] is True
    assert restore.payload["checkpoint_removed"] == volume

    # a second suspend in the same history record is a relocation of its own
    cloud.w.srv.vm.action("suspend", vm_id)
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    assert cloud.relocated(vm_id, 2)["sha256"] == cloud.saved("node1", vm_id) != saved


@pytest.mark.parametrize("mode", ["ssh", "shared"])
def test_stop_and_resume_on_another_host(cloud, mode):
    cloud.rc("SP_CHECKPOINT=yes", f"SP_SYSTEM={mode}")
    cloud.daemon()
    vm_id = cloud.deploy("node1")
    volume = f"one-sys-{vm_id}-checkpoint"
    cloud.w.srv.vm.action("stop", vm_id)
    cloud.w.oned.wait_vm(vm_id, "STOPPED")
    outcome = cloud.relocated(vm_id)
    saved = cloud.saved("node1", vm_id)
    # ssh: the folder went to the front-end with the checkpoint; shared: it stayed
    where = "localhost" if mode == "ssh" else "node1"
    assert outcome["file"].startswith(f"{where}:")
    assert not (cloud.folder(where, vm_id) / "checkpoint").exists()
    assert cloud.w.frontend.sp.volume(volume)["tags"]["sha256"] == saved

    cloud.w.srv.vm.action("resume", vm_id)
    cloud.w.srv.vm.deploy(vm_id, cloud.hosts["node2"], False, cloud.system_ds)
    cloud.w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert cloud.restored("node2", vm_id) == saved
    assert not cloud.w.frontend.sp.volume_exists(volume)


def test_a_frontend_that_is_no_storpool_client_writes_through_the_vms_host(cloud):
    """SP_SYSTEM=ssh: a stopped VM's folder is on the front-end; when that is no StorPool
    client (no SP_OURID for it), the archive streams to the VM's last host, which writes it
    onto the volume and reads it back."""
    conf = cloud.w.frontend.root / "etc/storpool.conf"
    conf.write_text(conf.read_text().replace("[localhost]\nSP_OURID=1\n", ""))
    cloud.rc("SP_CHECKPOINT=yes", "SP_SYSTEM=ssh")
    cloud.daemon()
    vm_id = cloud.deploy("node1")
    cloud.w.srv.vm.action("stop", vm_id)
    cloud.w.oned.wait_vm(vm_id, "STOPPED")
    outcome = cloud.relocated(vm_id)
    saved = cloud.saved("node1", vm_id)
    assert (outcome["file"].split(":")[0], outcome["written_on"]) == ("localhost", "node1")
    assert (outcome["sha256"], outcome["removed_file"]) == (saved, True)
    assert not (cloud.folder("localhost", vm_id) / "checkpoint").exists()
    cloud.w.srv.vm.action("resume", vm_id)
    cloud.w.srv.vm.deploy(vm_id, cloud.hosts["node2"], False, cloud.system_ds)
    cloud.w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert cloud.restored("node2", vm_id) == saved


def test_a_subscriber_killed_between_write_and_delete_finishes_after_restart(cloud, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rm").write_text(HANGING_RM)
    (bin_dir / "rm").chmod(0o755)
    marker = tmp_path / "hung"
    daemon = cloud.daemon(PATH=f"{bin_dir}:{os.environ['PATH']}", HANG_MARKER=str(marker))
    vm_id = cloud.deploy()
    volume = f"one-sys-{vm_id}-checkpoint"
    cloud.w.srv.vm.action("suspend", vm_id)
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    wait_for(marker.exists, "the relocation at the file's removal")
    daemon.stop(signal.SIGKILL)
    checkpoint = cloud.folder("node1", vm_id) / "checkpoint"
    saved = cloud.saved("node1", vm_id)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == saved  # file kept
    assert cloud.w.frontend.sp.volume_exists(volume)  # and its copy written
    assert not cloud.done(vm_id)

    cloud.daemon()  # reconciliation runs the pending relocation: it verifies, then finishes
    outcome = cloud.relocated(vm_id)
    assert outcome["note"] == "verified the copy of an earlier run"
    assert outcome["removed_file"] is True and not checkpoint.exists()
    assert len(cloud.done(vm_id)) == 1
    assert hashlib.sha256(cloud.archive(volume)[1]).hexdigest() == saved
    cloud.w.srv.vm.action("resume", vm_id)
    cloud.w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert cloud.restored("node1", vm_id) == saved


def test_a_copy_that_does_not_read_back_keeps_the_file(cloud, tmp_path):
    """A compressor that loses data (here: its output cut short): the read-back finds the
    archive broken, the volume goes, the file stays and the effect is failed; once the host
    is fixed, the retry of a restarted subscriber moves it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lz4").write_text('#!/bin/sh\nif [ "$1" = -c ]; then /usr/bin/lz4 -c | '
                                 'head -c 100000; else exec /usr/bin/lz4 "$@"; fi\n')
    (bin_dir / "lz4").chmod(0o755)
    daemon = cloud.daemon(PATH=f"{bin_dir}:{os.environ['PATH']}")
    vm_id = cloud.deploy()
    volume = f"one-sys-{vm_id}-checkpoint"
    cloud.w.srv.vm.action("suspend", vm_id)
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    failed = wait_for(lambda: [r for r in events(cloud.w, "effect.failed") if r.vm == vm_id],
                      "the relocation failed")
    assert failed[0].payload["error"].startswith(
        f"the copy of node1:/var/lib/one/datastores/{cloud.system_ds}/{vm_id}/checkpoint on "
        f"{volume} failed its check, the file stays: node1: ")
    assert "the archive is damaged (Error 66" in failed[0].payload["error"]  # lz4's checksum
    checkpoint = cloud.folder("node1", vm_id) / "checkpoint"
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == cloud.saved("node1", vm_id)
    assert not cloud.w.frontend.sp.volume_exists(volume) and not cloud.done(vm_id)
    daemon.stop()
    cloud.daemon()
    assert cloud.relocated(vm_id)["removed_file"] is True and not checkpoint.exists()


def test_terminate_while_suspended_leaves_no_checkpoint_volume(cloud):
    cloud.daemon()
    vm_id = cloud.deploy()
    cloud.w.srv.vm.action("suspend", vm_id)
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    cloud.relocated(vm_id)
    assert cloud.w.frontend.sp.volume_exists(f"one-sys-{vm_id}-checkpoint")
    cloud.w.srv.vm.action("terminate", vm_id)
    cloud.w.oned.wait_vm(vm_id, "DONE")
    assert not [n for n in cloud.w.frontend.storpool_names() if n.startswith(f"one-sys-{vm_id}")]
    tm_delete = [e for e in cloud.w.frontend.events() if e.type == "tm.delete" and e.vm == vm_id]
    assert f"one-sys-{vm_id}-checkpoint" in tm_delete[-1].payload["removed"]  # by terminate
    wait_for(lambda: [r for r in events(cloud.w, "hook.received")
                      if r.vm == vm_id and r.payload["route"] == "vm.done"], "VM DONE seen")
    assert not cloud.done(vm_id, "checkpoint_drop")  # nothing left for the clean-up


def test_a_volume_made_while_the_vm_was_deleted_goes_with_the_vm_done_clean_up(cloud):
    """oned's TM ``delete`` does not wait for the subscriber: a relocation running meanwhile
    makes its volume after the delete. The VM DONE clean-up drops it, here through the hook
    alternative (``onestorpool hooks run vm.done``, the VM on stdin as onehem passes
    ``$TEMPLATE``)."""
    vm_id = cloud.deploy()
    cloud.w.srv.vm.action("terminate", vm_id)
    cloud.w.oned.wait_vm(vm_id, "DONE")
    volume = f"one-sys-{vm_id}-checkpoint"
    cloud.w.frontend.sp.volume_create(volume, size=1 << 20, tags={
        "virt": "one", "nloc": "one", "nvm": str(vm_id), "type": "CHKPNT"})
    body = cloud.w.oned.call("one.vm.info", vm_id)
    run = subprocess.run([sys.executable, "-m", "onestorpool.cli", "hooks", "run", "vm.done"],
                         input=base64.b64encode(body.encode()).decode(),
                         env=subscriber_env(cloud.w), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert not cloud.w.frontend.sp.volume_exists(volume)
    assert [d.payload["removed"] for d in cloud.done(vm_id, "checkpoint_drop")] == [[volume]]


def test_a_checkpoint_archived_by_the_bash_addon_resumes(cloud):
    cloud.rc("SP_SYSTEM=shared")  # the Bash add-on ran this VM: no relocation of ours
    vm_id = cloud.deploy()
    cloud.w.srv.vm.action("stop", vm_id)
    cloud.w.oned.wait_vm(vm_id, "STOPPED")
    saved = cloud.saved("node1", vm_id)
    # oneCheckpointSave (tm/storpool/storpool_common.sh): volume of twice the file in the
    # system datastore's template, attached to the host, "tar --no-seek
    # --use-compress-program=lz4 --create --file=/dev/storpool/<volume> <checkpoint>", the
    # file removed. (The sandbox's device is a file: dd writes it without truncating it.)
    volume = f"one-sys-{vm_id}-checkpoint"
    sp = cloud.w.frontend.sp
    sp.volume_create(volume, size=7 << 20, template=f"one-ds-{cloud.system_ds}",
                     tags={"virt": "one", "nloc": "one"})
    sp.attach(volume, 3, mode="rw")  # node1
    host_root = cloud.w.frontend.root / "hosts" / "node1"
    member = f"var/lib/one/datastores/{cloud.system_ds}/{vm_id}/checkpoint"
    subprocess.run(["sh", "-c", 'tar --no-seek --use-compress-program=lz4 --create --file=- '
                    '"$1" | dd of="$2" conv=notrunc status=none', "bash-addon", member,
                    str(cloud.w.frontend.device("node1", volume))], cwd=host_root, check=True)
    sp.detach(volume, [3])
    (host_root / member).unlink()

    cloud.rc("SP_CHECKPOINT=yes", "SP_SYSTEM=shared")  # taken over by the Python add-on
    cloud.w.srv.vm.action("resume", vm_id)
    cloud.w.srv.vm.deploy(vm_id, cloud.hosts["node1"], False, cloud.system_ds)
    cloud.w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert cloud.restored("node1", vm_id) == saved
    assert not sp.volume_exists(volume)
    restore = [e for e in cloud.w.frontend.events() if e.type == "vmm.restore"][-1]
    assert restore.payload["checkpoint_from"]["verified"] is False  # it recorded no checksum


def test_resume_with_neither_file_nor_volume_is_one_clear_error(cloud):
    cloud.rc()  # SP_CHECKPOINT off: the checkpoint stays a file
    vm_id = cloud.deploy()
    cloud.w.srv.vm.action("suspend", vm_id)
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    (cloud.folder("node1", vm_id) / "checkpoint").unlink()
    cloud.w.srv.vm.action("resume", vm_id)
    cloud.w.oned.wait_idle()
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    error = cloud.w.srv.vm.info(vm_id).USER_TEMPLATE["ERROR"]  # oned keeps 100 characters
    assert (f"RESTORE: VM {vm_id} has no checkpoint: no volume one-sys-{vm_id}-checkpoint and "
            "no file node1:") in error
    failed = [e for e in cloud.w.frontend.events() if e.type == "vmm.restore.failed"]
    assert failed[-1].payload["error"] == (
        f"VM {vm_id} has no checkpoint: no volume one-sys-{vm_id}-checkpoint and no file "
        f"node1:/var/lib/one//datastores/{cloud.system_ds}/{vm_id}/checkpoint")
    assert not (cloud.native["node1"] / f"restored.{vm_id}").exists()


def test_with_the_checkpoint_on_a_block_device_nothing_is_relocated(cloud):
    cloud.rc("SP_CHECKPOINT=yes", "SP_CHECKPOINT_BD=1")
    cloud.daemon()
    vm_id = cloud.deploy()
    cloud.w.srv.vm.action("suspend", vm_id)
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    wait_for(lambda: [r for r in events(cloud.w, "hook.received")
                      if r.vm == vm_id and r.payload["route"] == "vm.suspended"],
             "the subscriber saw the VM SUSPENDED")
    assert not [r for r in events(cloud.w) if r.vm == vm_id and r.effect_key
                and r.effect_key.startswith("checkpoint_")]  # nothing asked
    assert cloud.w.frontend.sp.volume_exists(f"one-sys-{vm_id}-rawcheckpoint")
    assert not cloud.w.frontend.sp.volume_exists(f"one-sys-{vm_id}-checkpoint")
    cloud.w.srv.vm.action("resume", vm_id)
    cloud.w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert cloud.restored("node1", vm_id) == cloud.saved("node1", vm_id)
    assert not cloud.w.frontend.sp.volume_exists(f"one-sys-{vm_id}-rawcheckpoint")


# -- the host steps, on their own ----------------------------------------------------------


def _checkpoint_file(directory: Path, size: int = SIZE) -> tuple[Path, str]:
    directory.mkdir(parents=True)
    path = directory / "checkpoint"
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compressor", ["lz4", "zstd", "gzip", "pigz", "xz", "bzip2"])
def test_every_compressor_reads_back_by_its_magic(tmp_path, compressor):
    if shutil.which(compressor) is None:
        pytest.skip(f"{compressor} is not installed")
    from onestorpool import hosts
    from onestorpool.drivers import checkpoint_archive as checkpoint

    path, digest = _checkpoint_file(tmp_path / "a folder's name")
    device = tmp_path / "device"
    device.write_bytes(b"\xff" * (8 << 20))  # a reused volume: old bytes after the archive
    place = checkpoint.Place(hosts.Host("localhost", ssh=False), str(path))
    assert checkpoint.inspect_file(place) == checkpoint.Facts(SIZE, digest)
    checkpoint.write_archive(place, str(device), compressor)
    assert device.stat().st_size == 8 << 20  # written in place, never truncated
    assert checkpoint.read_back(place.host, str(device)) == checkpoint.Facts(SIZE, digest)


def test_the_host_steps_over_real_ssh(tmp_path, monkeypatch):
    """Each step runs on a host reached by OpenSSH as the product reaches KVM hosts (its
    scripts travel quoted in one ssh command line: paths with blanks and quotes stay
    whole)."""
    from tests.sshd import SSHD, ssh_servers

    if not os.path.exists(SSHD):
        pytest.skip("openssh-server is needed (make test)")
    from onestorpool import hosts
    from onestorpool.drivers import checkpoint_archive as checkpoint

    path, digest = _checkpoint_file(tmp_path / "it's a VM folder")
    device = tmp_path / "device"
    device.write_bytes(bytes(8 << 20))
    with ssh_servers(tmp_path / "ssh", {"node1": None}) as config:
        monkeypatch.setenv(hosts.SSH_CONFIG_ENV, str(config))
        host = hosts.Host("node1", ssh=True)
        place = checkpoint.Place(host, str(path))
        facts = checkpoint.inspect_file(place)
        assert facts == checkpoint.Facts(SIZE, digest)
        checkpoint.write_archive(place, str(device), "lz4")
        assert checkpoint.read_back(host, str(device)) == facts
        assert checkpoint.inspect_file(checkpoint.Place(host, str(tmp_path / "none"))) is None
        device.write_bytes(device.read_bytes()[:50000])  # cut short: never a good copy
        with pytest.raises(checkpoint.CheckpointError, match=r"^node1: .*device"):
            checkpoint.read_back(host, str(device))


def test_a_suspend_while_the_subscriber_is_down_is_caught_up_on_start(cloud):
    """PUB/SUB dropped the SUSPENDED message: the start's reconciliation finds the VM in
    oned's pool and relocates its checkpoint; a second start asks for nothing again."""
    vm_id = cloud.deploy()
    cloud.w.srv.vm.action("suspend", vm_id)
    cloud.w.oned.wait_vm(vm_id, "SUSPENDED")
    assert (cloud.folder("node1", vm_id) / "checkpoint").exists()
    first = cloud.daemon()
    outcome = cloud.relocated(vm_id)
    assert outcome["sha256"] == cloud.saved("node1", vm_id) and outcome["removed_file"]
    assert not (cloud.folder("node1", vm_id) / "checkpoint").exists()
    assert first.stop() == 0
    requested = [r for r in events(cloud.w, "subscriber.requested") if r.vm == vm_id]
    assert len(requested) == 1 and "catch-up" in requested[0].payload["effect"]["key"]
    cloud.daemon()  # another start: the VM and its history record were caught up already
    wait_for(lambda: len(events(cloud.w, "subscriber.reconciled")) >= 2, "a second pass")
    assert len([r for r in events(cloud.w, "subscriber.requested") if r.vm == vm_id]) == 1
