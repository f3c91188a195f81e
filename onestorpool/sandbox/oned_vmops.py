"""The oned sandbox's VM operations beyond deploy/terminate: stop, suspend, undeploy,
resume, cold and live migration, disk hot-plug, disk snapshots, disk resize, disk save-as,
VM snapshots and recover. Each follows oned's state machine and runs the TM lines oned
would (``src/tm/TransferManager.cc``); the VMM part (libvirt) is not emulated, except that a
``vmm/kvm/<action>`` script in the remotes is run for VM snapshots, as the add-on's local
actions are.

A sandbox has no scheduler: a resumed STOPPED or UNDEPLOYED VM goes back to the host it
left.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from onestorpool.one import LCM_STATE_NAMES, ImageState, VmState

L = {name: number for number, name in enumerate(LCM_STATE_NAMES)}


class VmOperations:
    """Mixed into :class:`onestorpool.sandbox.oned.OnedSandbox`."""

    # Provided by OnedSandbox.
    datastores: dict[int, dict[str, Any]]
    images: dict[int, dict[str, Any]]
    hosts: dict[int, dict[str, Any]]

    def _fail(self, method: str, vm_id: int) -> Exception:
        from onestorpool.sandbox.oned import ACTION, OneFailure

        return OneFailure(ACTION, f"[{method}] Wrong state to perform action", vm_id)

    def _where(self, vm: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
        last = vm["history"][-1]
        system = self.datastores[last["ds_id"]]
        return last, system, self._vm_dir(vm, system)  # type: ignore[attr-defined]

    def _disk_lines(self, vm: dict[str, Any], action: str, src: str, dst: str
                    ) -> list[tuple[str, str, list[str]]]:
        """``MV`` lines for every disk and the system directory (stop/undeploy/resume/
        cold migrate)."""
        _last, system, vm_dir = self._where(vm)
        lines = []
        for disk in vm["template"]["DISK"]:
            tm_mad = disk.get("TM_MAD") or system["tm_mad"]
            ds_id = disk.get("DATASTORE_ID", str(system["id"]))
            lines.append((tm_mad, action, [f"{src}:{vm_dir}/disk.{disk['DISK_ID']}",
                                           f"{dst}:{vm_dir}/disk.{disk['DISK_ID']}",
                                           str(vm["id"]), ds_id]))
        lines.append((system["tm_mad"], action, [f"{src}:{vm_dir}", f"{dst}:{vm_dir}",
                                                 str(vm["id"]), str(system["id"])]))
        return lines

    def _transfer(self, vm: dict[str, Any], during: str, lines: list[Any], success: tuple,
                  failure: str, after: Any = None) -> None:
        """Set ``during``, run the lines in the worker, then ``success`` or ``failure``."""
        self._set_vm_state(vm, VmState.ACTIVE, L[during])  # type: ignore[attr-defined]

        def run() -> None:
            error = self._run_transfer(vm, lines)  # type: ignore[attr-defined]
            if error:
                vm["user_template"]["ERROR"] = error
                self._set_vm_state(vm, VmState.ACTIVE, L[failure])  # type: ignore
                return
            if after is not None:
                after()
            for state in success:
                self._set_vm_state(vm, *state)  # type: ignore[attr-defined]

        self.work.put(run)  # type: ignore[attr-defined]

    def _running(self, vm: dict[str, Any]) -> bool:
        return (vm["state"], vm["lcm_state"]) == (VmState.ACTIVE, L["RUNNING"])

    # -- stop, suspend, undeploy, resume --------------------------------------------------

    def vm_lifecycle_action(self, action: str, vm: dict[str, Any]) -> None:
        vm_id = vm["id"]
        if action == "suspend":
            if not self._running(vm):
                raise self._fail("one.vm.action", vm_id)
            self._set_vm_state(vm, VmState.ACTIVE, L["SAVE_SUSPEND"])  # type: ignore
            self._set_vm_state(vm, VmState.SUSPENDED, 0)  # type: ignore
        elif action in ("stop", "undeploy", "undeploy-hard"):
            if not self._running(vm) and not (action != "stop"
                                              and vm["state"] == VmState.POWEROFF):
                raise self._fail("one.vm.action", vm_id)
            last, _, _ = self._where(vm)
            stop = action == "stop"
            first = "SAVE_STOP" if stop else "SHUTDOWN_UNDEPLOY"
            self._set_vm_state(vm, VmState.ACTIVE, L[first])  # type: ignore
            self._transfer(vm, "EPILOG_STOP" if stop else "EPILOG_UNDEPLOY",
                           self._disk_lines(vm, "mv", last["hostname"], "localhost"),
                           ((VmState.STOPPED if stop else VmState.UNDEPLOYED, 0),),
                           "EPILOG_STOP_FAILURE" if stop else "EPILOG_UNDEPLOY_FAILURE",
                           after=lambda: self.hosts[last["hid"]]["vms"].remove(vm_id))
        elif action == "resume":
            if vm["state"] == VmState.SUSPENDED:
                self._set_vm_state(vm, VmState.ACTIVE, L["BOOT_SUSPENDED"])  # type: ignore
                self._set_vm_state(vm, VmState.ACTIVE, L["RUNNING"])  # type: ignore
            elif vm["state"] in (VmState.STOPPED, VmState.UNDEPLOYED):
                was_stopped = vm["state"] == VmState.STOPPED
                self._set_vm_state(vm, VmState.PENDING, 0)  # type: ignore
                last, _, _ = self._where(vm)
                self.hosts[last["hid"]]["vms"].append(vm_id)
                boot = "BOOT_STOPPED" if was_stopped else "BOOT_UNDEPLOY"
                self._transfer(vm, "PROLOG_RESUME" if was_stopped else "PROLOG_UNDEPLOY",
                               self._disk_lines(vm, "mv", "localhost", last["hostname"]),
                               ((VmState.ACTIVE, L[boot]), (VmState.ACTIVE, L["RUNNING"])),
                               "PROLOG_RESUME_FAILURE" if was_stopped
                               else "PROLOG_UNDEPLOY_FAILURE")
            else:
                raise self._fail("one.vm.action", vm_id)
        else:
            raise self._fail("one.vm.action", vm_id)

    # -- migration ------------------------------------------------------------------------

    def vm_migrate(self, vm_id: int, host_id: int, live: bool = False,
                   enforce: bool = False, ds_id: int = -1, migration_type: int = 0) -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        target = self._host(host_id)  # type: ignore[attr-defined]
        last, system, vm_dir = self._where(vm)
        if target["id"] == last["hid"]:
            raise self._fail("one.vm.migrate", vm_id)
        poweroff = vm["state"] == VmState.POWEROFF
        if not (self._running(vm) or poweroff) or (live and not self._running(vm)):
            raise self._fail("one.vm.migrate", vm_id)
        source_host = last["hostname"]
        vm["history"].append({**last, "seq": last["seq"] + 1, "hostname": target["name"],
                              "hid": host_id, "stime": int(time.time())})

        def move_host() -> None:
            self.hosts[last["hid"]]["vms"].remove(vm_id)
            target["vms"].append(vm_id)

        if live:
            # premigrate/postmigrate of the system TM, VM XML on stdin (executed by the VMM)
            from onestorpool.sandbox import oned_xml as X

            payload = base64.b64encode(X.vm_body(vm).encode()).decode()
            args = [source_host, target["name"], vm_dir, str(vm_id), str(system["id"])]
            self._set_vm_state(vm, VmState.ACTIVE, L["MIGRATE"])  # type: ignore

            def run() -> None:
                for action in ("premigrate", "postmigrate"):
                    tm_mad = system["tm_mad"]
                    script = self.remotes / "tm" / tm_mad / action  # type: ignore
                    result = self._run(["tm", tm_mad, action], script,  # type: ignore
                                       args, payload, vm_id)
                    if result["exit"] != 0:
                        vm["history"].pop()
                        vm["user_template"]["ERROR"] = result["error"]
                        self._set_vm_state(vm, VmState.ACTIVE, L["RUNNING"])  # type: ignore
                        return
                move_host()
                self._set_vm_state(vm, VmState.ACTIVE, L["RUNNING"])  # type: ignore

            self.work.put(run)  # type: ignore[attr-defined]
        elif poweroff:
            self._transfer(vm, "PROLOG_MIGRATE_POWEROFF",
                           self._disk_lines(vm, "mv", source_host, target["name"]),
                           ((VmState.POWEROFF, 0),), "PROLOG_MIGRATE_POWEROFF_FAILURE",
                           after=move_host)
        else:
            self._set_vm_state(vm, VmState.ACTIVE, L["SAVE_MIGRATE"])  # type: ignore
            self._transfer(vm, "PROLOG_MIGRATE",
                           self._disk_lines(vm, "mv", source_host, target["name"]),
                           ((VmState.ACTIVE, L["BOOT_MIGRATE"]), (VmState.ACTIVE,
                                                                  L["RUNNING"])),
                           "PROLOG_MIGRATE_FAILURE", after=move_host)
        return vm_id

    # -- disks ----------------------------------------------------------------------------

    def _disk(self, vm: dict[str, Any], disk_id: int) -> dict[str, Any]:
        from onestorpool.sandbox.oned import ACTION, OneFailure

        for disk in vm["template"]["DISK"]:
            if disk["DISK_ID"] == str(disk_id):
                return disk
        raise OneFailure(ACTION, f"VM disk with ID {disk_id} does not exist", vm["id"])

    def vm_attach(self, vm_id: int, disk_template: str) -> int:
        from onestorpool.sandbox import oned_xml as X

        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        poweroff = vm["state"] == VmState.POWEROFF
        if not (self._running(vm) or poweroff):
            raise self._fail("one.vm.attach", vm_id)
        disk = X.parse_template(disk_template).get("DISK", [{}])[0]
        disk_id = max((int(d["DISK_ID"]) for d in vm["template"]["DISK"]), default=-1) + 1
        disk = self._resolve_disk(vm_id, disk_id, dict(disk))  # type: ignore[attr-defined]
        vm["template"]["DISK"].append(disk)
        last, system, vm_dir = self._where(vm)
        target = f"{last['hostname']}:{vm_dir}/disk.{disk_id}"
        if "IMAGE_ID" in disk:
            action = "clone" if disk["CLONE"] == "YES" else "ln"
            lines = [(disk["TM_MAD"], action, [f"localhost:{disk['SOURCE']}", target,
                                               str(vm_id), disk["DATASTORE_ID"]])]
        else:
            lines = [(system["tm_mad"], "mkimage", [disk.get("SIZE", "0"),
                                                    disk.get("FORMAT", "raw"), target,
                                                    str(vm_id), str(system["id"])])]
        back = (VmState.POWEROFF, 0) if poweroff else (VmState.ACTIVE, L["RUNNING"])
        self._transfer(vm, "HOTPLUG_PROLOG_POWEROFF" if poweroff else "HOTPLUG", lines,
                       (back,), "RUNNING" if not poweroff else "HOTPLUG_PROLOG_POWEROFF")
        return vm_id

    def vm_detach(self, vm_id: int, disk_id: int) -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        poweroff = vm["state"] == VmState.POWEROFF
        if not (self._running(vm) or poweroff):
            raise self._fail("one.vm.detach", vm_id)
        disk = self._disk(vm, disk_id)
        last, system, vm_dir = self._where(vm)
        path = f"{last['hostname']}:{vm_dir}/disk.{disk_id}"
        if disk.get("SAVE") == "YES":
            lines = [(disk["TM_MAD"], "mvds", [path, disk["SOURCE"], str(vm_id),
                                                disk["DATASTORE_ID"]])]
        else:
            lines = [(disk.get("TM_MAD") or system["tm_mad"], "delete",
                      [path, str(vm_id), disk.get("DATASTORE_ID", str(system["id"]))])]

        def drop() -> None:
            vm["template"]["DISK"].remove(disk)
            image = self.images.get(int(disk.get("IMAGE_ID", -1)))
            if image is not None and vm_id in image["vms"]:
                image["vms"].remove(vm_id)
                if not image["vms"]:
                    self._set_image_state(image, ImageState.READY)  # type: ignore

        back = (VmState.POWEROFF, 0) if poweroff else (VmState.ACTIVE, L["RUNNING"])
        self._transfer(vm, "HOTPLUG_EPILOG_POWEROFF" if poweroff else "HOTPLUG", lines,
                       (back,), "RUNNING" if not poweroff else "HOTPLUG_EPILOG_POWEROFF",
                       after=drop)
        return vm_id

    def _disk_op(self, vm: dict[str, Any], disk_id: int, action: str, extra: list[str],
                 running_state: str | None, poweroff_state: str, after: Any = None) -> None:
        poweroff = vm["state"] == VmState.POWEROFF
        if poweroff:
            state = poweroff_state
        elif self._running(vm) and running_state is not None:
            state = running_state
        else:
            raise self._fail(f"one.vm.{action}", vm["id"])
        disk = self._disk(vm, disk_id)
        last, system, vm_dir = self._where(vm)
        tm_mad = disk.get("TM_MAD") or system["tm_mad"]
        line = (tm_mad, action, [f"{last['hostname']}:{vm_dir}/disk.{disk_id}", *extra,
                                 str(vm["id"]), disk.get("DATASTORE_ID", str(system["id"]))])
        back = (VmState.POWEROFF, 0) if poweroff else (VmState.ACTIVE, L["RUNNING"])
        self._transfer(vm, state, [line], (back,), "RUNNING" if not poweroff else state,
                       after=after)

    def vm_disk_snapshot_create(self, vm_id: int, disk_id: int, name: str = "") -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        ids = vm["disk_snapshots"].setdefault(disk_id, [])
        snap_id = max(ids, default=-1) + 1
        live = self._running(vm)
        self._disk_op(vm, disk_id, "snap_create_live" if live else "snap_create",
                      [str(snap_id)], "DISK_SNAPSHOT", "DISK_SNAPSHOT_POWEROFF",
                      after=lambda: ids.append(snap_id))
        return snap_id

    def vm_disk_snapshot_revert(self, vm_id: int, disk_id: int, snap_id: int) -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        self._disk_op(vm, disk_id, "snap_revert", [str(snap_id)], None,
                      "DISK_SNAPSHOT_REVERT_POWEROFF")
        return vm_id

    def vm_disk_snapshot_delete(self, vm_id: int, disk_id: int, snap_id: int) -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        ids = vm["disk_snapshots"].get(disk_id, [])
        self._disk_op(vm, disk_id, "snap_delete", [str(snap_id)], "DISK_SNAPSHOT_DELETE",
                      "DISK_SNAPSHOT_DELETE_POWEROFF",
                      after=lambda: snap_id in ids and ids.remove(snap_id))
        return vm_id

    def vm_disk_resize(self, vm_id: int, disk_id: int, size: str) -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        disk = self._disk(vm, disk_id)

        def grow() -> None:
            disk["SIZE_PREV"], disk["SIZE"] = disk.get("SIZE", "0"), str(size)

        self._disk_op(vm, disk_id, "resize", [str(size)], "DISK_RESIZE",
                      "DISK_RESIZE_POWEROFF", after=grow)
        return vm_id

    def vm_disk_saveas(self, vm_id: int, disk_id: int, name: str, image_type: str = "",
                       snap_id: int = -1) -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        disk = self._disk(vm, disk_id)
        poweroff = vm["state"] == VmState.POWEROFF
        if not (self._running(vm) or poweroff) or "IMAGE_ID" not in disk:
            raise self._fail("one.vm.disksaveas", vm_id)
        ds_id = int(disk["DATASTORE_ID"])
        image_id, _ = self.image_allocate(  # type: ignore[attr-defined]
            f'NAME="{name}"\nSIZE="{disk.get("SIZE", "0")}"\nFORMAT="save_as"', ds_id,
            _queue=False)
        image = self.images[image_id]
        ds = self.datastores[ds_id]
        last, _, vm_dir = self._where(vm)

        def run() -> None:
            mkfs = self._run_ds(ds, "mkfs", self._ds_action_xml(image), image_id)  # type: ignore
            if mkfs["exit"] != 0:
                self._image_failed(image, mkfs["error"])  # type: ignore[attr-defined]
                self._set_vm_state(vm, *back)  # type: ignore[attr-defined]
                return
            image["source"] = mkfs["stdout"].strip()
            line = (disk["TM_MAD"], "cpds", [f"{last['hostname']}:{vm_dir}/disk.{disk_id}",
                                             image["source"], str(snap_id), str(vm_id),
                                             str(ds_id)])
            error = self._run_transfer(vm, [line])  # type: ignore[attr-defined]
            if error:
                self._image_failed(image, error)  # type: ignore[attr-defined]
            else:
                image["format"] = "raw"
                self._set_image_state(image, ImageState.READY)  # type: ignore
            self._set_vm_state(vm, *back)  # type: ignore[attr-defined]

        back = (VmState.POWEROFF, 0) if poweroff else (VmState.ACTIVE, L["RUNNING"])
        self._set_vm_state(vm, VmState.ACTIVE,  # type: ignore[attr-defined]
                           L["HOTPLUG_SAVEAS_POWEROFF" if poweroff else "HOTPLUG_SAVEAS"])
        self.work.put(run)  # type: ignore[attr-defined]
        return image_id

    # -- VM snapshots and recover ---------------------------------------------------------

    def vm_snapshot_create(self, vm_id: int, name: str = "") -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        if not self._running(vm):
            raise self._fail("one.vm.snapshotcreate", vm_id)
        snapshots = vm["template"].setdefault("SNAPSHOT", [])
        snap_id = max((int(s["SNAPSHOT_ID"]) for s in snapshots), default=-1) + 1
        last, _, _ = self._where(vm)
        self._set_vm_state(vm, VmState.ACTIVE, L["HOTPLUG_SNAPSHOT"])  # type: ignore

        def run() -> None:
            script = self.remotes / "vmm" / "kvm" / "snapshot_create"  # type: ignore
            hypervisor_id = f"snap-{snap_id}"
            if script.is_file():
                result = self._run(["vmm", "kvm", "snapshot_create"], script,  # type: ignore
                                   [vm["deploy_id"], str(snap_id), str(vm_id),
                                    last["hostname"]], None, vm_id)
                if result["exit"] != 0:
                    vm["user_template"]["ERROR"] = result["error"]
                    self._set_vm_state(vm, VmState.ACTIVE, L["RUNNING"])  # type: ignore
                    return
                hypervisor_id = result["stdout"].strip()
            snapshots.append({"SNAPSHOT_ID": str(snap_id), "NAME": name or f"snapshot-{snap_id}",
                              "HYPERVISOR_ID": hypervisor_id, "TIME": str(int(time.time())),
                              "ACTIVE": "YES"})
            self._set_vm_state(vm, VmState.ACTIVE, L["RUNNING"])  # type: ignore

        self.work.put(run)  # type: ignore[attr-defined]
        return snap_id

    def _vm_snapshot_op(self, action: str, vm_id: int, snap_id: int) -> int:
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        snapshots = vm["template"].get("SNAPSHOT", [])
        snapshot = next((s for s in snapshots if s["SNAPSHOT_ID"] == str(snap_id)), None)
        if snapshot is None or not self._running(vm):
            raise self._fail(f"one.vm.{action.replace('_', '')}", vm_id)
        last, _, _ = self._where(vm)
        self._set_vm_state(vm, VmState.ACTIVE, L["HOTPLUG_SNAPSHOT"])  # type: ignore

        def run() -> None:
            script = self.remotes / "vmm" / "kvm" / action  # type: ignore[attr-defined]
            if script.is_file():
                result = self._run(["vmm", "kvm", action], script,  # type: ignore
                                   [vm["deploy_id"], snapshot["HYPERVISOR_ID"], str(vm_id),
                                    last["hostname"]], None, vm_id)
                if result["exit"] != 0:
                    vm["user_template"]["ERROR"] = result["error"]
                    self._set_vm_state(vm, VmState.ACTIVE, L["RUNNING"])  # type: ignore
                    return
            if action == "snapshot_delete":
                snapshots.remove(snapshot)
            else:
                for other in snapshots:
                    other["ACTIVE"] = "YES" if other is snapshot else "NO"
            self._set_vm_state(vm, VmState.ACTIVE, L["RUNNING"])  # type: ignore

        self.work.put(run)  # type: ignore[attr-defined]
        return vm_id

    def vm_snapshot_revert(self, vm_id: int, snap_id: int) -> int:
        return self._vm_snapshot_op("snapshot_revert", vm_id, snap_id)

    def vm_snapshot_delete(self, vm_id: int, snap_id: int) -> int:
        return self._vm_snapshot_op("snapshot_delete", vm_id, snap_id)

    def vm_recover(self, vm_id: int, operation: int) -> int:
        """0 failure, 1 success, 2 retry, 3 delete, 4 delete-recreate, 5 delete-db."""
        vm = self._vm(vm_id)  # type: ignore[attr-defined]
        if operation in (3, 4) and vm["history"]:
            last, system, vm_dir = self._where(vm)
            lines = [(d.get("TM_MAD") or system["tm_mad"], "delete",
                      [f"{last['hostname']}:{vm_dir}/disk.{d['DISK_ID']}", str(vm_id),
                       d.get("DATASTORE_ID", str(system["id"]))])
                     for d in vm["template"]["DISK"] if d.get("SAVE") != "YES"]
            lines.append((system["tm_mad"], "delete", [f"{last['hostname']}:{vm_dir}",
                                                       str(vm_id), str(system["id"])]))

            def finish() -> None:
                if vm_id in self.hosts[last["hid"]]["vms"]:
                    self.hosts[last["hid"]]["vms"].remove(vm_id)
                if operation == 3:
                    self._release_images(vm)  # type: ignore[attr-defined]

            final = ((VmState.PENDING, 0),) if operation == 4 else ((VmState.DONE, 0),)
            during = "CLEANUP_RESUBMIT" if operation == 4 else "CLEANUP_DELETE"
            self._transfer(vm, during, lines, final, "RUNNING", after=finish)
        elif operation == 1 and vm["lcm_state"] in (L["PROLOG_FAILURE"], L["BOOT_FAILURE"]):
            self._set_vm_state(vm, VmState.ACTIVE, L["RUNNING"])  # type: ignore
        elif operation == 0 and vm["state"] == VmState.ACTIVE:
            self._set_vm_state(vm, VmState.ACTIVE, L["PROLOG_FAILURE"])  # type: ignore
        elif operation == 5:
            self._release_images(vm)  # type: ignore[attr-defined]
            self._set_vm_state(vm, VmState.DONE, 0)  # type: ignore[attr-defined]
        else:
            raise self._fail("one.vm.recover", vm_id)
        return vm_id
