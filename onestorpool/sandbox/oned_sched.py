"""The scheduler's essential behaviour in the oned sandbox, switchable off (``scheduler=False``
leaves PENDING VMs for the test to deploy).

One pass places every PENDING VM (by id) on a MONITORED host of its cluster (every host is in
cluster 0) whose free CPU and memory fit it, with the default policies of ``sched.conf``
(release-6.10.5 ``src/scheduler/etc/sched.conf`` lines 131-136: ``DEFAULT_SCHED`` and
``DEFAULT_DS_SCHED`` POLICY 1, striping: the host with the fewest running VMs, the system
datastore with the most free space). A resumed VM (stopped or undeployed) is rescheduled the
same way but keeps its system datastore (``VirtualMachineXML`` ``resume``, release-6.10.5
``src/scheduler/src/pool/VirtualMachineXML.cc`` line 68). A RUNNING VM with RESCHED is
migrated (cold) to another host that fits.

How the placement reaches oned depends on the release: up to 6.10 ``mm_sched`` is an
XML-RPC client calling ``one.vm.deploy(vid, hid, false, dsid, "")``
(``src/scheduler/src/pool/VirtualMachinePoolXML.cc`` line 179), so oned publishes the API
event; from 7.0 the plan manager runs ``VirtualMachineDeploy::request_execute`` inside oned
with enforce true (release-7.0.2 ``src/schedm/PlanManager.cc`` line 306): no API event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from onestorpool.sandbox.oned_objects import Datastore, Host, OneFailure, Version, Vm, VmState

HOST_CPU = 800  # what the sandbox's hosts report (HOST_SHARE MAX_CPU, MAX_MEM in KB)
HOST_MEMORY_KB = 16777216


class Scheduler:
    """``schedule_once()`` is one scheduling pass; ``dispatch`` is the XML-RPC entry (used
    up to 6.10), ``deploy`` the internal one (7.0+)."""

    def __init__(self, lock: threading.RLock, vms: dict[int, Vm], hosts: dict[int, Host],
                 datastores: dict[int, Datastore], version: Version, session: str,
                 dispatch: Callable[[str, tuple[Any, ...]], list[Any]],
                 deploy: Callable[..., Any], migrate: Callable[..., Any]):
        self.lock = lock
        self.vms, self.hosts, self.datastores = vms, hosts, datastores
        self.version = version
        self.session = session
        self.dispatch = dispatch
        self.deploy = deploy
        self.migrate = migrate

    def _load(self, host: Host) -> tuple[float, int]:
        """CPU (in hundredths) and memory (KB) the host's VMs take."""
        cpu, memory = 0.0, 0
        for vm_id in host.vms:
            vm = self.vms.get(vm_id)
            if vm is not None:
                cpu, memory = cpu + _cpu(vm), memory + _memory(vm)
        return cpu, memory

    def _fits(self, vm: Vm, host: Host) -> bool:
        cpu, memory = self._load(host)
        return (host.state == 2 and cpu + _cpu(vm) <= HOST_CPU
                and memory + _memory(vm) <= HOST_MEMORY_KB)

    def placements(self) -> list[tuple[int, int, int]]:
        """(vm, host, system datastore) for every PENDING VM that fits somewhere."""
        chosen: list[tuple[int, int, int]] = []
        with self.lock:
            extra: dict[int, list[int]] = {}  # VMs placed in this pass, per host
            for vm in sorted(self.vms.values(), key=lambda v: v.id):
                if vm.state != VmState.PENDING:
                    continue
                hosts = []
                for host in self.hosts.values():
                    host_vms = host.vms + extra.get(host.id, [])
                    view = Host(host.id, host.name, host.im_mad, host.vm_mad, {}, host.state,
                                vms=host_vms)
                    if self._fits(vm, view):
                        hosts.append((len(host_vms), host.id))
                if not hosts:
                    continue
                host_id = min(hosts)[1]
                resume = bool(vm.history) and vm.previous_action in (
                    "stop", "undeploy", "undeploy-hard")
                ds_id = vm.last.ds_id if resume else self._system_ds()
                if ds_id < 0:
                    continue
                extra.setdefault(host_id, []).append(vm.id)
                chosen.append((vm.id, host_id, ds_id))
        return chosen

    def _system_ds(self) -> int:
        """A shared system datastore (a non-shared one needs the hosts to report its
        capacity, which the sandbox's hosts do not), most free space first."""
        systems = [d for d in self.datastores.values()
                   if d.type == 1 and d.state == 0 and d.shared]
        if not systems:
            return -1
        return min(systems, key=lambda d: (-d.free_mb, d.id)).id

    def reschedulings(self) -> list[tuple[int, int]]:
        """(vm, host) for every RUNNING VM with RESCHED: another host that fits."""
        chosen = []
        with self.lock:
            for vm in sorted(self.vms.values(), key=lambda v: v.id):
                if not (vm.resched and vm.state == VmState.ACTIVE and vm.lcm_state == 3):
                    continue
                hosts = [(len(h.vms), h.id) for h in self.hosts.values()
                         if h.id != vm.last.hid and self._fits(vm, h)]
                if hosts:
                    chosen.append((vm.id, min(hosts)[1]))
        return chosen

    def schedule_once(self) -> list[tuple[int, int]]:
        """One pass; returns the (vm, host) pairs oned accepted: the migrations of
        rescheduled VMs (sched.conf LIVE_RESCHEDS 0, COLD_MIGRATE_MODE 0:
        ``one.vm.migrate(vid, hid, false, false, -1, 0)``, VirtualMachinePoolXML.cc:166),
        then the deployments."""
        placed = []
        for vm_id, host_id in self.reschedulings():
            if self.version >= (7, 0):
                try:
                    self.migrate(vm_id, host_id, False, False, -1, 0)
                except OneFailure:
                    continue
                placed.append((vm_id, host_id))
            else:
                reply = self.dispatch("one.vm.migrate",
                                      (self.session, vm_id, host_id, False, False, -1, 0))
                if reply[0]:
                    placed.append((vm_id, host_id))
        for vm_id, host_id, ds_id in self.placements():
            if self.version >= (7, 0):
                try:
                    self.deploy(vm_id, host_id, True, ds_id)
                except OneFailure:  # the plan action fails; the VM waits
                    continue
                placed.append((vm_id, host_id))
            else:
                reply = self.dispatch("one.vm.deploy",
                                      (self.session, vm_id, host_id, False, ds_id, ""))
                if reply[0]:
                    placed.append((vm_id, host_id))
        return placed


def _cpu(vm: Vm) -> float:
    try:
        return float(vm.template.get("CPU", 0)) * 100
    except ValueError:
        return 0.0


def _memory(vm: Vm) -> int:
    value = str(vm.template.get("MEMORY", "0"))
    return int(value) * 1024 if value.isdigit() else 0
