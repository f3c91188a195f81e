"""Every StorPool name the add-on uses, built and parsed in one place.

Names are the contract with StorPool and with clusters run by the old Bash add-on, so they
follow its convention exactly (see docs/naming.md):

=============================  =============================================
object                         StorPool name
=============================  =============================================
template of a datastore        ``<px>-ds-<DS>``
image                          ``<px>-img-<IMAGE>``
image SOURCE in OpenNebula     ``<px>-ds-<DS>/<px>-img-<IMAGE>``
per-VM clone of an image       ``<px>-img-<IMAGE>-<VM>-<DISK>``
volatile disk                  ``<px>-sys-<VM>-<DISK>-<raw|swap|fmt>``
context ISO                    ``<px>-sys-<VM>-<DISK>-iso``
UEFI NVRAM / vTPM state        ``<px>-sys-<VM>-NVRAM`` / ``<px>-sys-<VM>-SWTPM``
checkpoints                    ``<px>-sys-<VM>-rawcheckpoint`` / ``-checkpoint``
VM memory (snapshot w/ ckpt)   ``<px>-sys-<VM>``
import staging                 ``<px>-img-<IMAGE>-<md5 of the image volume name>``
disk snapshot                  ``<volume>-snap<N>``
VM snapshot                    ``<volume>-<VMSNAPSHOT_TAG>-<VMSNAP>-<unix ts>``
backup snapshot                ``<volume>-ONEBACKUP-<unix ts>``
market export snapshot         ``<volume>-export-<6 chars>``
delete tombstone (new)         ``<volume>-ONEDELETE-<unix ts>``
temporaries                    ``<volume>-<epoch>-<rand8>``, ``<volume>-SPTMP-<epoch>-<rand8>``,
                               ``<volume>-tmpRestore<rand8>``
=============================  =============================================

:meth:`Naming.parse` reverses every one of these, so reconciliation can tell which OpenNebula
object a StorPool volume or snapshot belongs to, and which ones are orphans or foreign.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from onestorpool.errors import InputError

DEFAULT_PREFIX = "one"
DEFAULT_VMSNAP_TAG = "ONESNAP"
BACKUP_TAG = "ONEBACKUP"
TOMBSTONE_TAG = "ONEDELETE"
VMSNAP_REVERT_TAG = "SPTMP"

# StorPool's own rules (storpool sptypes): names are shorter than 200 characters.
MAX_NAME = 199
VOLUME_NAME_RE = re.compile(r"^#?[A-Za-z0-9_\-.:]+$")
SNAPSHOT_NAME_RE = re.compile(r"^\*?[A-Za-z0-9_\-.:@]+$")
TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
# The prefix ends up in template names, so it gets the template charset.
PREFIX_RE = re.compile(r"^[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*$")
VMSNAP_TAG_RE = re.compile(r"^[A-Za-z0-9_]+$")
# Random suffixes carry at least one letter so that ``<vol>-<epoch>-<rand8>`` never reads as
# the clone name ``<img>-<VM>-<DISK>`` (the old add-on's all-digit ones do: see docs/naming.md).
_RANDOM_RE = r"(?=[0-9]*[A-Za-z])[A-Za-z0-9]"

VOLATILE_FORMATS = ("raw", "swap", "qcow2")  # what mkimage/mkswap create
SYSTEM_SINGLETONS = ("NVRAM", "SWTPM", "rawcheckpoint", "checkpoint")


@dataclass(frozen=True)
class ParsedName:
    """What a StorPool name belongs to. Fields that do not apply to ``kind`` are ``None``.

    kinds: ``template``, ``image``, ``clone``, ``staging``, ``volatile``, ``context``,
    ``nvram``, ``swtpm``, ``rawcheckpoint``, ``checkpoint``, ``memory`` (volumes and
    templates), and for snapshots or temporaries of a volume ``disk_snapshot``,
    ``vm_snapshot``, ``backup``, ``export``, ``tombstone``, ``revert_temp``,
    ``vmsnap_revert_temp``, ``restore_temp`` with ``base`` set to the parsed volume.
    """

    kind: str
    ds_id: int | None = None
    image_id: int | None = None
    vm_id: int | None = None
    disk_id: int | None = None
    fmt: str | None = None
    snap_id: int | None = None
    vmsnap_id: int | None = None
    timestamp: int | None = None
    suffix: str | None = None
    base: ParsedName | None = None

    @property
    def root(self) -> ParsedName:
        """The volume a snapshot or temporary hangs off (itself for a volume)."""
        return self.base.root if self.base is not None else self


def _check_id(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def validate_volume_name(name: str) -> str:
    if len(name) > MAX_NAME or not VOLUME_NAME_RE.match(name):
        raise InputError(f"invalid StorPool volume name {name!r}")
    return name


def validate_snapshot_name(name: str) -> str:
    if len(name) > MAX_NAME or not SNAPSHOT_NAME_RE.match(name):
        raise InputError(f"invalid StorPool snapshot name {name!r}")
    return name


def validate_template_name(name: str) -> str:
    if len(name) > MAX_NAME or not TEMPLATE_NAME_RE.match(name):
        raise InputError(f"invalid StorPool template name {name!r}")
    return name


def volume_from_source(source: str) -> str:
    """The volume of an image SOURCE (``one-ds-1/one-img-7`` or a bare name): the last part."""
    volume = source.strip().rsplit("/", 1)[-1]
    return validate_volume_name(volume)


class Naming:
    """Builds and parses the names of one OpenNebula instance (one ``ONE_PX``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, vmsnap_tag: str = DEFAULT_VMSNAP_TAG):
        if not PREFIX_RE.match(prefix) or len(prefix) > 64:
            raise InputError(f"invalid ONE_PX {prefix!r}: use letters, digits, '_' and '-'")
        if not VMSNAP_TAG_RE.match(vmsnap_tag):
            raise InputError(f"invalid VMSNAPSHOT_TAG {vmsnap_tag!r}: use letters, digits, '_'")
        self.prefix = prefix
        self.vmsnap_tag = vmsnap_tag
        self._volume_res = self._compile_volume_patterns()
        self._derived_res = self._compile_derived_patterns()

    def __repr__(self) -> str:
        return f"Naming(prefix={self.prefix!r}, vmsnap_tag={self.vmsnap_tag!r})"

    # -- building -------------------------------------------------------------------------

    def template(self, ds_id: int) -> str:
        return validate_template_name(f"{self.prefix}-ds-{_check_id(ds_id, 'datastore id')}")

    def image(self, image_id: int) -> str:
        return validate_volume_name(f"{self.prefix}-img-{_check_id(image_id, 'image id')}")

    def image_source(self, ds_id: int, image_id: int) -> str:
        """The SOURCE oned stores for an image: ``<template>/<volume>``."""
        return f"{self.template(ds_id)}/{self.image(image_id)}"

    def clone(self, image_id: int, vm_id: int, disk_id: int) -> str:
        return self.clone_of(self.image(image_id), vm_id, disk_id)

    def clone_of(self, image_volume: str, vm_id: int, disk_id: int) -> str:
        """Per-VM clone of an image volume, given the volume name taken from a SOURCE."""
        vm_id, disk_id = _check_id(vm_id, "VM id"), _check_id(disk_id, "disk id")
        return validate_volume_name(f"{image_volume}-{vm_id}-{disk_id}")

    def volatile(self, vm_id: int, disk_id: int, fmt: str = "raw") -> str:
        if fmt not in VOLATILE_FORMATS:
            raise InputError(f"invalid volatile disk format {fmt!r}: one of "
                             f"{', '.join(VOLATILE_FORMATS)}")
        return self._sys(vm_id, f"{_check_id(disk_id, 'disk id')}-{fmt}")

    def context(self, vm_id: int, disk_id: int) -> str:
        return self._sys(vm_id, f"{_check_id(disk_id, 'disk id')}-iso")

    def nvram(self, vm_id: int) -> str:
        return self._sys(vm_id, "NVRAM")

    def swtpm(self, vm_id: int) -> str:
        return self._sys(vm_id, "SWTPM")

    def rawcheckpoint(self, vm_id: int) -> str:
        return self._sys(vm_id, "rawcheckpoint")

    def checkpoint(self, vm_id: int) -> str:
        return self._sys(vm_id, "checkpoint")

    def memory(self, vm_id: int) -> str:
        """Volume holding VM memory during a VM snapshot with checkpoint."""
        return validate_volume_name(f"{self.prefix}-sys-{_check_id(vm_id, 'VM id')}")

    def system_volumes_prefix(self, vm_id: int, disk_id: int | None = None) -> str:
        """Prefix shared by the system-datastore volumes of a VM (or of one of its disks)."""
        base = f"{self.prefix}-sys-{_check_id(vm_id, 'VM id')}-"
        return base if disk_id is None else f"{base}{_check_id(disk_id, 'disk id')}-"

    def staging(self, image_id: int) -> str:
        """Import staging volume: the old add-on's ``<vol>-<md5(vol)>``, so leftovers match."""
        volume = self.image(image_id)
        return validate_volume_name(f"{volume}-{hashlib.md5(volume.encode()).hexdigest()}")

    def _sys(self, vm_id: int, suffix: str) -> str:
        return validate_volume_name(f"{self.prefix}-sys-{_check_id(vm_id, 'VM id')}-{suffix}")

    # Snapshots and temporaries of any volume.

    @staticmethod
    def disk_snapshot(volume: str, snap_id: int) -> str:
        return validate_snapshot_name(f"{volume}-snap{_check_id(snap_id, 'snapshot id')}")

    @staticmethod
    def disk_snapshot_prefix(volume: str) -> str:
        return f"{volume}-snap"

    def vm_snapshot_suffix(self, vmsnap_id: int, timestamp: int) -> str:
        """What the VM snapshot action prints; oned stores it as the HYPERVISOR_ID."""
        vmsnap_id, timestamp = _check_id(vmsnap_id, "VM snapshot id"), _check_id(timestamp, "ts")
        return f"{self.vmsnap_tag}-{vmsnap_id}-{timestamp}"

    def vm_snapshot(self, volume: str, vmsnap_id: int, timestamp: int) -> str:
        return validate_snapshot_name(f"{volume}-{self.vm_snapshot_suffix(vmsnap_id, timestamp)}")

    def vm_snapshot_marker(self, volume: str) -> str:
        """Substring that every VM snapshot of ``volume`` has."""
        return f"{volume}-{self.vmsnap_tag}-"

    @staticmethod
    def backup_snapshot(volume: str, timestamp: int) -> str:
        return validate_snapshot_name(f"{volume}-{BACKUP_TAG}-{_check_id(timestamp, 'ts')}")

    @staticmethod
    def export_snapshot(volume: str, random: str) -> str:
        return validate_snapshot_name(f"{volume}-export-{_random(random, 6)}")

    @staticmethod
    def tombstone(volume: str, timestamp: int) -> str:
        """Named snapshot kept when an image is deleted and must be sent to a remote cluster."""
        return validate_snapshot_name(f"{volume}-{TOMBSTONE_TAG}-{_check_id(timestamp, 'ts')}")

    @staticmethod
    def revert_temp(volume: str, epoch: int, random: str) -> str:
        return validate_volume_name(f"{volume}-{_check_id(epoch, 'epoch')}-{_random(random, 8)}")

    @staticmethod
    def vmsnap_revert_temp(volume: str, epoch: int, random: str) -> str:
        epoch = _check_id(epoch, "epoch")
        return validate_volume_name(f"{volume}-{VMSNAP_REVERT_TAG}-{epoch}-{_random(random, 8)}")

    @staticmethod
    def restore_temp(volume: str, random: str) -> str:
        return validate_volume_name(f"{volume}-tmpRestore{_random(random, 8)}")

    # -- parsing --------------------------------------------------------------------------

    def parse(self, name: str) -> ParsedName | None:
        """What ``name`` belongs to, or ``None`` when it is not one of this instance's names."""
        if not name.startswith(self.prefix + "-"):
            return None
        volume = self._parse_volume(name)
        if volume is not None:
            return volume
        for kind, pattern in self._derived_res:
            match = pattern.match(name)
            if match is None:
                continue
            base = self._parse_volume(match["base"])
            if base is None:
                continue
            fields = {k: int(v) for k, v in match.groupdict().items()
                      if k in ("snap_id", "vmsnap_id", "timestamp") and v is not None}
            suffix = match.groupdict().get("suffix")
            return ParsedName(kind=kind, base=base, suffix=suffix, **fields)
        return None

    def _parse_volume(self, name: str) -> ParsedName | None:
        for kind, pattern in self._volume_res:
            match = pattern.match(name)
            if match is None:
                continue
            groups = match.groupdict()
            fields: dict[str, int | str | None] = {
                key: int(value) for key, value in groups.items()
                if key.endswith("_id") and value is not None
            }
            if kind == "staging" and groups["md5"] != hashlib.md5(
                    f"{self.prefix}-img-{groups['image_id']}".encode()).hexdigest():
                continue
            if kind == "volatile":
                fields["fmt"] = groups["fmt"]
            return ParsedName(kind=kind, **fields)  # type: ignore[arg-type]
        return None

    def _compile_volume_patterns(self) -> list[tuple[str, re.Pattern[str]]]:
        px = re.escape(self.prefix)
        num = r"(?:0|[1-9][0-9]*)"
        singletons = "|".join(SYSTEM_SINGLETONS)
        # Known formats only: any word would also match a revert temporary of `<px>-sys-<VM>`
        formats = "|".join(VOLATILE_FORMATS)
        table = [
            ("template", rf"{px}-ds-(?P<ds_id>{num})"),
            ("image", rf"{px}-img-(?P<image_id>{num})"),
            ("clone", rf"{px}-img-(?P<image_id>{num})-(?P<vm_id>{num})-(?P<disk_id>{num})"),
            ("staging", rf"{px}-img-(?P<image_id>{num})-(?P<md5>[0-9a-f]{{32}})"),
            ("context", rf"{px}-sys-(?P<vm_id>{num})-(?P<disk_id>{num})-iso"),
            ("volatile", rf"{px}-sys-(?P<vm_id>{num})-(?P<disk_id>{num})-(?P<fmt>{formats})"),
            ("singleton", rf"{px}-sys-(?P<vm_id>{num})-(?P<which>{singletons})"),
            ("memory", rf"{px}-sys-(?P<vm_id>{num})"),
        ]
        compiled = [(kind, re.compile(rf"^{body}$")) for kind, body in table]
        # Singletons are reported under their own kind (nvram, swtpm, ...).
        return [(kind, pattern) for kind, pattern in compiled if kind != "singleton"] + [
            (which.lower(), re.compile(rf"^{px}-sys-(?P<vm_id>{num})-{which}$"))
            for which in SYSTEM_SINGLETONS
        ]

    def _compile_derived_patterns(self) -> list[tuple[str, re.Pattern[str]]]:
        num = r"(?:0|[1-9][0-9]*)"
        tag = re.escape(self.vmsnap_tag)
        table = [
            ("disk_snapshot", rf"(?P<base>.+)-snap(?P<snap_id>{num})"),
            ("vm_snapshot", rf"(?P<base>.+)-{tag}-(?P<vmsnap_id>{num})-(?P<timestamp>{num})"),
            ("backup", rf"(?P<base>.+)-{BACKUP_TAG}-(?P<timestamp>{num})"),
            ("tombstone", rf"(?P<base>.+)-{TOMBSTONE_TAG}-(?P<timestamp>{num})"),
            ("export", rf"(?P<base>.+)-export-(?P<suffix>{_RANDOM_RE}{{6}})"),
            ("vmsnap_revert_temp",
             rf"(?P<base>.+)-{VMSNAP_REVERT_TAG}-(?P<timestamp>{num})-(?P<suffix>{_RANDOM_RE}{{8}})"),
            ("restore_temp", rf"(?P<base>.+)-tmpRestore(?P<suffix>{_RANDOM_RE}{{8}})"),
            ("revert_temp", rf"(?P<base>.+)-(?P<timestamp>{num})-(?P<suffix>{_RANDOM_RE}{{8}})"),
        ]
        return [(kind, re.compile(rf"^{body}$")) for kind, body in table]


def _random(value: str, length: int) -> str:
    if not re.fullmatch(rf"{_RANDOM_RE}{{{length}}}", value):
        raise InputError(f"random suffix must be {length} letters or digits, got {value!r}")
    return value
