"""Disk and snapshot operations of running or powered-off VMs in the oned sandbox: disk
attach/detach, disk snapshots, disk resize, disk save-as and VM (system) snapshots, with
oned's states and messages (``src/dm/DispatchManagerActions.cc``,
``src/lcm/LifeCycleStates.cc``, ``src/vmm_mad/exec/one_vmm_exec.rb``).

On a RUNNING VM the VMM driver does the work (its TM_COMMAND line, then the hypervisor or a
local action script); on a powered-off VM the Transfer Manager runs the line directly.
"""

from __future__ import annotations

import base64
from typing import Any

from onestorpool.sandbox import oned_transfer as T
from onestorpool.sandbox.oned_core import SandboxCore
from onestorpool.sandbox.oned_objects import (
    ACTION,
    IMAGE_TYPES,
    LCM_STATES,
    DiskSnapshots,
    Image,
    ImageState,
    OneFailure,
    Vm,
    is_volatile,
    now,
)
from onestorpool.sandbox.oned_storage import _parse, add_snapshot
from onestorpool.sandbox.oned_vm import LCM, S, _free_target

# vmm_execrc LIVE_DISK_SNAPSHOTS of 6.10, plus the add-on's kvm-storpool (its installer adds it)
LIVE_DISK_SNAPSHOTS = frozenset(
    "kvm-qcow2 kvm-shared kvm-ceph kvm-ssh qemu-qcow2 qemu-shared qemu-ceph qemu-ssh "
    "kvm-storpool".split())


class DiskOps:
    """``one.vm.attach``, ``detach`` and ``diskresize``."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def running(self, vm: Vm) -> bool:
        return vm.state == S.ACTIVE and vm.lcm_state == LCM["RUNNING"]

    def wrong_state(self, method: str, vm: Vm, what: str) -> OneFailure:
        return OneFailure(ACTION, f"[{method}] Could not {what} for VM {vm.id}, wrong state "
                                  f"{S(vm.state).name}.", vm.id)

    def disk(self, vm: Vm, disk_id: int, method: str) -> dict[str, str]:
        disk = vm.disk(disk_id)
        if disk is None:
            raise OneFailure(ACTION, f"[{method}] VM disk does not exist", vm.id)
        return disk

    def back(self, vm: Vm, state: int) -> None:
        """Return to the stable state an operation started from."""
        if state == S.ACTIVE:
            self.core._set_vm_state(vm, S.ACTIVE, LCM["RUNNING"])
        else:
            self.core._set_vm_state(vm, state, LCM["LCM_INIT"])

    def vm_attach(self, vm_id: int, text: str) -> int:
        method = "one.vm.attach"
        template = _parse(text, method)
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if not (self.running(vm) or vm.state == S.POWEROFF):
                raise self.wrong_state(method, vm, "attach a new disk")
            vectors = template.get("DISK")
            if not vectors:
                raise OneFailure(ACTION, f"[{method}] Wrong number of DISK attributes.", vm_id)
            ids = [int(d["DISK_ID"]) for d in vm.disks]
            ids += [int(c["DISK_ID"]) for c in vm.template.get("CONTEXT") or []]
            try:
                disk = self.core.vm_pool.disk_attributes(vm_id, max(ids, default=-1) + 1,
                                                         vectors[0])
            except ValueError as error:
                raise OneFailure(ACTION, f"[{method}] {error}", vm_id) from None
            error = self.core.vm_pool.check_images([disk], attach=True)
            if error:
                raise OneFailure(ACTION, f"[{method}] {error}", vm_id)
            used = {d.get("TARGET", "") for d in vm.disks}
            used |= {c.get("TARGET", "") for c in vm.template.get("CONTEXT") or []}
            if not disk.get("TARGET"):
                disk["TARGET"] = _free_target(disk.get("DEV_PREFIX", "sd"), used)
            if is_volatile(disk):
                self._volatile_attributes_for(vm, disk)
            disk["ATTACH"] = "YES"
            vm.disks.append(disk)
            self.core.vm_pool.take_images(vm, [disk])
            place = self.core.vm_drivers.place(vm)
            try:
                line = T.prolog_disk(vm, disk, place, self.core.frontend)
            except T.TransferError as error:
                vm.disks.remove(disk)
                self.core.vm_pool.release_images(vm, [disk])
                raise OneFailure(ACTION, f"[{method}] {error}", vm_id) from None
            rollback = T.epilog_disk(vm, disk, place)
            start = vm.state
            vm.last.action = 21
            if start == S.POWEROFF:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["HOTPLUG_PROLOG_POWEROFF"])
            else:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["HOTPLUG"])
            self.core._submit(lambda: self._attach(vm, disk, line, rollback, start))
            return vm_id

    def _volatile_attributes_for(self, vm: Vm, disk: dict[str, str]) -> None:
        system = self.core.vm_drivers.system_ds(vm)
        saved = vm.template["DISK"]
        vm.template["DISK"] = [disk]
        try:
            self.core.lifecycle.volatile_attributes(vm, system)
        finally:
            vm.template["DISK"] = saved

    def _attach(self, vm: Vm, disk: dict[str, str], line: T.Line | None,
                rollback: T.Line | None, start: int) -> None:
        with self.core.lock:
            place = self.core.vm_drivers.place(vm)
            xml = self.core.vm_drivers.vmm_xml(vm, tm_command=" ".join(line or []),
                                tm_rollback=" ".join(rollback or []),
                                disk_path=f"{place.system_dir}/disk.{disk['DISK_ID']}")
        if start == S.POWEROFF:
            ok, info = self.core.vm_drivers.transfer(vm, "prolog_attach", [line] if line else [])
            failure = "tm"
        else:
            ok, info = True, ""
            if line:
                run = self.core.drivers.tm_line(vm.id, line)
                ok, info = run.ok, run.info
            if ok:
                target = disk["TARGET"]
                ok, info = self.core.vm_drivers.vmm(vm, "attach_disk", [
                    vm.deploy_id, f"{place.system_dir}/disk.{disk['DISK_ID']}", target,
                    str(ord(target[-1].lower()) - 97), base64.b64encode(xml.encode()).decode()],
                    xml)
                if not ok and rollback:
                    self.core.drivers.tm_line(vm.id, rollback)
            failure = "vmm"
        with self.core.lock:
            if ok:
                disk.pop("ATTACH", None)
            else:
                if failure == "tm":
                    self.core.vm_drivers.tm_error(vm, info)
                else:
                    self.core.vm_drivers.vm_error_info(vm, "ATTACHDISK", info)
                if disk in vm.disks:
                    vm.disks.remove(disk)
                self.core.vm_pool.release_images(vm, [disk])
            self.back(vm, start)

    def vm_detach(self, vm_id: int, disk_id: int) -> int:
        method = "one.vm.detach"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if not (self.running(vm) or vm.state == S.POWEROFF):
                raise self.wrong_state(method, vm, "detach disk")
            disk = self.disk(vm, disk_id, method)
            disk["ATTACH"] = "YES"
            line = T.epilog_disk(vm, disk, self.core.vm_drivers.place(vm))
            start = vm.state
            vm.last.action = 22
            if start == S.POWEROFF:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["HOTPLUG_EPILOG_POWEROFF"])
            else:
                self.core._set_vm_state(vm, S.ACTIVE, LCM["HOTPLUG"])
            self.core._submit(lambda: self._detach(vm, disk, line, start))
            return vm_id

    def _detach(self, vm: Vm, disk: dict[str, str], line: T.Line | None, start: int) -> None:
        with self.core.lock:
            place = self.core.vm_drivers.place(vm)
            xml = self.core.vm_drivers.vmm_xml(vm, tm_command=" ".join(line or []),
                                disk_path=f"{place.system_dir}/disk.{disk['DISK_ID']}")
        if start == S.POWEROFF:  # the TM alone (trigger_epilog_detach)
            ok, info = self.core.vm_drivers.transfer(vm, "epilog_detach", [line] if line else [])
            failure = "tm"
        else:  # VMM DETACHDISK: the hypervisor lets go, then its TM_COMMAND line
            target = disk["TARGET"]
            ok, info = self.core.vm_drivers.vmm(vm, "detach_disk", [
                vm.deploy_id, f"{place.system_dir}/disk.{disk['DISK_ID']}", target,
                str(ord(target[-1].lower()) - 97)], xml)
            if ok and line:
                run = self.core.drivers.tm_line(vm.id, line)
                ok, info = run.ok, run.info
            failure = "vmm"
        with self.core.lock:
            disk.pop("ATTACH", None)
            if ok:
                # a persistent image keeps the snapshots
                self.core.vm_pool.release_images(vm, [disk])
                vm.disks.remove(disk)
                vm.disk_snapshots.pop(int(disk["DISK_ID"]), None)
            elif failure == "tm":
                self.core.vm_drivers.tm_error(vm, info)
            else:
                self.core.vm_drivers.vm_error_info(vm, "DETACHDISK", info)
            self.back(vm, start)

    def vm_disk_resize(self, vm_id: int, disk_id: int, size: str) -> int:
        method = "one.vm.diskresize"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if not (self.running(vm) or vm.state in (S.POWEROFF, S.UNDEPLOYED)):
                raise self.wrong_state(method, vm, "resize disk")
            disk = self.disk(vm, disk_id, method)
            try:
                new_size = int(str(size).strip())
            except ValueError:
                raise OneFailure(ACTION, f"[{method}] Wrong size {size!r}", vm_id) from None
            if new_size <= int(disk.get("SIZE", "0") or 0):
                raise OneFailure(ACTION, f"[{method}] New disk size has to be greater than "
                                         "current one", vm_id)
            disk.update(RESIZE="YES", SIZE_PREV=disk.get("SIZE", "0"), SIZE=str(new_size))
            start = vm.state
            vm.last.action = 29
            state = {S.POWEROFF: "DISK_RESIZE_POWEROFF",
                     S.UNDEPLOYED: "DISK_RESIZE_UNDEPLOYED"}.get(start, "DISK_RESIZE")
            self.core._set_vm_state(vm, S.ACTIVE, LCM[state])
            self.core._submit(lambda: self._resize(vm, disk, start))
            return vm_id

    def _resize(self, vm: Vm, disk: dict[str, str], start: int) -> None:
        with self.core.lock:
            drivers = self.core.vm_drivers
            place = drivers.fe_place(vm) if start == S.UNDEPLOYED else drivers.place(vm)
            line = T.disk_action("RESIZE", vm, disk, place, disk["SIZE"])
            xml = self.core.vm_drivers.vmm_xml(vm, tm_command=" ".join(line))
        if start == S.ACTIVE:  # VMM RESIZEDISK: the TM line, then virsh blockresize
            run = self.core.drivers.tm_line(vm.id, line)
            ok, info = run.ok, run.info
            if ok:
                ok, info = self.core.vm_drivers.vmm(vm, "resize_disk", [
                    vm.deploy_id, disk["DISK_ID"], disk["SIZE"],
                    base64.b64encode(xml.encode()).decode()], xml)
            where = "RESIZEDISK"
        else:
            ok, info = self.core.vm_drivers.transfer(vm, "disk_resize", [line])
            where = ""
        with self.core.lock:
            disk.pop("RESIZE", None)
            previous = disk.pop("SIZE_PREV", disk["SIZE"])
            if not ok:
                disk["SIZE"] = previous
                if where:
                    self.core.vm_drivers.vm_error_info(vm, where, info)
                else:
                    self.core.vm_drivers.tm_error(vm, info)
            self.back(vm, start)


class SnapshotOps:
    """Disk snapshots, disk save-as and system snapshots."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def vm_disk_snapshot_create(self, vm_id: int, disk_id: int, name: str = "") -> int:
        method = "one.vm.disksnapshotcreate"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if not (self.core.disk_ops.running(vm) or vm.state in (S.POWEROFF, S.SUSPENDED)):
                raise self.core.disk_ops.wrong_state(method, vm, "create a new snapshot")
            disk = self.core.disk_ops.disk(vm, disk_id, method)
            if is_volatile(disk):
                raise OneFailure(ACTION, f"[{method}] Cannot make snapshots on volatile "
                                         "disks", vm_id)
            if disk.get("READONLY", "NO").upper() == "YES":
                raise OneFailure(ACTION, f"[{method}] Cannot make snapshots on readonly "
                                         "disks", vm_id)
            tree = vm.disk_snapshots.setdefault(disk_id, DiskSnapshots(disk_id))
            snapshot = add_snapshot(tree.snapshots, tree.next_snapshot, name,
                                    int(disk.get("SIZE", "0") or 0))
            tree.next_snapshot += 1
            disk.update(DISK_SNAPSHOT_ACTIVE="YES", DISK_SNAPSHOT_ID=str(snapshot.id))
            start = vm.state
            vm.last.action = 25
            state = {S.POWEROFF: "DISK_SNAPSHOT_POWEROFF",
                     S.SUSPENDED: "DISK_SNAPSHOT_SUSPENDED"}.get(start, "DISK_SNAPSHOT")
            self.core._set_vm_state(vm, S.ACTIVE, LCM[state])
            self.core._submit(lambda: self._disk_snapshot(vm, disk, "SNAP_CREATE", snapshot.id,
                                                     start))
            return snapshot.id

    def vm_disk_snapshot_revert(self, vm_id: int, disk_id: int, snap_id: int) -> int:
        method = "one.vm.disksnapshotrevert"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if vm.state != S.POWEROFF:
                raise self.core.disk_ops.wrong_state(method, vm, "revert to disk snapshot")
            disk = self.core.disk_ops.disk(vm, disk_id, method)
            tree = vm.disk_snapshots.get(disk_id)
            if tree is None or not any(s.id == snap_id for s in tree.snapshots):
                raise OneFailure(ACTION, f"[{method}] Snapshot does not exist", vm_id)
            disk.update(DISK_SNAPSHOT_ACTIVE="YES", DISK_SNAPSHOT_ID=str(snap_id))
            vm.last.action = 41
            self.core._set_vm_state(vm, S.ACTIVE, LCM["DISK_SNAPSHOT_REVERT_POWEROFF"])
            self.core._submit(lambda: self._disk_snapshot(vm, disk, "SNAP_REVERT", snap_id,
                                                     S.POWEROFF))
            return vm_id

    def vm_disk_snapshot_delete(self, vm_id: int, disk_id: int, snap_id: int) -> int:
        method = "one.vm.disksnapshotdelete"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if not (self.core.disk_ops.running(vm) or vm.state in (S.POWEROFF, S.SUSPENDED)):
                raise self.core.disk_ops.wrong_state(method, vm, "delete disk snapshot")
            disk = self.core.disk_ops.disk(vm, disk_id, method)
            tree = vm.disk_snapshots.get(disk_id)
            snapshot = next((s for s in tree.snapshots if s.id == snap_id), None) \
                if tree else None
            if snapshot is None:
                raise OneFailure(ACTION, f"[{method}] Snapshot does not exist", vm_id)
            if snapshot.active:
                raise OneFailure(ACTION, f"[{method}] Cannot delete the active snapshot",
                                 vm_id)
            if tree is not None and any(s.parent == snap_id for s in tree.snapshots):
                raise OneFailure(ACTION, f"[{method}] Cannot delete snapshot with children",
                                 vm_id)
            disk.update(DISK_SNAPSHOT_ACTIVE="YES", DISK_SNAPSHOT_ID=str(snap_id))
            start = vm.state
            vm.last.action = 26
            state = {S.POWEROFF: "DISK_SNAPSHOT_DELETE_POWEROFF",
                     S.SUSPENDED: "DISK_SNAPSHOT_DELETE_SUSPENDED"}.get(
                         start, "DISK_SNAPSHOT_DELETE")
            self.core._set_vm_state(vm, S.ACTIVE, LCM[state])
            self.core._submit(lambda: self._disk_snapshot(vm, disk, "SNAP_DELETE", snap_id, start))
            return vm_id

    def _disk_snapshot(self, vm: Vm, disk: dict[str, str], verb: str, snap_id: int,
                       start: int) -> None:
        """TM SNAP_* (or, on a RUNNING VM, the VMM's DISKSNAPSHOTCREATE: the line becomes
        SNAP_CREATE_LIVE when ``<VM_MAD>-<TM_MAD>`` is in LIVE_DISK_SNAPSHOTS)."""
        with self.core.lock:
            line = T.disk_action(verb, vm, disk, self.core.vm_drivers.place(vm), str(snap_id))
            live = verb == "SNAP_CREATE" and start == S.ACTIVE
            pair = f"{vm.last.vm_mad}-{disk.get('TM_MAD', '')}"
        if live and pair not in self.core.live_disk_snapshots:
            ok, info, where = (False, "Cannot perform a live DISKSNAPSHOTCREATE operation",
                               "vmm")
        elif live:
            head = line[0]
            line = [head.replace(".", "_LIVE.", 1) if "." in head else head + "_LIVE",
                    *line[1:]]
            run = self.core.drivers.tm_line(vm.id, line)
            ok, info, where = run.ok, run.info, "vmm"
        else:
            ok, info = self.core.vm_drivers.transfer(vm, "disk_snapshot", [line])
            where = "tm"
        with self.core.lock:
            tree = vm.disk_snapshots.get(int(disk["DISK_ID"]))
            disk.pop("DISK_SNAPSHOT_ACTIVE", None)
            disk.pop("DISK_SNAPSHOT_ID", None)
            if ok and tree is not None:
                if verb == "SNAP_REVERT":
                    for snapshot in tree.snapshots:
                        snapshot.active = snapshot.id == snap_id
                elif verb == "SNAP_DELETE":
                    tree.snapshots = [s for s in tree.snapshots if s.id != snap_id]
            elif not ok:
                if where == "tm":
                    self.core.vm_drivers.tm_error(vm, info)
                else:
                    self.core.vm_drivers.vm_error_info(vm, "DISKSNAPSHOTCREATE", info)
                if verb == "SNAP_CREATE" and tree is not None:
                    failed = next((s for s in tree.snapshots if s.id == snap_id), None)
                    tree.snapshots = [s for s in tree.snapshots if s.id != snap_id]
                    for snapshot in tree.snapshots:  # its parent is the active one again
                        snapshot.active = failed is not None and snapshot.id == failed.parent
            if tree is not None:
                disk["DISK_SNAPSHOT_TOTAL_SIZE"] = str(sum(s.size for s in tree.snapshots))
            self.core.disk_ops.back(vm, start)

    def vm_disk_saveas(self, vm_id: int, disk_id: int, name: str, image_type: str = "",
                       snap_id: int = -1) -> int:
        """``VirtualMachineDiskSaveas``: a new image (``mkfs`` with FORMAT save_as gives
        its SOURCE), then TM ``cpds`` copies the disk into it."""
        method = "one.vm.disksaveas"
        states = {S.POWEROFF: "HOTPLUG_SAVEAS_POWEROFF",
                  S.SUSPENDED: "HOTPLUG_SAVEAS_SUSPENDED"}
        if self.core.version >= (6, 0):
            states.update({S.UNDEPLOYED: "HOTPLUG_SAVEAS_UNDEPLOYED",
                           S.STOPPED: "HOTPLUG_SAVEAS_STOPPED"})
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if not (self.core.disk_ops.running(vm) or vm.state in states):
                raise self.core.disk_ops.wrong_state(method, vm, "save disk")
            disk = self.core.disk_ops.disk(vm, disk_id, method)
            if not disk.get("IMAGE_ID", "").isdigit():
                raise OneFailure(ACTION, f"[{method}] Cannot save_as volatile disks", vm_id)
            source_image = self.core.images.get(int(disk["IMAGE_ID"]))
            kind = (image_type or (IMAGE_TYPES[source_image.type] if source_image else "OS"))
            ds = self.core._datastore(int(disk["DATASTORE_ID"]), method)
            image = self.core.image_api.new_image({"NAME": name, "TYPE": kind.upper(),
                                     "SAVED_DISK_ID": str(disk_id), "SAVED_VM_ID": str(vm_id),
                                     "SAVED_IMAGE_ID": disk["IMAGE_ID"],
                                     "SAVE_AS_HOT": "YES"},
                                    ds, int(disk.get("SIZE", "0") or 0), method)
            image.format, image.saving = "save_as", (vm_id, disk_id)
            self.core.images[image.id] = image
            ds.images.append(image.id)
            disk.update(HOTPLUG_SAVE_AS=str(image.id), HOTPLUG_SAVE_AS_ACTIVE="YES",
                        HOTPLUG_SAVE_AS_SNAPSHOT_ID=str(snap_id))
            vm.saveas_from = vm.state
            vm.last.action = 40
            self.core._set_vm_state(vm, S.ACTIVE, LCM[states.get(vm.state, "HOTPLUG_SAVEAS")])
            self.core._submit(lambda: self.core.image_api.register(image))
            return image.id

    def saveas_mkfs_done(self, image: Image, ok: bool, payload: str) -> None:
        """``ImageManager::_mkfs`` of a save-as image: the SOURCE goes to the VM disk and
        the TM copies the disk (``trigger_saveas_hot``)."""
        vm_id, disk_id = image.saving or (-1, -1)
        vm = self.core.vms.get(vm_id)
        disk = vm.disk(disk_id) if vm is not None else None
        if not ok or vm is None or disk is None:
            self.core._image_error(image, self.core._with_info("Error creating datablock", payload))
            self.core._set_image_state(image, ImageState.ERROR)
            if vm is not None:
                self._saveas_finished(vm, disk)
            return
        image.source = payload if self.core.version >= (6, 0) else (payload.split() or [""])[0]
        disk["HOTPLUG_SAVE_AS_SOURCE"] = image.source
        image.format = disk.get("FORMAT") or disk.get("DRIVER") or "raw"
        ds = self.core.datastores[image.ds_id]
        lcm = LCM_STATES[vm.lcm_state]
        local = lcm in ("HOTPLUG_SAVEAS_STOPPED", "HOTPLUG_SAVEAS_UNDEPLOYED")
        place = self.core.vm_drivers.fe_place(vm) if local else self.core.vm_drivers.place(vm)
        line = T.cpds(vm, disk, place, image.source,
                      int(disk.get("HOTPLUG_SAVE_AS_SNAPSHOT_ID", "-1")), ds.tm_mad, ds.id)
        self.core._submit(lambda: self._saveas_copy(vm, disk, image, line))

    def _saveas_copy(self, vm: Vm, disk: dict[str, str], image: Image, line: T.Line) -> None:
        ok, info = self.core.vm_drivers.transfer(vm, "disk_saveas", [line])
        with self.core.lock:
            if ok:
                image.saving = None
                image.template.pop("SAVE_AS_HOT", None)
                self.core._set_image_state(image, ImageState.READY)
            else:
                self.core.vm_drivers.tm_error(vm, info)
                self.core._image_error(image, self.core._with_info(
                    "Error executing image transfer script", info))
                self.core._set_image_state(image, ImageState.ERROR)
            self._saveas_finished(vm, disk)

    def _saveas_finished(self, vm: Vm, disk: dict[str, str] | None) -> None:
        if disk is not None:
            for key in ("HOTPLUG_SAVE_AS", "HOTPLUG_SAVE_AS_ACTIVE",
                        "HOTPLUG_SAVE_AS_SNAPSHOT_ID", "HOTPLUG_SAVE_AS_SOURCE"):
                disk.pop(key, None)
        self.core.disk_ops.back(vm, vm.saveas_from)

    def vm_snapshot_create(self, vm_id: int, name: str = "") -> int:
        method = "one.vm.snapshotcreate"
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if not self.core.disk_ops.running(vm):
                raise self.core.disk_ops.wrong_state(method, vm, "create snapshot")
            snapshots = vm.template.setdefault("SNAPSHOT", [])
            snap_id = max((int(s["SNAPSHOT_ID"]) for s in snapshots), default=-1) + 1
            memory = int(vm.template.get("MEMORY", "0") or 0)
            snapshots.append({"SNAPSHOT_ID": str(snap_id), "NAME": name or
                              f"snapshot-{snap_id}", "TIME": str(now()), "HYPERVISOR_ID": "",
                              "ACTIVE": "YES", "ACTION": "CREATE",
                              "SYSTEM_DISK_SIZE": str(memory)})
            vm.last.action = 37
            self.core._set_vm_state(vm, S.ACTIVE, LCM["HOTPLUG_SNAPSHOT"])
            self.core._submit(lambda: self._vm_snapshot(vm, "snapshot_create", snap_id))
            return snap_id

    def vm_snapshot_revert(self, vm_id: int, snap_id: int) -> int:
        return self._vm_snapshot_request("one.vm.snapshotrevert", "snapshot_revert", vm_id,
                                         snap_id)

    def vm_snapshot_delete(self, vm_id: int, snap_id: int) -> int:
        return self._vm_snapshot_request("one.vm.snapshotdelete", "snapshot_delete", vm_id,
                                         snap_id)

    def _vm_snapshot_request(self, method: str, action: str, vm_id: int, snap_id: int) -> int:
        with self.core.lock:
            vm = self.core._vm(vm_id, method)
            if not self.core.disk_ops.running(vm):
                raise self.core.disk_ops.wrong_state(method, vm, f"{action.split('_')[1]} snapshot")
            snapshot = next((s for s in vm.template.get("SNAPSHOT", [])
                             if s["SNAPSHOT_ID"] == str(snap_id)), None)
            if snapshot is None:
                raise OneFailure(ACTION, f"[{method}] Could not {action.split('_')[1]} "
                                         f"snapshot {snap_id}, it does not exist", vm_id)
            snapshot.update(ACTIVE="YES", ACTION=action.split("_")[1].upper())
            vm.last.action = 39 if action == "snapshot_revert" else 38
            self.core._set_vm_state(vm, S.ACTIVE, LCM["HOTPLUG_SNAPSHOT"])
            self.core._submit(lambda: self._vm_snapshot(vm, action, snap_id))
            return vm_id

    def _vm_snapshot(self, vm: Vm, action: str, snap_id: int) -> None:
        """VMM SNAPSHOTCREATE (``deploy_id snap_id``; prints the hypervisor's name for it,
        kept as HYPERVISOR_ID), SNAPSHOTREVERT and SNAPSHOTDELETE (``deploy_id
        hypervisor_id``); local scripts get the VMM message on stdin."""
        with self.core.lock:
            snapshot = next(s for s in vm.template["SNAPSHOT"]
                            if s["SNAPSHOT_ID"] == str(snap_id))
            argument = str(snap_id) if action == "snapshot_create" else \
                snapshot["HYPERVISOR_ID"]
            xml = self.core.vm_drivers.vmm_xml(vm)
        verb = action.replace("_", "").upper()  # SNAPSHOTCREATE: the -l key and the error
        ok, info = self.core.vm_drivers.vmm(vm, verb, [vm.deploy_id, argument], xml,
                                            default_name=action)
        with self.core.lock:
            snapshots: list[dict[str, Any]] = vm.template["SNAPSHOT"]
            if action == "snapshot_create" and ok:
                snapshot["HYPERVISOR_ID"] = (info.split() or [""])[0]
            if (action == "snapshot_create" and not ok) or \
                    (action == "snapshot_delete" and ok):
                snapshots.remove(snapshot)
            else:
                snapshot.pop("ACTIVE", None)
                snapshot.pop("ACTION", None)
            if not snapshots:
                vm.template.pop("SNAPSHOT", None)
            if not ok:
                self.core.vm_drivers.vm_error_info(vm, verb, info)
            self.core._set_vm_state(vm, S.ACTIVE, LCM["RUNNING"])

