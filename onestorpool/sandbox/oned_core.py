"""The shared core of the oned sandbox: the object pools, the lock, pool updates that publish
state events the way oned's pools do, error messages stored the way oned stores them, the
job pool that plays oned's asynchronous managers, and the front-end's files.

The parts in ``oned_storage`` (datastores, hosts, images), ``oned_vm`` (the VM pool, the
driver steps, the life cycle, actions, recovery and migration) and ``oned_vmops`` (disk and
snapshot operations) each hold this core and reach each other through it;
:class:`onestorpool.sandbox.oned.OnedSandbox` is the core and composes them.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onestorpool.sandbox import oned_hookbus as hookbus
from onestorpool.sandbox.oned_drivers import DriverRun, DriverRunner
from onestorpool.sandbox.oned_objects import (
    NO_EXISTS,
    Datastore,
    Host,
    Image,
    OneFailure,
    Template,
    Version,
    Vm,
)

if TYPE_CHECKING:  # the parts' types only: they import this module, not the reverse
    from onestorpool.sandbox.oned_storage import Datastores, Hosts, ImageOps, ImageRegistry
    from onestorpool.sandbox.oned_vm import Lifecycle, Recovery, VmActions, VmDrivers, VmPool
    from onestorpool.sandbox.oned_vmops import DiskOps, SnapshotOps

# oned.conf: DATASTORE_LOCATION is "<var>/datastores" with var "/var/lib/one/", hence the
# double slash oned puts in every system datastore path.
DATASTORE_LOCATION = "/var/lib/one//datastores"
VMS_LOCATION = "/var/lib/one/vms"
ONEADMIN_HOME = "/var/lib/one"
MAX_ERROR_MSG_LENGTH = 100  # VirtualMachine.h, 6.6+


class SandboxCore:
    """State and plumbing shared by the sandbox's parts, and the parts themselves: each
    part holds the core and reaches the others through it (``core.vm_pool``, ...)."""

    version: Version
    frontend: str
    hosts_root: Path
    hooks: hookbus.HookBus
    drivers: DriverRunner
    session: str
    tm_mad_conf: dict[str, Template]
    ds_mad_conf: dict[str, Template]
    storpool_admin: tuple[str, str] | None
    storpool_conf: Path | None
    live_disk_snapshots: frozenset[str]
    capacity_check = True  # oned.conf DATASTORE_CAPACITY_CHECK
    keep_snapshots = False  # VM_MAD KEEP_SNAPSHOTS
    # the parts (set by OnedSandbox)
    ds_api: Datastores
    host_api: Hosts
    image_api: ImageRegistry
    image_ops: ImageOps
    vm_pool: VmPool
    vm_drivers: VmDrivers
    lifecycle: Lifecycle
    vm_actions: VmActions
    recovery: Recovery
    disk_ops: DiskOps
    snapshot_ops: SnapshotOps

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.datastores: dict[int, Datastore] = {}
        self.images: dict[int, Image] = {}
        self.hosts: dict[int, Host] = {}
        self.vms: dict[int, Vm] = {}
        self.driver_log: list[DriverRun] = []
        self.internal_errors: list[str] = []
        self._next_id = {"datastore": 100, "image": 0, "host": 0, "vm": 0}
        self._pending = 0
        self._jobs = ThreadPoolExecutor(max_workers=8, thread_name_prefix="oned-job")

    # -- ids and lookups (oned's NO_EXISTS messages) ---------------------------------------

    def _new_id(self, kind: str) -> int:
        with self.lock:
            value = self._next_id[kind]
            self._next_id[kind] += 1
            return value

    def _vm(self, vm_id: int, method: str = "one.vm.info") -> Vm:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise OneFailure(NO_EXISTS, f"[{method}] Error getting virtual machine "
                                        f"[{vm_id}].", vm_id)
        return vm

    def _image(self, image_id: int, method: str = "one.image.info") -> Image:
        image = self.images.get(image_id)
        if image is None:
            raise OneFailure(NO_EXISTS, f"[{method}] Error getting image [{image_id}].",
                             image_id)
        return image

    def _datastore(self, ds_id: int, method: str = "one.datastore.info") -> Datastore:
        ds = self.datastores.get(ds_id)
        if ds is None:
            raise OneFailure(NO_EXISTS, f"[{method}] Error getting datastore [{ds_id}].",
                             ds_id)
        return ds

    def _host(self, host_id: int, method: str = "one.host.info") -> Host:
        host = self.hosts.get(host_id)
        if host is None:
            raise OneFailure(NO_EXISTS, f"[{method}] Error getting host [{host_id}].",
                             host_id)
        return host

    # -- pool updates: state events as oned's pools publish them ----------------------------

    def _update_vm(self, vm: Vm) -> None:
        """``VirtualMachinePool::update``: an event when (state, lcm) changed since the
        last update, then the new pair becomes the previous one."""
        with self.lock:
            if (vm.state, vm.lcm_state) != (vm.prev_state, vm.prev_lcm_state):
                self.hooks.publish(*hookbus.vm_state_message(vm, self.version))
            vm.prev_state, vm.prev_lcm_state = vm.state, vm.lcm_state
            self.changed.notify_all()

    def _set_vm_state(self, vm: Vm, state: int, lcm: int = 0) -> None:
        with self.lock:
            vm.state, vm.lcm_state = state, lcm
            self._update_vm(vm)

    def _update_image(self, image: Image) -> None:
        """``ImagePool::update``; image state hooks exist from 6.0 on."""
        with self.lock:
            if image.state != image.prev_state and self.version >= (6, 0):
                keys, message = hookbus.image_state_message(image, self.version)
                self.hooks.publish(keys, message)
            image.prev_state = image.state
            self.changed.notify_all()

    def _set_image_state(self, image: Image, state: int) -> None:
        with self.lock:
            image.state = state
            self._update_image(image)

    def _update_host(self, host: Host) -> None:
        with self.lock:
            if host.state != host.prev_state:
                self.hooks.publish(*hookbus.host_state_message(host, self.version))
            host.prev_state = host.state
            self.changed.notify_all()

    # -- error messages ----------------------------------------------------------------------

    def _vm_error(self, vm: Vm, message: str) -> None:
        """``VirtualMachine::set_template_error_message``: USER_TEMPLATE/ERROR with oned's
        time stamp; 6.6+ cuts the message at 100 characters."""
        stamp = time.ctime()
        if self.version >= (6, 6):
            text = f"{stamp}: {message[:MAX_ERROR_MSG_LENGTH]}"
            if len(message) >= MAX_ERROR_MSG_LENGTH:
                text += "... see more details in VM log"
        else:
            text = f"{stamp} : {message}"
        with self.lock:
            vm.user_template["ERROR"] = text

    def _image_error(self, image: Image, message: str) -> None:
        """``PoolObjectSQL::set_template_error_message``: TEMPLATE/ERROR."""
        with self.lock:
            image.template["ERROR"] = f"{time.ctime()} : {message}"

    @staticmethod
    def _with_info(message: str, info: str) -> str:
        """oned's ``if (!info.empty() && info[0] != '-') oss << ": " << info``."""
        return f"{message}: {info}" if info and not info.startswith("-") else message

    # -- jobs: oned's managers work asynchronously ------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        with self.lock:
            self._pending += 1
        self._jobs.submit(self._run_job, job)

    def _run_job(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # an emulator bug must not wedge the lifecycle: keep it visible
            text = traceback.format_exc()
            sys.stderr.write(f"oned sandbox: internal error\n{text}")
            with self.lock:
                self.internal_errors.append(text)
        finally:
            with self.lock:
                self._pending -= 1
                self.changed.notify_all()

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until every queued driver operation (and what it triggered) is done."""
        self._wait(lambda: self._pending == 0 or None, "the lifecycle to be idle", timeout)

    def _wait(self, probe: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while (found := probe()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"oned sandbox: waited {timeout:.0f}s for {what}")
                self.changed.wait(min(remaining, 0.2))
            return found

    # -- the front-end's and the hosts' files --------------------------------------------------

    def host_path(self, host: str, absolute: str) -> Path:
        """Where ``absolute`` on ``host`` lives in the sandbox (hosts are directories)."""
        return self.hosts_root / host / absolute.lstrip("/")

    def fe_path(self, absolute: str) -> Path:
        return self.host_path(self.frontend, absolute)

    def vm_files(self, vm: Vm) -> str:
        """``/var/lib/one/vms/<id>``: transfer files, context, deployment files."""
        return f"{VMS_LOCATION}/{vm.id}"

    def system_dir(self, vm: Vm, ds_id: int | None = None) -> str:
        return f"{DATASTORE_LOCATION}/{vm.last.ds_id if ds_id is None else ds_id}/{vm.id}"

    def _write_fe_file(self, absolute: str, text: str) -> None:
        path = self.fe_path(absolute)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
