"""The transfer manager over real ssh: the oned sandbox runs the real TM executables with
the production host provider (``SshHosts``, no ``ONESTORPOOL_HOSTS``), which reaches the
KVM hosts ``node1`` and ``node2`` through real OpenSSH servers on loopback.

Each host's sshd runs in a private mount namespace where ``/dev/storpool`` is the StorPool
sandbox client's device directory and ``/var/lib/one`` the host directory's, so the
product's commands (``ln -sfn /dev/storpool/<volume> ...``, ``test -e``, ``dd``, ``tar``,
``rm -rf``) meet exactly what a real host shows; the executables themselves see the
front-end's directory the same way (oned runs them on the front-end). Nothing is mounted
or created outside those namespaces (tests/sshd.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from onestorpool.drivers.install import shipped_remotes
from tests.sandbox.test_tm_lifecycle import attachments, client_of
from tests.sshd import SSHD, host_view, ssh, ssh_servers

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: make_world

FAKE = Path(__file__).resolve().parent / "fake_remotes"
MIB = 1 << 20
KINDS = ("datastore", "tm")


def _namespaces_work(tmp_path: Path) -> bool:
    probe = subprocess.run([*host_view(tmp_path / "probe-host", tmp_path / "probe-scratch"),
                            "test", "-d", "/dev/storpool"], capture_output=True)
    return probe.returncode == 0


def frontend_remotes(directory: Path, frontend_root: Path) -> Path:
    """remotes/ whose StorPool drivers are the shipped executables, each run as oned runs
    it on the front-end: seeing ``frontend_root`` as the machine's filesystem."""
    remotes = directory / "remotes"
    prefix = host_view(frontend_root, directory / "scratch")
    for kind in KINDS:
        (remotes / kind / "storpool").mkdir(parents=True)
        for real in (shipped_remotes() / kind / "storpool").iterdir():
            wrapper = remotes / kind / "storpool" / real.name
            wrapper.write_text("#!/bin/sh\nexec " + " ".join(prefix) + f' {real} "$@"\n')
            wrapper.chmod(0o755)
    (remotes / "vmm").symlink_to(FAKE / "vmm")
    return remotes


@pytest.fixture
def ssh_cloud(make_world, tmp_path):
    if not os.path.exists(SSHD) or not shutil.which("unshare"):
        pytest.skip("openssh-server and util-linux's unshare are needed (make test)")
    if not _namespaces_work(tmp_path):
        pytest.skip("private mount namespaces need root (CAP_SYS_ADMIN)")
    # make_world's first world lives in w0; its front-end's hosts are fe/hosts/<name>
    hosts_root = tmp_path / "w0" / "fe" / "hosts"
    remotes = frontend_remotes(tmp_path / "r", hosts_root / "localhost")
    w = make_world(remotes=remotes, live_disk_snapshots={"kvm-storpool"})
    assert w.oned.hosts_root == hosts_root.resolve()
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    nodes = [w.oned.create_host(name) for name in ("node1", "node2")]
    with ssh_servers(tmp_path / "ssh", {name: hosts_root / name
                                        for name in ("node1", "node2")}) as config:
        env = w.oned.drivers.env
        for name in ("ONESTORPOOL_HOSTS", "ONESTORPOOL_SANDBOX_HOSTS"):
            env.pop(name)  # the production host provider: ssh to every host but this one
        env["ONESTORPOOL_SSH_CONFIG"] = str(config)
        yield w, image_ds, system_ds, nodes, config


def test_a_vm_lives_on_hosts_reached_over_ssh(ssh_cloud):
    w, image_ds, system_ds, (node1, node2), config = ssh_cloud
    leaked_before = [os.path.exists(p) for p in ("/dev/storpool", "/var/lib/one")]
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    data = w.oned.create_image(image_ds, "data", size_mb=2, persistent=True)
    vm_id = w.oned.instantiate(w.vm_template(
        "web", f'IMAGE_ID="{base}"', f'IMAGE_ID="{data}"', 'TYPE="fs",SIZE="4",FORMAT="raw"',
        'TYPE="swap",SIZE="2"', context=True), node1, system_ds)
    folder = f"/var/lib/one/datastores/{system_ds}/{vm_id}"
    volumes = {0: f"one-img-{base}-{vm_id}-0", 1: f"one-img-{data}",
               2: f"one-sys-{vm_id}-2-raw", 3: f"one-sys-{vm_id}-3-swap",
               4: f"one-sys-{vm_id}-4-iso"}

    def on(host: str, *argv: str, stdin: bytes | None = None) -> bytes:
        return ssh(config, host, list(argv), stdin=stdin).stdout

    def read_disk(host: str, disk_id: int) -> bytes:
        return on(host, "dd", f"if={folder}/disk.{disk_id}", "bs=1M", "count=1",
                  "status=none")

    # clone, ln, mkimage, mkswap, context: attached to node1, linked on node1 as on a host
    n1, n2 = client_of(w, "node1"), client_of(w, "node2")
    assert {v: attachments(w).get(v) for v in volumes.values()} == {
        v: {n1} for v in volumes.values()}
    for disk_id, volume in volumes.items():
        assert on("node1", "readlink", f"{folder}/disk.{disk_id}").decode().strip() == \
            f"/dev/storpool/{volume}"
    assert on("node1", "dd", f"if={folder}/disk.4", "bs=1", "skip=32769", "count=5",
              "status=none") == b"CD001"  # the context ISO, written over ssh
    assert on("node1", "dd", f"if={folder}/disk.3", "bs=4096", "count=1",
              "status=none")[4086:4096] == b"SWAPSPACE2"  # mkswap ran on the host
    payload = os.urandom(MIB)
    for disk_id in (0, 1, 2):
        on("node1", "dd", f"of={folder}/disk.{disk_id}", "bs=1M", "conv=notrunc,fsync",
           "status=none", stdin=payload)

    # SP_SYSTEM=ssh stop/resume: the folder travels node1 -> front-end -> node2 with tar
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\nSP_SYSTEM=ssh\n")
    on("node1", "dd", f"of={folder}/vm.notes", "status=none", stdin=b"kept" * 1000)
    w.srv.vm.action("stop", vm_id)
    w.oned.wait_vm(vm_id, "STOPPED")
    assert not any(attachments(w).get(v) for v in volumes.values())
    on_frontend = w.frontend.host_dir("localhost") / folder.lstrip("/")
    assert (on_frontend / "vm.notes").read_bytes() == b"kept" * 1000
    assert (on_frontend / "checkpoint").exists()
    assert on("node1", "sh", "-c", f"test -e {folder} || echo gone") == b"gone\n"
    w.srv.vm.action("resume", vm_id)
    w.srv.vm.deploy(vm_id, node2, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert on("node2", "cat", f"{folder}/vm.notes") == b"kept" * 1000
    assert not on_frontend.exists()
    assert {v: attachments(w).get(v) for v in volumes.values()} == {
        v: {n2} for v in volumes.values()}
    for disk_id in (0, 1, 2):
        assert read_disk("node2", disk_id) == payload, disk_id

    # live migration back to node1: attached there before, detached from node2 after; in
    # ssh mode the folder goes along (tar over ssh from node2 to node1)
    w.srv.vm.migrate(vm_id, node1, True, False, -1, 0)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert {v: attachments(w).get(v) for v in volumes.values()} == {
        v: {n1} for v in volumes.values()}
    assert on("node1", "cat", f"{folder}/vm.notes") == b"kept" * 1000
    assert on("node2", "sh", "-c", f"test -e {folder} || echo gone") == b"gone\n"
    for disk_id in (0, 1, 2):
        assert read_disk("node1", disk_id) == payload, disk_id
        device = f"/dev/storpool/{volumes[disk_id]}"
        assert on("node2", "sh", "-c", f"test -e {device} || echo gone") == b"gone\n"

    # terminate: the folder removed on the host, nothing of the VM left on StorPool
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert w.frontend.storpool_names() == {f"one-img-{base}", f"one-img-{data}"}
    assert attachments(w) == {}
    assert on("node1", "sh", "-c", f"test -e {folder} || echo gone") == b"gone\n"
    sessions = [(Path(config).parent / f"sshd.{h}.log").read_text().count("Accepted publickey")
                for h in ("node1", "node2")]
    assert all(count > 5 for count in sessions), sessions  # the product's commands, too
    assert [os.path.exists(p) for p in ("/dev/storpool", "/var/lib/one")] == leaked_before
