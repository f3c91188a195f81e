"""A VM's UEFI variables on StorPool (``T_OS_NVRAM=storpool:template=<file>``, reference
addon-storpool.md §4 ``context``/``mv``/``premigrate``/``delete``, §4b ``os.py``) through the
real TM in the oned sandbox: made once from the OVMF vars template, never overwritten, moved
with the VM by every transfer, kept for DELAY_DELETE after terminate; a bad template stops
the deploy with its reason and leaves nothing.

oned sends the context command with every DEPLOY (the VMM driver runs it before the
hypervisor: ``tm_command`` of ``one_vmm_exec.rb``), so ``context`` is where the volume is
attached to the host the VM boots on each time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.sandbox.test_tm_lifecycle import attachments, client_of, storpool_remotes
from tests.sandbox.test_vmm_local import snapshot_cloud  # noqa: F401  (a fixture)

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: make_world

MIB = 1 << 20
TEMPLATE = os.urandom(128 * 1024)  # an OVMF_VARS.fd is 128 KiB (528 KiB for the 4M build)
NVRAM_VM = 'T_OS_NVRAM="storpool:template=OVMF_VARS.fd type=block"\n'


@pytest.fixture
def cloud(make_world, tmp_path):
    w = make_world(remotes=storpool_remotes(tmp_path / "r"))
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    ovmf = w.frontend.root / "var/lib/one/remotes/OVMF"  # the default OVMF_PATH
    ovmf.mkdir(parents=True)
    (ovmf / "OVMF_VARS.fd").write_bytes(TEMPLATE)
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    hosts = [w.oned.create_host(name) for name in ("node1", "node2")]
    return w, image_ds, system_ds, hosts


def uefi_vm(w, system_ds: int, host: int, extra: str = NVRAM_VM) -> int:
    template = w.vm_template("uefi", 'TYPE="fs",SIZE="2"', context=True, extra=extra)
    return w.oned.instantiate(template, host, system_ds)


def read_nvram(w, host: str, vm_id: int) -> bytes:
    return w.frontend.device(host, f"one-sys-{vm_id}-NVRAM").read_bytes()


def test_nvram_follows_the_vm_through_its_life(cloud):
    w, _image_ds, system_ds, (node1, node2) = cloud
    vm_id = uefi_vm(w, system_ds, node1)
    nvram = f"one-sys-{vm_id}-NVRAM"
    n1, n2 = client_of(w, "node1"), client_of(w, "node2")
    volume = w.frontend.sp.volume(nvram)
    assert volume["size"] == len(TEMPLATE)  # QEMU's pflash wants the template's exact size
    assert volume["templateName"] == f"one-ds-{system_ds}"
    assert volume["tags"] == {"virt": "one", "nloc": "one", "nvm": str(vm_id),
                              "type": "NVRAM"}
    assert attachments(w)[nvram] == {n1}
    assert read_nvram(w, "node1", vm_id) == TEMPLATE
    guest_vars = os.urandom(len(TEMPLATE))  # the guest writes its boot entries
    w.frontend.device("node1", nvram).write_bytes(guest_vars)

    # a later context run (oned's recover/updateconf) attaches it and never rewrites it
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    context_disk = w.srv.vm.info(vm_id).TEMPLATE["CONTEXT"]["DISK_ID"]
    (w.frontend.host_dir("localhost") / "ctx.txt").write_text("HOSTNAME=uefi\n")
    run = subprocess.run([sys.executable, str(w.oned.remotes / "tm/storpool/context"),
                          "/ctx.txt", f"node1:{vm_dir}/disk.{context_disk}", str(vm_id),
                          str(system_ds)], capture_output=True, text=True,
                         env=w.oned.drivers.env, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert read_nvram(w, "node1", vm_id) == guest_vars

    w.srv.vm.action("poweroff", vm_id)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.srv.vm.action("resume", vm_id)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert attachments(w)[nvram] == {n1}

    # live migration: in the one VolumesReassignWait with the disks, both ways
    before = len(w.frontend.sandbox.api_calls)
    w.srv.vm.migrate(vm_id, node2, True, False, -1, 0)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert attachments(w)[nvram] == {n2}
    assert w.frontend.sandbox.api_calls[before:].count("VolumesReassignWait") == 2
    migrations = [e for e in w.frontend.events()
                  if e.type in ("tm.premigrate", "tm.postmigrate")]
    assert all(nvram in e.payload["volumes"] for e in migrations) and len(migrations) == 2
    assert read_nvram(w, "node2", vm_id) == guest_vars

    # cold migration (from poweroff) back to node1
    w.srv.vm.action("poweroff", vm_id)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.srv.vm.migrate(vm_id, node1, False, False, -1, 0)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.oned.wait_idle()
    assert attachments(w)[nvram] == {n1}
    w.srv.vm.action("resume", vm_id)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")

    # stop/resume (SP_SYSTEM=ssh, the default): off every host, then on the new one
    w.srv.vm.action("stop", vm_id)
    w.oned.wait_vm(vm_id, "STOPPED")
    assert not attachments(w).get(nvram)
    w.srv.vm.action("resume", vm_id)
    w.srv.vm.deploy(vm_id, node2, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert attachments(w)[nvram] == {n2}
    assert read_nvram(w, "node2", vm_id) == guest_vars

    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert w.frontend.storpool_names() == set() and attachments(w) == {}


def test_nvram_moves_to_another_system_datastores_template(cloud):
    w, _image_ds, system_ds, (node1, node2) = cloud
    other_ds = w.oned.create_datastore("spsys2", "SYSTEM_DS", TM_MAD="storpool")
    vm_id = uefi_vm(w, system_ds, node1)
    w.srv.vm.action("poweroff", vm_id)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.srv.vm.migrate(vm_id, node2, False, False, other_ds, 0)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.oned.wait_idle()
    nvram = f"one-sys-{vm_id}-NVRAM"
    assert w.frontend.sp.volume(nvram)["templateName"] == f"one-ds-{other_ds}"
    assert attachments(w)[nvram] == {client_of(w, "node2")}
    assert read_nvram(w, "node2", vm_id) == TEMPLATE


def test_terminate_keeps_the_nvram_for_delay_delete(cloud):
    """The Bash add-on deleted NVRAM at once whatever DELAY_DELETE said (reference §10)."""
    w, _image_ds, system_ds, (node1, _node2) = cloud
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=2h\n")
    vm_id = uefi_vm(w, system_ds, node1)
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert {v["name"] for v in w.frontend.sp.volumes_list()} == set()
    (event,) = [e for e in w.frontend.events() if e.type == "tm.delete"
                and f"one-sys-{vm_id}-NVRAM" in e.payload["removed"]]
    kept = w.frontend.sp.snapshot(event.payload["delayed_snapshot"])
    assert kept["size"] == len(TEMPLATE) and kept["tags"].get("del") == "y"
    left = {s["name"] for s in w.frontend.sp.snapshots_list() if not s.get("deleted")}
    assert event.payload["delayed_snapshot"] in left


def test_a_vm_without_t_os_nvram_gets_none(cloud):
    w, _image_ds, system_ds, (node1, _node2) = cloud
    calls_before = len(w.frontend.sandbox.api_calls)
    vm_id = uefi_vm(w, system_ds, node1, extra="")
    assert not w.frontend.sp.volume_exists(f"one-sys-{vm_id}-NVRAM")
    # mkimage: create, attach; context: the ISO's lookup, create, attach; nothing for NVRAM
    # (then the deploy's own look at a disk)
    assert w.frontend.sandbox.api_calls[calls_before:] == [
        "VolumeCreate", "VolumesReassignWait", "Volume", "VolumeCreate",
        "VolumesReassignWait", "Volume"]


@pytest.mark.parametrize(("setting", "reason"), [
    ('T_OS_NVRAM="storpool"', "T_OS_NVRAM=storpool needs template=<OVMF vars file>"),
    ('T_OS_NVRAM="storpool:template=MISSING.fd"', "MISSING.fd: No such file or directory"),
    ('T_OS_NVRAM="storpool:template=../../../../etc/storpool.conf"',
     "template must be a file name in"),
    ('T_OS_NVRAM="storpool:template=/etc/storpool.conf"', "is not in the OVMF directory"),
    ('T_OS_NVRAM="storpool:template=odd.fd"', "is 1000 bytes: an OVMF vars file"),
    ('T_OS_NVRAM="storpool:template=OVMF_VARS.fd type=floppy"', "type must be block or file"),
])
def test_a_bad_template_stops_the_deploy_and_leaves_nothing(cloud, setting, reason):
    w, _image_ds, system_ds, (node1, _node2) = cloud
    (w.frontend.root / "var/lib/one/remotes/OVMF/odd.fd").write_bytes(b"x" * 1000)
    vm_id = w.srv.vm.allocate(w.vm_template("v", context=True, extra=setting + "\n"), False)
    w.srv.vm.deploy(vm_id, node1, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "BOOT_FAILURE")  # oned runs context at each boot
    error = w.srv.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    assert reason in error, error
    assert "INFO:" not in error and "ERROR MESSAGE" not in error
    assert w.frontend.storpool_names() == set() and attachments(w) == {}


def test_a_fifo_as_template_is_refused_without_hanging(cloud):
    w, _image_ds, system_ds, (node1, _node2) = cloud
    os.mkfifo(w.frontend.root / "var/lib/one/remotes/OVMF/pipe.fd")
    vm_id = w.srv.vm.allocate(w.vm_template(
        "v", context=True, extra='T_OS_NVRAM="storpool:template=pipe.fd"\n'), False)
    w.srv.vm.deploy(vm_id, node1, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "BOOT_FAILURE")  # oned runs context at each boot
    assert "is not a regular file" in w.srv.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    assert w.frontend.storpool_names() == set()


def test_a_bash_laid_nvram_is_taken_over(cloud):
    """A VM whose NVRAM the Bash add-on made (same name, its tags): kept as it is by a later
    context, migrated with the VM, deleted at terminate."""
    w, _image_ds, system_ds, (node1, node2) = cloud
    sp = w.frontend.sp
    vm_id = w.srv.vm.allocate(w.vm_template("v", context=True, extra=NVRAM_VM), False)
    nvram = f"one-sys-{vm_id}-NVRAM"
    sp.volume_create(nvram, size=len(TEMPLATE), template=f"one-ds-{system_ds}", tags={
        "virt": "one", "nloc": "one", "nvm": str(vm_id), "type": "NVRAM"})
    sp.attach(nvram, client_of(w, "node2"))  # left on a host by an earlier life
    bash_vars = os.urandom(len(TEMPLATE))
    w.frontend.device("node2", nvram).write_bytes(bash_vars)
    w.srv.vm.deploy(vm_id, node1, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert attachments(w)[nvram] == {client_of(w, "node1")}
    assert read_nvram(w, "node1", vm_id) == bash_vars
    w.srv.vm.migrate(vm_id, node2, True, False, -1, 0)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert attachments(w)[nvram] == {client_of(w, "node2")}
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert w.frontend.storpool_names() == set()


def test_template_paths(tmp_path):
    """A file name in the OVMF directory, or an absolute path inside it (an admin's link
    there is followed); nothing outside, however spelled."""
    from pathlib import Path

    from onestorpool.drivers.nvram import NvramRequest, read_template, template_path
    from onestorpool.errors import InputError
    from onestorpool.one import Template

    ovmf = tmp_path / "OVMF"
    ovmf.mkdir()
    (tmp_path / "vars.fd").write_bytes(TEMPLATE)
    (ovmf / "linked.fd").symlink_to(tmp_path / "vars.fd")

    class Vm:
        id = 7

        def __init__(self, text: str):
            self.user_template = Template("USER_TEMPLATE", {"T_OS_NVRAM": text})

    def resolve(text: str) -> Path:
        return template_path(NvramRequest.of(Vm(text)), ovmf, 7)

    assert read_template(resolve("storpool:template=linked.fd"), 7) == TEMPLATE
    assert resolve(f"storpool:template={ovmf}/linked.fd") == ovmf / "linked.fd"
    for bad in (f"storpool:template={ovmf}/../vars.fd", "storpool:template=..",
                "storpool:template=sub/x.fd", f"storpool:template={tmp_path}/vars.fd"):
        with pytest.raises(InputError):
            resolve(bad)
    assert NvramRequest.of(Vm("nvram.fd:template=x.fd")).on_storpool is False
    with pytest.raises(InputError, match="expected <file>"):
        NvramRequest.of(Vm("storpool:template"))


def test_a_vm_snapshot_takes_and_gives_back_the_nvram(snapshot_cloud):  # noqa: F811
    """Decided against the Bash add-on (reference §10: its VM snapshots never held the
    NVRAM): the UEFI variables go with the disks they boot."""
    w, _image_ds, system_ds, node1 = snapshot_cloud
    ovmf = w.frontend.root / "var/lib/one/remotes/OVMF"
    ovmf.mkdir(parents=True)
    (ovmf / "OVMF_VARS.fd").write_bytes(TEMPLATE)
    vm_id = uefi_vm(w, system_ds, node1)
    nvram = f"one-sys-{vm_id}-NVRAM"
    before, after = os.urandom(len(TEMPLATE)), os.urandom(len(TEMPLATE))
    w.frontend.device("node1", nvram).write_bytes(before)
    snap = w.srv.vm.snapshotcreate(vm_id, "s1")
    w.oned.wait_idle()
    (record,) = w.srv.vm.info(vm_id).TEMPLATE["SNAPSHOT"]
    assert w.frontend.sp.snapshot(f"{nvram}-{record['HYPERVISOR_ID']}")["tags"]["nvm"] == \
        str(vm_id)
    w.frontend.device("node1", nvram).write_bytes(after)
    w.srv.vm.snapshotrevert(vm_id, snap)
    w.oned.wait_idle()
    vm = w.srv.vm.info(vm_id)
    assert "ERROR" not in vm.USER_TEMPLATE, vm.USER_TEMPLATE.get("ERROR")
    assert read_nvram(w, "node1", vm_id) == before
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert w.frontend.storpool_names() == set()


@pytest.mark.parametrize("kind", ["", "block"])
def test_the_deploy_tweak_points_the_domain_at_the_volume(kind, tmp_path):
    """``nvram`` of deploy-tweaks (the Bash add-on's os.py, T_OS_NVRAM=storpool): libvirt's
    schema and its test driver take the domain; no template is passed on."""
    import dataclasses
    import shutil
    from pathlib import Path

    from lxml import etree

    from onestorpool.drivers.vmm_tweaks import TweakInput, Validator, apply_tweaks
    from onestorpool.one import Template, parse_vmm_action

    tests = Path(__file__).resolve().parents[1]
    golden = parse_vmm_action((tests / "one/golden/vmm_attach.xml").read_bytes()).vm
    setting = "storpool:template=OVMF_VARS.fd" + (f" type={kind}" if kind else "")
    vm = dataclasses.replace(golden, user_template=Template(
        "USER_TEMPLATE", {**golden.user_template, "T_OS_NVRAM": setting}))
    plain = (tests / "fixtures/domain/one-6.10.xml").read_text()  # no UEFI loader
    domain = plain.replace("</type>", "</type><loader readonly='yes' type='pflash'>"
                           "/usr/share/OVMF/OVMF_CODE.fd</loader>", 1)
    done = apply_tweaks(domain, TweakInput(vm), ["nvram"])
    assert done.applied == ["nvram"] and done.dropped == {}
    doc = etree.fromstring(done.xml.encode())
    (element,) = doc.findall("os/nvram")
    device = f"/dev/storpool/one-sys-{vm.id}-NVRAM"
    if kind:
        assert element.get("type") == "block" and element.find("source").get("dev") == device
    else:
        assert element.text == device and element.get("template") is None
    assert Validator().errors(doc) == ""
    assert apply_tweaks(done.xml, TweakInput(vm), ["nvram"]).xml == done.xml  # idempotent
    if shutil.which("virsh"):  # libvirt's own parser takes it
        path = tmp_path / "d.xml"
        path.write_text(done.xml)
        defined = subprocess.run(["virsh", "-c", "test:///default", f"define {path}"],
                                 capture_output=True, text=True, timeout=60)
        assert defined.returncode == 0, defined.stderr
    without_loader = apply_tweaks(plain, TweakInput(vm), ["nvram"])  # libvirt'd refuse it
    assert etree.fromstring(without_loader.xml.encode()).find("os/nvram") is None
