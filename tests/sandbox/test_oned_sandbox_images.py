"""Images in the oned sandbox: registration, clone, delete and snapshots through the real
StorPool datastore driver and a recording stand-in, with oned's calling conventions per
release, its state events and its error messages.

The TM is the recording stand-in (``fake_remotes/tm/fake``) on purpose: these tests check
oned's own conduct per release (the argv and stdin it gives a TM, its states, bodies and
messages), not what a TM does; the StorPool TM's behaviour is tested with the real driver
(test_tm_lifecycle.py, test_tm_nvram.py, test_tm_monitor_markers.py)."""

from __future__ import annotations

import base64
import re
import subprocess

import pyone
import pytest

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: world, make_world, subscriber

CTIME = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}"


def fake_datastore(w) -> int:
    return w.srv.datastore.allocate('NAME="f"\nDS_MAD="fake"\nTM_MAD="fake"', -1)


def test_image_lifecycle_through_the_real_driver(world, subscriber):
    image_ds, _ = world.datastores()
    disk = world.tmp / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "5M"], check=True,
                   capture_output=True)
    image_id = world.srv.image.allocate(f'NAME="alpine"\nPATH="{disk}"', image_ds)
    # stat ran inside the allocate call, before it answered (oned waits for it)
    assert [r.action for r in world.oned.runs("datastore")][:1] == ["stat"]
    assert world.oned.wait_image(image_id, {"READY", "ERROR"}) == "READY"
    image = world.srv.image.info(image_id)
    source = image.SOURCE
    assert source == f"one-ds-{image_ds}/one-img-0"
    assert (image.FORMAT, image.SIZE) == ("raw", 5)
    assert image.TEMPLATE["DEV_PREFIX"] == "sd"  # DEFAULT_DEVICE_PREFIX
    assert world.frontend.sp.volume("one-img-0")["size"] == 5 << 20
    world.oned.wait_idle()  # the datastore is monitored after the import, as oned does
    stat, cp = world.oned.runs("datastore", "stat")[0], world.oned.runs("datastore", "cp")[0]
    assert stat.argv == ["1"]  # STAT's id is oned's request id, not an image id
    assert base64.b64decode(stat.stdin).decode().startswith(
        f"<DS_DRIVER_ACTION_DATA><IMAGE><PATH>{disk}</PATH></IMAGE><DATASTORE>")
    assert cp.argv == [str(image_id)] and cp.extra == {}  # 6.10: the action on stdin
    action = world.ds_action(cp.stdin)
    assert action.findtext("IMAGE/PATH") == str(disk)
    assert action.findtext("DATASTORE/ID") == str(image_ds)
    assert world.oned.runs("datastore", "monitor")[0].argv == [str(image_ds)]
    assert world.srv.datastore.info(image_ds).TOTAL_MB > 0

    clone_id = world.srv.image.clone(image_id, "copy", -1)
    assert world.oned.wait_image(clone_id, {"READY", "ERROR"}) == "READY"
    assert world.frontend.sp.volume_exists(f"one-img-{clone_id}")
    clone = world.ds_action(world.oned.runs("datastore", "clone")[0].stdin)
    assert clone.findtext("IMAGE/PATH") == image.SOURCE  # PATH: the source's SOURCE
    world.srv.image.delete(clone_id)
    world.oned.wait_image(clone_id, {"GONE"})
    assert not world.frontend.sp.volume_exists(f"one-img-{clone_id}")

    keys = [key for key, _ in subscriber.frames()]
    image_keys = [k for k in keys if k.startswith("EVENT IMAGE")]
    assert image_keys == [f"EVENT IMAGE {image_id}/READY/ ", f"EVENT IMAGE {image_id}/CLONE/ ",
                          f"EVENT IMAGE {clone_id}/READY/ ", f"EVENT IMAGE {image_id}/READY/ ",
                          f"EVENT IMAGE {clone_id}/DELETE/ "]
    assert "EVENT API one.image.delete 1" in keys


def test_stat_failure_fails_the_allocate_call(world):
    image_ds, _ = world.datastores()
    with pytest.raises(pyone.OneInternalException,
                       match=r"\[one.image.allocate\] Cannot parse image SIZE: .*nonexistent"):
        world.srv.image.allocate('NAME="broken"\nPATH="/nonexistent.img"', image_ds)
    assert world.oned.images == {}  # nothing registered


def test_failing_copy_puts_the_image_in_error(world):
    ds = fake_datastore(world)
    world.oned.driver_env.update(FAKE_DS_FAIL="cp",
                                 FAKE_DS_STDERR="ERROR: cp: log only\\ncannot read it\\n")
    image_id = world.srv.image.allocate('NAME="b"\nPATH="/some/file"', ds)
    assert world.oned.wait_image(image_id, {"READY", "ERROR"}) == "ERROR"
    # 6.10: the whole stderr becomes the message, after oned's time stamp
    error = world.srv.image.info(image_id).TEMPLATE["ERROR"]
    stamp, message = error.split(" : ", 1)
    assert re.fullmatch(CTIME, stamp)
    assert message == "Error copying image in the datastore: ERROR: cp: log only cannot read it"


@pytest.mark.parametrize(("version", "argv_len", "message"), [
    ("5.12", 2, "Error creating datablock: the marked text"),
    ("6.8", 1, "Error creating datablock: ERROR MESSAGE --8<------ the marked text "
               "ERROR MESSAGE ------>8--"),
    ("7.0", 1, "Error creating datablock: ERROR MESSAGE --8<------the marked text"
               "ERROR MESSAGE ------>8--"),
])
def test_conventions_follow_the_release(make_world, version, argv_len, message):
    w = make_world(one_version=version)
    ds = fake_datastore(w)
    good = w.srv.image.allocate('NAME="a"\nSIZE="3"', ds)
    assert w.oned.wait_image(good, {"READY", "ERROR"}) == "READY"
    (mkfs,) = [c for c in w.calls("ds") if c["action"] == "mkfs"]
    assert len(mkfs["argv"]) == argv_len and mkfs["argv"][-1] == str(good)
    payload = mkfs["argv"][0] if argv_len == 2 else mkfs["stdin"]
    assert mkfs["stdin"] == ("" if argv_len == 2 else payload)
    assert w.ds_action(payload).findtext("IMAGE/ID") == str(good)
    # drivers run as oned's: working directory /, oneadmin's HOME on the front-end
    assert mkfs["cwd"] == "/" and mkfs["home"] == str(w.oned.fe_path("/var/lib/one"))
    w.oned.driver_env.update(FAKE_DS_FAIL="mkfs", FAKE_DS_STDERR=(
        "ERROR MESSAGE --8<------\\nthe marked text\\nERROR MESSAGE ------>8--\\n"))
    bad = w.srv.image.allocate('NAME="b"\nSIZE="3"', ds)
    assert w.oned.wait_image(bad, {"READY", "ERROR"}) == "ERROR"
    assert w.oned.images[bad].template["ERROR"].split(" : ", 1)[1] == message


@pytest.mark.parametrize(("version", "state"), [("5.12", "READY"), ("6.10", "ERROR")])
def test_copy_without_format_is_an_error_from_6_0(make_world, version, state):
    w = make_world(one_version=version)
    ds = fake_datastore(w)
    w.oned.driver_env["FAKE_DS_CP_OUTPUT"] = "fake/only-a-source-{id}"
    image_id = w.srv.image.allocate('NAME="a"\nPATH="/file"', ds)
    assert w.oned.wait_image(image_id, {"READY", "ERROR"}) == state
    image = w.oned.images[image_id]
    assert image.source == f"fake/only-a-source-{image_id}"
    if state == "ERROR":
        assert image.template["ERROR"].endswith(
            "CP operation succeeded but image FORMAT was not returned.")


def test_missing_drivers_fail_as_oned(world):
    world.oned.ds_mad_conf["nope"] = {}
    ds = world.srv.datastore.allocate('NAME="n"\nDS_MAD="nope"\nTM_MAD="fake"', -1)
    image_id = world.srv.image.allocate('NAME="x"\nSIZE="1"', ds)
    assert world.oned.wait_image(image_id, {"READY", "ERROR"}) == "ERROR"
    assert world.oned.images[image_id].template["ERROR"].endswith(
        "Error creating datablock: Datastore driver 'nope' not available")


def test_image_snapshot_operations(world, subscriber):
    ds = fake_datastore(world)
    image_id = world.oned.create_image(ds, "base", size_mb=4)
    first = world.oned.add_image_snapshot(image_id, "one")
    second = world.oned.add_image_snapshot(image_id, "two")
    with pytest.raises(pyone.OneActionException, match="Cannot delete the active snapshot"):
        world.srv.image.snapshotdelete(image_id, second)
    world.srv.image.snapshotrevert(image_id, first)
    world.oned.wait_idle()
    assert [s.ACTIVE for s in world.srv.image.info(image_id).SNAPSHOTS.SNAPSHOT] == \
        ["YES", None]
    world.srv.image.snapshotdelete(image_id, second)
    world.oned.wait_idle()
    world.srv.image.snapshotflatten(image_id, first)
    world.oned.wait_idle()
    assert world.srv.image.info(image_id).SNAPSHOTS.SNAPSHOT == []
    calls = [c for c in world.calls("ds") if c["action"].startswith("snap_")]
    assert [(c["action"], int(world.ds_action(c["stdin"]).findtext("IMAGE/TARGET_SNAPSHOT")))
            for c in calls] == [("snap_revert", first), ("snap_delete", second),
                                ("snap_flatten", first)]
    keys = [k for k, _ in subscriber.frames() if k.startswith("EVENT IMAGE")]
    assert keys[-6:] == [f"EVENT IMAGE {image_id}/{s}/ " for s in
                         ("LOCKED", "READY", "LOCKED", "READY", "LOCKED", "READY")]


def test_failing_snapshot_delete_keeps_the_snapshot(world):
    ds = fake_datastore(world)
    image_id = world.oned.create_image(ds, "base", size_mb=4)
    first = world.oned.add_image_snapshot(image_id)
    second = world.oned.add_image_snapshot(image_id)  # a child of the first, active
    world.srv.image.snapshotrevert(image_id, first)
    world.oned.wait_idle()
    world.oned.driver_env.update(FAKE_DS_FAIL="snap_delete", FAKE_DS_STDERR="no way\\n")
    world.srv.image.snapshotdelete(image_id, second)
    world.oned.wait_idle()
    image = world.srv.image.info(image_id)
    assert image.STATE == 1 and len(image.SNAPSHOTS.SNAPSHOT) == 2
    assert image.TARGET_SNAPSHOT == -1
    assert image.TEMPLATE["ERROR"].endswith(
        f"Error removing snapshot {second} from image {image_id}: no way")


def test_delete_refused_while_used_and_failed_rm(world):
    ds = fake_datastore(world)
    world.srv.datastore.allocate('NAME="sys"\nTYPE="SYSTEM_DS"\nTM_MAD="fake"', -1)
    image_id = world.oned.create_image(ds, "used", size_mb=2)
    world.srv.vm.allocate(f'NAME="v"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]',
                          False)
    with pytest.raises(pyone.OneActionException, match="There are 1 VMs using it"):
        world.srv.image.delete(image_id)
    other = world.oned.create_image(ds, "other", size_mb=2)
    world.oned.driver_env.update(FAKE_DS_FAIL="rm", FAKE_DS_STDERR="busy\\n")
    world.srv.image.delete(other)
    assert world.oned.wait_image(other, {"ERROR", "GONE"}) == "ERROR"
    assert "Error removing image from datastore" in world.oned.images[other].template["ERROR"]
    world.srv.image.delete(other, True)  # --force: gone even when rm fails
    assert world.oned.wait_image(other, {"GONE"}) == "GONE"


def test_hosts_are_storpool_clients(world):
    host_id = world.oned.create_host("kvm7")  # not in storpool.conf: a new client id
    host = world.srv.host.info(host_id)
    client = int(host.TEMPLATE["SP_OURID"])
    assert client >= 11 and (world.frontend.root / "hosts/kvm7").is_dir()
    assert world.frontend.sandbox.client_dir(client) == world.frontend.root / "hosts/kvm7"
    conf = (world.frontend.root / "etc/storpool.conf").read_text()
    assert f"[kvm7]\nSP_OURID={client}\n" in conf
    with pytest.raises(pyone.OneException, match="NAME is already taken by HOST"):
        world.srv.host.allocate("kvm7", "kvm", "kvm", -1)
