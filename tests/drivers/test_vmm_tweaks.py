"""deploy-tweaks on domain XML shaped as OpenNebula 6.10 and 7.0 write it (the VM of
tests/one/golden/vmm_attach.xml): every tweak's output passes libvirt's domain schema (what
virt-xml-validate checks) and libvirt's test driver defines and starts it; the chain is
idempotent; a tweak that breaks the document is dropped with a warning."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from onestorpool.drivers import vmm_tweaks
from onestorpool.drivers.vmm_tweaks import TWEAKS, TweakInput, Validator, apply_tweaks
from onestorpool.one import Template, parse_vmm_action

HERE = Path(__file__).resolve().parents[1]
DOMAINS = sorted((HERE / "fixtures" / "domain").glob("one-*.xml"))
VM = parse_vmm_action((HERE / "one" / "golden" / "vmm_attach.xml").read_bytes()).vm
ALL = [t.name for t in TWEAKS]
VALUES = {"T_CPU_MODE": "host-model", "T_CPU_MODEL": "EPYC:allow",
          "T_CPU_FEATURES": "pcid,invpcid:optional", "T_CPU_SOCKETS": "2",
          "T_NIC_QUEUES": "VCPU", "T_NIC1_QUEUES": "1", "T_BLK_QUEUES": "YES",
          "T_PERSISTENT_CDROM": "4", "T_HV_RELAXED": "on", "T_HV_SPINLOCKS": "on",
          "T_HV_VAPIC": "off", "T_KVM_HIDE": "YES", "T_VIDEO_MODEL": "virtio"}
needs_schema = pytest.mark.skipif(not Path(vmm_tweaks.DOMAIN_RNG).exists(),
                                  reason="libvirt's domain.rng is not installed")


def vm_with(**user: str):
    attributes = dict(VM.user_template.items())
    attributes.update(user)
    return dataclasses.replace(VM, user_template=Template("USER_TEMPLATE", attributes))


def define(xml: str, tmp_path: Path) -> str:
    """libvirt's own parser: define and start in the in-process test driver."""
    if shutil.which("virsh") is None:
        pytest.skip("virsh (libvirt-clients) is not installed")
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    name = etree.fromstring(xml.encode()).findtext("name")
    done = subprocess.run(["virsh", "-c", "test:///default",
                           f"define {path}; start {name}; dumpxml {name}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout[done.stdout.index("<domain"):]


def virt_xml_validate(xml: str, tmp_path: Path) -> None:
    if shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None:
        return  # the same domain.rng is checked in-process by Validator
    path = tmp_path / "v.xml"
    path.write_text(xml)
    done = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_schema
@pytest.mark.parametrize("domain", DOMAINS, ids=lambda p: p.stem)
@pytest.mark.parametrize("tweak", ALL)
def test_each_tweak_validates_defines_and_is_idempotent(domain, tweak, tmp_path):
    given = TweakInput(vm_with(**VALUES))
    once = apply_tweaks(domain.read_text(), given, [tweak])
    assert once.dropped == {} and once.applied == [tweak]
    assert Validator().errors(etree.fromstring(once.xml.encode())) == ""
    virt_xml_validate(once.xml, tmp_path)
    define(once.xml, tmp_path)
    assert apply_tweaks(once.xml, given, [tweak]).xml == once.xml


@needs_schema
@pytest.mark.parametrize("domain", DOMAINS, ids=lambda p: p.stem)
def test_the_whole_chain(domain, tmp_path):
    given = TweakInput(vm_with(**VALUES))
    once = apply_tweaks(domain.read_text(), given, ALL)
    assert once.applied == ALL and once.dropped == {}
    assert apply_tweaks(once.xml, given, ALL).xml == once.xml
    live = etree.fromstring(define(once.xml, tmp_path).encode())
    doc = etree.fromstring(once.xml.encode())
    disks = {d.find("target").get("dev"): d for d in doc.iterfind("devices/disk")}
    # volatile (vdc, disk.2; disk.3) and context (hdb) disks are block devices now
    for target in ("vdc", "hdb"):
        assert disks[target].get("type") == "block"
        assert disks[target].find("source").get("dev").endswith(
            "/disk.2" if target == "vdc" else "/disk.5")
        assert disks[target].find("source").get("file") is None
    for target in ("vda", "vdb", "vdc", "hda", "hdb"):
        driver = disks[target].find("driver")
        assert (driver.get("cache"), driver.get("io")) == ("none", "native")
    assert doc.findtext("iothreads") == "1"
    assert disks["vda"].find("driver").get("iothread") == "1"
    assert disks["vda"].find("driver").get("ioeventfd") == "on"
    assert disks["vda"].find("driver").get("queues") == "2"
    controller = doc.find("devices/controller[@model='virtio-scsi']/driver")
    assert (controller.get("iothread"), controller.get("queues"), controller.get("ioeventfd")
            ) == ("1", "2", "on")
    queues = [i.find("driver").get("queues") for i in doc.iterfind("devices/interface")]
    assert queues == ["2", "1"][:len(queues)]
    cpu = doc.find("cpu")
    assert cpu.get("mode") == "host-model" and cpu.findtext("model") == "EPYC"
    assert {f.get("name"): f.get("policy") for f in cpu.iterfind("feature")} == {
        "pcid": "require", "invpcid": "optional"}
    assert dict(cpu.find("topology").attrib) == {"sockets": "2", "cores": "1", "threads": "1"}
    assert [c.get("memory") for c in cpu.iterfind("numa/cell")] == ["1048576", "1048576"]
    assert doc.findtext("cputune/shares") == "205"  # ceil(2 x 0.1 x 1024)
    cdroms = [d for d in doc.iterfind("devices/disk") if d.get("device") == "cdrom"]
    assert [c.find("target").get("dev") for c in cdroms] == ["hda", "hdb", "hdc", "hdd"]
    assert all(c.find("target").get("bus") == "sata" for c in cdroms)  # q35
    serials = {t: d.findtext("serial") for t, d in disks.items() if d.get("device") == "disk"}
    assert all(s and len(s) == 20 for s in serials.values())
    assert len(set(serials.values())) == len(serials)
    assert live.find("devices/disk/driver").get("io") == "native"  # libvirt kept it
    hv = doc.find("features/hyperv")
    assert [(e.tag, e.get("state")) for e in hv] == [
        ("relaxed", "on"), ("spinlocks", "on"), ("vapic", "off")]
    assert hv.find("spinlocks").get("retries") == "8191"
    assert doc.find("features/kvm/hidden").get("state") == "on"
    assert live.find("devices/video/model").get("type") == "virtio"


@needs_schema
def test_defaults_and_per_vm_switches(tmp_path):
    xml = DOMAINS[0].read_text()
    configured = ["volatile2dev", "cache-io", "persistent-cdrom"]
    plain = [t.name for t in TWEAKS if vmm_tweaks.enabled(t, configured, VM)]
    assert plain == configured
    vm = vm_with(T_PERSISTENT_CDROM="NO", T_IOTHREADS_OVERRIDE="2", T_NIC_QUEUES="3")
    chosen = [t.name for t in TWEAKS if vmm_tweaks.enabled(t, configured, vm)]
    assert chosen == ["volatile2dev", "cache-io", "iothreads", "nic-queues"]
    prefixed = vm_with(T_CPU_MODEL="EPYC", T_HV_RELAXED="on", T_VOLATILE2DEV="NO")
    assert [t.name for t in TWEAKS if vmm_tweaks.enabled(t, configured, prefixed)] == [
        "cache-io", "cpu", "persistent-cdrom", "hyperv"]
    out = apply_tweaks(xml, TweakInput(vm), chosen)
    doc = etree.fromstring(out.xml.encode())
    assert doc.findtext("iothreads") == "2"
    assert len([d for d in doc.iterfind("devices/disk") if d.get("device") == "cdrom"]) == 2
    # the add-on rc gives defaults of values (T_* lines), the VM wins
    given = TweakInput(VM, {"T_NIC_QUEUES": "4"})
    doc = etree.fromstring(apply_tweaks(xml, given, ["nic-queues"]).xml.encode())
    assert {i.find("driver").get("queues") for i in doc.iterfind("devices/interface")} == {"4"}


@needs_schema
def test_a_tweak_that_breaks_the_domain_is_dropped_with_a_warning(caplog, monkeypatch):
    def broken(domain, given):
        etree.SubElement(domain.find("devices"), "disk", type="nonsense")

    def failing(domain, given):
        raise ValueError("cannot")

    monkeypatch.setattr(vmm_tweaks, "TWEAKS", (
        vmm_tweaks.Tweak("broken", broken, ("T_BROKEN",)),
        vmm_tweaks.Tweak("failing", failing, ("T_FAILING",)),
        *TWEAKS))
    monkeypatch.setattr(vmm_tweaks, "TWEAKS_BY_NAME", {t.name: t for t in vmm_tweaks.TWEAKS})
    given = TweakInput(vm_with(T_CPU_SOCKETS="3"))  # 2 VCPUs do not split into 3 sockets
    out = apply_tweaks(DOMAINS[0].read_text(), given,
                       ["broken", "failing", "cpu", "cache-io", "nosuch"])
    assert out.applied == ["cache-io"]
    assert set(out.dropped) == {"broken", "failing", "cpu", "nosuch"}
    assert "do not split" in out.dropped["cpu"]
    assert "nonsense" not in out.xml
    assert "broken dropped" in caplog.text


def test_without_the_schema_only_well_formedness_is_checked():
    out = apply_tweaks(DOMAINS[0].read_text(), TweakInput(VM), ["volatile2dev"],
                       Validator(schema=None))
    assert out.applied == ["volatile2dev"]


@pytest.mark.parametrize("domain", DOMAINS, ids=lambda p: p.stem)
def test_migration_is_unsafe_only_when_every_disk_is_uncached(domain):
    from onestorpool.drivers.vmm import uncached

    doc = etree.fromstring(domain.read_bytes())
    assert uncached(doc)
    doc.find("devices/disk/driver").set("cache", "writeback")
    assert not uncached(doc)
    doc.find("devices/disk/driver").attrib.pop("cache")
    assert not uncached(doc)
    tweaked = etree.fromstring(apply_tweaks(etree.tostring(doc), TweakInput(VM),
                                            ["cache-io"]).xml.encode())
    assert uncached(tweaked)  # the StorPool disks' tweak makes it safe again
