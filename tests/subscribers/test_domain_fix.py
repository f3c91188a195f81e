"""The volatile-disk domain fix: a running VM's StorPool volatile and context disks that are
still files in its domain become block devices in the persistent definition on its host (the
next live migration is then safe), the running domain untouched.

Unit level: the fix on a fixture domain (an OpenNebula 6.10 deploy's, the ``disk.N`` links
resolved for disks, not for the context CD-ROM) in a sandbox host's libvirt state, the result
checked with ``virt-xml-validate``; hostile answers from the host refused. Whole lifecycle:
the subscriber as a process on the oned sandbox's hook bus, the VMs deployed through the
add-on's ``deploy-tweaks`` and the sandbox hosts' libvirt (``ACTIVE/RUNNING`` is published
as ``EVENT STATE VM/ACTIVE/RUNNING/<id>``: src/hm/HookStateVM.cc, src/hm_mad/one_hm.rb at
release-6.10.5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from lxml import etree

from onestorpool.drivers.host_domains import DomainError
from onestorpool.naming import Naming
from onestorpool.one import parse_vm
from onestorpool.sandbox.hosts import SandboxHost
from onestorpool.subscribers.domain_fix import EFFECT_TYPE, fix_vm
from tests.sandbox.test_vmm_local import kvm_remotes
from tests.subscribers.conftest import events, wait_for

pytest_plugins = ["tests.sandbox.conftest_oned"]  # make_world

pytestmark = pytest.mark.skipif(
    shutil.which("virsh") is None or shutil.which("virt-xml-validate") is None,
    reason="virsh and virt-xml-validate (libvirt-clients) are needed")

VM = """<VM><ID>7</ID><UID>0</UID><GID>0</GID><NAME>web</NAME><STATE>{state}</STATE>
<LCM_STATE>{lcm}</LCM_STATE><DEPLOY_ID>{deploy_id}</DEPLOY_ID>
<TEMPLATE>
 <DISK><DISK_ID>0</DISK_ID><IMAGE_ID>3</IMAGE_ID><TM_MAD>storpool</TM_MAD></DISK>
 <DISK><DISK_ID>1</DISK_ID><TYPE>fs</TYPE><SIZE>6</SIZE><TM_MAD>storpool</TM_MAD></DISK>
 <DISK><DISK_ID>3</DISK_ID><TYPE>swap</TYPE><SIZE>2</SIZE><TM_MAD>storpool</TM_MAD></DISK>
 <CONTEXT><DISK_ID>2</DISK_ID><TARGET>hda</TARGET></CONTEXT>
</TEMPLATE><USER_TEMPLATE/>
<HISTORY_RECORDS><HISTORY><SEQ>0</SEQ><HOSTNAME>node1</HOSTNAME><HID>0</HID><DS_ID>0</DS_ID>
<TM_MAD>storpool</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS></VM>"""

# disk.0: an image clone (a block device already); disk.1: volatile, its link resolved by
# the deploy; disk.2: the context CD-ROM (not resolved); disk.3: a volatile disk whose
# disk.N is a plain file (not on StorPool: left alone)
DOMAIN = """<domain type='kvm'>
  <name>one-7</name>
  <uuid>6a0f9b1e-25a8-4c43-8f3e-5d1f6a1e0007</uuid>
  <memory>131072</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='block' device='disk'>
      <source dev='{folder}/disk.0'/><target dev='vda' bus='virtio'/>
      <driver name='qemu' type='raw' cache='none'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='{devices}/one-sys-7-1-raw'/><target dev='vdb' bus='virtio'/>
      <driver name='qemu' type='raw' cache='none'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='{folder}/disk.2'/><target dev='hda' bus='ide'/><readonly/>
      <driver name='qemu' type='raw'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='{folder}/disk.3'/><target dev='vdc' bus='virtio'/>
      <driver name='qemu' type='raw' cache='none'/>
    </disk>
  </devices>
</domain>
"""


def validate(tmp_path: Path, xml: str | bytes) -> None:
    path = tmp_path / "validate.xml"
    path.write_bytes(xml.encode() if isinstance(xml, str) else xml)
    done = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def virsh(host: SandboxHost, *argv: str) -> str:
    return host.run(["virsh", *argv]).stdout.decode()


def disks(xml: str) -> dict[str, tuple[str, str]]:
    """target → (type, source path)"""
    found = {}
    for disk in etree.fromstring(xml.encode()).iterfind("devices/disk"):
        source = disk.find("source")
        found[disk.find("target").get("dev")] = (
            disk.get("type"), source.get("file") or source.get("dev"))
    return found


@pytest.fixture
def node(tmp_path) -> tuple[SandboxHost, str]:
    """node1 running one-7 from the fixture domain (persistent, as the sandbox deploys)."""
    host = SandboxHost("node1", tmp_path / "node1")
    devices = host.root / "dev/storpool"
    devices.mkdir(parents=True)
    folder = host.root / "var/lib/one/datastores/0/7"
    folder.mkdir(parents=True)
    for name, disk_id in (("one-img-3-7-0", 0), ("one-sys-7-1-raw", 1), ("one-sys-7-2-iso", 2)):
        (devices / name).write_bytes(b"\0" * 512)
        (folder / f"disk.{disk_id}").symlink_to(devices / name)
    (folder / "disk.3").write_bytes(b"\0" * 512)
    xml = DOMAIN.format(folder="/var/lib/one/datastores/0/7", devices=devices)
    validate(tmp_path, xml)
    (tmp_path / "one-7.xml").write_text(xml)
    virsh(host, "define", str(tmp_path / "one-7.xml"))
    virsh(host, "start", "one-7")
    return host, xml


def running_vm(state: int = 3, lcm: int = 3, deploy_id: str = "one-7"):
    return parse_vm(VM.format(state=state, lcm=lcm, deploy_id=deploy_id))


def test_fix_defines_block_devices_and_leaves_the_running_domain(node, tmp_path):
    host, _xml = node
    live_before = virsh(host, "dumpxml", "one-7")
    result = fix_vm(running_vm(), lambda name: host, Naming("one"), "qemu:///system")
    devices = str(host.root / "dev/storpool")
    assert result["fixed"] == [
        {"target": "vdb", "source": f"{devices}/one-sys-7-1-raw"},
        {"target": "hda", "source": "/var/lib/one/datastores/0/7/disk.2"}]
    assert (result["host"], result["domain"], result["persistent"]) == ("node1", "one-7",
                                                                        "defined")
    persistent = virsh(host, "dumpxml", "--inactive", "one-7")
    validate(tmp_path, persistent)
    assert disks(persistent) == {
        "vda": ("block", "/var/lib/one/datastores/0/7/disk.0"),
        "vdb": ("block", f"{devices}/one-sys-7-1-raw"),
        "hda": ("block", "/var/lib/one/datastores/0/7/disk.2"),
        "vdc": ("file", "/var/lib/one/datastores/0/7/disk.3")}  # not a StorPool device
    assert virsh(host, "dumpxml", "one-7") == live_before
    assert virsh(host, "domstate", "one-7").strip() == "running"
    # idempotent: the next run finds the persistent definition fixed and says so
    again = fix_vm(running_vm(), lambda name: host, Naming("one"), "qemu:///system")
    assert again["fixed"] == [] and "already" in again["note"]
    assert virsh(host, "dumpxml", "--inactive", "one-7") == persistent


def test_a_transient_domain_gets_no_definition(node, tmp_path):
    """As OpenNebula deploys (virsh create): the look lists what the migration converts and
    leaves no definition behind on the host."""
    host, _xml = node
    virsh(host, "destroy", "one-7")
    virsh(host, "undefine", "one-7")
    virsh(host, "create", str(tmp_path / "one-7.xml"))
    result = fix_vm(running_vm(), lambda name: host, Naming("one"), "qemu:///system")
    assert result["fixed"] == [] and result["at_migration"] == ["hda", "vdb"]
    assert "Persistent:     no" in virsh(host, "dominfo", "one-7")
    assert disks(virsh(host, "dumpxml", "one-7"))["vdb"][0] == "file"


def test_nothing_to_fix(node):
    host, _xml = node
    # another instance's prefix: none of the devices is one of this VM's volumes
    result = fix_vm(running_vm(), lambda name: host, Naming("other"), "qemu:///system")
    assert result["fixed"] == [] and "no StorPool" in result["note"]
    # a VM not running (any more) is not looked at
    result = fix_vm(running_vm(state=8, lcm=0), lambda name: pytest.fail("asked the host"),
                    Naming("one"), "qemu:///system")
    assert result["fixed"] == [] and "POWEROFF" in result["note"]
    # a domain the host does not have (any more)
    result = fix_vm(running_vm(deploy_id="one-8"), lambda name: host, Naming("one"),
                    "qemu:///system")
    assert result["fixed"] == [] and "no such domain" in result["note"]
    assert disks(virsh(host, "dumpxml", "--inactive", "one-7"))["vdb"][0] == "file"


HOSTILE = {
    "entities": '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "xx">]><domain>&x;</domain>',
    "not a domain": "<network><name>one-7</name></network>",
    "another domain": "<domain type='kvm'><name>one-8</name></domain>",
    "garbage": "<domain><name>one-7</name><devices><disk",
    "huge": "<domain><name>one-7</name>" + "<x/>" * (2 << 20) + "</domain>",
}


@pytest.mark.parametrize("answer", HOSTILE)
def test_hostile_answers_from_the_host_are_refused(node, tmp_path, monkeypatch, answer):
    host, _xml = node
    own = tmp_path / "bin"
    own.mkdir()
    (own / "answer.xml").write_text(HOSTILE[answer])
    (own / "virsh").write_text(f"#!/bin/sh\ncat {own}/answer.xml\n")
    (own / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{own}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DomainError, match="node1: domain one-7"):
        fix_vm(running_vm(), lambda name: host, Naming("one"), "qemu:///system")


# -- through the lifecycle, the subscriber as a process ------------------------------------


@pytest.fixture
def cloud(make_world, tmp_path):
    """Overrides the subscriber tests' cloud: VMs deployed by deploy-tweaks through the
    sandbox hosts' libvirt, no deploy tweak on at first (as before the add-on had it)."""
    w = make_world(remotes=kvm_remotes(tmp_path / "r", tmp_path / "native.log"),
                   vmm_local="deploy=deploy-tweaks,migrate=migrate-tweaks")
    w.frontend.write_rc('ONE_PX=one\nDELAY_DELETE=0\nDEPLOY_TWEAKS=""\n')
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    hosts = [w.oned.create_host(name) for name in ("node1", "node2")]
    return w, image_ds, system_ds, hosts, None


def host_of(w, name: str = "node1") -> SandboxHost:
    return SandboxHost(name, w.frontend.root / "hosts" / name)


def fixes(w, vm_id: int) -> list:
    return [r for r in events(w, "effect.done")
            if r.payload["effect_type"] == EFFECT_TYPE and r.vm == vm_id]


def test_lifecycle_a_vm_with_file_disks_migrates_them_as_block_devices(cloud, start_daemon):
    """OpenNebula's deploy makes transient domains: the subscriber's look records what the
    next live migration converts, and migrate-tweaks gives the destination those disks as
    block devices (virsh migrate --xml); there nothing is left to convert."""
    w, _image_ds, system_ds, (node1, node2), _ = cloud
    daemon = start_daemon()
    vm_id = w.oned.instantiate(w.vm_template("v", 'TYPE="fs",SIZE="6",FORMAT="raw"',
                                             context=True), node1, system_ds)
    host, domain = host_of(w), f"one-{vm_id}"
    (first,) = wait_for(lambda: fixes(w, vm_id), "the look at the running VM")
    devices = host.root / "dev/storpool"
    folder = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    live = disks(virsh(host, "dumpxml", domain))  # the running domain as deployed
    assert sorted(live.values()) == sorted([("file", f"{folder}/disk.1"),  # the context
                                            ("file", f"{devices}/one-sys-{vm_id}-0-raw")])
    assert first.payload["fixed"] == [] and first.payload["at_migration"] == sorted(live)
    assert "Persistent:     no" in virsh(host, "dominfo", domain)  # nothing defined
    (received,) = [r for r in events(w, "hook.received")
                   if r.payload.get("route") == "vm.running"]
    assert received.vm == vm_id
    # the live migration: the destination runs them as the block devices they are
    w.srv.vm.migrate(vm_id, node2, True, False, system_ds, 0)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert w.srv.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "node2"
    node2_host = host_of(w, "node2")
    moved = disks(virsh(node2_host, "dumpxml", domain))
    assert {kind for kind, _ in moved.values()} == {"block"}
    assert virsh(host, "list", "--all", "--name").split() == []  # gone from node1
    (migrated,) = [e for e in w.frontend.events() if e.type == "vmm.migrate"]
    assert migrated.payload["converted_to_block"] == sorted(live, key=list(live).index)
    _first, second = wait_for(lambda: fixes(w, vm_id)[1:] and fixes(w, vm_id), "a second look")
    assert second.payload["fixed"] == [] and "no StorPool" in second.payload["note"]
    # a VM without a StorPool volatile disk: nothing
    other = w.oned.instantiate(w.vm_template("plain"), node1, system_ds)
    (nothing,) = wait_for(lambda: fixes(w, other), "the look at the second VM")
    assert nothing.payload["fixed"] == [] and "at_migration" not in nothing.payload
    # DOMAIN_FIX=0: the site keeps its domains as they are
    w.frontend.write_rc('ONE_PX=one\nDELAY_DELETE=0\nDEPLOY_TWEAKS=""\nDOMAIN_FIX=NO\n')
    kept = w.oned.instantiate(w.vm_template("kept", 'TYPE="fs",SIZE="6",FORMAT="raw"'), node1,
                              system_ds)
    (off,) = wait_for(lambda: fixes(w, kept), "the look at the third VM")
    assert off.payload["fixed"] == [] and "DOMAIN_FIX" in off.payload["note"]
    assert not events(w, "effect.failed")
    assert daemon.stop() == 0


FAILING_VIRSH = textwrap.dedent("""\
    #!/bin/sh
    # the host's libvirt unreachable while the flag file exists, then the host's own virsh
    if [ -e "$VIRSH_DOWN" ]; then
        echo "error: failed to connect to the hypervisor" >&2; exit 1
    fi
    here=$(dirname "$0")
    PATH=$(printf '%s' "$PATH" | tr ':' '\\n' | grep -vx "$here" | paste -sd: -)
    exec virsh "$@"
    """)


def test_an_unreachable_libvirt_is_recorded_and_retried(cloud, start_daemon, tmp_path):
    w = cloud[0]
    system_ds, node1 = cloud[2], cloud[3][0]
    own = tmp_path / "down"
    own.mkdir()
    (own / "virsh").write_text(FAILING_VIRSH)
    (own / "virsh").chmod(0o755)
    flag = tmp_path / "virsh-down"
    flag.touch()
    # only the subscriber's commands see the failing virsh (the deploys do not)
    w.frontend.env["PATH"] = f"{own}{os.pathsep}{w.frontend.env['PATH']}"
    w.frontend.env["VIRSH_DOWN"] = str(flag)
    daemon = start_daemon("--reconcile-interval", "1")
    vm_id = w.oned.instantiate(w.vm_template("v", 'TYPE="fs",SIZE="6",FORMAT="raw"'),
                               node1, system_ds)
    failed = wait_for(lambda: [r for r in events(w, "effect.failed") if r.vm == vm_id],
                      "the failure recorded")
    assert "failed to connect to the hypervisor" in failed[0].payload["error"]
    assert daemon.process.poll() is None and not fixes(w, vm_id)
    flag.unlink()  # the host is back: reconciliation retries it
    (done,) = wait_for(lambda: fixes(w, vm_id), "the retry")
    assert done.payload["at_migration"] == ["sda"]  # its volatile disk, a file
    assert daemon.stop() == 0


def test_a_vm_that_started_running_while_the_subscriber_was_down_is_caught_up(
        cloud, start_daemon):
    """The RUNNING message was published while nobody listened: the start's reconciliation
    checks the VM (once per history record: a second start asks nothing more)."""
    w, _image_ds, system_ds, (node1, _), _ = cloud
    vm_id = w.oned.instantiate(w.vm_template("v", 'TYPE="fs",SIZE="6",FORMAT="raw"'),
                               node1, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    daemon = start_daemon()
    (done,) = wait_for(lambda: fixes(w, vm_id), "the caught-up domain fix")
    assert done.payload["at_migration"] == ["sda"]  # its volatile disk, a file
    assert daemon.stop() == 0
    again = start_daemon()
    wait_for(lambda: len(events(w, "subscriber.reconciled")) >= 2, "the second start's pass")
    assert again.stop() == 0
    requested = [r for r in events(w, "subscriber.requested") if r.vm == vm_id]
    assert len(requested) == 1 and "catch-up" in requested[0].payload["effect"]["key"]
