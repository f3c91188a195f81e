"""The domain XML tweaks of ``deploy-tweaks`` (reference addon-storpool.md §4b): a chain of
small functions over the libvirt domain oned generated, each one applied on a copy and kept
only if the result still validates (libvirt's own ``domain.rng`` when installed), so a tweak
that goes wrong costs its change and a warning, never the deploy.

Switches: the add-on config lists the tweaks on by default (``DEPLOY_TWEAKS``); a VM turns one
on or off with its USER_TEMPLATE attribute (``T_IOTHREADS_OVERRIDE=0``, ``T_NIC_QUEUES=4``, ...;
``NO``/``0``/``DISABLED`` is off, any other value on). Values (``T_CPU_MODEL``, ...) come from
the VM's USER_TEMPLATE, then the add-on rc (``T_*`` lines), then the tweak's default.

Every tweak sets values rather than adding to them, so the chain applied twice gives the
document it gave once.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lxml import etree

from onestorpool.errors import InputError
from onestorpool.naming import Naming
from onestorpool.one import Disk, Vm

log = logging.getLogger("onestorpool.drivers")

DOMAIN_RNG = "/usr/share/libvirt/schemas/domain.rng"
OFF = {"NO", "0", "DISABLED", "FALSE", "OFF"}
DEFAULT_TWEAKS = ("volatile2dev", "cache-io", "persistent-cdrom")


@dataclass
class TweakInput:
    """What a tweak reads besides the domain: the VM and the ``T_*`` values."""

    vm: Vm
    rc_values: Mapping[str, str] = field(default_factory=dict)
    naming: Naming = field(default_factory=lambda: Naming("one"))  # ONE_PX's volume names

    def value(self, name: str, default: str = "") -> str:
        found = self.vm.user_template.get(name, "").strip()
        return found or str(self.rc_values.get(name, "")).strip() or default

    def storpool_disks(self, domain: etree._Element,
                       disk_id_of: Callable[[etree._Element], int | None] | None = None,
                       ) -> Iterable[tuple[etree._Element, Disk | None]]:
        """``<disk>`` elements backed by a StorPool volume, with their DISK (``None`` for the
        context CD-ROM). ``disk_id_of`` tells a ``<disk>``'s DISK_ID (default: its source's
        ``disk.N`` suffix, as oned writes it)."""
        system = self.vm.system_tm_mad == "storpool"
        by_id = {d.disk_id: d for d in self.vm.disks}
        for element in domain.iterfind("devices/disk"):
            disk_id = (disk_id_of or _disk_id)(element)
            if disk_id is None:
                continue
            disk = by_id.get(disk_id)
            if disk is None:
                if disk_id == self.vm.context_disk_id and system:
                    yield element, None
            elif (disk.tm_mad == "storpool") if disk.image_id is not None else system:
                yield element, disk

    @property
    def vcpu(self) -> int:
        text = self.vm.template.get("VCPU", "") or "1"
        return int(text) if text.isdigit() and int(text) > 0 else 1


def _disk_id(element: etree._Element) -> int | None:
    source = element.find("source")
    if source is None:
        return None
    path = source.get("file") or source.get("dev") or ""
    match = re.search(r"/disk\.(\d+)$", path)
    return int(match[1]) if match else None


def _child(parent: etree._Element, tag: str) -> etree._Element:
    found = parent.find(tag)
    if found is None:
        found = etree.SubElement(parent, tag)
    return found


def _virtio_disks(domain: etree._Element) -> list[etree._Element]:
    return [d for d in domain.iterfind("devices/disk")
            if d.get("device", "disk") == "disk" and d.find("target") is not None
            and d.find("target").get("bus") == "virtio"]


def _virtio_scsi(domain: etree._Element) -> list[etree._Element]:
    return [c for c in domain.iterfind("devices/controller")
            if c.get("type") == "scsi" and c.get("model") == "virtio-scsi"]


def _count(text: str, what: str, vcpu: int) -> int:
    if text.upper() == "VCPU":
        return vcpu
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{what}: expected a positive number or VCPU, got {text!r}")
    return int(text)


# -- the tweaks ----------------------------------------------------------------------------


def volatile2dev(domain: etree._Element, given: TweakInput) -> None:
    """StorPool volatile and context disks, which oned writes as files, become block devices
    (libvirt migrates a file disk's data; a block device is shared storage)."""
    for element, _disk in given.storpool_disks(domain):
        file_to_block(element)


def file_to_block(element: etree._Element) -> bool:
    """A ``type="file"`` ``<disk>`` made the block device its source is; whether it was."""
    source = element.find("source")
    if element.get("type") != "file" or source is None or source.get("file") is None:
        return False
    element.set("type", "block")
    source.set("dev", source.attrib.pop("file"))
    return True


def cache_io(domain: etree._Element, given: TweakInput) -> None:
    """``cache="none" io="native"`` on StorPool disks (and the safe live migration that
    needs every disk uncached)."""
    for element, _disk in given.storpool_disks(domain):
        driver = _child(element, "driver")
        driver.set("name", driver.get("name", "qemu"))
        driver.set("cache", "none")
        driver.set("io", "native")


def iothreads(domain: etree._Element, given: TweakInput) -> None:
    """``<iothreads>`` (``T_IOTHREADS_OVERRIDE``, default 1), ``iothread="1"`` on virtio
    disks and virtio-scsi controllers."""
    count = _count(given.value("T_IOTHREADS_OVERRIDE", "1"), "T_IOTHREADS_OVERRIDE",
                   given.vcpu)
    _child(domain, "iothreads").text = str(count)
    for disk in _virtio_disks(domain):
        driver = _child(disk, "driver")
        driver.set("io", "native")
        driver.set("iothread", "1")
    for controller in _virtio_scsi(domain):
        _child(controller, "driver").set("iothread", "1")


def ioeventfd(domain: etree._Element, given: TweakInput) -> None:
    """``ioeventfd="on"`` on virtio disks and virtio-scsi controllers."""
    for element in [*_virtio_disks(domain), *_virtio_scsi(domain)]:
        _child(element, "driver").set("ioeventfd", "on")


def scsi_queues(domain: etree._Element, given: TweakInput) -> None:
    """virtio-scsi controllers get ``queues`` = VCPU; with ``T_BLK_QUEUES=YES`` virtio-blk
    disks too."""
    vcpu = _domain_vcpu(domain, given)
    for controller in _virtio_scsi(domain):
        _child(controller, "driver").set("queues", str(vcpu))
    if given.value("T_BLK_QUEUES").upper() == "YES":
        for disk in _virtio_disks(domain):
            _child(disk, "driver").set("queues", str(vcpu))


def nic_queues(domain: etree._Element, given: TweakInput) -> None:
    """virtio NICs ``<driver name="vhost" queues=N>``: ``T_NIC<n>_QUEUES`` per NIC (by
    position), else ``T_NIC_QUEUES`` (a number or ``VCPU``)."""
    vcpu = _domain_vcpu(domain, given)
    nics = [i for i in domain.iterfind("devices/interface")
            if i.find("model") is not None and i.find("model").get("type") == "virtio"]
    for position, nic in enumerate(nics):
        name = f"T_NIC{position}_QUEUES"
        text = given.value(name) or given.value("T_NIC_QUEUES")
        if not text:
            continue
        driver = _child(nic, "driver")
        driver.set("name", "vhost")
        driver.set("queues", str(_count(text, name, vcpu)))


def cpu(domain: etree._Element, given: TweakInput) -> None:
    """``<cpu>`` from ``T_CPU_MODE`` (host-passthrough, host-model, custom), ``T_CPU_MODEL``
    (``model[:fallback]``, ``delete`` removes it), ``T_CPU_FEATURES`` (``name[:policy],...``),
    ``T_CPU_SOCKETS``/``T_CPU_THREADS`` (topology, and one NUMA cell per socket sharing the
    memory evenly)."""
    vcpu = _domain_vcpu(domain, given)
    element = _child(domain, "cpu")
    mode = given.value("T_CPU_MODE")
    if mode:
        if mode not in ("host-passthrough", "host-model", "custom", "maximum"):
            raise InputError(f"T_CPU_MODE: unknown mode {mode!r}")
        element.set("mode", mode)
    model = given.value("T_CPU_MODEL")
    if model == "delete":
        for found in element.findall("model"):
            element.remove(found)
    elif model:
        name, _, fallback = model.partition(":")
        found = _child(element, "model")
        found.text = name
        if fallback:
            found.set("fallback", fallback)
    features = given.value("T_CPU_FEATURES")
    if features:
        for item in features.split(","):
            name, _, policy = item.strip().partition(":")
            if not name:
                continue
            feature = element.find(f"feature[@name='{name}']")
            if feature is None:
                feature = etree.SubElement(element, "feature", name=name)
            feature.set("policy", policy or "require")
    sockets = given.value("T_CPU_SOCKETS")
    if sockets:
        _topology(domain, element, vcpu, _count(sockets, "T_CPU_SOCKETS", vcpu),
                  _count(given.value("T_CPU_THREADS", "1"), "T_CPU_THREADS", vcpu))
    if not len(element) and not element.attrib:
        domain.remove(element)


def _topology(domain: etree._Element, element: etree._Element, vcpu: int, sockets: int,
              threads: int) -> None:
    if vcpu % (sockets * threads):
        raise InputError(f"{vcpu} VCPUs do not split into {sockets} sockets of {threads} "
                         "threads")
    cores = vcpu // (sockets * threads)
    topology = _child(element, "topology")
    for key in list(topology.attrib):
        del topology.attrib[key]
    topology.set("sockets", str(sockets))
    topology.set("cores", str(cores))
    topology.set("threads", str(threads))
    for numa in element.findall("numa"):
        element.remove(numa)
    if sockets > 1:
        memory_kib = _memory_kib(domain)
        numa = etree.SubElement(element, "numa")
        per_socket = cores * threads
        for cell in range(sockets):
            first = cell * per_socket
            etree.SubElement(numa, "cell", id=str(cell),
                             cpus=f"{first}-{first + per_socket - 1}",
                             memory=str(memory_kib // sockets), unit="KiB")


_UNITS = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
          "m": 1024, "mib": 1024, "mb": 1000 ** 2 / 1024, "g": 1024 ** 2, "gib": 1024 ** 2}


def _memory_kib(domain: etree._Element) -> int:
    memory = domain.find("memory")
    if memory is None or not (memory.text or "").strip().isdigit():
        raise InputError("the domain has no <memory>")
    return int(int(memory.text) * _UNITS.get(memory.get("unit", "KiB").lower(), 1))


def _domain_vcpu(domain: etree._Element, given: TweakInput) -> int:
    """The domain's ``<vcpu>`` (written from the VM's VCPU when missing)."""
    element = domain.find("vcpu")
    if element is None:
        element = etree.SubElement(domain, "vcpu")
        element.text = str(given.vcpu)
    text = (element.text or "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else given.vcpu


def cputune_shares(domain: etree._Element, given: TweakInput) -> None:
    """``cputune/shares`` = ``T_CPUTUNE_SHARES``, or ceil(VCPU x ``T_CPUTUNE_MUL`` (0.1) x
    1024)."""
    shares = given.value("T_CPUTUNE_SHARES")
    if not shares:
        multiplier = given.value("T_CPUTUNE_MUL", "0.1")
        try:
            factor = float(multiplier)
        except ValueError:
            raise InputError(f"T_CPUTUNE_MUL: not a number: {multiplier!r}") from None
        shares = str(max(2, math.ceil(_domain_vcpu(domain, given) * factor * 1024)))
    if not shares.isdigit():
        raise InputError(f"T_CPUTUNE_SHARES: not a number: {shares!r}")
    _child(_child(domain, "cputune"), "shares").text = shares


def persistent_cdrom(domain: etree._Element, given: TweakInput) -> None:
    """Empty CD-ROM drives (IDE, SATA on q35) up to ``T_PERSISTENT_CDROM`` drives in all
    (default 2, at most 4, the context CD-ROM counted), so a CD-ROM can be inserted into a
    running VM (``attach_disk``)."""
    wanted = min(4, _count(given.value("T_PERSISTENT_CDROM", "2"), "T_PERSISTENT_CDROM", 4))
    kind = given.value("T_PERSISTENT_CDROM_TYPE", "block")
    if kind not in ("block", "file"):
        raise InputError(f"T_PERSISTENT_CDROM_TYPE: block or file, got {kind!r}")
    os_type = domain.find("os/type")
    bus = "sata" if os_type is not None and "q35" in os_type.get("machine", "") else "ide"
    used = {t.get("dev") for t in domain.iterfind("devices/disk/target")}
    cdroms = [d for d in domain.iterfind("devices/disk")
              if d.get("device") == "cdrom" and d.find("target") is not None
              and d.find("target").get("dev", "").startswith("hd")]
    devices = _child(domain, "devices")
    free = [f"hd{letter}" for letter in "abcd" if f"hd{letter}" not in used]
    for target in free[:max(0, wanted - len(cdroms))]:
        disk = etree.Element("disk", type=kind, device="cdrom")
        etree.SubElement(disk, "driver", name="qemu", type="raw", cache="none", io="native")
        etree.SubElement(disk, "target", dev=target, bus=bus)
        etree.SubElement(disk, "readonly")
        _insert_disk(devices, disk)


def _insert_disk(devices: etree._Element, disk: etree._Element) -> None:
    disks = devices.findall("disk")
    if disks:
        disks[-1].addnext(disk)
    else:
        emulator = devices.find("emulator")
        if emulator is not None:
            emulator.addnext(disk)
        else:
            devices.insert(0, disk)
    disk.tail = disks[-1].tail if disks else devices.text


def disk_serial(domain: etree._Element, given: TweakInput) -> None:
    """``<serial>`` on disks that have none: the first 20 hex digits of the md5 of
    ``persistent-<image>`` / ``<vm>-<disk>`` / ``volatile-<disk>``, or of the source path
    with ``T_DISKSERIAL=HASHPATH``, so a guest can find its disks by id."""
    by_id = {d.disk_id: d for d in given.vm.disks}
    hash_path = given.value("T_DISKSERIAL").upper() == "HASHPATH"
    for element in domain.iterfind("devices/disk"):
        if element.get("device", "disk") != "disk" or element.find("serial") is not None:
            continue
        disk_id = _disk_id(element)
        disk = by_id.get(disk_id) if disk_id is not None else None
        if disk is None:
            continue
        if hash_path:
            source = element.find("source")
            seed = source.get("file") or source.get("dev") or ""
        elif disk.image_id is None:
            seed = f"volatile-{disk.disk_id}"
        elif disk.persistent:
            seed = f"persistent-{disk.image_id}"
        else:
            seed = f"{given.vm.id}-{disk.disk_id}"
        serial = etree.SubElement(element, "serial")
        serial.text = hashlib.md5(seed.encode(), usedforsecurity=False).hexdigest()[:20]
        target = element.find("target")
        if target is not None:  # <serial> before <boot>/<address> as libvirt writes it
            target.addnext(serial)


HYPERV = ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer", "reset",
          "frequencies", "reenlightenment", "tlbflush", "ipi", "evmcs", "avic")


def hyperv(domain: etree._Element, given: TweakInput) -> None:
    """Hyper-V enlightenments for Windows guests: ``T_HV_<NAME>=on|off`` (``T_HV_RELAXED``,
    ``T_HV_SPINLOCKS`` with 8191 retries, ...) → ``features/hyperv/<name state=...>``."""
    names = {k for k in [*given.vm.user_template.keys(), *given.rc_values.keys()]
             if k.startswith("T_HV_")}
    if not names:
        return
    features = _child(domain, "features")
    element = _child(features, "hyperv")
    for key in sorted(names):
        name, state = key[len("T_HV_"):].lower(), given.value(key).lower()
        if name not in HYPERV:
            raise InputError(f"{key}: not a Hyper-V enlightenment ({', '.join(HYPERV)})")
        if state in ("yes", "1", "true"):
            state = "on"
        if state not in ("on", "off"):
            raise InputError(f"{key}: on or off, got {state!r}")
        found = _child(element, name)
        found.set("state", state)
        if name == "spinlocks" and state == "on":
            found.set("retries", found.get("retries", "8191"))


def kvm_hide(domain: etree._Element, given: TweakInput) -> None:
    """``T_KVM_HIDE=YES``: ``features/kvm/hidden state="on"`` (guests that refuse to run
    under a visible hypervisor, GPU drivers)."""
    if given.value("T_KVM_HIDE").upper() in ("YES", "1", "ON", "TRUE"):
        _child(_child(_child(domain, "features"), "kvm"), "hidden").set("state", "on")


VIDEO_MODELS = ("vga", "cirrus", "vmvga", "qxl", "virtio", "bochs", "ramfb", "none")


def video(domain: etree._Element, given: TweakInput) -> None:
    """``T_VIDEO_MODEL`` → the (first) ``<video><model type=...>``."""
    model = given.value("T_VIDEO_MODEL").lower()
    if not model:
        return
    if model not in VIDEO_MODELS:
        raise InputError(f"T_VIDEO_MODEL: one of {', '.join(VIDEO_MODELS)}, got {model!r}")
    devices = _child(domain, "devices")
    element = devices.find("video")
    if element is None:
        element = etree.SubElement(devices, "video")
    found = _child(element, "model")
    for key in list(found.attrib):
        del found.attrib[key]
    found.set("type", model)


def nvram(domain: etree._Element, given: TweakInput) -> None:
    """``T_OS_NVRAM=storpool[:... type=block|file]`` (the Bash add-on's ``os.py``): the
    domain's UEFI variable store is the VM's own volume
    ``/dev/storpool/<px>-sys-<VM>-NVRAM``, which the TM's ``context`` made from the OVMF
    template and attached to this host (so no ``template=`` is passed on). Any other
    ``T_OS_NVRAM`` is a file nvram this add-on does not manage: left as oned wrote it.
    On when ``DEPLOY_TWEAKS`` lists ``nvram`` (``os.py`` was not on by default either)."""
    from onestorpool.drivers.nvram import NvramRequest

    request = NvramRequest.of(given.vm)  # a malformed one drops the tweak with its reason
    if request is None or not request.on_storpool:
        return
    loader = domain.find("os/loader")
    if loader is None:  # libvirt refuses an nvram without a UEFI loader
        log.warning("deploy-tweaks: nvram: VM %s has no UEFI loader (OS/FIRMWARE): its "
                    "T_OS_NVRAM=storpool is not used", given.vm.id)
        return
    device = f"/dev/storpool/{given.naming.nvram(given.vm.id)}"
    os_element = loader.getparent()
    for old in os_element.findall("nvram"):
        os_element.remove(old)
    element = etree.Element("nvram")
    if request.device_type:
        element.set("type", request.device_type)
        etree.SubElement(element, "source",
                         {"dev" if request.device_type == "block" else "file": device})
    else:
        element.text = device
    loader.addnext(element)


@dataclass(frozen=True)
class Tweak:
    name: str
    apply: Callable[[etree._Element, TweakInput], None]
    # the VM's USER_TEMPLATE attributes that turn it on or off; a name ending in "_" is a
    # prefix: any such attribute (T_CPU_MODEL, ...) turns the tweak on
    switches: tuple[str, ...]


TWEAKS: tuple[Tweak, ...] = (
    Tweak("volatile2dev", volatile2dev, ("T_VOLATILE2DEV",)),
    Tweak("cache-io", cache_io, ("T_DISK_CACHE_IO",)),
    Tweak("iothreads", iothreads, ("T_IOTHREADS_OVERRIDE",)),
    Tweak("ioeventfd", ioeventfd, ("T_IOEVENTFD",)),
    Tweak("scsi-queues", scsi_queues, ("T_SCSI_QUEUES", "T_BLK_QUEUES")),
    Tweak("nic-queues", nic_queues, ("T_NIC_QUEUES",)),
    Tweak("cpu", cpu, ("T_CPU", "T_CPU_")),
    Tweak("cputune-shares", cputune_shares, ("T_CPUTUNE_SHARES", "T_CPUTUNE_MUL")),
    Tweak("persistent-cdrom", persistent_cdrom, ("T_PERSISTENT_CDROM",)),
    Tweak("disk-serial", disk_serial, ("T_DISKSERIAL",)),
    Tweak("hyperv", hyperv, ("T_HYPERV", "T_HV_")),
    Tweak("kvm-hide", kvm_hide, ("T_KVM_HIDE",)),
    Tweak("video", video, ("T_VIDEO_MODEL",)),
    Tweak("nvram", nvram, ()),
)
TWEAKS_BY_NAME = {t.name: t for t in TWEAKS}


def enabled(tweak: Tweak, configured: Iterable[str], vm: Vm) -> bool:
    """On by the VM's switch attribute if it has one (``NO``/``0``/``DISABLED`` is off),
    else by the add-on config."""
    for switch in tweak.switches:
        if switch.endswith("_"):
            if any(k.startswith(switch) and v.strip() for k, v in vm.user_template.items()):
                return True
            continue
        value = vm.user_template.get(switch, "").strip().upper()
        if value:
            return value not in OFF
    return tweak.name in configured


# -- validation and the chain ------------------------------------------------------------------


class Validator:
    """libvirt's domain schema (``domain.rng``, what ``virt-xml-validate`` checks) when the
    front-end has it; else well-formedness only."""

    def __init__(self, schema: str | None = DOMAIN_RNG):
        self.schema = None
        if schema and os.path.exists(schema):
            try:
                self.schema = etree.RelaxNG(file=schema)
            except etree.RelaxNGParseError as exc:
                log.warning("deploy-tweaks: %s unusable (%s): checking "
                            "well-formedness only", schema, exc)

    def errors(self, domain: etree._Element) -> str:
        if self.schema is None or self.schema.validate(domain):
            return ""
        return "; ".join(f"line {e.line}: {e.message}" for e in self.schema.error_log)[:300]


@dataclass
class Outcome:
    xml: str
    applied: list[str]
    dropped: dict[str, str]


def apply_tweaks(domain_xml: str | bytes, given: TweakInput, names: Iterable[str],
                 validator: Validator | None = None) -> Outcome:
    """The tweaks ``names`` (order of :data:`TWEAKS`) applied to the domain, each kept only
    if it raised nothing and the result validates; the reason of a dropped one is returned."""
    validator = validator or Validator()
    parser = etree.XMLParser(remove_blank_text=False, resolve_entities=False, no_network=True)
    try:
        domain = etree.fromstring(domain_xml.encode() if isinstance(domain_xml, str)
                                  else domain_xml, parser)
    except etree.XMLSyntaxError as exc:
        raise InputError(f"deploy-tweaks: the domain XML does not parse: {exc}") from None
    if domain.tag != "domain":
        raise InputError(f"deploy-tweaks: expected a libvirt <domain>, got <{domain.tag}>")
    baseline = validator.errors(domain)
    if baseline:
        log.warning("deploy-tweaks: the domain oned wrote does not validate (%s): "
                    "tweaks are checked for well-formedness only", baseline)
    wanted = set(names)
    unknown = wanted - set(TWEAKS_BY_NAME)
    applied, dropped = [], {}
    for name in sorted(unknown):
        dropped[name] = "no such tweak"
    for tweak in TWEAKS:
        if tweak.name not in wanted:
            continue
        candidate = copy.deepcopy(domain)
        try:
            tweak.apply(candidate, given)
            error = "" if baseline else validator.errors(candidate)
        except (InputError, ValueError) as exc:
            error = str(exc)
        if error:
            dropped[tweak.name] = error
            log.warning("deploy-tweaks: %s dropped: %s", tweak.name, error)
            continue
        domain = candidate
        applied.append(tweak.name)
    xml = etree.tostring(domain, encoding="unicode")
    return Outcome(xml, applied, dropped)
