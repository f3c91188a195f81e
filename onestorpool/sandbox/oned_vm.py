"""VMs in the oned sandbox: allocation, deployment and the lifecycle actions, following
oned's Dispatch Manager and Life-Cycle Manager (``src/dm/DispatchManagerActions.cc``,
``src/lcm/LifeCycleActions.cc``, ``src/lcm/LifeCycleStates.cc``).

Every pool update with a new (state, lcm state) publishes one state event, so the
intermediate states are visible as with oned (ACTIVE/LCM_INIT, PROLOG, BOOT, RUNNING...).
The Transfer Manager part runs the real TM scripts (``oned_transfer`` builds the lines); the
VMM part runs a ``remotes/vmm/kvm`` script for the actions declared local (``-l`` of
VM_MAD), and otherwise plays the hypervisor: it writes the deployment file and checkpoint
into the host directory and answers as libvirt would.

The scheduler is a part of its own (``oned_sched``), off unless asked for: a PENDING VM
waits for ``one.vm.deploy``, as with oned's scheduler stopped.
"""

from __future__ import annotations

import uuid
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from onestorpool.sandbox import oned_transfer as T
from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_core import SandboxCore
from onestorpool.sandbox.oned_hookbus import vm_state_message
from onestorpool.sandbox.oned_objects import (
    ACTION,
    ALLOCATE,
    DISK_TYPES,
    IMAGE_TYPES,
    LCM,
    LCM_STATES,
    Datastore,
    DiskSnapshots,
    History,
    Image,
    ImageSnapshot,
    ImageState,
    OneFailure,
    Template,
    Vm,
    VmState,
    check_name,
    is_volatile,
    now,
)
from onestorpool.sandbox.oned_storage import (
    DEFAULT_CDROM_DEVICE_PREFIX,
    DEFAULT_DEVICE_PREFIX,
    _parse,
)

S = VmState

# VMActions numbers, for the ACTION of history records.
ACTION_NUMBERS = {
    "migrate": 1, "live-migrate": 2, "undeploy": 5, "undeploy-hard": 6, "hold": 7,
    "release": 8, "stop": 9, "suspend": 10, "resume": 11, "delete": 13,
    "delete-recreate": 14, "reboot": 15, "reboot-hard": 16, "resched": 17, "unresched": 18,
    "poweroff": 19, "poweroff-hard": 20, "disk-attach": 21, "disk-detach": 22,
    "disk-snapshot-create": 25, "disk-snapshot-delete": 26, "terminate": 27,
    "terminate-hard": 28, "disk-resize": 29, "deploy": 30, "update": 36,
    "snapshot-create": 37, "snapshot-delete": 38, "snapshot-revert": 39, "disk-saveas": 40,
    "disk-snapshot-revert": 41, "recover": 42, "retry": 43, "poweroff-migrate": 48,
    "poweroff-hard-migrate": 49,
}
# What oned keeps in TEMPLATE (VirtualMachine::insert and parse_well_known_attributes);
# everything else the user wrote stays in USER_TEMPLATE.
TEMPLATE_ATTRIBUTES = frozenset("""
    DISK NIC NIC_ALIAS PCI CPU VCPU VCPU_MAX MEMORY MEMORY_MAX MEMORY_SLOTS MEMORY_RESIZE_MODE
    CONTEXT OS GRAPHICS VIDEO INPUT FEATURES RAW CLONING_TEMPLATE_ID TOPOLOGY NUMA_NODE
    HYPERV_OPTIONS SPICE_OPTIONS EMULATOR SUBMIT_ON_HOLD CPU_COST MEMORY_COST DISK_COST
    TEMPLATE_ID TM_MAD_SYSTEM TPM VMGROUP SCHED_ACTION SECURITY_GROUP_RULE
    AUTOMATIC_REQUIREMENTS AUTOMATIC_DS_REQUIREMENTS AUTOMATIC_NIC_REQUIREMENTS
    MEMORY_ENCRYPTION QEMU_GA_EXEC""".split())
# Actions that cancel a pending rescheduling (set_resched(false) in release-6.10.5
# src/lcm/LifeCycleActions.cc and DispatchManager::reboot)
CLEARS_RESCHED = frozenset("""terminate terminate-hard poweroff poweroff-hard undeploy
    undeploy-hard stop suspend reboot reboot-hard""".split())
# Failure LCM states terminate treats as "recover --delete" (DispatchManager::terminate).
FAILURE_STATES = frozenset(LCM[n] for n in """
    BOOT_FAILURE BOOT_MIGRATE_FAILURE PROLOG_MIGRATE_FAILURE PROLOG_FAILURE EPILOG_FAILURE
    EPILOG_STOP_FAILURE EPILOG_UNDEPLOY_FAILURE PROLOG_MIGRATE_POWEROFF_FAILURE
    PROLOG_MIGRATE_SUSPEND_FAILURE BOOT_UNDEPLOY_FAILURE BOOT_STOPPED_FAILURE
    PROLOG_RESUME_FAILURE PROLOG_UNDEPLOY_FAILURE PROLOG_MIGRATE_UNKNOWN_FAILURE""".split())


class VmPool:
    """``one.vm.allocate``, the images a VM takes and releases, ``one.vm.info``,
    ``one.vmpool.*``, ``one.vm.update``."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def vm_allocate(self, text: str, hold: bool = False) -> tuple[int, str]:
        method = "one.vm.allocate"
        user = _parse(text, method)
        with self.core.lock:
            vm_id = self.core._next_id["vm"]
            try:
                vm = self._new_vm(vm_id, user, bool(hold))
            except ValueError as error:
                raise OneFailure(ALLOCATE, f"[{method}] Error allocating a new virtual "
                                           f"machine. {error}") from None
            error = self.check_images(vm.disks)
            if error:
                raise OneFailure(ALLOCATE, f"[{method}] Error allocating a new virtual "
                                           f"machine. {error}")
            self.core._new_id("vm")
            self.core.vms[vm_id] = vm
            # VirtualMachinePool::allocate sets prev_state = state (src/vm/
            # VirtualMachinePool.cc, release-5.10.0 ...); VirtualMachine::insert takes the
            # images and makes a VM with a locked one CLONING (src/vm/VirtualMachine.cc:1152)
            vm.prev_state, vm.prev_lcm_state = vm.state, vm.lcm_state
            self.take_images(vm, vm.disks)
            if any(d.get("CLONING") == "YES" for d in vm.disks):
                vm.state = S.CLONING
            # then the new VM's state is published once, always
            self.core.hooks.publish(*vm_state_message(vm, self.core.version))
            if vm.state == S.CLONING:  # insert's "missing unlock callbacks" check (:1256)
                self.disk_lock_success(vm)
            self.core.changed.notify_all()
            return vm_id, X.vm_body(vm, all_history=False, version=self.core.version)

    def _new_vm(self, vm_id: int, user: Template, hold: bool) -> Vm:
        """``VirtualMachine::insert``: known attributes move to TEMPLATE, the rest stays in
        USER_TEMPLATE; MEMORY and CPU are mandatory; disks get their image's attributes."""
        template: Template = {"VMID": str(vm_id)}
        for key in list(user):
            if key in TEMPLATE_ATTRIBUTES:
                template[key] = user.pop(key)
        name = str(user.pop("NAME", "")) or f"{user.pop('TEMPLATE_NAME', '') or 'one'}-{vm_id}"
        user.pop("TEMPLATE_NAME", None)
        error = check_name(name)
        if error:
            raise ValueError(error)
        if not str(template.get("MEMORY", "")).isdigit() or int(template["MEMORY"]) <= 0:
            raise ValueError("MEMORY attribute must be a positive integer value.")
        try:
            if float(template.get("CPU", "")) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError("CPU attribute must be a positive float or integer value.") \
                from None
        if "VCPU" in template and (not str(template["VCPU"]).isdigit()
                                   or int(template["VCPU"]) <= 0):
            raise ValueError("VCPU attribute must be a positive integer value.")
        if str(user.get("SUBMIT_ON_HOLD", template.get("SUBMIT_ON_HOLD", ""))).upper() \
                == "YES":
            hold = True
        if hold:  # VirtualMachinePool::allocate: SUBMIT_ON_HOLD = true, kept in TEMPLATE
            template["SUBMIT_ON_HOLD"] = "YES"
        disks = template.get("DISK", [])
        if isinstance(disks, dict):
            disks = [disks]
        template["DISK"] = [self.disk_attributes(vm_id, n, dict(d)) for n, d in
                            enumerate(disks)]
        if not template["DISK"]:
            del template["DISK"]
        vm = Vm(vm_id, name, template, user, state=S.HOLD if hold else S.PENDING,
                prev_state=S.INIT)
        for disk in vm.disks:  # persistent images carry their disk snapshots along
            image = self.core.images.get(int(disk.get("IMAGE_ID", -1)))
            if image is not None and image.persistent and image.snapshots:
                vm.disk_snapshots[int(disk["DISK_ID"])] = DiskSnapshots(
                    int(disk["DISK_ID"]), [_copy_snapshot(s) for s in image.snapshots],
                    image.next_snapshot)
        contexts = template.get("CONTEXT")
        if contexts:
            context = contexts[0] if isinstance(contexts, list) else contexts
            context["DISK_ID"] = str(len(vm.disks))
            template["CONTEXT"] = [context]
        _assign_targets(vm)
        return vm

    def disk_attributes(self, vm_id: int, disk_id: int, disk: dict[str, str]
                         ) -> dict[str, str]:
        """``Image::disk_attribute`` + ``Datastore::disk_attribute`` for image disks;
        volatile disks get their system datastore attributes at deploy."""
        disk = {k.upper(): str(v) for k, v in disk.items()}
        disk["DISK_ID"] = str(disk_id)
        if is_volatile(disk):
            disk["TYPE"] = disk["TYPE"].lower()
            disk.setdefault("DEV_PREFIX", DEFAULT_DEVICE_PREFIX)
            return disk
        image = self._find_image(disk)
        ds = self.core.datastores[image.ds_id]
        if image.type not in (0, 1, 2):
            raise ValueError(f"Image {image.id} ({image.name}) of type "
                             f"{IMAGE_TYPES[image.type]} cannot be used as DISK.")
        cdrom = image.type == 1
        if not disk.get("DEV_PREFIX"):
            disk["DEV_PREFIX"] = str(image.template.get("DEV_PREFIX") or (
                DEFAULT_CDROM_DEVICE_PREFIX if cdrom else DEFAULT_DEVICE_PREFIX))
        disk.update(IMAGE=image.name, IMAGE_ID=str(image.id), SOURCE=image.source,
                    ORIGINAL_SIZE=str(image.size), DISK_SNAPSHOT_TOTAL_SIZE="0",
                    IMAGE_STATE=str(image.state))
        disk.setdefault("SIZE", str(image.size))
        if image.format:
            disk.update(DRIVER=image.format.lower(), FORMAT=image.format.lower())
        persistent_type = str(image.template.get("PERSISTENT_TYPE", "")).upper()
        if cdrom or persistent_type == "IMMUTABLE":
            disk.update(SAVE="NO", CLONE="NO", READONLY="YES")
        else:
            disk.setdefault("READONLY", "YES" if str(image.template.get("READONLY", ""))
                            .upper() == "YES" else "NO")
            if image.persistent:
                disk.update(PERSISTENT="YES", CLONE="NO", SAVE="YES")
                if persistent_type == "SHAREABLE" and image.format == "raw":
                    disk["SHAREABLE"] = "YES"
            else:
                disk.update(CLONE="YES", SAVE="NO")
        kind = DISK_TYPES[image.disk_type]
        disk["TYPE"] = ("CDROM" if kind in ("FILE", "BLOCK", "ISCSI") else f"{kind}_CDROM") \
            if cdrom else kind
        disk["DISK_TYPE"] = kind
        if image.template.get("TARGET") and not disk.get("TARGET"):
            disk["TARGET"] = str(image.template["TARGET"])
        disk.update(DATASTORE=ds.name, DATASTORE_ID=str(ds.id), TM_MAD=ds.tm_mad,
                    CLUSTER_ID="0")
        for attribute in ("CLONE_TARGET", "LN_TARGET"):
            if ds.template.get(attribute) and not disk.get(attribute):
                disk[attribute] = str(ds.template[attribute])
        return disk

    def _find_image(self, disk: dict[str, str]) -> Image:
        if disk.get("IMAGE_ID", "").isdigit():
            image = self.core.images.get(int(disk["IMAGE_ID"]))
            if image is None:
                raise ValueError(f"Error getting image [{disk['IMAGE_ID']}].")
            return image
        name = disk.get("IMAGE", "")
        image = next((i for i in self.core.images.values() if i.name == name), None)
        if image is None:
            raise ValueError(f"Image {name!r} does not exist")
        disk.update(IMAGE_UID=str(image.uid), IMAGE_UNAME="oneadmin")
        return image

    def check_images(self, disks: list[dict[str, str]], attach: bool = False) -> str:
        """``ImageManager::acquire_image``'s refusals (release-6.10.5
        src/image/ImageManagerActions.cc:88): a LOCKED image (still being copied) is taken
        by a new VM, which waits in CLONING, but not by an attach."""
        locked = (ImageState.LOCKED, ImageState.LOCKED_USED, ImageState.LOCKED_USED_PERS)
        for disk in disks:
            image = self.core.images.get(int(disk.get("IMAGE_ID", -1) or -1))
            if image is None:
                continue
            state = ImageState(image.state)
            shareable = str(image.template.get("PERSISTENT_TYPE", "")).upper() == "SHAREABLE"
            if state in (ImageState.USED_PERS, ImageState.LOCKED_USED_PERS) and not shareable:
                return f"Cannot acquire image {image.id}, it is persistent and already in use"
            if state in locked and attach:
                return f"Cannot acquire image {image.id}, it is locked"
            if state not in (ImageState.READY, ImageState.USED, ImageState.USED_PERS, *locked):
                return f"Cannot acquire image {image.id}, it is in state: {state.name}"
        return ""

    def take_images(self, vm: Vm, disks: list[dict[str, str]]) -> None:
        """Each image gets one more running VM: READY becomes USED (USED_PERS), LOCKED
        becomes LOCKED_USED (_PERS); then ``Image::disk_attribute`` gives the disk the new
        IMAGE_STATE and CLONING=YES while the image is locked (src/image/Image.cc:675)."""
        locked = (ImageState.LOCKED, ImageState.LOCKED_USED, ImageState.LOCKED_USED_PERS)
        for disk in disks:
            image = self.core.images.get(int(disk.get("IMAGE_ID", -1) or -1))
            if image is None:
                continue
            image.vms.append(vm.id)
            if image.state == ImageState.READY:
                image.state = ImageState.USED_PERS if image.persistent else ImageState.USED
            elif image.state == ImageState.LOCKED:
                image.state = (ImageState.LOCKED_USED_PERS if image.persistent
                               else ImageState.LOCKED_USED)
            self.core._update_image(image)
            disk["IMAGE_STATE"] = str(image.state)
            if image.state in locked:
                disk["CLONING"] = "YES"
            else:
                disk.pop("CLONING", None)

    def disk_lock_success(self, vm: Vm) -> None:
        """``LifeCycleManager::trigger_disk_lock_success`` (release-6.10.5
        src/lcm/LifeCycleStates.cc:2213): the cloning disks whose image is USED get its
        SOURCE and FORMAT; all ready: PENDING (HOLD with SUBMIT_ON_HOLD), an image in
        ERROR: CLONING_FAILURE, else still CLONING."""
        if vm.state not in (S.CLONING, S.CLONING_FAILURE):
            return
        cloning = [d for d in vm.disks if d.get("CLONING") == "YES"]
        ready, error = 0, False
        for disk in cloning:
            image = self.core.images.get(int(disk.get("IMAGE_ID", -1) or -1))
            if image is None:
                continue
            if image.state in (ImageState.USED, ImageState.USED_PERS):
                ready += 1
                disk.pop("CLONING", None)
                disk["SOURCE"] = image.source
                if image.format:
                    disk.update(DRIVER=image.format, FORMAT=image.format)
            elif image.state == ImageState.ERROR:
                error = True
        if ready == len(cloning):
            hold = str(vm.template.get("SUBMIT_ON_HOLD", "")).upper() == "YES"
            state = S.HOLD if hold else S.PENDING
        else:
            state = S.CLONING_FAILURE if error else S.CLONING
        self.core._set_vm_state(vm, state, 0)

    def release_images(self, vm: Vm, disks: list[dict[str, str]] | None = None) -> None:
        """``ImageManager::release_image``: a persistent image keeps the disk's snapshots;
        with no VM left USED (USED_PERS) is READY again (a non-persistent one only without
        clone operations), LOCKED_USED (_PERS) LOCKED."""
        for disk in disks if disks is not None else vm.disks:
            image = self.core.images.get(int(disk.get("IMAGE_ID", -1) or -1))
            if image is None or vm.id not in image.vms:
                continue
            if image.persistent:
                tree = vm.disk_snapshots.get(int(disk["DISK_ID"]))
                image.snapshots = [_copy_snapshot(s) for s in tree.snapshots] if tree else []
                image.next_snapshot = tree.next_snapshot if tree else image.next_snapshot
            image.vms.remove(vm.id)
            if not image.vms:
                if image.state == ImageState.USED_PERS or (
                        image.state == ImageState.USED and image.cloning_ops == 0):
                    image.state = ImageState.READY
                elif image.state == ImageState.LOCKED_USED_PERS or (
                        image.state == ImageState.LOCKED_USED and image.cloning_ops == 0):
                    image.state = ImageState.LOCKED
            self.core._update_image(image)

    def vm_info(self, vm_id: int, decrypt: bool = False) -> str:
        with self.core.lock:
            return X.vm_body(self.core._vm(vm_id), version=self.core.version)

    def _pool_vms(self, filters: tuple[Any, ...]) -> list[Vm]:
        """filter (ignored: one user), start id, end id, state (-2 any, -1 not DONE)."""
        start = filters[1] if len(filters) > 1 else -1
        end = filters[2] if len(filters) > 2 else -1
        state = filters[3] if len(filters) > 3 else -1
        chosen = []
        for vm in self.core.vms.values():
            if (start >= 0 and vm.id < start) or (end >= 0 and vm.id > end):
                continue
            if state == -2 or (state == -1 and vm.state != S.DONE) or vm.state == state:
                chosen.append(vm)
        return chosen

    def vmpool_info(self, *filters: Any) -> str:
        with self.core.lock:
            return X.pool("VM_POOL", [X.vm_short_body(v, self.core.version)
                                      for v in self._pool_vms(filters)])

    def vmpool_infoextended(self, *filters: Any) -> str:
        with self.core.lock:
            return X.pool("VM_POOL", [X.vm_body(v, all_history=False, version=self.core.version)
                                      for v in self._pool_vms(filters)])

    def vm_update(self, vm_id: int, text: str, merge: int = 0) -> int:
        template = _parse(text, "one.vm.update")
        with self.core.lock:
            vm = self.core._vm(vm_id, "one.vm.update")
            vm.user_template = {**vm.user_template, **template} if merge else template
            self.core.changed.notify_all()
            return vm_id


class VmDrivers:
    """Where a VM is, and the VMM/TM steps of its operations (local action scripts or the
    emulated hypervisor, transfer files)."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def place(self, vm: Vm, record: History | None = None, host: str = "") -> T.Place:
        record = record or vm.last
        return T.Place(host or record.hostname, self.core.system_dir(vm, record.ds_id),
                       record.tm_mad, record.ds_id)

    def fe_place(self, vm: Vm, record: History | None = None) -> T.Place:
        return self.place(vm, record, host=self.core.frontend)

    def system_ds(self, vm: Vm) -> Datastore:
        return self.core.datastores[vm.last.ds_id]

    def vmm_xml(self, vm: Vm, **values: str) -> str:
        host = values.pop("host", vm.last.hostname)
        return X.vmm_action_data(host=host, vm=vm, system_ds=self.system_ds(vm),
                                 version=self.core.version, **values)

    def vmm(self, vm: Vm, action: str, params: list[str], xml: str, *,
             stdin: str | None = None, host: str = "", default_name: str | None = None
             ) -> tuple[bool, str]:
        """A VMM step: the local action's script when VM_MAD declares it, else the
        emulated hypervisor. Returns (success, info)."""
        host = host or vm.last.hostname
        script = self.core.drivers.vmm_script(action, default_name)
        if script is None:
            return True, self._hypervisor(vm, action, params)
        run = self.core.drivers.vmm(action, script, params, vm.id, host,
                               xml if stdin is None else stdin)
        return run.ok, run.info.strip() if run.ok else run.info

    def _hypervisor(self, vm: Vm, action: str, params: list[str]) -> str:
        """What libvirt on the host would leave behind and print."""
        with self.core.lock:
            place = self.place(vm)
            seq = vm.last.seq
        if action == "deploy":
            self.core.host_path(place.host, f"{place.system_dir}/deployment.{seq}").parent.mkdir(
                parents=True, exist_ok=True)
            domain = self.core.fe_path(f"{self.core.vm_files(vm)}/deployment.{seq}")
            if domain.exists():
                self.core.host_path(place.host, f"{place.system_dir}/deployment.{seq}").write_text(
                    domain.read_text())
            # 6.0+ prints the domain UUID, 5.x the domain name
            if self.core.version >= (6, 0):
                return str(uuid.uuid5(uuid.NAMESPACE_URL, f"oned-sandbox/vm/{vm.id}"))
            return f"one-{vm.id}"
        if action == "save":
            checkpoint = self.core.host_path(place.host, f"{place.system_dir}/checkpoint")
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text(f"sandbox checkpoint of VM {vm.id}\n")
        if action.lower().replace("_", "") == "snapshotcreate":
            return f"snap-{params[1]}" if len(params) > 1 else "snap"
        return ""

    def transfer(self, vm: Vm, op: str, lines: list[T.Line]) -> tuple[bool, str]:
        """Write ``transfer.<seq>.<op>`` on the front-end and run it through the TM."""
        with self.core.lock:
            seq = vm.last.seq if vm.history else 0
            self.core._write_fe_file(f"{self.core.vm_files(vm)}/transfer.{seq}.{op}",
                                T.file_text(lines))
        return self.core.drivers.transfer(vm.id, lines)

    def tm_error(self, vm: Vm, info: str) -> None:
        """``TransferManager::_transfer`` failure: the message only when there is info."""
        if info and not info.startswith("-"):
            self.core._vm_error(vm, f"Error executing image transfer script: {info}")

    def vm_error_info(self, vm: Vm, what: str, info: str) -> None:
        """``VirtualMachineManager::log_error``: ``<ACTION>: <info>``."""
        if info and not info.startswith("-"):
            self.core._vm_error(vm, f"{what}: {info}")

    def move_host(self, vm: Vm) -> None:
        """The VM leaves the previous history record's host for the current one."""
        if len(vm.history) > 1:
            previous = self.core.hosts.get(vm.history[-2].hid)
            if previous is not None and vm.id in previous.vms and \
                    vm.history[-2].hid != vm.last.hid:
                previous.vms.remove(vm.id)

    def leave_host(self, vm: Vm) -> None:
        host = self.core.hosts.get(vm.last.hid) if vm.history else None
        if host is not None and vm.id in host.vms:
            host.vms.remove(vm.id)

    def delete_snapshots(self, vm: Vm) -> None:
        """Without KEEP_SNAPSHOTS the hypervisor's snapshots die with the domain."""
        if not self.core.keep_snapshots:
            vm.template.pop("SNAPSHOT", None)


class Lifecycle:
    """``one.vm.deploy`` and the prolog/boot half of the life cycle."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def vm_deploy(self, vm_id: int, host_id: int, enforce: bool = False, ds_id: int = -1,
                  *extra: Any) -> int:
        """``VirtualMachineDeploy``: system datastore checks, TM_MAD_SYSTEM, volatile disk
        attributes, a new history record; then ACTIVE and the prolog."""
        method = "one.vm.deploy"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            host = self.core._host(host_id, method)
            if vm.state not in (S.PENDING, S.HOLD, S.STOPPED, S.UNDEPLOYED):
                raise OneFailure(ACTION, f"[{method}] Deploy action is not available for "
                                         f"state {S(vm.state).name}", vm_id)
            system = self._deploy_datastore(vm, ds_id, method)
            error = self._check_tm_mad(vm, system)
            if error:
                raise OneFailure(ACTION, f"[{method}] {error}", vm_id)
            self.volatile_attributes(vm, system)
            resume = vm.previous_action if vm.history else ""
            if vm.history:
                vm.last.etime = now()
            vm.history.append(History(len(vm.history), host.name, host.id, system.id,
                                      system.tm_mad, host.vm_mad))
            host.vms.append(vm_id)
            self.core._set_vm_state(vm, S.ACTIVE, LCM["LCM_INIT"])
            # LifeCycleManager::trigger_deploy: after stop/undeploy the disks come back
            if resume == "stop":
                self.core._set_vm_state(vm, S.ACTIVE, LCM["PROLOG_RESUME"])
            elif resume in ("undeploy", "undeploy-hard"):
                self.core._set_vm_state(vm, S.ACTIVE, LCM["PROLOG_UNDEPLOY"])
            else:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["PROLOG"])
            self.core._submit(lambda: self.prolog(vm))
            return vm_id

    def _deploy_datastore(self, vm: Vm, ds_id: int, method: str) -> Datastore:
        # the last history record's action was stop/undeploy: its system datastore
        # (release-6.10.5 src/rm/RequestManagerVirtualMachine.cc:824-831)
        if ds_id < 0 and vm.history and vm.previous_action in (
                "stop", "undeploy", "undeploy-hard"):
            ds_id = vm.last.ds_id
        if ds_id < 0:
            # get_default_ds_information: the cluster's first system datastore
            # (release-6.10.5 src/rm/RequestManagerVirtualMachine.cc:214,229)
            systems = sorted(d.id for d in self.core.datastores.values() if d.type == 1)
            if not systems:
                raise OneFailure(ACTION, f"[{method}] Cluster [0] does not have any "
                                         "Datastore of type SYSTEM_DS.", vm.id)
            return self.core.datastores[systems[0]]
        system = self.core._datastore(ds_id, method)
        if system.type != 1:
            raise OneFailure(ACTION, f"[{method}] Datastore [{ds_id}] is not a system "
                                     "datastore", vm.id)
        return system

    def _check_tm_mad(self, vm: Vm, system: Datastore) -> str:
        """``VirtualMachine::check_tm_mad_disks``: disks of another TM must support the
        system TM as a TM_MAD_SYSTEM mode (the disk gets that mode's targets)."""
        if vm.template.get("TM_MAD_SYSTEM"):
            return ""
        for disk in vm.disks:
            if is_volatile(disk) or disk.get("TM_MAD", "").upper() == system.tm_mad.upper():
                continue
            image_ds = self.core.datastores.get(int(disk.get("DATASTORE_ID", -1) or -1))
            if image_ds is None:
                return "Datastore does not exist"
            modes = [m.strip().upper() for m in
                     str(image_ds.template.get("TM_MAD_SYSTEM", "")).split(",")]
            mode = system.tm_mad.upper()
            if mode not in modes:
                return f"Image Datastore does not support transfer mode: {system.tm_mad}"
            disk.update(CLONE_TARGET=str(image_ds.template.get(f"CLONE_TARGET_{mode}", "")),
                        LN_TARGET=str(image_ds.template.get(f"LN_TARGET_{mode}", "")),
                        DISK_TYPE=str(image_ds.template.get(f"DISK_TYPE_{mode}", "")),
                        TM_MAD_SYSTEM=system.tm_mad)
        vm.template["TM_MAD_SYSTEM"] = system.tm_mad
        return ""

    def volatile_attributes(self, vm: Vm, system: Datastore) -> None:
        """``VirtualMachineDisks::volatile_info``: the system datastore's attributes, and
        DRIVER/FORMAT (the datastore's DRIVER wins, raw by default)."""
        for disk in vm.disks:
            if not is_volatile(disk):
                continue
            disk.update(DATASTORE=system.name, DATASTORE_ID=str(system.id),
                        TM_MAD=system.tm_mad, CLUSTER_ID="0")
            for attribute in ("CLONE_TARGET", "LN_TARGET"):
                if system.template.get(attribute) and not disk.get(attribute):
                    disk[attribute] = str(system.template[attribute])
            disk.setdefault("DISK_TYPE", DISK_TYPES[system.disk_type])
            if disk["TYPE"].upper() == "FS":
                fmt = system.driver or disk.get("FORMAT") or "raw"
                disk.update(DRIVER=fmt, FORMAT=fmt)
            else:
                disk.update(DRIVER="raw", FORMAT="raw")

    def prolog(self, vm: Vm) -> None:
        """``TransferManager::trigger_prolog[_resume|_migr]``, then prolog success/failure
        (``LifeCycleManager::trigger_prolog_*``)."""
        drivers = self.core.vm_drivers
        with self.core.lock:
            lcm = vm.lcm_state
            try:
                if lcm == LCM["PROLOG"]:
                    lines = T.prolog(vm, drivers.place(vm), self.core.frontend)
                    op = "prolog"
                elif lcm in (LCM["PROLOG_RESUME"], LCM["PROLOG_UNDEPLOY"]):
                    previous = vm.history[-2]
                    lines = T.move(vm, drivers.fe_place(vm, previous), drivers.place(vm))
                    op = "resume"
                else:  # PROLOG_MIGRATE[_POWEROFF|_SUSPEND]
                    lines = T.move(vm, drivers.place(vm, vm.history[-2]), drivers.place(vm))
                    op = "migrate"
            except T.TransferError as error:
                lines, op = None, str(error)
        if lines is None:
            with self.core.lock:
                self.prolog_failure(vm)
            return
        ok, info = self.core.vm_drivers.transfer(vm, op, lines)
        with self.core.lock:
            if ok:
                self.prolog_success(vm)
            else:
                self.core.vm_drivers.tm_error(vm, info)
                self.prolog_failure(vm)

    def prolog_success(self, vm: Vm) -> None:
        lcm = vm.lcm_state
        if lcm in (LCM["PROLOG_RESUME"], LCM["PROLOG_RESUME_FAILURE"]):
            self.core._set_vm_state(vm, S.ACTIVE, LCM["BOOT_STOPPED"])
            self.core._submit(lambda: self.boot(vm, "restore"))
        elif lcm in (LCM["PROLOG_UNDEPLOY"], LCM["PROLOG_UNDEPLOY_FAILURE"]):
            self.core._set_vm_state(vm, S.ACTIVE, LCM["BOOT_UNDEPLOY"])
            self.core._submit(lambda: self.boot(vm, "deploy"))
        elif lcm in (LCM["PROLOG_MIGRATE"], LCM["PROLOG_MIGRATE_FAILURE"]):
            if vm.previous_action.startswith("poweroff"):
                self.core._set_vm_state(vm, S.ACTIVE, LCM["BOOT"])
                self.core._submit(lambda: self.boot(vm, "deploy"))
            else:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["BOOT_MIGRATE"])
                self.core._submit(lambda: self.boot(vm, "restore"))
        elif lcm in (LCM["PROLOG_MIGRATE_POWEROFF"], LCM["PROLOG_MIGRATE_POWEROFF_FAILURE"]):
            self.core.vm_drivers.move_host(vm)
            self.core._set_vm_state(vm, S.POWEROFF, LCM["LCM_INIT"])
        elif lcm in (LCM["PROLOG_MIGRATE_SUSPEND"], LCM["PROLOG_MIGRATE_SUSPEND_FAILURE"]):
            self.core.vm_drivers.move_host(vm)
            self.core._set_vm_state(vm, S.SUSPENDED, LCM["LCM_INIT"])
        elif lcm in (LCM["PROLOG"], LCM["PROLOG_FAILURE"]):
            self.core._set_vm_state(vm, S.ACTIVE, LCM["BOOT"])
            self.core._submit(lambda: self.boot(vm, "deploy"))

    def prolog_failure(self, vm: Vm) -> None:
        failure = {"PROLOG": "PROLOG_FAILURE", "PROLOG_MIGRATE": "PROLOG_MIGRATE_FAILURE",
                   "PROLOG_MIGRATE_POWEROFF": "PROLOG_MIGRATE_POWEROFF_FAILURE",
                   "PROLOG_MIGRATE_SUSPEND": "PROLOG_MIGRATE_SUSPEND_FAILURE",
                   "PROLOG_RESUME": "PROLOG_RESUME_FAILURE",
                   "PROLOG_UNDEPLOY": "PROLOG_UNDEPLOY_FAILURE"}
        name = failure.get(LCM_STATES[vm.lcm_state])
        if name:
            self.core._set_vm_state(vm, S.ACTIVE, LCM[name])

    def boot(self, vm: Vm, action: str) -> None:
        """DEPLOY or RESTORE of the VMM driver: the context TM command, then the
        hypervisor (or the local action's script)."""
        with self.core.lock:
            place = self.core.vm_drivers.place(vm)
            context_file = f"{self.core.vm_files(vm)}/context.sh"
            line = T.context(vm, place, context_file, [])
            if line is not None:
                self.core._write_fe_file(context_file, _context_script(vm))
            seq = vm.last.seq
            local_file = f"{self.core.vm_files(vm)}/deployment.{seq}"
            remote_file = f"{place.system_dir}/deployment.{seq}"
            domain = _domain_xml(vm, place)
            self.core._write_fe_file(local_file, domain)
            xml = self.core.vm_drivers.vmm_xml(vm, local_file=local_file, remote_file=remote_file,
                                checkpoint=f"{place.system_dir}/checkpoint",
                                tm_command=" ".join(line) if line else "")
        ok, info = True, ""
        if line is not None:
            run = self.core.drivers.tm_line(vm.id, line)
            ok, info = run.ok, run.info
        if ok:
            if action == "deploy":
                script = self.core.drivers.vmm_script("deploy")
                dfile = local_file if script else remote_file
                ok, info = self.core.vm_drivers.vmm(vm, "deploy", [dfile, place.host], xml,
                                                    stdin=domain)
            else:
                checkpoint = f"{place.system_dir}/checkpoint"
                ok, info = self.core.vm_drivers.vmm(
                    vm, "restore", [checkpoint, place.host, vm.deploy_id], xml)
        with self.core.lock:
            if ok and action == "deploy":
                deploy_id = (info.split() or [""])[0]
                if not deploy_id:
                    self.core._vm_error(vm, "Empty deploy ID for virtual machine")
                    self.deploy_failure(vm)
                    return
                vm.deploy_id = deploy_id
            if ok:
                self.deploy_success(vm)
            else:
                self.core.vm_drivers.vm_error_info(vm, action.upper(), info)
                self.deploy_failure(vm)

    def deploy_success(self, vm: Vm) -> None:
        self.core.vm_drivers.move_host(vm)
        vm.previous_action = ""
        self.core._set_vm_state(vm, S.ACTIVE, LCM["RUNNING"])

    def deploy_failure(self, vm: Vm) -> None:
        name = LCM_STATES[vm.lcm_state]
        if name == "BOOT_POWEROFF":
            self.core._set_vm_state(vm, S.POWEROFF, LCM["LCM_INIT"])
        elif name == "BOOT_SUSPENDED":
            self.core._set_vm_state(vm, S.SUSPENDED, LCM["LCM_INIT"])
        elif name in ("BOOT", "BOOT_MIGRATE", "BOOT_STOPPED", "BOOT_UNDEPLOY"):
            self.core._set_vm_state(vm, S.ACTIVE, LCM[f"{name}_FAILURE"])

    def start_prolog_migrate(self, vm: Vm) -> None:
        self.core.vm_drivers.move_host(vm)  # the previous host's capacity is released here
        self.core._set_vm_state(vm, S.ACTIVE, LCM["PROLOG_MIGRATE"])
        self.core._submit(lambda: self.prolog(vm))


class VmActions:
    """``one.vm.action`` and the shutdown/save/epilog half of the life cycle."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def vm_action(self, action: str, vm_id: int) -> int:
        """``VirtualMachineAction``: terminate[-hard], poweroff[-hard], undeploy[-hard],
        stop, suspend, resume, hold, release, reboot[-hard], resched, unresched."""
        method = "one.vm.action"
        handlers = {
            "terminate": self._terminate, "terminate-hard": self._terminate,
            "poweroff": self._poweroff, "poweroff-hard": self._poweroff,
            "undeploy": self._undeploy, "undeploy-hard": self._undeploy,
            "stop": self._stop, "suspend": self._suspend, "resume": self._resume,
            "hold": self._hold, "release": self._release, "reboot": self._reboot,
            "reboot-hard": self._reboot, "resched": self._resched,
            "unresched": self._resched,
        }
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            handler = handlers.get(action)
            if handler is None:
                raise OneFailure(ACTION, f'[{method}] Action "{action}" is not supported',
                                 vm_id)
            error = handler(vm, action)
            if error:
                raise OneFailure(ACTION, f'[{method}] Error performing action "{action}": '
                                         f"{error}", vm_id)
            if vm.history and action not in ("resched", "unresched"):
                vm.last.action = ACTION_NUMBERS.get(action, 0)
            if action in CLEARS_RESCHED:  # LifeCycleManager::trigger_<action>, reboot
                vm.resched = 0
            return vm_id

    @staticmethod
    def _not_available(vm: Vm) -> str:
        return f"This action is not available for state {S(vm.state).name}"

    def _terminate(self, vm: Vm, action: str) -> str:
        hard = action.endswith("-hard")
        if vm.state in (S.SUSPENDED, S.POWEROFF, S.STOPPED, S.UNDEPLOYED):
            local = vm.state in (S.STOPPED, S.UNDEPLOYED)
            vm.previous_action = "terminate"
            self.core._set_vm_state(vm, S.ACTIVE, LCM["EPILOG"])
            self.core._submit(lambda: self._epilog(vm, local))
        elif vm.state in (S.INIT, S.PENDING, S.HOLD, S.CLONING, S.CLONING_FAILURE):
            self.done(vm)
        elif (vm.state == S.ACTIVE and vm.lcm_state in (LCM["RUNNING"], LCM["UNKNOWN"])) or (
                hard and vm.state == S.ACTIVE and vm.lcm_state == LCM["SHUTDOWN"]):
            vm.previous_action = action
            self.core._set_vm_state(vm, S.ACTIVE, LCM["SHUTDOWN"])
            self.core._submit(lambda: self.shutdown(vm, hard))
        elif vm.state == S.ACTIVE and vm.lcm_state in FAILURE_STATES:
            self.core.recovery.recover_delete(vm, recreate=False)
        elif vm.state != S.DONE:
            return f"Could not terminate VM {vm.id}, wrong state {S(vm.state).name}."
        return ""

    def _poweroff(self, vm: Vm, action: str) -> str:
        if not (vm.state == S.ACTIVE and vm.lcm_state in (LCM["RUNNING"], LCM["UNKNOWN"])):
            return self._not_available(vm)
        vm.previous_action = action
        self.core._set_vm_state(vm, S.ACTIVE, LCM["SHUTDOWN_POWEROFF"])
        self.core._submit(lambda: self.shutdown(vm, action.endswith("-hard")))
        return ""

    def _undeploy(self, vm: Vm, action: str) -> str:
        vm.previous_action = action
        if vm.state == S.POWEROFF:
            self.core._set_vm_state(vm, S.ACTIVE, LCM["EPILOG_UNDEPLOY"])
            self.core._submit(lambda: self._epilog_stop(vm))
        elif vm.state == S.ACTIVE and vm.lcm_state in (LCM["RUNNING"], LCM["UNKNOWN"]):
            self.core._set_vm_state(vm, S.ACTIVE, LCM["SHUTDOWN_UNDEPLOY"])
            self.core._submit(lambda: self.shutdown(vm, action.endswith("-hard")))
        else:
            return self._not_available(vm)
        return ""

    def _stop(self, vm: Vm, action: str) -> str:
        vm.previous_action = "stop"
        if vm.state == S.SUSPENDED:
            self.core._set_vm_state(vm, S.ACTIVE, LCM["EPILOG_STOP"])
            self.core._submit(lambda: self._epilog_stop(vm))
        elif vm.state == S.ACTIVE and vm.lcm_state == LCM["RUNNING"]:
            self.core._set_vm_state(vm, S.ACTIVE, LCM["SAVE_STOP"])
            self.core._submit(lambda: self._save(vm))
        else:
            return self._not_available(vm)
        return ""

    def _suspend(self, vm: Vm, action: str) -> str:
        if not (vm.state == S.ACTIVE and vm.lcm_state == LCM["RUNNING"]):
            return self._not_available(vm)
        vm.previous_action = "suspend"
        self.core._set_vm_state(vm, S.ACTIVE, LCM["SAVE_SUSPEND"])
        self.core._submit(lambda: self._save(vm))
        return ""

    def _resume(self, vm: Vm, action: str) -> str:
        if vm.state in (S.STOPPED, S.UNDEPLOYED):
            self.core._set_vm_state(vm, S.PENDING, LCM["LCM_INIT"])  # the scheduler deploys it
        elif vm.state == S.SUSPENDED:
            self.core._set_vm_state(vm, S.ACTIVE, LCM["BOOT_SUSPENDED"])
            self.core._submit(lambda: self.core.lifecycle.boot(vm, "restore"))
        elif vm.state == S.POWEROFF or (vm.state == S.ACTIVE and
                                        vm.lcm_state == LCM["UNKNOWN"]):
            self.core._set_vm_state(vm, S.ACTIVE, LCM["BOOT_POWEROFF" if vm.state == S.POWEROFF
                                                 else "BOOT_UNKNOWN"])
            self.core._submit(lambda: self.core.lifecycle.boot(vm, "deploy"))
        else:
            return self._not_available(vm)
        return ""

    def _hold(self, vm: Vm, action: str) -> str:
        if vm.state != S.PENDING:
            return self._not_available(vm)
        self.core._set_vm_state(vm, S.HOLD, LCM["LCM_INIT"])
        return ""

    def _release(self, vm: Vm, action: str) -> str:
        if vm.state != S.HOLD:
            return self._not_available(vm)
        self.core._set_vm_state(vm, S.PENDING, LCM["LCM_INIT"])
        return ""

    def _reboot(self, vm: Vm, action: str) -> str:
        if not (vm.state == S.ACTIVE and vm.lcm_state == LCM["RUNNING"]):
            return self._not_available(vm)
        verb = "reset" if action.endswith("-hard") else "reboot"
        xml = self.core.vm_drivers.vmm_xml(vm)
        params = [vm.deploy_id, vm.last.hostname]
        self.core._submit(lambda: self.core.vm_drivers.vmm(vm, verb, params, xml))
        return ""

    def _resched(self, vm: Vm, action: str) -> str:
        """``DispatchManager::resched`` (release-6.10.5 src/dm/DispatchManagerActions.cc:
        929): the RESCHED flag of a POWEROFF or RUNNING/UNKNOWN VM."""
        if not (vm.state == S.POWEROFF or (vm.state == S.ACTIVE and vm.lcm_state in (
                LCM["RUNNING"], LCM["UNKNOWN"]))):
            return (f"Could not set rescheduling flag for VM {vm.id}, wrong state "
                    f"{S(vm.state).name}.")
        vm.resched = int(action == "resched")
        self.core._update_vm(vm)
        return ""

    def shutdown(self, vm: Vm, hard: bool) -> None:
        """VMM SHUTDOWN or CANCEL, then ``trigger_shutdown_success/failure``."""
        verb = "cancel" if hard else "shutdown"
        with self.core.lock:
            migrating = vm.lcm_state == LCM["SAVE_MIGRATE"]
            # a poweroff migration shuts the domain down on the host it leaves
            host = vm.history[-2].hostname if migrating else vm.last.hostname
            xml = self.core.vm_drivers.vmm_xml(vm, host=host)
            params = [vm.deploy_id, host]
        ok, info = self.core.vm_drivers.vmm(vm, verb, params, xml, host=host)
        with self.core.lock:
            if not ok:
                self.core.vm_drivers.vm_error_info(vm, verb.upper(), info)
                if migrating:
                    self.core.recovery.revert_migration(vm)
                else:
                    self.core._set_vm_state(vm, S.ACTIVE, LCM["RUNNING"])
                return
            self.core.vm_drivers.delete_snapshots(vm)
            lcm = vm.lcm_state
            if lcm == LCM["SHUTDOWN"]:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["EPILOG"])
                self.core._submit(lambda: self._epilog(vm, local=False))
            elif lcm == LCM["SHUTDOWN_POWEROFF"]:
                self.core._set_vm_state(vm, S.POWEROFF, LCM["LCM_INIT"])
            elif lcm == LCM["SHUTDOWN_UNDEPLOY"]:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["EPILOG_UNDEPLOY"])
                self.core._submit(lambda: self._epilog_stop(vm))
            elif lcm == LCM["SAVE_MIGRATE"]:  # poweroff migration
                self.core.lifecycle.start_prolog_migrate(vm)

    def _save(self, vm: Vm) -> None:
        """VMM SAVE (checkpoint), then ``trigger_save_success/failure``."""
        with self.core.lock:
            place = self.core.vm_drivers.place(vm)
            checkpoint = f"{place.system_dir}/checkpoint"
            xml = self.core.vm_drivers.vmm_xml(vm, checkpoint=checkpoint)
        ok, info = self.core.vm_drivers.vmm(vm, "save", [vm.deploy_id, checkpoint, place.host], xml)
        with self.core.lock:
            lcm = vm.lcm_state
            if not ok:
                self.core.vm_drivers.vm_error_info(vm, "SAVE", info)
                self.core._set_vm_state(vm, S.ACTIVE, LCM["RUNNING"])
                return
            self.core.vm_drivers.delete_snapshots(vm)
            if lcm == LCM["SAVE_SUSPEND"]:
                self.core._set_vm_state(vm, S.SUSPENDED, LCM["LCM_INIT"])
            elif lcm == LCM["SAVE_STOP"]:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["EPILOG_STOP"])
                self.core._submit(lambda: self._epilog_stop(vm))

    def _epilog(self, vm: Vm, local: bool) -> None:
        """``trigger_epilog``: MVDS/DELETE each disk, DELETE the directory (on the
        front-end for a STOPPED/UNDEPLOYED VM)."""
        with self.core.lock:
            place = self.core.vm_drivers.fe_place(vm) if local else self.core.vm_drivers.place(vm)
            lines = T.epilog(vm, place)
        ok, info = self.core.vm_drivers.transfer(vm, "epilog", lines)
        with self.core.lock:
            self.epilog_result(vm, ok, info)

    def _epilog_stop(self, vm: Vm) -> None:
        """``trigger_epilog_stop``: MV each disk and the directory to the front-end."""
        with self.core.lock:
            lines = T.move(vm, self.core.vm_drivers.place(vm), self.core.vm_drivers.fe_place(vm))
        ok, info = self.core.vm_drivers.transfer(vm, "stop", lines)
        with self.core.lock:
            self.epilog_result(vm, ok, info)

    def epilog_result(self, vm: Vm, ok: bool, info: str) -> None:
        lcm = LCM_STATES[vm.lcm_state]
        if not ok:
            self.core.vm_drivers.tm_error(vm, info)
            if lcm == "CLEANUP_RESUBMIT":
                self.resubmit(vm)
            elif lcm in ("EPILOG", "EPILOG_STOP", "EPILOG_UNDEPLOY"):
                self.core._set_vm_state(vm, S.ACTIVE, LCM[f"{lcm}_FAILURE"])
            return
        lcm = lcm.removesuffix("_FAILURE")
        if lcm == "EPILOG_STOP":
            self.core.vm_drivers.leave_host(vm)
            self.core._set_vm_state(vm, S.STOPPED, LCM["LCM_INIT"])
        elif lcm == "EPILOG_UNDEPLOY":
            self.core.vm_drivers.leave_host(vm)
            self.core._set_vm_state(vm, S.UNDEPLOYED, LCM["LCM_INIT"])
        elif lcm == "EPILOG":
            self.done(vm)
        elif lcm == "CLEANUP_RESUBMIT":
            self.resubmit(vm)
        elif lcm == "CLEANUP_DELETE":
            self.done(vm)

    def done(self, vm: Vm) -> None:
        """``DispatchManager::done``: resources released, images back."""
        self.core.vm_drivers.leave_host(vm)
        self.core.vm_pool.release_images(vm)
        if vm.history:
            vm.last.etime = now()
        vm.etime = now()
        self.core._set_vm_state(vm, S.DONE, LCM["LCM_INIT"])

    def resubmit(self, vm: Vm) -> None:
        """``DispatchManager::resubmit``: PENDING again, same disks, deploy id cleared."""
        self.core.vm_drivers.leave_host(vm)
        vm.deploy_id = ""
        vm.previous_action = "delete-recreate"
        self.core._set_vm_state(vm, S.PENDING, LCM["LCM_INIT"])


class Recovery:
    """``one.vm.recover`` and ``one.vm.migrate``."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def vm_recover(self, vm_id: int, operation: int) -> int:
        """0 failure, 1 success, 2 retry, 3 delete, 4 delete-recreate, 5 delete-db."""
        method = "one.vm.recover"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if operation in (3, 4):
                if vm.state in (S.PENDING, S.HOLD, S.INIT) and operation == 3:
                    self.core.vm_actions.done(vm)
                elif vm.state == S.ACTIVE:
                    self.recover_delete(vm, recreate=operation == 4)
                elif vm.state in (S.POWEROFF, S.SUSPENDED, S.STOPPED, S.UNDEPLOYED) \
                        and operation == 3:
                    self.recover_delete(vm, recreate=False)
                else:
                    raise OneFailure(ACTION, f"[{method}] Cannot delete VM in state "
                                             f"{S(vm.state).name}", vm_id)
            elif operation == 5:
                self.core.vm_pool.release_images(vm)
                self.core.vm_drivers.leave_host(vm)
                vm.etime = now()
                self.core._set_vm_state(vm, S.DONE, LCM["LCM_INIT"])
            elif operation in (0, 1) and vm.state == S.ACTIVE:
                self._recover(vm, success=operation == 1)
            else:
                raise OneFailure(ACTION, f"[{method}] Cannot recover VM in state "
                                         f"{S(vm.state).name}/"
                                         f"{LCM_STATES[vm.lcm_state]}", vm_id)
            return vm_id

    def _recover(self, vm: Vm, success: bool) -> None:
        """``LifeCycleManager::recover``: pretend the pending operation succeeded/failed."""
        name = LCM_STATES[vm.lcm_state]
        if name.startswith("PROLOG"):
            if success:
                self.core.lifecycle.prolog_success(vm)
            else:
                self.core.lifecycle.prolog_failure(vm)
        elif name.startswith("EPILOG"):
            self.core.vm_actions.epilog_result(vm, success, "-")
        elif name.startswith("BOOT") or name == "MIGRATE":
            if success:
                self.core.lifecycle.deploy_success(vm)
            else:
                self.core.lifecycle.deploy_failure(vm)
        elif name == "UNKNOWN":
            self.core._set_vm_state(vm, S.ACTIVE, LCM["RUNNING"])

    def recover_delete(self, vm: Vm, recreate: bool) -> None:
        """``LifeCycleManager::clean_up_vm``: CLEANUP_DELETE or CLEANUP_RESUBMIT, the VMM
        cleans up the domain and runs the DELETE lines (failures ignored), or the TM does
        when there is no domain."""
        local = vm.state in (S.STOPPED, S.UNDEPLOYED)
        domain = vm.state == S.ACTIVE and vm.deploy_id != ""
        self.core._set_vm_state(vm, S.ACTIVE, LCM["CLEANUP_RESUBMIT" if recreate
                                             else "CLEANUP_DELETE"])
        if not vm.history:
            if recreate:
                self.core.vm_actions.resubmit(vm)
            else:
                self.core.vm_actions.done(vm)
            return
        drivers = self.core.vm_drivers
        lines = T.delete_all(vm, drivers.fe_place(vm) if local else drivers.place(vm))
        xml = drivers.vmm_xml(vm, tm_command="\n".join(" ".join(line) for line in lines))
        params = [vm.deploy_id, vm.last.hostname]

        def cleanup() -> None:
            if domain:  # VMM CLEANUP: cancel the domain first
                self.core.vm_drivers.vmm(vm, "cancel", params, xml)
            for line in lines:  # then every TM_COMMAND line, as a no-fail step
                self.core.drivers.tm_line(vm.id, line)
            with self.core.lock:
                if recreate:
                    self.core.vm_actions.resubmit(vm)
                else:
                    self.core.vm_actions.done(vm)

        self.core._submit(cleanup)

    def vm_migrate(self, vm_id: int, host_id: int, live: bool = False,
                   enforce: bool = False, ds_id: int = -1, migration_type: int = 0) -> int:
        """``VirtualMachineMigrate``: live (MIGRATE, VMM migrate with TM pre/postmigrate)
        or cold (save, or poweroff for type 1/2, then TM MV lines)."""
        method = "one.vm.migrate"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            target = self.core._host(host_id, method)
            running = vm.state == S.ACTIVE and vm.lcm_state == LCM["RUNNING"]
            if not (running or vm.state in (S.POWEROFF, S.SUSPENDED)) or \
                    (live and not running):
                raise OneFailure(ACTION, f"[{method}] Migrate action is not available for "
                                         f"state {S(vm.state).name}", vm_id)
            if target.id == vm.last.hid:
                raise OneFailure(ACTION, f"[{method}] VM is already running on host "
                                         f"[{host_id}] and datastore [{vm.last.ds_id}]",
                                 vm_id)
            system = self.core.datastores[vm.last.ds_id if ds_id < 0 else ds_id]
            vm.resched = 0  # trigger_migrate / trigger_live_migrate
            vm.last.action = ACTION_NUMBERS["live-migrate" if live else "migrate"]
            vm.last.etime = now()
            vm.history.append(History(len(vm.history), target.name, target.id, system.id,
                                      system.tm_mad, target.vm_mad))
            target.vms.append(vm_id)
            if live:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["MIGRATE"])
                self.core._submit(lambda: self._live_migrate(vm))
            elif vm.state == S.POWEROFF:
                self.core.vm_drivers.move_host(vm)
                self.core._set_vm_state(vm, S.ACTIVE, LCM["PROLOG_MIGRATE_POWEROFF"])
                self.core._submit(lambda: self.core.lifecycle.prolog(vm))
            elif vm.state == S.SUSPENDED:
                self.core.vm_drivers.move_host(vm)
                self.core._set_vm_state(vm, S.ACTIVE, LCM["PROLOG_MIGRATE_SUSPEND"])
                self.core._submit(lambda: self.core.lifecycle.prolog(vm))
            elif migration_type in (1, 2):
                vm.previous_action = "poweroff-migrate"
                self.core._set_vm_state(vm, S.ACTIVE, LCM["SAVE_MIGRATE"])
                self.core._submit(lambda: self.core.vm_actions.shutdown(vm, migration_type == 2))
            else:
                vm.previous_action = "migrate"
                self.core._set_vm_state(vm, S.ACTIVE, LCM["SAVE_MIGRATE"])
                self.core._submit(lambda: self._save_for_migration(vm))
            return vm_id

    def _save_for_migration(self, vm: Vm) -> None:
        """SAVE on the source host (the previous history record)."""
        with self.core.lock:
            source = vm.history[-2]
            place = self.core.vm_drivers.place(vm, source)
            checkpoint = f"{place.system_dir}/checkpoint"
            xml = self.core.vm_drivers.vmm_xml(vm, host=source.hostname, checkpoint=checkpoint)
        ok, info = self.core.vm_drivers.vmm(vm, "save", [vm.deploy_id, checkpoint,
                                                          source.hostname], xml,
                                            host=source.hostname)
        with self.core.lock:
            if not ok:
                self.core.vm_drivers.vm_error_info(vm, "SAVE", info)
                self.revert_migration(vm)
                return
            self.core.vm_drivers.delete_snapshots(vm)
            self.core.lifecycle.start_prolog_migrate(vm)

    def revert_migration(self, vm: Vm) -> None:
        target = self.core.hosts.get(vm.last.hid)
        if target is not None and vm.id in target.vms:
            target.vms.remove(vm.id)
        vm.history.pop()
        self.core._set_vm_state(vm, S.ACTIVE, LCM["RUNNING"])

    def _live_migrate(self, vm: Vm) -> None:
        """VMM MIGRATE: TM premigrate (VM XML base64 on stdin), the hypervisor's migrate,
        TM postmigrate (no-fail); failmigrate when the migration fails."""
        with self.core.lock:
            source = vm.history[-2]
            line = T.migrate(vm, source.hostname, self.core.vm_drivers.place(vm))
            payload = _b64(X.vm_body(vm, all_history=False, version=self.core.version))
            xml = self.core.vm_drivers.vmm_xml(vm, host=source.hostname, migr_host=vm.last.hostname,
                                tm_command=" ".join(line))
        pre = self.core.drivers.tm_line(vm.id, ["PRE" + line[0], *line[1:]], payload)
        ok, info = pre.ok, pre.info
        if ok:
            ok, info = self.core.vm_drivers.vmm(vm, "migrate", [vm.deploy_id, vm.last.hostname,
                                                 source.hostname], xml, host=source.hostname)
            if not ok:
                self.core.drivers.tm_line(vm.id, ["FAIL" + line[0], *line[1:]], payload)
            else:
                self.core.drivers.tm_line(vm.id, ["POST" + line[0], *line[1:]], payload)
        with self.core.lock:
            if ok:
                self.core.vm_drivers.move_host(vm)
                self.core.vm_drivers.delete_snapshots(vm)
                self.core._set_vm_state(vm, S.ACTIVE, LCM["RUNNING"])
            else:
                self.core.vm_drivers.vm_error_info(vm, "MIGRATE", info)
                self.revert_migration(vm)


def _copy_snapshot(snapshot: ImageSnapshot) -> ImageSnapshot:
    return ImageSnapshot(snapshot.id, snapshot.name, snapshot.date, snapshot.parent,
                         snapshot.active, snapshot.size)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _assign_targets(vm: Vm) -> None:
    """``assign_disk_targets``: DEV_PREFIX + the first free letter, in disk order; the
    context CD-ROM last."""
    used = {d["TARGET"] for d in vm.disks if d.get("TARGET")}
    for disk in vm.disks:
        if not disk.get("TARGET"):
            disk["TARGET"] = _free_target(disk.get("DEV_PREFIX", DEFAULT_DEVICE_PREFIX), used)
            used.add(disk["TARGET"])
    for context in vm.template.get("CONTEXT") or []:
        if not context.get("TARGET"):
            prefix = context.get("DEV_PREFIX", DEFAULT_CDROM_DEVICE_PREFIX)
            context["TARGET"] = _free_target(prefix, used)
            used.add(context["TARGET"])


def _free_target(prefix: str, used: set[str]) -> str:
    index = 0
    while True:
        letters, value = "", index
        while True:
            letters = chr(ord("a") + value % 26) + letters
            value = value // 26 - 1
            if value < 0:
                break
        if prefix + letters not in used:
            return prefix + letters
        index += 1


def _context_script(vm: Vm) -> str:
    """``context.sh`` as oned generates it: the CONTEXT attributes as shell variables."""
    lines = ["# Context variables generated by OpenNebula"]
    for context in vm.template.get("CONTEXT") or []:
        for key, value in sorted(context.items()):
            quoted = str(value).replace("'", "'\\''")
            lines.append(f"{key}='{quoted}'")
    return "\n".join(lines) + "\n"


def _domain_xml(vm: Vm, place: T.Place) -> str:
    """A libvirt domain as ``LibVirtDriverKVM`` would write it, reduced to what storage
    cares about: file disks for FILE, block disks for BLOCK, the context CD-ROM."""
    memory = int(vm.template.get("MEMORY", 128)) * 1024
    vcpu = vm.template.get("VCPU", "1")
    disks = []
    for disk in vm.disks:
        path = f"{place.system_dir}/disk.{disk['DISK_ID']}"
        kind = disk.get("TYPE", "FILE").upper()
        device = "cdrom" if kind.endswith("CDROM") else "disk"
        block = kind == "BLOCK"
        source = f"<source dev={quoteattr(path)}/>" if block else \
            f"<source file={quoteattr(path)}/>"
        driver = escape(disk.get("DRIVER", "raw"))
        readonly = "<readonly/>" if disk.get("READONLY", "NO").upper() == "YES" else ""
        disks.append(f"<disk type='{'block' if block else 'file'}' device='{device}'>"
                     f"{source}<target dev={quoteattr(disk.get('TARGET', 'vda'))}/>"
                     f"<driver name='qemu' type='{driver}' cache='none'/>{readonly}</disk>")
    for context in vm.template.get("CONTEXT") or []:
        path = f"{place.system_dir}/disk.{context['DISK_ID']}"
        disks.append(f"<disk type='file' device='cdrom'><source file={quoteattr(path)}/>"
                     f"<target dev={quoteattr(context.get('TARGET', 'hda'))}/><readonly/>"
                     "<driver name='qemu' type='raw'/></disk>")
    return (f"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
            f"<name>one-{vm.id}</name><vcpu>{escape(str(vcpu))}</vcpu>"
            f"<memory>{memory}</memory><os><type arch='x86_64'>hvm</type></os>"
            f"<devices>{''.join(disks)}</devices>"
            f"<metadata><one:vm xmlns:one='http://opennebula.org/xmlns/libvirt/1.0'>"
            f"<one:id>{vm.id}</one:id></one:vm></metadata></domain>\n")

