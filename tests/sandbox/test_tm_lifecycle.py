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


def deploy(w, system_ds, host, *disks, context=False) -> int:
    return w.oned.instantiate(w.vm_template("vm", *disks, context=context), host, system_ds)


def test_undeploy_resume_and_live_migration(cloud):
    w, image_ds, system_ds, (node1, node2) = cloud
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"', 'TYPE="fs",SIZE="4"',
                   context=True)
    volumes = [f"one-img-{base}-{vm_id}-0", f"one-sys-{vm_id}-1-raw", f"one-sys-{vm_id}-2-iso"]
    n1, n2 = client_of(w, "node1"), client_of(w, "node2")
    payload = os.urandom(MIB)
    with disk_link(w, "node1", system_ds, vm_id, 1).open("r+b") as dev:
        dev.write(payload)

    w.srv.vm.action("undeploy", vm_id)
    w.oned.wait_vm(vm_id, "UNDEPLOYED")
    assert not any(attachments(w).get(v) for v in volumes)
    w.srv.vm.action("resume", vm_id)
    w.srv.vm.deploy(vm_id, node2, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert all(attachments(w).get(v) == {n2} for v in volumes), attachments(w)
    with disk_link(w, "node2", system_ds, vm_id, 1).open("rb") as dev:
        assert dev.read(MIB) == payload

    calls_before = len(w.frontend.sandbox.api_calls)
    w.srv.vm.migrate(vm_id, node1, True, False, -1, 0)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert all(attachments(w).get(v) == {n1} for v in volumes), attachments(w)
    migrate_calls = [c for c in w.frontend.sandbox.api_calls[calls_before:]
                     if c == "VolumesReassignWait"]
    assert len(migrate_calls) == 2  # pre: attach all to node1; post: detach all from node2
    events = [e for e in w.frontend.events() if e.type in ("tm.premigrate", "tm.postmigrate")]
    assert [sorted(e.payload["volumes"]) for e in events] == [sorted(volumes)] * 2


def test_failed_live_migration_is_rolled_back(make_world, tmp_path):
    w = make_world(remotes=storpool_remotes(tmp_path / "r"), vmm_local="recorded")
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    node1, node2 = (w.oned.create_host(name) for name in ("node1", "node2"))
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"', 'TYPE="fs",SIZE="4"')
    w.oned.driver_env["FAKE_VMM_FAIL"] = "migrate-rec"
    w.srv.vm.migrate(vm_id, node2, True, False, -1, 0)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    n1 = client_of(w, "node1")
    for volume in (f"one-img-{base}-{vm_id}-0", f"one-sys-{vm_id}-1-raw"):
        assert attachments(w).get(volume) == {n1}, attachments(w)
    assert [e.type for e in w.frontend.events() if "migrate" in e.type] == [
        "tm.premigrate", "tm.failmigrate"]
    # SP_SYSTEM=ssh: premigrate's copy of the VM folder is gone from node2, node1's stays
    assert not disk_link(w, "node2", system_ds, vm_id, 0).parent.exists()
    assert disk_link(w, "node1", system_ds, vm_id, 0).is_symlink()


def test_disk_snapshots_resize_and_save_as(cloud):
    w, image_ds, system_ds, (node1, _node2) = cloud
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"')
    volume = f"one-img-{base}-{vm_id}-0"
    link = disk_link(w, "node1", system_ds, vm_id, 0)
    first, second = os.urandom(MIB), os.urandom(MIB)
    with link.open("r+b") as dev:
        dev.write(first)
    snap = w.srv.vm.disksnapshotcreate(vm_id, 0, "first")
    w.oned.wait_idle()
    with link.open("r+b") as dev:
        dev.write(second)
    w.srv.vm.diskresize(vm_id, 0, "8")
    w.oned.wait_idle()
    assert w.frontend.sp.volume(volume)["size"] == 8 * MIB
    w.srv.vm.action("poweroff", vm_id)
    w.oned.wait_vm(vm_id, "POWEROFF")
    later = w.srv.vm.disksnapshotcreate(vm_id, 0, "second")
    w.oned.wait_idle()
    w.srv.vm.disksnapshotrevert(vm_id, 0, snap)
    w.oned.wait_idle()
    assert attachments(w).get(volume) == {client_of(w, "node1")}
    with link.open("rb") as dev:
        assert dev.read(MIB) == first  # the snapshot's data, under the same name
    assert w.frontend.sp.volume(volume)["size"] == 8 * MIB  # not shrunk by the revert
    w.srv.vm.disksnapshotdelete(vm_id, 0, later)
    w.oned.wait_idle()
    left = {s["name"] for s in w.frontend.sp.snapshots_list() if not s.get("deleted")}
    assert f"{volume}-snap{later}" not in left and f"{volume}-snap{snap}" in left
    copy = w.srv.vm.disksaveas(vm_id, 0, "copy", "", -1)
    assert w.oned.wait_image(copy, {"READY", "ERROR"}) == "READY"
    w.oned.wait_idle()
    with _read(w, f"one-img-{copy}") as read:
        assert read(MIB) == first


def test_disk_snapshot_limit(cloud):
    w, image_ds, system_ds, (node1, _node2) = cloud
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\nDISKSNAPSHOT_LIMIT=1\n")
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"')
    w.srv.vm.disksnapshotcreate(vm_id, 0, "a")
    w.oned.wait_idle()
    w.srv.vm.disksnapshotcreate(vm_id, 0, "b")
    w.oned.wait_idle()
    vm = w.srv.vm.info(vm_id)
    assert vm.USER_TEMPLATE["ERROR"].endswith(
        "disk 0 has reached its snapshot limit (DISKSNAPSHOT_LIMIT=1)")
    assert len(vm.SNAPSHOTS[0].SNAPSHOT) == 1


def test_deleting_volatile_disk_1_leaves_disks_10_to_19(cloud):
    """Reference §10: the Bash add-on deleted every volume starting one-sys-<VM>-1."""
    w, _image_ds, system_ds, (node1, _node2) = cloud
    disks = ['TYPE="fs",SIZE="1"'] * 12
    vm_id = deploy(w, system_ds, node1, *disks)
    w.srv.vm.detach(vm_id, 1)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    names = {v["name"] for v in w.frontend.sp.volumes_list()}
    assert f"one-sys-{vm_id}-1-raw" not in names
    assert {f"one-sys-{vm_id}-{d}-raw" for d in (10, 11)} <= names


def test_other_instances_volumes_are_never_touched(cloud):
    """Reference §10: snapshot clean-up by substring across ONE_PX prefixes."""
    w, image_ds, system_ds, (node1, _node2) = cloud
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"')
    volume = f"one-img-{base}-{vm_id}-0"
    w.frontend.sp.volume_create(f"x{volume}", size=MIB)  # another instance's, same suffix
    w.frontend.sp.volume_snapshot(f"x{volume}", f"x{volume}-snap0")
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert w.frontend.sp.snapshot(f"x{volume}-snap0")
    assert w.frontend.sp.volume_exists(f"x{volume}")


def test_mv_in_another_state_is_one_clear_error(cloud):
    w, _image_ds, system_ds, (node1, _node2) = cloud
    vm_id = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="1"')
    import subprocess
    import sys

    script = w.oned.remotes / "tm" / "storpool" / "mv"
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    done = subprocess.run([sys.executable, str(script), f"node1:{vm_dir}/disk.0",
                           f"node2:{vm_dir}/disk.0", str(vm_id), str(system_ds)],
                          capture_output=True, text=True, env=w.oned.drivers.env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert f"VM {vm_id} is in LCM state RUNNING" in done.stderr


@pytest.mark.parametrize("release", ["5.10", "6.10"])
def test_system_datastore_monitor_reports_vm_disks(make_world, tmp_path, release):
    w = make_world(remotes=storpool_remotes(tmp_path / "r"), one_version=release)
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    node1 = w.oned.create_host("node1")
    vm_id = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="8"')
    with disk_link(w, "node1", system_ds, vm_id, 0).open("r+b") as dev:
        dev.write(os.urandom(3 * MIB))
    w.frontend.sandbox.api_calls.clear()
    run = w.oned.monitor_datastore(system_ds)
    assert run.ok, run.stderr
    assert run.stdout.splitlines()[1].startswith("TOTAL_MB=")
    # one call for capacity, one for the volumes, none per VM
    assert sorted(w.frontend.sandbox.api_calls) == ["SnapshotsSpace", "VolumeTemplatesStatus",
                                                    "VolumesSpace"]
    w.oned._wait(lambda v=w.oned.vms[vm_id]: v.monitoring or None, "monitoring", 10)
    vm = w.srv.vm.info(vm_id)
    assert {d.ID: d.SIZE for d in vm.MONITORING.DISK_SIZE} == {0: 3}
    assert ("VM=[" in run.stdout) is (release == "5.10")


@pytest.mark.parametrize("mode", ["ssh", "shared"])
def test_stop_resume_moves_the_vm_folder_in_ssh_mode(cloud, mode):
    w, _image_ds, system_ds, (node1, node2) = cloud
    w.frontend.write_rc(f"ONE_PX=one\nDELAY_DELETE=0\nSP_SYSTEM={mode}\n")
    vm_id = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="2"')
    folder = disk_link(w, "node1", system_ds, vm_id, 0).parent
    (folder / "vm.notes").write_bytes(b"kept" * 1000)  # a file of the VM folder
    w.srv.vm.action("stop", vm_id)
    w.oned.wait_vm(vm_id, "STOPPED")
    on_frontend = disk_link(w, "localhost", system_ds, vm_id, 0).parent
    assert (on_frontend / "checkpoint").exists() is (mode == "ssh")
    assert (folder / "checkpoint").exists() is (mode == "shared")
    w.srv.vm.action("resume", vm_id)
    w.srv.vm.deploy(vm_id, node2, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    moved = disk_link(w, "node2", system_ds, vm_id, 0).parent
    assert (moved / "vm.notes").exists() is (mode == "ssh")
    if mode == "ssh":
        assert (moved / "vm.notes").read_bytes() == b"kept" * 1000
        assert (moved / "checkpoint").exists() and not on_frontend.exists()
    assert attachments(w).get(f"one-sys-{vm_id}-0-raw") == {client_of(w, "node2")}
    with disk_link(w, "node2", system_ds, vm_id, 0).open("rb") as dev:
        dev.read(1)  # the disk link on the new host leads to the device


def test_terminate_keeps_a_tombstone_for_remote_backup(cloud):
    w, image_ds, system_ds, (node1, _node2) = cloud
    w.frontend.write_rc('ONE_PX=one\nDELAY_DELETE=0\nREMOTE_BACKUP_DELETE="backup-site"\n')
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"', 'TYPE="fs",SIZE="2"')
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    deletes = [e for e in w.frontend.events() if e.type == "tm.delete" and "effect" in e.payload]
    effects = sorted(e.payload["effect"]["snapshot"].split("-ONEDELETE-")[0] for e in deletes)
    assert effects == sorted([f"one-img-{base}-{vm_id}-0", f"one-sys-{vm_id}-1-raw"])
    assert all(e.payload["effect"]["location"] == "backup-site" for e in deletes)
    left = {s["name"] for s in w.frontend.sp.snapshots_list() if not s.get("deleted")}
    assert {e.payload["effect"]["snapshot"] for e in deletes} <= left  # kept to be shipped
    assert not {v["name"] for v in w.frontend.sp.volumes_list()} - {f"one-img-{base}"}


def test_a_vm_laid_out_by_the_bash_addon_is_taken_over(cloud):
    """Volumes, tags and links exactly as the Bash add-on made them: migrated, snapshotted
    and terminated by this driver."""
    w, image_ds, system_ds, (node1, node2) = cloud
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"', 'TYPE="fs",SIZE="2"')
    sp = w.frontend.sp
    # the Bash add-on's tags on a non-persistent disk (reference §4 clone, §5 tags)
    sp.volume_update(f"one-img-{base}-{vm_id}-0", tags={
        "virt": "one", "nloc": "one", "nvm": str(vm_id), "type": "NPERS", "diskid": "0",
        "vc-policy": "no"})
    w.srv.vm.migrate(vm_id, node2, True, False, -1, 0)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    n2 = client_of(w, "node2")
    assert attachments(w).get(f"one-img-{base}-{vm_id}-0") == {n2}
    assert attachments(w).get(f"one-sys-{vm_id}-1-raw") == {n2}
    assert sp.volume(f"one-img-{base}-{vm_id}-0")["tags"]["vc-policy"] == "no"  # kept
    w.srv.vm.disksnapshotcreate(vm_id, 0, "s")
    w.oned.wait_idle()
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert w.frontend.storpool_names() == {f"one-img-{base}"}


def test_a_failing_action_leaves_nothing_half_created(cloud):
    w, _image_ds, system_ds, (node1, _node2) = cloud
    w.frontend.sp.volume_template_delete(f"one-ds-{system_ds}")  # the admin's step undone
    vm_id = w.srv.vm.allocate(w.vm_template("v", 'TYPE="fs",SIZE="2"'), False)
    w.srv.vm.deploy(vm_id, node1, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "PROLOG_FAILURE")
    error = w.srv.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    assert f"StorPool template one-ds-{system_ds} does not exist" in error
    assert "INFO:" not in error and "ERROR MESSAGE" not in error
    assert w.frontend.storpool_names() == set() and attachments(w) == {}


def test_migration_to_another_storpool_system_datastore(cloud):
    w, _image_ds, system_ds, (node1, node2) = cloud
    other_ds = w.oned.create_datastore("spsys2", "SYSTEM_DS", TM_MAD="storpool")
    vm_id = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="2"', context=True)
    volume = f"one-sys-{vm_id}-0-raw"
    payload = os.urandom(MIB)
    with disk_link(w, "node1", system_ds, vm_id, 0).open("r+b") as dev:
        dev.write(payload)
    w.srv.vm.action("poweroff", vm_id)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.srv.vm.migrate(vm_id, node2, False, False, other_ds, 0)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.oned.wait_idle()
    for name in (volume, f"one-sys-{vm_id}-1-iso"):
        assert w.frontend.sp.volume(name)["templateName"] == f"one-ds-{other_ds}", name
    w.srv.vm.action("resume", vm_id)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    with disk_link(w, "node2", other_ds, vm_id, 0).open("rb") as dev:
        assert dev.read(MIB) == payload


@pytest.mark.parametrize("action", ["clone", "ln"])
def test_another_instances_volume_is_never_attached(cloud, action):
    w, _image_ds, system_ds, (_node1, _node2) = cloud
    import subprocess
    import sys

    w.frontend.sp.volume_create("other-img-3", size=MIB)
    vm_dir = f"/var/lib/one//datastores/{system_ds}/0"
    done = subprocess.run([sys.executable, str(w.oned.remotes / "tm" / "storpool" / action),
                           "localhost:other-ds-1/other-img-3", f"node1:{vm_dir}/disk.0", "0",
                           "1"], capture_output=True, text=True, env=w.oned.drivers.env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "other-img-3 is not this instance's volume (ONE_PX=one)" in done.stderr
    assert attachments(w) == {} and w.frontend.storpool_names() == {"other-img-3"}


def test_terminate_takes_the_vms_snapshots_but_not_another_instances(cloud):
    w, _image_ds, system_ds, (node1, _node2) = cloud
    vm_id = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="1"')
    volume = f"one-sys-{vm_id}-0-raw"
    sp = w.frontend.sp
    sp.volume_snapshot(volume, f"{volume}-ONESNAP-1-100", tags={"nloc": "one",
                                                                  "nvm": str(vm_id)})
    sp.volume_snapshot(volume, f"{volume}-ONESNAP-2-200")  # the Bash add-on's, untagged
    sp.volume_snapshot(volume, f"{volume}-ONESNAP-3-300", tags={"nloc": "elsewhere"})
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    left = {s["name"] for s in sp.snapshots_list() if not s.get("deleted")}
    assert left == {f"{volume}-ONESNAP-3-300"}


def test_disk_snapshot_limit_precedence(cloud):
    """VM attribute > image datastore > system datastore > addon-storpoolrc."""
    w, image_ds, system_ds, (node1, _node2) = cloud
    w.srv.datastore.update(system_ds, 'DISKSNAPSHOT_LIMIT="1"', 1)
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"')

    def snapshots_after(*names: str) -> int:
        for name in names:
            w.srv.vm.disksnapshotcreate(vm_id, 0, name)
            w.oned.wait_idle()
        (tree,) = w.srv.vm.info(vm_id).SNAPSHOTS
        return len(tree.SNAPSHOT)

    assert snapshots_after("a", "b") == 1  # the system datastore's limit
    w.srv.datastore.update(image_ds, 'DISKSNAPSHOT_LIMIT="5"', 1)
    assert snapshots_after("c") == 2  # the image datastore's limit wins over it
    w.srv.vm.update(vm_id, 'DISKSNAPSHOT_LIMIT="1"', 1)
    assert snapshots_after("d") == 2  # and the VM's over both
    assert w.srv.vm.info(vm_id).USER_TEMPLATE["ERROR"].endswith("(DISKSNAPSHOT_LIMIT=1)")


def test_live_disk_snapshot_freezes_the_guest_when_asked(cloud, tmp_path):
    w, image_ds, system_ds, (node1, _node2) = cloud
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\nDISK_SNAPSHOT_FSFREEZE=1\n")
    calls = tmp_path / "virsh.calls"
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "virsh").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')  # the host's virsh
    (shims / "virsh").chmod(0o755)
    w.oned.drivers.env["PATH"] = f"{shims}:{w.oned.drivers.env['PATH']}"
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"')
    domain = w.srv.vm.info(vm_id).DEPLOY_ID
    snap = w.srv.vm.disksnapshotcreate(vm_id, 0, "quiet")
    w.oned.wait_idle()
    assert calls.read_text().splitlines() == [
        f"-c qemu:///system domfsfreeze {domain}", f"-c qemu:///system domfsthaw {domain}"]
    assert w.frontend.sp.snapshot(f"one-img-{base}-{vm_id}-0-snap{snap}")
