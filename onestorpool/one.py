"""OpenNebula's XML as typed, read-only objects: driver actions, VM, IMAGE, DATASTORE, HOST
and the messages of oned's hook bus.

Parsing (``payload`` is the XML as ``str``/``bytes``, or its base64 exactly as oned hands it to
a driver: argv, stdin, a ZeroMQ frame; the two cannot be confused, base64 has no ``<``):

====================================================  ==============================================
``parse_ds_action(payload) -> DsAction``              ``DS_DRIVER_ACTION_DATA`` (DS actions, TM
                                                      ``monitor``)
``parse_vmm_action(payload) -> VmmAction``            ``VMM_DRIVER_ACTION_DATA`` (VMM local actions)
``parse_vm(payload) -> Vm``                           a VM body (``one.vm.info``, TM migrate/backup
                                                      stdin)
``parse_image``, ``parse_datastore``, ``parse_host``  IMAGE, DATASTORE, HOST bodies
``parse_hook_key(key) -> HookEvent``                  the key frame alone, to filter cheaply
``parse_hook_message(key, payload) -> HookEvent``     both frames of a hook-bus message (or
``parse_hook_message(frames) -> HookEvent``           ``socket.recv_multipart()`` as is)
``parse_xml(data, what, forgiving=False)``            the hardened parser (an lxml element)
``decode_base64(data, what) -> bytes``                strict base64
====================================================  ==============================================

Objects (frozen dataclasses): :class:`Vm` with :class:`Disk`, :class:`Snapshot`,
:class:`VmSnapshot`, :class:`HistoryRecord`; :class:`Image`; :class:`Datastore`;
:class:`Host`; :class:`DsAction`; :class:`VmmAction`; :class:`HookEvent` with
:class:`ApiParameter`. ``TEMPLATE``/``USER_TEMPLATE`` and vectors are :class:`Template`
(a read-only, case-sensitive ``Mapping[str, str]`` with typed getters and ``vectors()``).
Numeric tables (OpenNebula ``include/*.h``): :class:`VmState`, :class:`LcmState`,
:class:`ImageState`, :class:`ImageType`, :class:`DiskType`, :class:`DatastoreType`,
:class:`DatastoreState`, :class:`HostState`.

Rules:

* Everything goes through :func:`parse_xml`: UTF-8 only, at most :data:`MAX_XML_BYTES`, no
  DOCTYPE (so no entity declarations; oned never sends one), no entity resolution, no DTD or
  network access, libxml2's default depth and size limits. Base64 is decoded strictly.
* A missing or malformed field raises one :class:`InputError` naming the object path and the
  field: ``IMAGE/SIZE: expected an integer, got 'abc'``,
  ``VM/TEMPLATE/DISK[DISK_ID=2]/CLONE: expected YES or NO, got 'maybe'``.
* A state or type number the tables do not know (a newer oned) is kept as an
  ``UNKNOWN_<n>`` member, not refused: a driver must not fail on a VM because oned grew a state.
* API hook messages carry string parameters unescaped (oned inserts them raw), so they may be
  malformed XML. :attr:`HookEvent.parameters` are cut out of the raw text, exactly as oned
  wrote them; :attr:`HookEvent.message` is lxml's recovered tree, for inspection only.

Drivers import this module on their hot path: it needs lxml and the standard library only.
A dataclass costs about a millisecond to build (its methods are generated and compiled), so
what a transfer manager action never reads is defined in sibling modules loaded on first use
and reached through this one as before: :class:`Image`, :class:`Host`, :class:`DsAction`,
:class:`VmmAction` and their parsers in :mod:`onestorpool.one_bodies`; the hook bus in
:mod:`onestorpool.one_hooks`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from lxml import etree

from onestorpool.errors import InputError

MAX_XML_BYTES = 16 << 20
"""Largest XML document accepted (a VM body with many disks and snapshots is ~100 KiB)."""


# -- numeric tables (reference opennebula-interfaces.md §3.6) --------------------------------


class _OneEnum(IntEnum):
    """An OpenNebula numeric table; unknown numbers become ``UNKNOWN_<n>`` pseudo-members."""

    @classmethod
    def _missing_(cls, value: object) -> _OneEnum | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


class VmState(_OneEnum):
    INIT = 0
    PENDING = 1
    HOLD = 2
    ACTIVE = 3
    STOPPED = 4
    SUSPENDED = 5
    DONE = 6
    FAILED = 7  # obsolete
    POWEROFF = 8
    UNDEPLOYED = 9
    CLONING = 10
    CLONING_FAILURE = 11


class LcmState(_OneEnum):
    """``include/VirtualMachine.h``. 55 exists up to 5.x only, 58 is gone since before 5.10
    (the reference calls both unused); 65-71 came with 5.12-6.10."""

    LCM_INIT = 0
    PROLOG = 1
    BOOT = 2
    RUNNING = 3
    MIGRATE = 4
    SAVE_STOP = 5
    SAVE_SUSPEND = 6
    SAVE_MIGRATE = 7
    PROLOG_MIGRATE = 8
    PROLOG_RESUME = 9
    EPILOG_STOP = 10
    EPILOG = 11
    SHUTDOWN = 12
    CANCEL = 13  # obsolete
    FAILURE = 14  # obsolete
    CLEANUP_RESUBMIT = 15
    UNKNOWN = 16
    HOTPLUG = 17
    SHUTDOWN_POWEROFF = 18
    BOOT_UNKNOWN = 19
    BOOT_POWEROFF = 20
    BOOT_SUSPENDED = 21
    BOOT_STOPPED = 22
    CLEANUP_DELETE = 23
    HOTPLUG_SNAPSHOT = 24
    HOTPLUG_NIC = 25
    HOTPLUG_SAVEAS = 26
    HOTPLUG_SAVEAS_POWEROFF = 27
    HOTPLUG_SAVEAS_SUSPENDED = 28
    SHUTDOWN_UNDEPLOY = 29
    EPILOG_UNDEPLOY = 30
    PROLOG_UNDEPLOY = 31
    BOOT_UNDEPLOY = 32
    HOTPLUG_PROLOG_POWEROFF = 33
    HOTPLUG_EPILOG_POWEROFF = 34
    BOOT_MIGRATE = 35
    BOOT_FAILURE = 36
    BOOT_MIGRATE_FAILURE = 37
    PROLOG_MIGRATE_FAILURE = 38
    PROLOG_FAILURE = 39
    EPILOG_FAILURE = 40
    EPILOG_STOP_FAILURE = 41
    EPILOG_UNDEPLOY_FAILURE = 42
    PROLOG_MIGRATE_POWEROFF = 43
    PROLOG_MIGRATE_POWEROFF_FAILURE = 44
    PROLOG_MIGRATE_SUSPEND = 45
    PROLOG_MIGRATE_SUSPEND_FAILURE = 46
    BOOT_UNDEPLOY_FAILURE = 47
    BOOT_STOPPED_FAILURE = 48
    PROLOG_RESUME_FAILURE = 49
    PROLOG_UNDEPLOY_FAILURE = 50
    DISK_SNAPSHOT_POWEROFF = 51
    DISK_SNAPSHOT_REVERT_POWEROFF = 52
    DISK_SNAPSHOT_DELETE_POWEROFF = 53
    DISK_SNAPSHOT_SUSPENDED = 54
    DISK_SNAPSHOT_REVERT_SUSPENDED = 55  # 5.x
    DISK_SNAPSHOT_DELETE_SUSPENDED = 56
    DISK_SNAPSHOT = 57
    DISK_SNAPSHOT_DELETE = 59
    PROLOG_MIGRATE_UNKNOWN = 60
    PROLOG_MIGRATE_UNKNOWN_FAILURE = 61
    DISK_RESIZE = 62
    DISK_RESIZE_POWEROFF = 63
    DISK_RESIZE_UNDEPLOYED = 64
    HOTPLUG_NIC_POWEROFF = 65
    HOTPLUG_RESIZE = 66
    HOTPLUG_SAVEAS_UNDEPLOYED = 67
    HOTPLUG_SAVEAS_STOPPED = 68
    BACKUP = 69
    BACKUP_POWEROFF = 70
    RESTORE = 71


LCM_STATE_NAMES: tuple[str, ...] = tuple(LcmState(n).name for n in range(max(LcmState) + 1))
"""``LCM_STATE_NAMES[n]`` is the name oned uses for LCM state ``n`` in hook keys."""


def lcm_name(value: int) -> str:
    return LcmState(value).name


class ImageState(_OneEnum):
    INIT = 0
    READY = 1
    USED = 2
    DISABLED = 3
    LOCKED = 4
    ERROR = 5
    CLONE = 6
    DELETE = 7
    USED_PERS = 8
    LOCKED_USED = 9
    LOCKED_USED_PERS = 10


class ImageType(_OneEnum):
    OS = 0
    CDROM = 1
    DATABLOCK = 2
    KERNEL = 3
    RAMDISK = 4
    CONTEXT = 5
    BACKUP = 6
    FILESYSTEM = 7


class DiskType(_OneEnum):
    """The numeric ``DISK_TYPE`` of IMAGE and DATASTORE bodies (a VM DISK has a string)."""

    FILE = 0
    CD_ROM = 1
    BLOCK = 2
    RBD = 3
    RBD_CDROM = 4
    GLUSTER = 5
    GLUSTER_CDROM = 6
    SHEEPDOG = 7
    SHEEPDOG_CDROM = 8
    ISCSI = 9
    FILE_SYSTEM = 10


class DatastoreType(_OneEnum):
    IMAGE = 0
    SYSTEM = 1
    FILE = 2
    BACKUP = 3


class DatastoreState(_OneEnum):
    READY = 0
    DISABLED = 1


class HostState(_OneEnum):
    INIT = 0
    MONITORING_MONITORED = 1  # obsolete
    MONITORED = 2
    ERROR = 3
    DISABLED = 4
    MONITORING_ERROR = 5  # obsolete
    MONITORING_INIT = 6  # obsolete
    MONITORING_DISABLED = 7  # obsolete
    OFFLINE = 8


# -- hardened decoding ------------------------------------------------------------------------


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"


def decode_base64(data: str | bytes, what: str = "driver action",
                  max_bytes: int = MAX_XML_BYTES) -> bytes:
    """Strict base64 (standard alphabet, padding checked); whitespace such as a trailing
    newline or line wrapping is ignored."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    raw = b"".join(raw.split())
    if len(raw) > (max_bytes + 2) // 3 * 4:
        raise InputError(f"{what}: larger than {_size(max_bytes)}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: not valid base64") from None


def decode_payload(data: str | bytes, what: str) -> bytes:
    """XML as it is, or the XML inside base64. Base64 never contains ``<``; XML has one at
    its start, after a BOM or blanks (or as UTF-16, which the parser then refuses)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if b"<" in raw[:1024]:
        return raw
    return decode_base64(raw, what)


def _prolog_end(raw: bytes) -> int:
    """Where the prolog (XML declaration, comments, PIs, blanks) ends: a DOCTYPE can only
    come there, so text after it (CDATA of user templates) is not searched."""
    position = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    while True:
        while position < len(raw) and raw[position] in b" \t\r\n":
            position += 1
        for opening, closing in ((b"<?", b"?>"), (b"<!--", b"-->")):
            if raw.startswith(opening, position):
                end = raw.find(closing, position + len(opening))
                position = len(raw) if end < 0 else end + len(closing)
                break
        else:
            return position


def _parser(forgiving: bool, huge: bool = False) -> etree.XMLParser:
    # A parser per call: construction costs microseconds and sharing one across the
    # subscriber's threads is not something lxml promises. ``encoding`` overrides whatever the
    # document declares: oned only writes UTF-8, and a UTF-16 document cannot sneak a DOCTYPE
    # past the prolog check.
    return etree.XMLParser(encoding="utf-8", resolve_entities=False, no_network=True,
                           load_dtd=False, dtd_validation=False, huge_tree=huge,
                           remove_comments=True, remove_pis=True, recover=forgiving)


def parse_xml(data: str | bytes, what: str = "XML", forgiving: bool = False,
              max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """The root element of ``data``. ``forgiving`` lets lxml recover from malformed markup
    (API hook messages); DOCTYPE, entities and size are refused either way. A ``max_bytes``
    above :data:`MAX_XML_BYTES` also lifts libxml2's text-node limit (a pool listing inside
    one XML-RPC string); with entities off, that only costs memory in proportion."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise InputError(f"{what}: larger than {_size(max_bytes)}")
    start = _prolog_end(raw)
    if start >= len(raw):
        raise InputError(f"{what}: empty document")
    if raw.startswith(b"<!", start):
        raise InputError(f"{what}: DOCTYPE and entity declarations are not accepted")
    try:
        root = etree.fromstring(raw, _parser(forgiving, huge=max_bytes > MAX_XML_BYTES))
    except etree.XMLSyntaxError as exc:
        detail = " ".join(str(exc.msg).split())  # libxml2 messages may span lines
        raise InputError(f"{what}: malformed XML: {detail}") from None
    if root is None:
        raise InputError(f"{what}: no XML element found")
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:  # the prolog check's safety net
        raise InputError(f"{what}: DOCTYPE and entity declarations are not accepted")
    return root


# -- typed field access -----------------------------------------------------------------------

# int() would also take "1_000", " +5", other scripts' digits and 4000-digit numbers
_INT_RE = re.compile(r"-?[0-9]{1,19}")
_ID_RE = re.compile(r"[0-9]{1,19}")
_TRUE = frozenset(("YES", "TRUE", "1"))
_FALSE = frozenset(("NO", "FALSE", "0"))


def _show(value: str) -> str:
    """A value for an error message: quoted, and short."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}..."


def _to_int(value: str, where: str) -> int:
    if _INT_RE.fullmatch(value) is None:
        raise InputError(f"{where}: expected an integer, got {_show(value)}")
    return int(value)


def _id(value: str) -> int | None:
    """A non-negative number, or ``None`` (for values that are not ours to refuse)."""
    return int(value) if _ID_RE.fullmatch(value) else None


def _to_bool(value: str, where: str, default: bool) -> bool:
    word = value.upper()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    if word == "":
        return default
    raise InputError(f"{where}: expected YES or NO, got {_show(value)}")


def _int_list(value: str, where: str) -> tuple[int, ...]:
    """``"1,2"`` (snapshot CHILDREN) as integers."""
    return tuple(_to_int(part.strip(), where) for part in value.split(",") if part.strip())


class Template(Mapping[str, str]):
    """A ``TEMPLATE`` (or a vector such as ``DISK``, ``OS``, ``TPM``, ``CONTEXT``): its
    single-valued attributes as a read-only, case-sensitive mapping of stripped strings, its
    vectors through :meth:`vectors`. When a single attribute repeats, the first one counts
    (what oned's ``Template::get`` does)."""

    __slots__ = ("_values", "_vectors", "path")

    def __init__(self, path: str = "TEMPLATE", values: Mapping[str, str] | None = None,
                 vectors: Mapping[str, tuple[Template, ...]] | None = None):
        self.path = path
        self._values = dict(values or {})
        self._vectors = dict(vectors or {})

    @classmethod
    def from_element(cls, element: etree._Element | None, path: str) -> Template:
        values: dict[str, str] = {}
        vectors: dict[str, list[Template]] = {}
        for child in () if element is None else element:
            if not isinstance(child.tag, str):
                continue  # comments and entity references of a recovered tree
            if len(child):
                vectors.setdefault(child.tag, []).append(
                    cls.from_element(child, f"{path}/{child.tag}"))
            else:
                values.setdefault(child.tag, (child.text or "").strip())
        return cls(path, values, {k: tuple(v) for k, v in vectors.items()})

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Template):
            return self._values == other._values and self._vectors == other._vectors
        if isinstance(other, Mapping):
            return self._values == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to dicts, so not hashable either

    def __repr__(self) -> str:
        vectors = f", vectors={sorted(self._vectors)}" if self._vectors else ""
        return f"Template({self.path!r}, {self._values!r}{vectors})"

    def get_int(self, name: str, default: int | None = None) -> int | None:
        """The integer value of ``name``; ``default`` when it is absent or empty."""
        value = self._values.get(name, "")
        return default if value == "" else _to_int(value, f"{self.path}/{name}")

    def get_bool(self, name: str, default: bool = False) -> bool:
        """``YES``/``NO`` (also ``TRUE``/``FALSE``, ``1``/``0``, any case)."""
        return _to_bool(self._values.get(name, ""), f"{self.path}/{name}", default)

    def vectors(self, name: str) -> tuple[Template, ...]:
        """Every vector attribute ``name`` (``SNAPSHOT``, ``NIC``, ...), in document order."""
        return self._vectors.get(name, ())

    def vector(self, name: str) -> Template | None:
        """The first vector attribute ``name`` (``OS``, ``TPM``, ``CONTEXT``), or ``None``."""
        found = self._vectors.get(name)
        return found[0] if found else None


class _Node:
    """One element and its path for error messages: ``IMAGE``, ``VM/TEMPLATE/DISK[...]``."""

    __slots__ = ("element", "path")

    def __init__(self, element: etree._Element, path: str):
        self.element, self.path = element, path

    def _raw(self, tag: str) -> str | None:
        child = self.element.find(tag)
        return None if child is None else (child.text or "").strip()

    def text(self, tag: str) -> str:
        value = self._raw(tag)
        if value is None:
            raise InputError(f"{self.path}/{tag}: missing")
        return value

    def opt_text(self, tag: str, default: str = "") -> str:
        value = self._raw(tag)
        return default if value is None else value

    def int(self, tag: str) -> int:
        return _to_int(self.text(tag), f"{self.path}/{tag}")

    def opt_int(self, tag: str) -> int | None:
        """``None`` when the element is absent or empty."""
        value = self._raw(tag)
        return None if not value else _to_int(value, f"{self.path}/{tag}")

    def int_or(self, tag: str, default: int) -> int:
        value = self.opt_int(tag)
        return default if value is None else value

    def flag(self, tag: str, default: bool = False) -> bool:
        return _to_bool(self.opt_text(tag), f"{self.path}/{tag}", default)

    def ids(self, path: str) -> tuple[int, ...]:
        return tuple(_to_int((e.text or "").strip(), f"{self.path}/{path}")
                     for e in self.element.findall(path))

    def child(self, tag: str) -> _Node | None:
        element = self.element.find(tag)
        return None if element is None else _Node(element, f"{self.path}/{tag}")

    def template(self, tag: str) -> Template:
        return Template.from_element(self.element.find(tag), f"{self.path}/{tag}")


# -- DATASTORE -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Datastore:
    id: int
    name: str
    uid: int | None
    gid: int | None
    type: DatastoreType
    ds_mad: str
    tm_mad: str
    base_path: str
    disk_type: DiskType | None
    state: DatastoreState
    cluster_ids: tuple[int, ...]
    total_mb: int | None
    free_mb: int | None
    used_mb: int | None
    image_ids: tuple[int, ...]
    template: Template = field(default_factory=Template)

    @property
    def cluster_id(self) -> int | None:
        return self.cluster_ids[0] if self.cluster_ids else None

    @property
    def shared(self) -> bool:
        """``TM_MAD_CONF`` ``SHARED`` copied into the template (system datastores)."""
        return self.template.get_bool("SHARED")


def _datastore(node: _Node) -> Datastore:
    disk_type = node.opt_int("DISK_TYPE")
    # 4.x bodies had a single CLUSTER_ID instead of the CLUSTERS list
    clusters = node.ids("CLUSTERS/ID") or node.ids("CLUSTER_ID")
    return Datastore(
        id=node.int("ID"), name=node.text("NAME"), uid=node.opt_int("UID"),
        gid=node.opt_int("GID"), type=DatastoreType(node.int("TYPE")),
        ds_mad=node.text("DS_MAD"), tm_mad=node.text("TM_MAD"),
        base_path=node.text("BASE_PATH"),
        disk_type=None if disk_type is None else DiskType(disk_type),
        state=DatastoreState(node.int("STATE")), cluster_ids=clusters,
        total_mb=node.opt_int("TOTAL_MB"), free_mb=node.opt_int("FREE_MB"),
        used_mb=node.opt_int("USED_MB"), image_ids=node.ids("IMAGES/ID"),
        template=node.template("TEMPLATE"))


@dataclass(frozen=True)
class Snapshot:
    """A disk snapshot: ``SNAPSHOTS/SNAPSHOT`` of a persistent image or of a VM disk."""

    id: int
    name: str
    parent: int  # -1: a root
    children: tuple[int, ...]
    active: bool
    date: int | None
    size_mb: int | None


def _snapshots(node: _Node | None) -> tuple[Snapshot, ...]:
    if node is None:
        return ()
    found = []
    for element in node.element.findall("SNAPSHOT"):
        item = _Node(element, f"{node.path}/SNAPSHOT")
        found.append(Snapshot(
            id=item.int("ID"), name=item.opt_text("NAME"),
            parent=item.int_or("PARENT", -1),
            children=_int_list(item.opt_text("CHILDREN"), f"{item.path}/CHILDREN"),
            active=item.flag("ACTIVE"), date=item.opt_int("DATE"),
            size_mb=item.opt_int("SIZE")))
    return tuple(found)


# -- VM ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    """One ``TEMPLATE/DISK``. Typed fields for what the add-on reads; every attribute
    (inherited datastore and image attributes too) through :meth:`get`/``attributes``."""

    disk_id: int
    attributes: Template
    image_id: int | None  # None: a volatile disk
    source: str
    type: str  # BLOCK, FILE, CDROM, RBD..., or fs / swap for volatile disks
    disk_type: str
    clone: bool
    persistent: bool
    readonly: bool
    save: bool
    shareable: bool
    attach: bool  # being attached or detached right now (ATTACH=YES)
    size_mb: int | None
    original_size_mb: int | None
    datastore_id: int | None
    tm_mad: str
    tm_mad_system: str
    format: str
    driver: str
    target: str
    hotplug_save_as: int | None  # the image a disk-saveas is filling
    hotplug_save_as_source: str
    hotplug_save_as_snapshot_id: int | None
    snapshots: tuple[Snapshot, ...] = ()

    def get(self, key: str, default: str = "") -> str:
        return self.attributes.get(key, default)

    @property
    def is_volatile(self) -> bool:
        return self.image_id is None and self.type.lower() in ("fs", "swap")

    @property
    def is_cdrom(self) -> bool:
        return self.type.upper() == "CDROM"


def _disk(element: etree._Element, position: int, parent: str,
          snapshots: Mapping[int, tuple[Snapshot, ...]]) -> Disk:
    raw_id = (element.findtext("DISK_ID") or "").strip()
    label = f"DISK_ID={raw_id}" if _INT_RE.fullmatch(raw_id) else str(position)
    node = _Node(element, f"{parent}/DISK[{label}]")
    disk_id = node.int("DISK_ID")
    return Disk(
        disk_id=disk_id, attributes=Template.from_element(element, node.path),
        image_id=node.opt_int("IMAGE_ID"), source=node.opt_text("SOURCE"),
        type=node.opt_text("TYPE"), disk_type=node.opt_text("DISK_TYPE"),
        clone=node.flag("CLONE"), persistent=node.flag("PERSISTENT"),
        readonly=node.flag("READONLY"), save=node.flag("SAVE"),
        shareable=node.flag("SHAREABLE"), attach=node.flag("ATTACH"),
        size_mb=node.opt_int("SIZE"), original_size_mb=node.opt_int("ORIGINAL_SIZE"),
        datastore_id=node.opt_int("DATASTORE_ID"), tm_mad=node.opt_text("TM_MAD"),
        tm_mad_system=node.opt_text("TM_MAD_SYSTEM"), format=node.opt_text("FORMAT"),
        driver=node.opt_text("DRIVER"), target=node.opt_text("TARGET"),
        hotplug_save_as=node.opt_int("HOTPLUG_SAVE_AS"),
        hotplug_save_as_source=node.opt_text("HOTPLUG_SAVE_AS_SOURCE"),
        hotplug_save_as_snapshot_id=node.opt_int("HOTPLUG_SAVE_AS_SNAPSHOT_ID"),
        snapshots=snapshots.get(disk_id, ()))


@dataclass(frozen=True)
class HistoryRecord:
    seq: int
    hostname: str
    host_id: int
    ds_id: int  # the system datastore
    tm_mad: str  # the system datastore's TM
    vm_mad: str


def _history(node: _Node) -> HistoryRecord:
    return HistoryRecord(seq=node.int("SEQ"), hostname=node.text("HOSTNAME"),
                         host_id=node.int("HID"), ds_id=node.int("DS_ID"),
                         tm_mad=node.opt_text("TM_MAD"), vm_mad=node.opt_text("VM_MAD"))


@dataclass(frozen=True)
class VmSnapshot:
    """A system (hypervisor) snapshot, ``TEMPLATE/SNAPSHOT``; the add-on's snapshot scripts
    print the suffix oned stores as ``HYPERVISOR_ID``."""

    snapshot_id: int
    hypervisor_id: str
    name: str
    time: int | None
    active: bool
    attributes: Template

    def get(self, key: str, default: str = "") -> str:
        return self.attributes.get(key, default)


def _vm_snapshot(attributes: Template) -> VmSnapshot:
    snapshot_id = attributes.get_int("SNAPSHOT_ID")
    if snapshot_id is None:
        raise InputError(f"{attributes.path}/SNAPSHOT_ID: missing")
    return VmSnapshot(snapshot_id=snapshot_id,
                      hypervisor_id=attributes.get("HYPERVISOR_ID", ""),
                      name=attributes.get("NAME", ""), time=attributes.get_int("TIME"),
                      active=attributes.get_bool("ACTIVE"), attributes=attributes)


@dataclass(frozen=True)
class Vm:
    id: int
    name: str
    uid: int
    gid: int
    state: VmState
    lcm_state: LcmState
    deploy_id: str
    disks: tuple[Disk, ...]
    context_disk_id: int | None
    history: tuple[HistoryRecord, ...]
    template: Template
    user_template: Template
    vm_snapshots: tuple[VmSnapshot, ...]

    @property
    def lcm_name(self) -> str:
        return self.lcm_state.name

    @property
    def last_history(self) -> HistoryRecord | None:
        return self.history[-1] if self.history else None

    @property
    def hostname(self) -> str:
        """The host of the current history record ("" before the first deploy)."""
        return self.history[-1].hostname if self.history else ""

    @property
    def system_ds_id(self) -> int | None:
        return self.history[-1].ds_id if self.history else None

    @property
    def system_tm_mad(self) -> str:
        return self.history[-1].tm_mad if self.history else ""

    @property
    def context(self) -> Template | None:
        return self.template.vector("CONTEXT")

    @property
    def disk_snapshots(self) -> dict[int, tuple[int, ...]]:
        """Disk id → its snapshot ids, for disks that have any."""
        return {d.disk_id: tuple(s.id for s in d.snapshots) for d in self.disks if d.snapshots}

    @property
    def attaching_disk(self) -> Disk | None:
        """The disk an attach or detach is working on (``ATTACH=YES``)."""
        return next((d for d in self.disks if d.attach), None)

    def disk(self, disk_id: int) -> Disk:
        for disk in self.disks:
            if disk.disk_id == disk_id:
                return disk
        raise InputError(f"VM {self.id}: no DISK with DISK_ID {disk_id}")


def _vm(node: _Node) -> Vm:
    snapshots: dict[int, tuple[Snapshot, ...]] = {}
    for element in node.element.findall("SNAPSHOTS"):  # one per disk, outside the DISK
        tree = _Node(element, f"{node.path}/SNAPSHOTS")
        snapshots[tree.int("DISK_ID")] = _snapshots(tree)
    template = node.template("TEMPLATE")
    context = template.vector("CONTEXT")
    disks = tuple(_disk(element, position, template.path, snapshots)
                  for position, element in enumerate(node.element.findall("TEMPLATE/DISK"), 1))
    return Vm(
        id=node.int("ID"), name=node.text("NAME"), uid=node.int("UID"), gid=node.int("GID"),
        state=VmState(node.int("STATE")), lcm_state=LcmState(node.int("LCM_STATE")),
        deploy_id=node.opt_text("DEPLOY_ID"), disks=disks,
        context_disk_id=None if context is None else context.get_int("DISK_ID"),
        history=tuple(_history(_Node(e, f"{node.path}/HISTORY_RECORDS/HISTORY"))
                      for e in node.element.findall("HISTORY_RECORDS/HISTORY")),
        template=template, user_template=node.template("USER_TEMPLATE"),
        vm_snapshots=tuple(_vm_snapshot(s) for s in template.vectors("SNAPSHOT")))


# -- entry points for bodies and driver actions -----------------------------------------------


def _root(payload: str | bytes, tag: str, what: str | None = None) -> _Node:
    what = what or tag
    root = parse_xml(decode_payload(payload, what), what)
    if root.tag != tag:
        raise InputError(f"{what}: expected {tag}, got {root.tag}")
    return _Node(root, tag)


def parse_vm(payload: str | bytes) -> Vm:
    return _vm(_root(payload, "VM"))


@dataclass(frozen=True)
class PoolDisk:
    """The few fields of a ``TEMPLATE/DISK`` that name its volume (see :func:`iter_vm_pool`)."""

    disk_id: int
    image_id: int | None
    source: str
    clone: bool
    type: str
    format: str
    snapshot_ids: tuple[int, ...]

    def get(self, key: str, default: str = "") -> str:
        return self.format or default if key == "FORMAT" else default


@dataclass(frozen=True)
class PoolVm:
    """A VM of a pool listing, reduced to what names its volumes: the monitor reads
    thousands of them, and full :class:`Vm` objects cost seconds and hundreds of MB."""

    id: int
    system_ds: int | None  # of the last history record
    context_disk_id: int | None
    disks: tuple[PoolDisk, ...]
    state: str = ""  # VmState's name (ACTIVE, SUSPENDED, ...)
    lcm_state: str = ""  # LcmState's name (RUNNING, LCM_INIT, ...)
    history_seq: int | None = None  # SEQ of the last history record

    def disk(self, disk_id: int) -> PoolDisk:
        for disk in self.disks:
            if disk.disk_id == disk_id:
                return disk
        raise InputError(f"VM {self.id} has no disk {disk_id}")


MAX_POOL_BYTES = 1 << 30


def iter_vm_pool(payload: str | bytes, max_bytes: int = MAX_POOL_BYTES) -> Iterator[PoolVm]:
    """The VMs of a ``VM_POOL`` body one by one, read incrementally (each VM's elements are
    freed once read); the same refusals as :func:`parse_xml` (DOCTYPE, entities, size)."""
    import io

    raw = decode_payload(payload, "VM_POOL")
    if len(raw) > max_bytes:
        raise InputError(f"VM_POOL: larger than {_size(max_bytes)}")
    start = _prolog_end(raw)
    if raw.startswith(b"<!", start):
        raise InputError("VM_POOL: DOCTYPE and entity declarations are not accepted")

    def number(text: str | None, what: str) -> int | None:
        text = (text or "").strip()
        if not text:
            return None
        if not _INT_RE.fullmatch(text):
            raise InputError(f"VM_POOL/{what}: expected an integer, got {text[:40]!r}")
        return int(text)

    events = etree.iterparse(io.BytesIO(raw), events=("end",), tag="VM", load_dtd=False,
                             resolve_entities=False, no_network=True, huge_tree=False)
    try:
        for _, element in events:
            if element.getparent() is None or element.getparent().tag != "VM_POOL":
                continue
            vm_id = number(element.findtext("ID"), "VM/ID")
            if vm_id is None:
                raise InputError("VM_POOL/VM/ID: missing")
            snapshots: dict[int, list[int]] = {}
            for tree in element.iterfind("SNAPSHOTS"):
                disk = number(tree.findtext("DISK_ID"), f"VM[{vm_id}]/SNAPSHOTS/DISK_ID")
                snapshots[disk or 0] = [number(s.findtext("ID"), f"VM[{vm_id}]/SNAPSHOT/ID")
                                        or 0 for s in tree.iterfind("SNAPSHOT")]
            disks = []
            for disk in element.iterfind("TEMPLATE/DISK"):
                fields = {child.tag: child.text for child in disk}  # one pass, not a find each
                disk_id = number(fields.get("DISK_ID"), f"VM[{vm_id}]/DISK/DISK_ID")
                if disk_id is None:
                    raise InputError(f"VM_POOL/VM[{vm_id}]/DISK/DISK_ID: missing")
                disks.append(PoolDisk(
                    disk_id, number(fields.get("IMAGE_ID"), f"VM[{vm_id}]/DISK/IMAGE_ID"),
                    (fields.get("SOURCE") or "").strip(),
                    (fields.get("CLONE") or "").strip().upper() == "YES",
                    (fields.get("TYPE") or "").strip(), (fields.get("FORMAT") or "").strip(),
                    tuple(snapshots.get(disk_id, ()))))
            history = element.findall("HISTORY_RECORDS/HISTORY")
            system_ds = number(history[-1].findtext("DS_ID"), f"VM[{vm_id}]/DS_ID") \
                if history else None
            history_seq = number(history[-1].findtext("SEQ"), f"VM[{vm_id}]/HISTORY/SEQ") \
                if history else None
            state = _state_name(VmState, number(element.findtext("STATE"), f"VM[{vm_id}]/STATE"))
            lcm_state = _state_name(LcmState, number(element.findtext("LCM_STATE"),
                                                     f"VM[{vm_id}]/LCM_STATE"))
            context = number(element.findtext("TEMPLATE/CONTEXT/DISK_ID"),
                             f"VM[{vm_id}]/CONTEXT/DISK_ID")
            yield PoolVm(vm_id, system_ds, context, tuple(disks), state, lcm_state,
                         history_seq)
            element.clear(keep_tail=True)
            while element.getprevious() is not None:
                del element.getparent()[0]
    except etree.XMLSyntaxError as exc:
        raise InputError(f"VM_POOL: malformed XML: {' '.join(str(exc.msg).split())}") from None


def _state_name(states: type[VmState] | type[LcmState], value: int | None) -> str:
    """The name of a state number ("" when absent; ``UNKNOWN_<n>`` for one this version
    does not know, as the enums make it)."""
    return "" if value is None else states(value).name


def parse_datastore(payload: str | bytes) -> Datastore:
    return _datastore(_root(payload, "DATASTORE"))


# -- defined elsewhere, loaded on first use ----------------------------------------------------

_ELSEWHERE = {
    **dict.fromkeys(("Image", "Host", "DsAction", "VmmAction", "parse_image", "parse_host",
                     "parse_ds_action", "parse_vmm_action"), "onestorpool.one_bodies"),
    **dict.fromkeys(("ApiParameter", "HookEvent", "parse_hook_key", "parse_hook_message"),
                    "onestorpool.one_hooks"),
}

if TYPE_CHECKING:  # what __getattr__ gives, for type checkers
    from onestorpool.one_bodies import (  # noqa: F401
        DsAction,
        Host,
        Image,
        VmmAction,
        parse_ds_action,
        parse_host,
        parse_image,
        parse_vmm_action,
    )
    from onestorpool.one_hooks import (  # noqa: F401
        ApiParameter,
        HookEvent,
        parse_hook_key,
        parse_hook_message,
    )


def __getattr__(name: str) -> Any:
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ELSEWHERE})
