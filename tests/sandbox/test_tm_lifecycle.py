"""The real StorPool transfer manager (TM_MAD=storpool) driven by the oned sandbox through a
VM's life: deploy with non-persistent, persistent, volatile, swap and context disks, data
written through the host's device links, stop/resume, undeploy/resume, live migration (and
one that fails), disk snapshots, resize, terminate; after each step the data is intact, the
volumes are attached exactly where the VM runs, and after terminate nothing is left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onestorpool.drivers.install import shipped_remotes

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: make_world

FAKE = Path(__file__).resolve().parent / "fake_remotes"
MIB = 1 << 20


def storpool_remotes(directory: Path) -> Path:
    """remotes/ with the add-on's real datastore and TM drivers."""
    remotes = directory / "remotes"
    for kind in ("datastore", "tm"):
        (remotes / kind).mkdir(parents=True)
        (remotes / kind / "storpool").symlink_to(shipped_remotes() / kind / "storpool")
    (remotes / "vmm").symlink_to(FAKE / "vmm")
    return remotes


@pytest.fixture
def cloud(make_world, tmp_path):
    w = make_world(remotes=storpool_remotes(tmp_path / "r"), live_disk_snapshots={"kvm-storpool"})
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    hosts = [w.oned.create_host(name) for name in ("node1", "node2")]
    return w, image_ds, system_ds, hosts


def attachments(w) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for item in w.frontend.sp.attachments_list():
        found.setdefault(item["volume"], set()).add(int(item["client"]))
    return found


def client_of(w, host: str) -> int:
    import re

    conf = (w.frontend.root / "etc/storpool.conf").read_text()
    return int(re.search(rf"\[{host}\]\nSP_OURID=(\d+)", conf)[1])


def disk_link(w, host: str, system_ds: int, vm_id: int, disk_id: int) -> Path:
    return (w.frontend.root / "hosts" / host /
            f"var/lib/one/datastores/{system_ds}/{vm_id}/disk.{disk_id}")


def test_a_vm_lives_and_dies_on_storpool(cloud):
    w, image_ds, system_ds, (node1, _node2) = cloud
    base = w.oned.create_image(image_ds, "base", size_mb=4)
    data = w.oned.create_image(image_ds, "data", size_mb=4, persistent=True)
    vm_id = w.oned.instantiate(w.vm_template(
        "web", f'IMAGE_ID="{base}"', f'IMAGE_ID="{data}"', 'TYPE="swap",SIZE="8"',
        'TYPE="fs",SIZE="6",FORMAT="raw"', context=True), node1, system_ds)
    px = "one"
    volumes = {0: f"{px}-img-{base}-{vm_id}-0", 1: f"{px}-img-{data}",
               2: f"{px}-sys-{vm_id}-2-swap", 3: f"{px}-sys-{vm_id}-3-raw",
               4: f"{px}-sys-{vm_id}-4-iso"}
    n1 = client_of(w, "node1")
    attached = attachments(w)
    for disk_id, volume in volumes.items():
        assert attached.get(volume) == {n1}, (volume, attached)
        link = disk_link(w, "node1", system_ds, vm_id, disk_id)
        assert os.readlink(link).endswith(f"/dev/storpool/{volume}")
    assert w.frontend.sp.volume(volumes[0])["tags"] == {
        "virt": "one", "nloc": "one", "nvm": str(vm_id), "type": "NPERS", "diskid": "0"}
    assert w.frontend.sp.volume(volumes[3])["size"] == 6 * MIB
    assert w.frontend.sp.volume(volumes[3])["templateName"] == f"{px}-ds-{system_ds}"
    iso = disk_link(w, "node1", system_ds, vm_id, 4).read_bytes()
    assert iso[0x8001:0x8006] == b"CD001"  # an ISO 9660 volume descriptor
    payload = os.urandom(MIB)
    for disk_id in (0, 1, 3):
        with disk_link(w, "node1", system_ds, vm_id, disk_id).open("r+b") as dev:
            dev.write(payload)

    # stop / resume: detached from the host, attached again (to the host the scheduler picks)
    w.srv.vm.action("stop", vm_id)
    w.oned.wait_vm(vm_id, "STOPPED")
    assert not any(attachments(w).get(v) for v in volumes.values())
    w.srv.vm.action("resume", vm_id)
    w.srv.vm.deploy(vm_id, node1, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    for disk_id in (0, 1, 3):
        with disk_link(w, "node1", system_ds, vm_id, disk_id).open("rb") as dev:
            assert dev.read(MIB) == payload, disk_id

    # a disk snapshot, then terminate: nothing of the VM is left on StorPool
    snap = w.srv.vm.disksnapshotcreate(vm_id, 0, "s1")
    w.oned.wait_idle()
    assert w.frontend.sp.snapshot(f"{volumes[0]}-snap{snap}")
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    names = w.frontend.storpool_names()
    assert names == {f"{px}-img-{base}", f"{px}-img-{data}"}, names
    assert attachments(w) == {}
    tags = w.frontend.sp.volume(volumes[1])["tags"]
    assert "nvm" not in tags and "type" not in tags  # the persistent image is free again
    with _read(w, volumes[1]) as read:
        assert read(MIB) == payload


class _read:
    """Attach a volume to the front-end's client, read it, detach."""

    def __init__(self, w, volume: str):
        self.w, self.volume = w, volume

    def __enter__(self):
        self.w.frontend.sp.attach(self.volume, 1, mode="ro")
        self.handle = self.w.frontend.device("localhost", self.volume).open("rb")
        return self.handle.read

    def __exit__(self, *exc):
        self.handle.close()
        self.w.frontend.sp.detach(self.volume, [1])
