"""The oned sandbox's objects: datastores, images, hosts and VMs with the attributes oned keeps
for them, plus the version switch and oned's error codes.

``prev_state`` follows oned: it is the state the object had at its last pool update, which is
what the XML bodies show as ``PREV_STATE`` and what decides whether an update publishes a
state event (``HookState*::trigger`` compares the two).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

Template = dict[str, Any]  # values: str, or list of dicts for vectors (DISK, CONTEXT, ...)

# oned's error codes (include/Request.h)
AUTHENTICATION = 0x100
AUTHORIZATION = 0x200
NO_EXISTS = 0x400
ACTION = 0x800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000
LOCKED = 0x8000

# State tables (include/VirtualMachine.h, Image.h, Host.h). The sandbox keeps its own copy:
# an emulator must not share the add-on's model, or it would repeat the add-on's mistakes.
LCM_STATES = tuple("""
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
    DISK_SNAPSHOT_SUSPENDED DISK_SNAPSHOT_REVERT_SUSPENDED DISK_SNAPSHOT_DELETE_SUSPENDED
    DISK_SNAPSHOT DISK_SNAPSHOT_REVERT DISK_SNAPSHOT_DELETE PROLOG_MIGRATE_UNKNOWN
    PROLOG_MIGRATE_UNKNOWN_FAILURE DISK_RESIZE DISK_RESIZE_POWEROFF DISK_RESIZE_UNDEPLOYED
    HOTPLUG_NIC_POWEROFF HOTPLUG_RESIZE HOTPLUG_SAVEAS_UNDEPLOYED HOTPLUG_SAVEAS_STOPPED
    BACKUP BACKUP_POWEROFF RESTORE""".split())


class VmState(IntEnum):
    INIT = 0
    PENDING = 1
    HOLD = 2
    ACTIVE = 3
    STOPPED = 4
    SUSPENDED = 5
    DONE = 6
    FAILED = 7  # obsolete, kept so that the names below index by number
    POWEROFF = 8
    UNDEPLOYED = 9
    CLONING = 10
    CLONING_FAILURE = 11


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


LCM = {name: number for number, name in enumerate(LCM_STATES)}
# the names by number, as the hook bus keys and the hook templates spell them
VM_STATES = tuple(state.name for state in VmState)
IMAGE_STATES = tuple(state.name for state in ImageState)

# PoolObjectSQL::INVALID_NAME_CHARS
INVALID_NAME_CHARS = "&|:\\\";/'#{}$<>"

# Image::DiskType names (disk_type_to_str) by number.
DISK_TYPES = ("FILE", "CDROM", "BLOCK", "RBD", "RBD_CDROM", "GLUSTER", "GLUSTER_CDROM",
              "SHEEPDOG", "SHEEPDOG_CDROM", "ISCSI", "FILE_SYSTEM")
IMAGE_TYPES = ("OS", "CDROM", "DATABLOCK", "KERNEL", "RAMDISK", "CONTEXT", "BACKUP")
DATASTORE_TYPES = ("IMAGE_DS", "SYSTEM_DS", "FILE_DS", "BACKUP_DS")
HOST_STATES = {0: "INIT", 2: "MONITORED", 3: "ERROR", 4: "DISABLED", 8: "OFFLINE"}


class OneFailure(Exception):
    """An oned error answer: ``[false, message, code, object id]``."""

    def __init__(self, code: int, message: str, object_id: int = -1, extra: str = ""):
        super().__init__(message)
        self.code, self.message, self.object_id = code, message, object_id
        self.extra = extra  # EXTRA of the API event (a delete saves the body first)


class Version(tuple):
    """``Version("6.10") >= (6, 8)``; only major.minor matters for the conventions."""

    def __new__(cls, text: str) -> Version:
        match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)*", text.strip())
        if match is None:
            raise ValueError(f"OpenNebula version {text!r}: expected MAJOR.MINOR")
        return super().__new__(cls, (int(match[1]), int(match[2])))

    def __str__(self) -> str:
        return f"{self[0]}.{self[1]}"


def check_name(name: str) -> str:
    """``PoolObjectSQL::name_is_valid``: the error text oned gives, or ""."""
    if not name:
        return "Invalid NAME, it cannot be empty"
    bad = next((c for c in name if c in INVALID_NAME_CHARS), None)
    if bad is not None:
        return f"Invalid NAME, char '{bad}' is not allowed"
    if len(name) > 128:
        return "Invalid NAME, max length is 128 chars"
    return ""


def now() -> int:
    return int(time.time())


@dataclass
class Datastore:
    id: int
    name: str
    ds_mad: str
    tm_mad: str
    type: int  # DATASTORE_TYPES index
    disk_type: int  # DISK_TYPES index
    base_path: str
    template: Template
    images: list[int] = field(default_factory=list)
    total_mb: int = 0
    free_mb: int = 0
    used_mb: int = 0
    state: int = 0
    monitor_counter: int = 0  # MONITOR_VM_DISKS every DS_MONITOR_VM_DISK-th time
    monitored: bool = False  # a monitoring answered at least once

    def avail_mb(self, capacity_check: bool) -> tuple[bool, int]:
        """``Datastore::get_avail_mb`` (release-6.10.5 src/datastore/Datastore.cc:1083):
        FREE_MB, or LIMIT_MB - USED_MB, never below 0; whether to check: the datastore's
        DATASTORE_CAPACITY_CHECK, else oned.conf's."""
        avail = self.free_mb
        limit = str(self.template.get("LIMIT_MB", "")).strip()
        if limit.lstrip("-").isdigit():
            avail = int(limit) - self.used_mb
        check = str(self.template.get("DATASTORE_CAPACITY_CHECK", "")).strip().upper()
        if check:
            capacity_check = check in ("YES", "TRUE")
        return capacity_check, max(avail, 0)

    @property
    def shared(self) -> bool:
        return str(self.template.get("SHARED", "YES")).upper() == "YES"

    @property
    def driver(self) -> str:
        """``DRIVER`` of the TM_MAD_CONF copy / DS template (forces volatile formats)."""
        return str(self.template.get("DRIVER", ""))


@dataclass
class ImageSnapshot:
    id: int
    name: str
    date: int
    parent: int = -1
    active: bool = False
    size: int = 0


@dataclass
class Image:
    id: int
    name: str
    type: int  # IMAGE_TYPES index
    disk_type: int
    persistent: bool
    ds_id: int
    ds_name: str
    template: Template
    path: str = ""
    source: str = ""
    format: str = ""
    fs: str = ""
    size: int = 0
    state: int = 4  # LOCKED until the datastore driver answers
    prev_state: int = 0  # INIT: no update published yet
    uid: int = 0
    gid: int = 0
    regtime: int = field(default_factory=now)
    vms: list[int] = field(default_factory=list)
    clones: list[int] = field(default_factory=list)
    cloning_ops: int = 0
    cloning_id: int = -1
    target_snapshot: int = -1
    snapshots: list[ImageSnapshot] = field(default_factory=list)
    next_snapshot: int = 0
    saving: tuple[int, int] | None = None  # (vm id, disk id) of a disk-saveas in progress


@dataclass
class Host:
    id: int
    name: str
    im_mad: str
    vm_mad: str
    template: Template
    state: int = 0
    prev_state: int = 0
    vms: list[int] = field(default_factory=list)


@dataclass
class History:
    seq: int
    hostname: str
    hid: int
    ds_id: int
    tm_mad: str
    vm_mad: str = "kvm"
    stime: int = field(default_factory=now)
    etime: int = 0
    action: int = 0  # VMActions number of the action that closed the record


@dataclass
class DiskSnapshots:
    """A disk's snapshot tree as oned keeps it (top-level ``SNAPSHOTS`` of the VM body)."""

    disk_id: int
    snapshots: list[ImageSnapshot] = field(default_factory=list)
    next_snapshot: int = 0
    current_base: int = -1


@dataclass
class Vm:
    id: int
    name: str
    template: Template  # TEMPLATE: the attributes oned knows
    user_template: Template  # USER_TEMPLATE: everything else, and ERROR
    state: int = 1
    lcm_state: int = 0
    prev_state: int = 0
    prev_lcm_state: int = 0
    uid: int = 0
    gid: int = 0
    stime: int = field(default_factory=now)
    etime: int = 0
    deploy_id: str = ""
    history: list[History] = field(default_factory=list)
    disk_snapshots: dict[int, DiskSnapshots] = field(default_factory=dict)
    monitoring: dict[str, Any] = field(default_factory=dict)
    # What the last history record was closed with (oned's get_previous_action): a
    # deploy after 'stop' is a PROLOG_RESUME, after 'undeploy' a PROLOG_UNDEPLOY.
    previous_action: str = ""
    saveas_from: int = 3  # the state a disk save-as returns to (ACTIVE: RUNNING)
    resched: int = 0  # RESCHED: the scheduler is to move the VM (one.vm.action resched)

    @property
    def disks(self) -> list[dict[str, str]]:
        return self.template.setdefault("DISK", [])

    def disk(self, disk_id: int) -> dict[str, str] | None:
        return next((d for d in self.disks if d.get("DISK_ID") == str(disk_id)), None)

    @property
    def last(self) -> History:
        return self.history[-1]


def is_volatile(disk: dict[str, str]) -> bool:
    """``VirtualMachineDisk::is_volatile``: TYPE fs or swap."""
    return disk.get("TYPE", "").upper() in ("FS", "SWAP")
