"""VMs in the oned sandbox, driven through pyone: the TM lines oned writes (argv exactly as
TransferManager.cc builds them), the VMM local actions as one_vmm_exec runs them, the state
events on the hook bus, and the failure states with oned's messages.

The TM is the recording stand-in (``fake_remotes/tm/fake``) on purpose: these tests check
oned's own conduct per release (the argv and stdin it gives a TM, its states, bodies and
messages), not what a TM does; the StorPool TM's behaviour is tested with the real driver
(test_tm_lifecycle.py, test_tm_nvram.py, test_tm_monitor_markers.py)."""

from __future__ import annotations

import base64
import re

import pyone
import pytest
from lxml import etree

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: world, make_world, subscriber

CTIME = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}"


def vm_states(frames: list[tuple[str, str]], vm_id: int) -> list[str]:
    return [key.split()[2].removeprefix("VM/").removesuffix(f"/{vm_id}") for key, _ in frames
            if key.startswith("EVENT STATE VM/") and key.endswith(f"/{vm_id} ")]


def prepare(w, persistent: bool = False) -> tuple[int, int, int, int]:
    """image DS (real driver), system DS, an image and host node1."""
    image_ds, system_ds = w.datastores()
    image_id = w.oned.create_image(image_ds, "os", size_mb=2, persistent=persistent)
    host_id = w.oned.create_host("node1")
    w.calls("tm")
    return image_ds, system_ds, image_id, host_id


def test_deploy_and_terminate_as_oned_does(world, subscriber):
    image_ds, system_ds, image_id, host_id = prepare(world)
    srv = world.srv
    subscriber.frames()
    vm_id = srv.vm.allocate(world.vm_template("web", f'IMAGE_ID="{image_id}"',
                                        'TYPE="swap",SIZE="64"', 'TYPE="fs",SIZE="10"',
                                        context=True), False)
    srv.vm.deploy(vm_id, host_id, False, system_ds)
    world.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    vm = srv.vm.info(vm_id)
    assert vm.DEPLOY_ID.lower() == vm.DEPLOY_ID and len(vm.DEPLOY_ID) == 36  # 6.x: a UUID
    assert vm.TEMPLATE["TM_MAD_SYSTEM"] == "fake"
    volatile = vm.TEMPLATE["DISK"][2]
    assert (volatile["DATASTORE_ID"], volatile["TM_MAD"], volatile["FORMAT"]) == (
        str(system_ds), "fake", "raw")  # the system datastore's, set at deploy
    assert srv.image.info(image_id).STATE == 2  # USED
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    host_vm_dir = world.frontend.root / f"hosts/node1/var/lib/one/datastores/{system_ds}/{vm_id}"
    assert (host_vm_dir / "deployment.0").read_text().startswith("<domain type='kvm'")
    context = world.oned.fe_path(f"/var/lib/one/vms/{vm_id}/context.sh").read_text()
    assert "NETWORK='YES'" in context and "DISK_ID='3'" in context
    srv.vm.action("terminate", vm_id)
    world.oned.wait_vm(vm_id, "DONE")
    assert srv.image.info(image_id).STATE == 1
    assert world.calls("tm") == [
        {"action": "clone", "argv": [f"localhost:one-ds-{image_ds}/one-img-{image_id}",
                                     f"node1:{vm_dir}/disk.0", str(vm_id), str(image_ds)]},
        {"action": "mkswap", "argv": ["64", f"node1:{vm_dir}/disk.1", str(vm_id),
                                      str(system_ds)]},
        {"action": "mkimage", "argv": ["10", "raw", f"node1:{vm_dir}/disk.2", str(vm_id),
                                       str(system_ds)]},
        # the context CD-ROM is made at boot, by the VMM's TM_COMMAND
        {"action": "context", "argv": [f"/var/lib/one/vms/{vm_id}/context.sh",
                                       f"node1:{vm_dir}/disk.3", str(vm_id), str(system_ds)]},
        {"action": "delete", "argv": [f"node1:{vm_dir}/disk.0", str(vm_id), str(image_ds)]},
        {"action": "delete", "argv": [f"node1:{vm_dir}/disk.1", str(vm_id), str(system_ds)]},
        {"action": "delete", "argv": [f"node1:{vm_dir}/disk.2", str(vm_id), str(system_ds)]},
        {"action": "delete", "argv": [f"node1:{vm_dir}", str(vm_id), str(system_ds)]},
    ]
    transfer = world.oned.fe_path(f"/var/lib/one/vms/{vm_id}/transfer.0.prolog").read_text()
    assert transfer.splitlines()[0] == (f"CLONE fake localhost:one-ds-{image_ds}/one-img-"
                                        f"{image_id} node1:{vm_dir}/disk.0 {vm_id} {image_ds}")
    assert vm_states(subscriber.frames(), vm_id) == [
        "PENDING/LCM_INIT", "ACTIVE/LCM_INIT", "ACTIVE/PROLOG", "ACTIVE/BOOT",
        "ACTIVE/RUNNING", "ACTIVE/SHUTDOWN", "ACTIVE/EPILOG", "DONE/LCM_INIT"]


def test_vmm_local_actions_get_oneds_arguments(make_world):
    w = make_world(vmm_local="recorded")
    _image_ds, system_ds, image_id, host_id = prepare(w)
    vm_id = w.oned.instantiate(w.vm_template("v", f'IMAGE_ID="{image_id}"'), host_id, system_ds)
    assert f"fake-domain-{vm_id}" == w.srv.vm.info(vm_id).DEPLOY_ID  # what deploy printed
    w.srv.vm.action("poweroff", vm_id)
    w.oned.wait_vm(vm_id, "POWEROFF")
    deploy, shutdown = w.calls("vmm")
    # local actions: parameters, then the VM id and the host; stdin base64
    assert deploy["argv"] == [f"/var/lib/one/vms/{vm_id}/deployment.0", "node1", str(vm_id),
                              "node1"]
    assert base64.b64decode(deploy["stdin"]).startswith(b"<domain type='kvm'")
    assert shutdown["script"] == "shutdown-rec"
    assert shutdown["argv"] == [f"fake-domain-{vm_id}", "node1", str(vm_id), "node1"]
    message = etree.fromstring(base64.b64decode(shutdown["stdin"]))
    assert message.tag == "VMM_DRIVER_ACTION_DATA"
    assert message.findtext("HOST") == "node1" and message.find("VM/ID").text == str(vm_id)
    assert message.findtext("DATASTORE/ID") == str(system_ds)


def test_failing_prolog_and_recover_delete(world):
    _image_ds, system_ds, _image_id, host_id = prepare(world)
    world.oned.driver_env["FAKE_TM_FAIL"] = "mkimage"
    vm_id = world.srv.vm.allocate(world.vm_template("v", 'TYPE="fs",SIZE="10",FORMAT="raw"'), False)
    world.srv.vm.deploy(vm_id, host_id, False, system_ds)
    world.oned.wait_vm(vm_id, "ACTIVE", "PROLOG_FAILURE")
    error = world.srv.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    stamp, message = error.split(": ", 1)
    assert re.fullmatch(CTIME, stamp)
    # 6.10: the whole stderr, log lines included, after the TM's prefix
    assert message == ("Error executing image transfer script: ERROR: mkimage: simulated "
                       "failure mkimage failed on purpose")
    world.oned._vm_error(world.oned.vms[vm_id], "x" * 120)  # 6.6+ cuts at 100 characters
    assert world.oned.vms[vm_id].user_template["ERROR"].endswith(
        ": " + "x" * 100 + "... see more details in VM log")
    with pytest.raises(pyone.OneActionException, match="This action is not available"):
        world.srv.vm.action("poweroff", vm_id)
    world.calls("tm")
    world.srv.vm.action("terminate", vm_id)  # on a failure state: recover --delete
    world.oned.wait_vm(vm_id, "DONE")
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    assert [c["argv"][0] for c in world.calls("tm")] == [f"node1:{vm_dir}/disk.0",
                                                         f"node1:{vm_dir}"]


def test_stop_undeploy_suspend_resume(world, subscriber):
    image_ds, system_ds, image_id, host_id = prepare(world, persistent=True)
    srv = world.srv
    vm_id = world.oned.instantiate(world.vm_template("db", f'IMAGE_ID="{image_id}"'), host_id,
                                   system_ds)
    world.calls("tm")
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    subscriber.frames()
    srv.vm.action("stop", vm_id)
    world.oned.wait_vm(vm_id, "STOPPED")
    # the hypervisor saved a checkpoint into the VM directory on the host (mv moves it)
    host_dir = world.frontend.root / "hosts/node1" / vm_dir.lstrip("/")
    assert (host_dir / "checkpoint").is_file()
    assert world.calls("tm") == [
        {"action": "mv", "argv": [f"node1:{vm_dir}/disk.0", f"localhost:{vm_dir}/disk.0",
                                  str(vm_id), str(image_ds)]},
        {"action": "mv", "argv": [f"node1:{vm_dir}", f"localhost:{vm_dir}", str(vm_id),
                                  str(system_ds)]}]
    srv.vm.action("resume", vm_id)  # PENDING: the scheduler (here: us) deploys it
    world.oned.wait_vm(vm_id, "PENDING")
    srv.vm.deploy(vm_id, host_id, False, -1)
    world.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert [c["argv"][:2] for c in world.calls("tm")] == [
        [f"localhost:{vm_dir}/disk.0", f"node1:{vm_dir}/disk.0"],
        [f"localhost:{vm_dir}", f"node1:{vm_dir}"]]
    srv.vm.action("undeploy", vm_id)
    world.oned.wait_vm(vm_id, "UNDEPLOYED")
    srv.vm.action("resume", vm_id)
    srv.vm.deploy(vm_id, host_id, False, -1)
    world.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    srv.vm.action("suspend", vm_id)
    world.oned.wait_vm(vm_id, "SUSPENDED")
    srv.vm.action("resume", vm_id)
    world.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    with pytest.raises(pyone.OneActionException, match="not available for state ACTIVE"):
        srv.vm.action("resume", vm_id)
    assert vm_states(subscriber.frames(), vm_id) == [
        "ACTIVE/SAVE_STOP", "ACTIVE/EPILOG_STOP", "STOPPED/LCM_INIT", "PENDING/LCM_INIT",
        "ACTIVE/LCM_INIT", "ACTIVE/PROLOG_RESUME", "ACTIVE/BOOT_STOPPED", "ACTIVE/RUNNING",
        "ACTIVE/SHUTDOWN_UNDEPLOY", "ACTIVE/EPILOG_UNDEPLOY", "UNDEPLOYED/LCM_INIT",
        "PENDING/LCM_INIT", "ACTIVE/LCM_INIT", "ACTIVE/PROLOG_UNDEPLOY", "ACTIVE/BOOT_UNDEPLOY",
        "ACTIVE/RUNNING", "ACTIVE/SAVE_SUSPEND", "SUSPENDED/LCM_INIT", "ACTIVE/BOOT_SUSPENDED",
        "ACTIVE/RUNNING"]
    srv.vm.action("terminate-hard", vm_id)
    world.oned.wait_vm(vm_id, "DONE")
    (mvds, _) = world.calls("tm")[-2:]
    assert mvds == {"action": "mvds", "argv": [
        f"node1:{vm_dir}/disk.0", f"one-ds-{image_ds}/one-img-{image_id}", str(vm_id),
        str(image_ds)]}


def test_cold_and_live_migration(world):
    _image_ds, system_ds, image_id, host_id = prepare(world)
    other = world.oned.create_host("node2")
    srv = world.srv
    vm_id = world.oned.instantiate(world.vm_template("m", f'IMAGE_ID="{image_id}"'), host_id,
                                   system_ds)
    world.calls("tm")
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    srv.vm.migrate(vm_id, other, False, False, -1, 0)
    world.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert [c["argv"][:2] for c in world.calls("tm")] == [
        [f"node1:{vm_dir}/disk.0", f"node2:{vm_dir}/disk.0"],
        [f"node1:{vm_dir}", f"node2:{vm_dir}"]]
    assert srv.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "node2"
    assert srv.host.info(host_id).VMS.ID == [] and [vm_id] == srv.host.info(other).VMS.ID
    srv.vm.migrate(vm_id, host_id, True, False, -1, 0)
    world.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    world.oned.wait_idle()
    pre, post = world.calls("tm")
    assert (pre["action"], post["action"]) == ("premigrate", "postmigrate")
    assert pre["argv"] == ["node2", "node1", vm_dir, str(vm_id), str(system_ds)]
    assert base64.b64decode(pre["stdin"]).startswith(f"<VM><ID>{vm_id}</ID>".encode())
    assert srv.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "node1"
    with pytest.raises(pyone.OneActionException, match="already running on host"):
        srv.vm.migrate(vm_id, host_id, True, False, -1, 0)


def test_disk_hotplug_resize_and_snapshots(make_world):
    w = make_world(vmm_local="recorded")
    image_ds, system_ds, image_id, host_id = prepare(w)
    srv = w.srv
    vm_id = w.oned.instantiate(w.vm_template("d", f'IMAGE_ID="{image_id}"'), host_id, system_ds)
    w.calls("tm"), w.calls("vmm")
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    srv.vm.attach(vm_id, 'DISK=[TYPE="fs",SIZE="20"]')
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert w.calls("tm") == [{"action": "mkimage", "argv": [
        "20", "raw", f"node1:{vm_dir}/disk.1", str(vm_id), str(system_ds)]}]
    (attach,) = w.calls("vmm")
    assert attach["argv"][:4] == [f"fake-domain-{vm_id}", f"{vm_dir}/disk.1", "sdb", "1"]
    assert "ATTACH" not in srv.vm.info(vm_id).TEMPLATE["DISK"][1]
    snap = srv.vm.disksnapshotcreate(vm_id, 0, "before")
    w.oned.wait_idle()
    assert w.calls("tm") == [{"action": "snap_create_live", "argv": [
        f"node1:{vm_dir}/disk.0", str(snap), str(vm_id), str(image_ds)]}]
    srv.vm.diskresize(vm_id, 0, "4096")
    w.oned.wait_idle()
    assert w.calls("tm")[0]["argv"] == [f"node1:{vm_dir}/disk.0", "4096", str(vm_id),
                                       str(image_ds)]
    (resize,) = w.calls("vmm")
    assert resize["argv"][:3] == [f"fake-domain-{vm_id}", "0", "4096"]
    with pytest.raises(pyone.OneActionException):  # revert needs the VM powered off
        srv.vm.disksnapshotrevert(vm_id, 0, snap)
    srv.vm.action("poweroff", vm_id)
    w.oned.wait_vm(vm_id, "POWEROFF")
    srv.vm.disksnapshotrevert(vm_id, 0, snap)
    w.oned.wait_idle()
    second = srv.vm.disksnapshotcreate(vm_id, 0, "after")
    w.oned.wait_idle()
    srv.vm.disksnapshotrevert(vm_id, 0, snap)
    w.oned.wait_idle()
    srv.vm.disksnapshotdelete(vm_id, 0, second)
    w.oned.wait_idle()
    assert [c["action"] for c in w.calls("tm")] == ["snap_revert", "snap_create",
                                                    "snap_revert", "snap_delete"]
    (tree,) = srv.vm.info(vm_id).SNAPSHOTS
    assert [(s.ID, s.ACTIVE) for s in tree.SNAPSHOT] == [(snap, "YES")]
    srv.vm.detach(vm_id, 1)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.oned.wait_idle()
    assert w.calls("tm") == [{"action": "delete", "argv": [
        f"node1:{vm_dir}/disk.1", str(vm_id), str(system_ds)]}]
    assert isinstance(srv.vm.info(vm_id).TEMPLATE["DISK"], dict)  # one disk left


def test_live_disk_snapshot_needs_the_pair_in_live_disk_snapshots(make_world):
    w = make_world(live_disk_snapshots={"kvm-ceph"})
    _image_ds, system_ds, image_id, host_id = prepare(w)
    vm_id = w.oned.instantiate(w.vm_template("d", f'IMAGE_ID="{image_id}"'), host_id, system_ds)
    w.srv.vm.disksnapshotcreate(vm_id, 0, "s")
    w.oned.wait_idle()
    vm = w.srv.vm.info(vm_id)
    assert vm.LCM_STATE == 3 and vm.SNAPSHOTS == []
    assert vm.USER_TEMPLATE["ERROR"].endswith(
        "DISKSNAPSHOTCREATE: Cannot perform a live DISKSNAPSHOTCREATE operation")


def test_disk_saveas_through_mkfs_and_cpds(world):
    image_ds, system_ds, image_id, host_id = prepare(world)
    vm_id = world.oned.instantiate(world.vm_template("s", f'IMAGE_ID="{image_id}"'), host_id,
                                   system_ds)
    world.calls("tm")
    new_image = world.srv.vm.disksaveas(vm_id, 0, "copy", "", -1)
    assert world.oned.wait_image(new_image, {"READY", "ERROR"}) == "READY"
    world.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    source = f"one-ds-{image_ds}/one-img-{new_image}"
    assert source == world.srv.image.info(new_image).SOURCE
    mkfs = world.oned.runs("datastore", "mkfs")[-1]
    assert etree.fromstring(base64.b64decode(mkfs.stdin)).findtext("IMAGE/FORMAT") == \
        "save_as"
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    assert world.calls("tm") == [{"action": "cpds", "argv": [
        f"node1:{vm_dir}/disk.0", source, "-1", str(vm_id), str(image_ds)]}]


def test_vm_snapshots_with_local_actions(make_world):
    w = make_world(vmm_local="recorded")
    _image_ds, system_ds, image_id, host_id = prepare(w)
    vm_id = w.oned.instantiate(w.vm_template("s", f'IMAGE_ID="{image_id}"'), host_id, system_ds)
    w.calls("vmm")
    first = w.srv.vm.snapshotcreate(vm_id, "s1")
    w.oned.wait_idle()
    second = w.srv.vm.snapshotcreate(vm_id, "s2")
    w.oned.wait_idle()
    w.srv.vm.snapshotrevert(vm_id, first)
    w.oned.wait_idle()
    w.srv.vm.snapshotdelete(vm_id, second)
    w.oned.wait_idle()
    (left,) = w.srv.vm.info(vm_id).TEMPLATE["SNAPSHOT"]  # pyone makes SNAPSHOT a list
    assert (left["SNAPSHOT_ID"], left["HYPERVISOR_ID"]) == (str(first), f"fake-snap-{first}")
    assert "ACTIVE" not in left  # cleared when the operation is over
    domain = f"fake-domain-{vm_id}"
    assert [(c["script"], c["argv"]) for c in w.calls("vmm")] == [
        ("snapshot_create-rec", [domain, str(first), str(vm_id), "node1"]),
        ("snapshot_create-rec", [domain, str(second), str(vm_id), "node1"]),
        ("snapshot_revert-rec", [domain, f"fake-snap-{first}", str(vm_id), "node1"]),
        ("snapshot_delete-rec", [domain, f"fake-snap-{second}", str(vm_id), "node1"])]
    w.oned.driver_env["FAKE_VMM_FAIL"] = "snapshot_create-rec"
    w.srv.vm.snapshotcreate(vm_id, "bad")
    w.oned.wait_idle()
    vm = w.srv.vm.info(vm_id)
    assert len(vm.TEMPLATE["SNAPSHOT"]) == 1 and vm.LCM_STATE == 3
    assert vm.USER_TEMPLATE["ERROR"].split(": ", 1)[1].startswith(
        "SNAPSHOTCREATE: ERROR: snapshot_create-rec: simulated failure")


def test_recover_delete_recreate_and_scheduler(make_world):
    w = make_world(scheduler=True)
    image_ds, system_ds, image_id, _host_id = prepare(w, persistent=True)
    sub = w.subscribe()
    try:
        vm_id = w.srv.vm.allocate(w.vm_template("r", f'IMAGE_ID="{image_id}"'), False)
        w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")  # placed by the scheduler
        w.calls("tm")
        w.srv.vm.recover(vm_id, 4)
        w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING", timeout=30)  # recreated and placed again
        keys = [k for k, _ in sub.frames()]
    finally:
        sub.close()
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    calls = w.calls("tm")
    # recover --delete deletes every disk, saved ones too (epilog_delete_commands)
    assert calls[:2] == [
        {"action": "delete", "argv": [f"node1:{vm_dir}/disk.0", str(vm_id), str(image_ds)]},
        {"action": "delete", "argv": [f"node1:{vm_dir}", str(vm_id), str(system_ds)]}]
    assert calls[2]["action"] == "ln"  # persistent: linked again on the next prolog
    assert keys.count("EVENT API one.vm.deploy 1") == 2  # the scheduler calls one.vm.deploy
    assert f"EVENT STATE VM/ACTIVE/CLEANUP_RESUBMIT/{vm_id} " in keys


def test_persistent_disk_snapshots_go_back_to_the_image(world):
    _image_ds, system_ds, image_id, host_id = prepare(world, persistent=True)
    vm_id = world.oned.instantiate(world.vm_template("p", f'IMAGE_ID="{image_id}"'), host_id,
                                   system_ds)
    world.srv.vm.disksnapshotcreate(vm_id, 0, "keep")
    world.oned.wait_idle()
    world.srv.vm.action("terminate", vm_id)
    world.oned.wait_vm(vm_id, "DONE")
    image = world.srv.image.info(image_id)
    assert [s.NAME for s in image.SNAPSHOTS.SNAPSHOT] == ["keep"]
    world.srv.vm.allocate(world.vm_template("a", f'IMAGE_ID="{image_id}"'), False)
    with pytest.raises(pyone.OneException, match="persistent and already in use"):
        world.srv.vm.allocate(world.vm_template("b", f'IMAGE_ID="{image_id}"'), False)


def test_old_release_deploy_id_and_monitoring(make_world):
    for version in ("5.10", "6.10"):
        w = make_world(one_version=version)
        system_ds = w.oned.create_datastore("sys", "SYSTEM_DS", TM_MAD="fake", SHARED="YES")
        host_id = w.oned.create_host("kvm1")
        vm_id = w.oned.instantiate(w.vm_template("m", 'TYPE="fs",SIZE="10"'), host_id,
                                   system_ds)
        deploy_id = w.srv.vm.info(vm_id).DEPLOY_ID
        assert (deploy_id == f"one-{vm_id}") is (version == "5.10")  # 6.0+: a UUID
        w.oned.driver_env["FAKE_MONITOR_VM"] = str(vm_id)
        run = w.oned.monitor_datastore(system_ds)
        assert run.ok and run.action == "monitor" and run.kind == "tm"
        pushed = version != "5.10"
        assert ("VM=[" in run.stdout) is not pushed
        assert ("MONITOR_PORT" in w.oned.driver_env) is pushed
        w.oned._wait(lambda v=w.oned.vms[vm_id]: v.monitoring or None, "monitoring", 10)
        vm = w.srv.vm.info(vm_id)
        assert {d.ID: d.SIZE for d in vm.MONITORING.DISK_SIZE} == {0: 7, 1: 3}
        assert w.srv.datastore.info(system_ds).TOTAL_MB == 100


def test_tm_mad_system_suffix_and_missing_scripts(make_world):
    conf = {"fake": {"LN_TARGET": "NONE", "CLONE_TARGET": "SELF", "SHARED": "YES",
                     "TM_MAD_SYSTEM": "fakesys", "LN_TARGET_FAKESYS": "NONE",
                     "CLONE_TARGET_FAKESYS": "SYSTEM", "DISK_TYPE_FAKESYS": "FILE"},
            "fakesys": {"LN_TARGET": "SYSTEM", "CLONE_TARGET": "SYSTEM", "SHARED": "NO"}}
    w = make_world(tm_mad_conf=conf)
    image_ds = w.srv.datastore.allocate('NAME="img"\nDS_MAD="fake"\nTM_MAD="fake"', -1)
    system_ds = w.srv.datastore.allocate('NAME="sys"\nTYPE="SYSTEM_DS"\nTM_MAD="fakesys"', -1)
    cloned = w.oned.create_image(image_ds, "c", size_mb=1)
    linked = w.oned.create_image(image_ds, "p", size_mb=1, persistent=True)
    host_id = w.oned.create_host("node1")
    vm_id = w.oned.instantiate(w.vm_template("x", f'IMAGE_ID="{cloned}"',
                                             f'IMAGE_ID="{linked}"'), host_id, system_ds)
    disks = w.srv.vm.info(vm_id).TEMPLATE["DISK"]
    assert [(d["TM_MAD_SYSTEM"], d["CLONE_TARGET"], d["DISK_TYPE"]) for d in disks] == \
        [("fakesys", "SYSTEM", "FILE")] * 2
    # CLONE.fakesys falls back to tm/fake/clone (no clone.fakesys); ln.fakesys exists
    assert [(r.driver, r.action) for r in w.oned.runs("tm")] == [("fake", "clone"),
                                                                ("fake", "ln.fakesys")]
    transfer = w.oned.fe_path(f"/var/lib/one/vms/{vm_id}/transfer.0.prolog").read_text()
    assert [line.split()[:2] for line in transfer.splitlines()] == [
        ["CLONE.fakesys", "fake"], ["LN.fakesys", "fake"]]
    # a script the TM does not have fails the transfer as one_tm does
    swap = w.srv.vm.allocate(w.vm_template("s", 'TYPE="swap",SIZE="8"'), False)
    w.srv.vm.deploy(swap, host_id, False, system_ds)
    w.oned.wait_vm(swap, "ACTIVE", "PROLOG_FAILURE")
    missing = w.oned.remotes / "tm" / "fakesys" / "mkswap"
    assert w.oned.runs("tm")[-1].info == f"Driver path '{missing}' does not exists"
    error = w.srv.vm.info(swap).USER_TEMPLATE["ERROR"]  # cut at 100 characters (6.6+)
    assert error.split(": ", 1)[1].startswith("Error executing image transfer script: "
                                              f"Driver path '{str(missing)[:20]}")
