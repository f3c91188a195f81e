"""The ``.monitor`` markers of the Bash add-on's ``oneSymlink`` (reference addon-storpool.md
§4 intro, ``clone``/``mkimage``/``delete`` rows, ``monitor_ds``): ``storpool`` in
``disk.N.monitor`` beside every disk link, the system datastore's TM name in
``<datastore dir>/.monitor`` only when that datastore is not shared, both removed with the
link; and ``monitor_ds`` on a host of OpenNebula >= 5.12 dropping the datastore's mark (the
front-end monitors StorPool), as ``im/.../monitor_ds_vm.rb`` of 6.10 runs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from onestorpool.drivers.install import shipped_remotes
from tests.sandbox.test_tm_lifecycle import storpool_remotes

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: make_world

NOT_SHARED = {"LN_TARGET": "NONE", "CLONE_TARGET": "SELF", "SHARED": "NO",
              "DS_MIGRATE": "YES", "DRIVER": "raw", "ALLOW_ORPHANS": "YES"}


def world(make_world, tmp_path: Path, **options):
    w = make_world(remotes=storpool_remotes(tmp_path / "r"), **options)
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    return w, image_ds


def vm_dir(w, host: str, system_ds: int, vm_id: int) -> Path:
    return w.frontend.host_dir(host) / f"var/lib/one/datastores/{system_ds}/{vm_id}"


def test_disk_links_carry_their_marker_and_lose_it_with_the_link(make_world, tmp_path):
    w, image_ds = world(make_world, tmp_path)
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    node1 = w.oned.create_host("node1")
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = w.oned.instantiate(w.vm_template("v", f'IMAGE_ID="{base}"', 'TYPE="fs",SIZE="1"',
                                             context=True), node1, system_ds)
    folder = vm_dir(w, "node1", system_ds, vm_id)
    for disk_id in (0, 1, 2):  # clone, mkimage, context
        assert (folder / f"disk.{disk_id}.monitor").read_text() == "storpool\n", disk_id
    assert not (folder.parent / ".monitor").exists()  # a StorPool system DS is shared
    w.srv.vm.detach(vm_id, 1)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert not (folder / "disk.1").is_symlink() and not (folder / "disk.1.monitor").exists()
    assert (folder / "disk.0.monitor").exists()
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert not folder.exists()


def test_a_datastore_that_is_not_shared_is_marked_for_its_hosts(make_world, tmp_path):
    w, _image_ds = world(make_world, tmp_path, tm_mad_conf={"storpool": NOT_SHARED})
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    node1, node2 = w.oned.create_host("node1"), w.oned.create_host("node2")
    vm_id = w.oned.instantiate(w.vm_template("v", 'TYPE="fs",SIZE="1"', context=True),
                               node1, system_ds)
    mark = vm_dir(w, "node1", system_ds, vm_id).parent / ".monitor"
    assert mark.read_text() == "storpool\n"
    w.srv.vm.migrate(vm_id, node2, True, False, -1, 0)  # premigrate makes the folder there
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert (vm_dir(w, "node2", system_ds, vm_id).parent / ".monitor").read_text() == \
        "storpool\n"
    assert (vm_dir(w, "node2", system_ds, vm_id) / "disk.0.monitor").read_text() == \
        "storpool\n"
    assert not vm_dir(w, "node1", system_ds, vm_id).exists()  # postmigrate, SP_SYSTEM=ssh


@pytest.mark.parametrize("release_5_12_or_later", [True, False])
def test_monitor_ds_on_a_host(tmp_path, release_5_12_or_later):
    """A host's copy of the remotes (/var/tmp/one): from 5.12 on it has
    im/kvm-probes.d/vm and the mark goes; before, the mark stays. Nothing is printed."""
    remotes = tmp_path / "var/tmp/one"
    (remotes / "tm/storpool").mkdir(parents=True)
    shutil.copy(shipped_remotes() / "tm/storpool/monitor_ds", remotes / "tm/storpool")
    if release_5_12_or_later:
        (remotes / "im/kvm-probes.d/vm").mkdir(parents=True)
    ds_dir = tmp_path / "datastores/101"
    ds_dir.mkdir(parents=True)
    (ds_dir / ".monitor").write_text("storpool\n")
    done = subprocess.run([str(remotes / "tm/storpool/monitor_ds"), str(ds_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert (ds_dir / ".monitor").exists() is not release_5_12_or_later
    refused = subprocess.run([str(remotes / "tm/storpool/monitor_ds"), "relative"],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "absolute path" in refused.stderr
