"""OpenNebula's XML as typed, read-only objects: driver actions, VM, IMAGE, DATASTORE, HOST
and hook messages.

Everything from outside goes through :func:`parse_xml`: lxml with entity resolution, DTD
loading and network access off, no huge trees, a size limit, and any DOCTYPE refused (oned
never sends one). Base64 is decoded strictly. A missing or malformed field raises
:class:`InputError` naming the object and the field (``IMAGE/SIZE: expected an integer``).

Drivers import this module on their hot path: it needs lxml and nothing else heavy.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from lxml import etree

from onestorpool.errors import InputError

MAX_XML_BYTES = 16 << 20
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          dtd_validation=False, huge_tree=False, remove_comments=True)
_FORGIVING = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False, recover=True)


class VmState(IntEnum):
    INIT = 0
    PENDING = 1
    HOLD = 2
    ACTIVE = 3
    STOPPED = 4
    SUSPENDED = 5
    DONE = 6
    FAILED = 7
    POWEROFF = 8
    UNDEPLOYED = 9
    CLONING = 10
    CLONING_FAILURE = 11


# The full LCM table (reference §3.6); pyone's own enum stops at 68. Plain ints: an IntEnum
# of 72 members costs drivers ~15 ms of start-up.
LCM_STATE_NAMES: tuple[str, ...] = tuple("""
    LCM_INIT PROLOG BOOT RUNNING MIGRATE SAVE_STOP SAVE_SUSPEND SAVE_MIGRATE PROLOG_MIGRATE
    PROLOG_RESUME EPILOG_STOP EPILOG SHUTDOWN CANCEL FAILURE CLEANUP_RESUBMIT UNKNOWN HOTPLUG
    SHUTDOWN_POWEROFF BOOT_UNKNOWN BOOT_POWEROFF BOOT_SUSPENDED BOOT_STOPPED CLEANUP_DELETE
    HOTPLUG_SNAPSHOT HOTPLUG_NIC HOTPLUG_SAVEAS HOTPLUG_SAVEAS_POWEROFF HOTPLUG_SAVEAS_SUSPENDED
    SHUTDOWN_UNDEPLOY EPILOG_UNDEPLOY PROLOG_UNDEPLOY BOOT_UNDEPLOY HOTPLUG_PROLOG_POWEROFF
    HOTPLUG_EPILOG_POWEROFF BOOT_MIGRATE BOOT_FAILURE BOOT_MIGRATE_FAILURE
    PROLOG_MIGRATE_FAILURE PROLOG_FAILURE EPILOG_FAILURE EPILOG_STOP_FAILURE
    EPILOG_UNDEPLOY_FAILURE PROLOG_MIGRATE_POWEROFF PROLOG_MIGRATE_POWEROFF_FAILURE
    PROLOG_MIGRATE_SUSPEND PROLOG_MIGRATE_SUSPEND_FAILURE BOOT_UNDEPLOY_FAILURE
    BOOT_STOPPED_FAILURE PROLOG_RESUME_FAILURE PROLOG_UNDEPLOY_FAILURE
    DISK_SNAPSHOT_POWEROFF DISK_SNAPSHOT_REVERT_POWEROFF DISK_SNAPSHOT_DELETE_POWEROFF
    DISK_SNAPSHOT_SUSPENDED UNUSED_55 DISK_SNAPSHOT_DELETE_SUSPENDED DISK_SNAPSHOT UNUSED_58
    DISK_SNAPSHOT_DELETE PROLOG_MIGRATE_UNKNOWN PROLOG_MIGRATE_UNKNOWN_FAILURE DISK_RESIZE
    DISK_RESIZE_POWEROFF DISK_RESIZE_UNDEPLOYED HOTPLUG_NIC_POWEROFF HOTPLUG_RESIZE
    HOTPLUG_SAVEAS_UNDEPLOYED HOTPLUG_SAVEAS_STOPPED BACKUP BACKUP_POWEROFF RESTORE
""".split())


class LcmState:
    """``LcmState.RUNNING == 3``; :func:`lcm_name` for the reverse."""


for _number, _name in enumerate(LCM_STATE_NAMES):
    setattr(LcmState, _name, _number)


def lcm_name(value: int) -> str:
    return LCM_STATE_NAMES[value] if 0 <= value < len(LCM_STATE_NAMES) else str(value)


class ImageState(IntEnum):
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


class ImageType(IntEnum):
    OS = 0
    CDROM = 1
    DATABLOCK = 2
    KERNEL = 3
    RAMDISK = 4
    CONTEXT = 5
    BACKUP = 6
    FILESYSTEM = 7


class DatastoreType(IntEnum):
    IMAGE = 0
    SYSTEM = 1
    FILE = 2
    BACKUP = 3


class HostState(IntEnum):
    INIT = 0
    MONITORING_MONITORED = 1
    MONITORED = 2
    ERROR = 3
    DISABLED = 4
    MONITORING_ERROR = 5
    MONITORING_INIT = 6
    MONITORING_DISABLED = 7
    OFFLINE = 8


# -- parsing ----------------------------------------------------------------------------------


def decode_base64(text: str | bytes, what: str = "driver action") -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    raw = b"".join(raw.split())  # oned may wrap long lines
    if len(raw) > MAX_XML_BYTES * 4 // 3 + 4:
        raise InputError(f"{what}: base64 input larger than {MAX_XML_BYTES >> 20} MiB")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: not valid base64") from None


def parse_xml(data: str | bytes, what: str = "XML", forgiving: bool = False) -> etree._Element:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_XML_BYTES:
        raise InputError(f"{what}: larger than {MAX_XML_BYTES >> 20} MiB")
    head = raw[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in raw.upper():
        raise InputError(f"{what}: DOCTYPE and entity declarations are not accepted")
    try:
        root = etree.fromstring(raw, _FORGIVING if forgiving else _PARSER)
    except etree.XMLSyntaxError as exc:
        raise InputError(f"{what}: malformed XML: {exc.msg}") from None
    if root is None:
        raise InputError(f"{what}: empty document")
    return root


def _decode_maybe_base64(payload: str | bytes, what: str) -> bytes:
    text = payload.strip() if isinstance(payload, (str, bytes)) else payload
    if (text[:1] if isinstance(text, bytes) else text[:1].encode()) == b"<":
        return text.encode() if isinstance(text, str) else text
    return decode_base64(text, what)


class Node:
    """Typed access to one element; errors name ``<object>/<path>``."""

    def __init__(self, element: etree._Element, path: str):
        self.element, self.path = element, path

    def text(self, tag: str, default: str | None = None) -> str:
        child = self.element.find(tag)
        if child is None or child.text is None:
            if default is not None:
                return default
            raise InputError(f"{self.path}/{tag}: missing")
        return child.text.strip()

    def int(self, tag: str, default: int | None = None) -> int:
        value = self.text(tag, None if default is None else "")
        if value == "" and default is not None:
            return default
        try:
            return int(value)
        except ValueError:
            raise InputError(f"{self.path}/{tag}: expected an integer, got {value!r}") from None

    def optional_int(self, tag: str) -> int | None:
        value = self.text(tag, "")
        if value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise InputError(f"{self.path}/{tag}: expected an integer, got {value!r}") from None

    def child(self, tag: str, required: bool = True) -> Node | None:
        element = self.element.find(tag)
        if element is None:
            if required:
                raise InputError(f"{self.path}/{tag}: missing")
            return None
        return Node(element, f"{self.path}/{tag}")

    def attributes(self, tag: str = "TEMPLATE") -> dict[str, str]:
        """Single-valued children of a template as a dict (vectors are left out)."""
        element = self.element.find(tag)
        if element is None:
            return {}
        return {child.tag: (child.text or "").strip() for child in element
                if isinstance(child.tag, str) and len(child) == 0}


def yes(value: str) -> bool:
    return value.strip().upper() in ("YES", "1", "TRUE")


# -- objects --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Datastore:
    id: int
    name: str
    type: DatastoreType
    ds_mad: str
    tm_mad: str
    base_path: str
    state: int
    cluster_ids: tuple[int, ...]
    template: dict[str, str] = field(default_factory=dict)


def datastore_from(node: Node) -> Datastore:
    type_value = node.int("TYPE", 0)
    try:
        ds_type = DatastoreType(type_value)
    except ValueError:
        raise InputError(f"{node.path}/TYPE: unknown datastore type {type_value}") from None
    clusters = tuple(int(c.text) for c in node.element.findall("CLUSTERS/ID")
                     if c.text and c.text.strip().lstrip("-").isdigit())
    template = node.attributes()
    return Datastore(id=node.int("ID"), name=node.text("NAME", ""), type=ds_type,
                     ds_mad=node.text("DS_MAD", template.get("DS_MAD", "")),
                     tm_mad=node.text("TM_MAD", template.get("TM_MAD", "")),
                     base_path=node.text("BASE_PATH", ""), state=node.int("STATE", 0),
                     cluster_ids=clusters, template=template)


@dataclass(frozen=True)
class Image:
    id: int
    name: str
    uid: int
    gid: int
    type: int
    persistent: bool
    state: int
    size: int | None
    source: str
    path: str
    format: str
    fs: str
    fstype: str
    datastore_id: int | None
    target_snapshot: int | None
    cloning_id: int | None
    template: dict[str, str] = field(default_factory=dict)
    snapshot_ids: tuple[int, ...] = ()


def image_from(node: Node) -> Image:
    snapshot_ids = tuple(int(s.text) for s in node.element.findall("SNAPSHOTS/SNAPSHOT/ID")
                         if s.text and s.text.strip().isdigit())
    target = node.text("TARGET_SNAPSHOT", "")
    target_snapshot = None
    if target not in ("", "-1"):
        target_snapshot = node.int("TARGET_SNAPSHOT")
    cloning = node.text("CLONING_ID", "")
    return Image(
        id=node.int("ID"), name=node.text("NAME", ""), uid=node.int("UID", 0),
        gid=node.int("GID", 0), type=node.int("TYPE", 0),
        persistent=node.text("PERSISTENT", "0") in ("1", "YES"), state=node.int("STATE", 0),
        size=node.optional_int("SIZE"), source=node.text("SOURCE", ""),
        path=node.text("PATH", ""), format=node.text("FORMAT", ""), fs=node.text("FS", ""),
        fstype=node.text("FSTYPE", ""), datastore_id=node.optional_int("DATASTORE_ID"),
        target_snapshot=target_snapshot,
        cloning_id=int(cloning) if cloning.lstrip("-").isdigit() and cloning != "-1" else None,
        template=node.attributes(), snapshot_ids=snapshot_ids)


@dataclass(frozen=True)
class DsAction:
    """``DS_DRIVER_ACTION_DATA``: the datastore, the image (most actions) and extras."""

    datastore: Datastore
    image: Image | None
    extra: dict[str, str]

    @property
    def source_bridge_list(self) -> str:
        return self.extra.get("SOURCE_BRIDGE_LIST", "")


def parse_ds_action(payload: str | bytes) -> DsAction:
    """The DS driver action, base64 as oned passes it (or already-decoded XML)."""
    root = parse_xml(_decode_maybe_base64(payload, "DS driver action"), "DS driver action")
    if root.tag != "DS_DRIVER_ACTION_DATA":
        raise InputError(f"DS driver action: expected DS_DRIVER_ACTION_DATA, got {root.tag}")
    node = Node(root, "DS_DRIVER_ACTION_DATA")
    datastore = datastore_from(node.child("DATASTORE"))  # type: ignore[arg-type]
    image_node = node.child("IMAGE", required=False)
    image = image_from(image_node) if image_node is not None and image_node.element.find(
        "ID") is not None else None
    if image is None and image_node is not None:
        # stat's synthetic <IMAGE><PATH/><SIZE/></IMAGE> has no ID.
        image = Image(id=-1, name="", uid=0, gid=0, type=0, persistent=False, state=0,
                      size=image_node.optional_int("SIZE"), source="",
                      path=image_node.text("PATH", ""), format="", fs="", fstype="",
                      datastore_id=None, target_snapshot=None, cloning_id=None)
    extra = {child.tag: (child.text or "").strip() for child in root
             if isinstance(child.tag, str) and child.tag not in ("IMAGE", "DATASTORE")
             and len(child) == 0}
    return DsAction(datastore=datastore, image=image, extra=extra)


@dataclass(frozen=True)
class Disk:
    disk_id: int
    attributes: dict[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.attributes.get(key, default)

    @property
    def image_id(self) -> int | None:
        value = self.get("IMAGE_ID")
        return int(value) if value.isdigit() else None

    @property
    def source(self) -> str:
        return self.get("SOURCE")

    @property
    def clone(self) -> bool:
        return yes(self.get("CLONE", "NO"))

    @property
    def persistent(self) -> bool:
        return yes(self.get("PERSISTENT", "NO"))

    @property
    def readonly(self) -> bool:
        return yes(self.get("READONLY", "NO"))

    @property
    def type(self) -> str:
        return self.get("TYPE")

    @property
    def tm_mad(self) -> str:
        return self.get("TM_MAD")

    @property
    def size_mb(self) -> int | None:
        value = self.get("SIZE")
        return int(value) if value.isdigit() else None

    @property
    def datastore_id(self) -> int | None:
        value = self.get("DATASTORE_ID")
        return int(value) if value.isdigit() else None

    @property
    def is_volatile(self) -> bool:
        return self.image_id is None and self.type.lower() in ("fs", "swap")


@dataclass(frozen=True)
class HistoryRecord:
    seq: int
    hostname: str
    host_id: int
    ds_id: int
    tm_mad: str
    vm_mad: str


@dataclass(frozen=True)
class Vm:
    id: int
    name: str
    uid: int
    gid: int
    state: VmState
    lcm_state: int
    disks: tuple[Disk, ...]
    context_disk_id: int | None
    history: tuple[HistoryRecord, ...]
    template: dict[str, str]
    user_template: dict[str, str]
    disk_snapshots: dict[int, tuple[int, ...]]
    vm_snapshots: tuple[dict[str, str], ...]

    @property
    def lcm_name(self) -> str:
        return lcm_name(self.lcm_state)

    @property
    def last_history(self) -> HistoryRecord | None:
        return self.history[-1] if self.history else None

    def disk(self, disk_id: int) -> Disk:
        for disk in self.disks:
            if disk.disk_id == disk_id:
                return disk
        raise InputError(f"VM {self.id}: no DISK with DISK_ID {disk_id}")


def vm_from(node: Node) -> Vm:
    state_value = node.int("STATE")
    try:
        state = VmState(state_value)
    except ValueError:
        raise InputError(f"{node.path}/STATE: unknown VM state {state_value}") from None
    disks = []
    for element in node.element.findall("TEMPLATE/DISK"):
        attributes = {c.tag: (c.text or "").strip() for c in element if isinstance(c.tag, str)}
        disk_id = attributes.get("DISK_ID", "")
        if not disk_id.isdigit():
            raise InputError(f"{node.path}/TEMPLATE/DISK/DISK_ID: expected an integer, "
                             f"got {disk_id!r}")
        disks.append(Disk(int(disk_id), attributes))
    context = node.element.find("TEMPLATE/CONTEXT/DISK_ID")
    history = tuple(
        HistoryRecord(seq=h.int("SEQ", 0), hostname=h.text("HOSTNAME", ""),
                      host_id=h.int("HID", -1), ds_id=h.int("DS_ID", -1),
                      tm_mad=h.text("TM_MAD", ""), vm_mad=h.text("VM_MAD", ""))
        for h in (Node(e, f"{node.path}/HISTORY_RECORDS/HISTORY")
                  for e in node.element.findall("HISTORY_RECORDS/HISTORY")))
    disk_snapshots: dict[int, tuple[int, ...]] = {}
    for snaps in node.element.findall("SNAPSHOTS"):
        disk_id = snaps.findtext("DISK_ID", "").strip()
        if disk_id.isdigit():
            disk_snapshots[int(disk_id)] = tuple(
                int(s.findtext("ID", "-1")) for s in snaps.findall("SNAPSHOT"))
    vm_snapshots = tuple({c.tag: (c.text or "").strip() for c in s if isinstance(c.tag, str)}
                         for s in node.element.findall("TEMPLATE/SNAPSHOT"))
    return Vm(id=node.int("ID"), name=node.text("NAME", ""), uid=node.int("UID", 0),
              gid=node.int("GID", 0), state=state, lcm_state=node.int("LCM_STATE", 0),
              disks=tuple(disks),
              context_disk_id=int(context.text) if context is not None and (
                  context.text or "").strip().isdigit() else None,
              history=history, template=node.attributes("TEMPLATE"),
              user_template=node.attributes("USER_TEMPLATE"), disk_snapshots=disk_snapshots,
              vm_snapshots=vm_snapshots)


@dataclass(frozen=True)
class Host:
    id: int
    name: str
    state: int
    template: dict[str, str]

    @property
    def storpool_client_id(self) -> int | None:
        value = self.template.get("SP_OURID", "")
        return int(value) if value.isdigit() else None


def host_from(node: Node) -> Host:
    return Host(id=node.int("ID"), name=node.text("NAME"), state=node.int("STATE", 0),
                template=node.attributes())


def _parse_object(payload: str | bytes, tag: str, build: Any) -> Any:
    root = parse_xml(payload, tag)
    if root.tag != tag:
        raise InputError(f"{tag}: expected <{tag}>, got <{root.tag}>")
    return build(Node(root, tag))


def parse_vm(xml: str | bytes) -> Vm:
    return _parse_object(xml, "VM", vm_from)


def parse_image(xml: str | bytes) -> Image:
    return _parse_object(xml, "IMAGE", image_from)


def parse_datastore(xml: str | bytes) -> Datastore:
    return _parse_object(xml, "DATASTORE", datastore_from)


def parse_host(xml: str | bytes) -> Host:
    return _parse_object(xml, "HOST", host_from)


# -- hook messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookEvent:
    """One message of oned's hook bus: the key frame and the decoded ``HOOK_MESSAGE``."""

    kind: str  # "STATE", "API", "SERVICE", "RETRY"
    key: str
    object: str = ""  # VM, HOST, IMAGE, NET, ...
    object_id: int | None = None
    state: str = ""
    lcm_state: str = ""
    method: str = ""
    success: bool | None = None
    message: etree._Element | None = None

    def body(self, tag: str) -> etree._Element | None:
        """The object body carried by a STATE message (``VM``, ``IMAGE``, ``HOST``)."""
        return None if self.message is None else self.message.find(tag)


def parse_hook_key(key: str) -> HookEvent:
    """Keys: ``EVENT API <method> <0|1>``, ``EVENT STATE <OBJ>/<STATE>/<LCM>/<id> ``,
    ``EVENT <OBJ> <id>/<STATE>/<LCM> ``, ``EVENT SERVICE <id> ``, ``RETRY ...``."""
    words = key.split()
    if not words:
        raise InputError("hook message: empty key")
    if words[0] == "RETRY":
        return HookEvent("RETRY", key)
    if words[0] != "EVENT" or len(words) < 2:
        raise InputError(f"hook message: unknown key {key[:80]!r}")
    if words[1] == "API" and len(words) >= 4 and words[3] in ("0", "1"):
        return HookEvent("API", key, method=words[2], success=words[3] == "1")
    if words[1] == "SERVICE" and len(words) >= 3 and words[2].isdigit():
        return HookEvent("SERVICE", key, object="SERVICE", object_id=int(words[2]))
    if words[1] == "STATE" and len(words) >= 3:
        parts = words[2].split("/")
        if len(parts) == 4 and parts[3].isdigit():
            return HookEvent("STATE", key, object=parts[0], object_id=int(parts[3]),
                             state=parts[1], lcm_state=parts[2])
    if len(words) >= 3:
        parts = words[2].split("/")
        if len(parts) == 3 and parts[0].isdigit():
            return HookEvent("STATE", key, object=words[1], object_id=int(parts[0]),
                             state=parts[1], lcm_state=parts[2])
    raise InputError(f"hook message: unknown key {key[:80]!r}")


def parse_hook_message(key: str | bytes, payload: str | bytes) -> HookEvent:
    """Both ZeroMQ frames of one hook event. API messages may be malformed XML (oned
    does not escape string parameters): they are parsed forgivingly."""
    key_text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    event = parse_hook_key(key_text)
    raw = decode_base64(payload, "hook message")  # RETRY content ends in a blank: stripped
    message = parse_xml(raw, "HOOK_MESSAGE", forgiving=event.kind == "API")
    if message.tag != "HOOK_MESSAGE":
        raise InputError(f"hook message: expected HOOK_MESSAGE, got {message.tag}")
    return HookEvent(event.kind, event.key, event.object, event.object_id, event.state,
                     event.lcm_state, event.method, event.success, message)
