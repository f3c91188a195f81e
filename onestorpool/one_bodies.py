"""IMAGE and HOST bodies and the DS and VMM driver actions, as typed, read-only objects
(part of :mod:`onestorpool.one`, which documents them and gives them out: import them from
there). Apart because a transfer manager action reads none of them, and building their
dataclasses would cost its start-up a few milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from onestorpool.errors import InputError
from onestorpool.one import (
    Datastore,
    DiskType,
    HostState,
    ImageState,
    ImageType,
    Snapshot,
    Template,
    Vm,
    _datastore,
    _id,
    _Node,
    _root,
    _snapshots,
    _vm,
)

# -- IMAGE, HOST ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """An IMAGE body. In the DS ``stat`` action oned sends only ``<IMAGE><PATH/></IMAGE>``:
    that image has ``id == -1`` and no owner (``uid``/``gid`` 0), see :func:`parse_ds_action`."""

    id: int
    name: str
    uid: int
    gid: int
    type: ImageType
    disk_type: DiskType | None
    persistent: bool
    state: ImageState
    size: int | None  # MB
    source: str
    path: str
    format: str
    fs: str
    fstype: str  # before 6.0 (the XSD no longer has it)
    datastore_id: int | None
    target_snapshot: int | None  # the snapshot a snap_* action works on
    cloning_id: int | None  # the image this one is being cloned from
    cloning_ops: int
    running_vms: int
    vm_ids: tuple[int, ...]
    clone_ids: tuple[int, ...]
    template: Template = field(default_factory=Template)
    snapshots: tuple[Snapshot, ...] = ()

    @property
    def snapshot_ids(self) -> tuple[int, ...]:
        return tuple(s.id for s in self.snapshots)

    @property
    def md5(self) -> str:
        return self.template.get("MD5", "")

    @property
    def sha1(self) -> str:
        return self.template.get("SHA1", "")

    @property
    def driver(self) -> str:
        """Template ``DRIVER`` (``raw``, ``qcow2``); the add-on accepts raw only."""
        return self.template.get("DRIVER", "")

    @property
    def qos_class(self) -> str:
        return self.template.get("SP_QOSCLASS", "")


def _minus_one_is_none(value: int | None) -> int | None:
    return None if value is None or value < 0 else value


def _image(node: _Node) -> Image:
    disk_type = node.opt_int("DISK_TYPE")
    return Image(
        id=node.int("ID"), name=node.text("NAME"), uid=node.int("UID"), gid=node.int("GID"),
        type=ImageType(node.int("TYPE")),
        disk_type=None if disk_type is None else DiskType(disk_type),
        persistent=node.flag("PERSISTENT"), state=ImageState(node.int("STATE")),
        size=node.opt_int("SIZE"), source=node.opt_text("SOURCE"),
        path=node.opt_text("PATH"), format=node.opt_text("FORMAT"), fs=node.opt_text("FS"),
        fstype=node.opt_text("FSTYPE"), datastore_id=node.opt_int("DATASTORE_ID"),
        target_snapshot=_minus_one_is_none(node.opt_int("TARGET_SNAPSHOT")),
        cloning_id=_minus_one_is_none(node.opt_int("CLONING_ID")),
        cloning_ops=node.int_or("CLONING_OPS", 0), running_vms=node.int_or("RUNNING_VMS", 0),
        vm_ids=node.ids("VMS/ID"), clone_ids=node.ids("CLONES/ID"),
        template=node.template("TEMPLATE"), snapshots=_snapshots(node.child("SNAPSHOTS")))


def _stat_image(node: _Node) -> Image:
    """``stat``'s synthetic image: oned sends the PATH (and the sandbox a SIZE) only."""
    return Image(
        id=-1, name="", uid=0, gid=0, type=ImageType.OS, disk_type=None, persistent=False,
        state=ImageState.INIT, size=node.opt_int("SIZE"), source="",
        path=node.opt_text("PATH"), format="", fs="", fstype="", datastore_id=None,
        target_snapshot=None, cloning_id=None, cloning_ops=0, running_vms=0, vm_ids=(),
        clone_ids=(), template=Template(f"{node.path}/TEMPLATE"))


@dataclass(frozen=True)
class Host:
    id: int
    name: str
    state: HostState
    im_mad: str
    vm_mad: str
    cluster_id: int | None
    template: Template = field(default_factory=Template)

    @property
    def storpool_client_id(self) -> int | None:
        """Template ``SP_OURID`` when it is a number. Anything else is ignored rather than
        refused, as the old add-on's ``ONEHOST`` client-id source does: the next source in
        ``STORPOOL_CLIENT_ID_SOURCES`` is then asked."""
        return _id(self.template.get("SP_OURID", ""))


def _host(node: _Node) -> Host:
    return Host(id=node.int("ID"), name=node.text("NAME"), state=HostState(node.int("STATE")),
                im_mad=node.opt_text("IM_MAD"), vm_mad=node.opt_text("VM_MAD"),
                cluster_id=node.opt_int("CLUSTER_ID"), template=node.template("TEMPLATE"))


def parse_image(payload: str | bytes) -> Image:
    return _image(_root(payload, "IMAGE"))


def parse_host(payload: str | bytes) -> Host:
    return _host(_root(payload, "HOST"))


@dataclass(frozen=True)
class DsAction:
    """``DS_DRIVER_ACTION_DATA``: the DATASTORE, the IMAGE (all actions but monitor), the VM
    (backup-datastore actions) and the single-valued extras (``SOURCE_BRIDGE_LIST``,
    ``MONITOR_VM_DISKS``, ``DATASTORE_LOCATION``, ``DESTINATION_DS_ID``...)."""

    datastore: Datastore
    image: Image | None
    extra: Template
    vm: Vm | None = None

    @property
    def source_bridge_list(self) -> str:
        return self.extra.get("SOURCE_BRIDGE_LIST", "")

    @property
    def monitor_vm_disks(self) -> bool:
        """``MONITOR_VM_DISKS=1``: this monitor cycle also reports per-VM disk usage."""
        return self.extra.get_bool("MONITOR_VM_DISKS")

    @property
    def datastore_location(self) -> str:
        return self.extra.get("DATASTORE_LOCATION", "")


def parse_ds_action(payload: str | bytes) -> DsAction:
    """The DS driver action, base64 as oned passes it (or already-decoded XML)."""
    node = _root(payload, "DS_DRIVER_ACTION_DATA", "DS driver action")
    datastore = node.child("DATASTORE")
    if datastore is None:
        raise InputError("DS_DRIVER_ACTION_DATA/DATASTORE: missing")
    image = node.child("IMAGE")
    vm = node.child("VM")
    return DsAction(
        datastore=_datastore(datastore),
        image=None if image is None else (
            _image(image) if image.element.find("ID") is not None else _stat_image(image)),
        extra=Template.from_element(node.element, node.path), vm=None if vm is None else _vm(vm))


@dataclass(frozen=True)
class VmmAction:
    """``VMM_DRIVER_ACTION_DATA``: the VM, its host, and the system DATASTORE. Empty
    elements (oned writes ``<MIGR_HOST/>`` when there is none) are empty strings."""

    host: str
    migrate_host: str
    deploy_id: str
    local_deployment_file: str
    remote_deployment_file: str
    checkpoint_file: str
    tm_command: str
    tm_command_rollback: str
    disk_target_path: str
    vm: Vm
    datastore: Datastore | None


def parse_vmm_action(payload: str | bytes) -> VmmAction:
    node = _root(payload, "VMM_DRIVER_ACTION_DATA", "VMM driver action")
    vm = node.child("VM")
    if vm is None:
        raise InputError("VMM_DRIVER_ACTION_DATA/VM: missing")
    datastore = node.child("DATASTORE")
    return VmmAction(
        host=node.text("HOST"), migrate_host=node.opt_text("MIGR_HOST"),
        deploy_id=node.opt_text("DEPLOY_ID"),
        local_deployment_file=node.opt_text("LOCAL_DEPLOYMENT_FILE"),
        remote_deployment_file=node.opt_text("REMOTE_DEPLOYMENT_FILE"),
        checkpoint_file=node.opt_text("CHECKPOINT_FILE"),
        tm_command=node.opt_text("TM_COMMAND"),
        tm_command_rollback=node.opt_text("TM_COMMAND_ROLLBACK"),
        disk_target_path=node.opt_text("DISK_TARGET_PATH"), vm=_vm(vm),
        datastore=None if datastore is None else _datastore(datastore))
