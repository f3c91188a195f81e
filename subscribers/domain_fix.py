"""Volatile-disk domain fixes: a running VM's StorPool volatile and context disks made block
devices in its persistent libvirt definition, so that its next live migration is safe.

oned writes volatile and context disks as ``type="file"`` (the ``disk.N`` of the VM folder, a
link to ``/dev/storpool/<px>-sys-<VM>-<DISK>-raw|swap|iso``; OpenNebula 6.10's native deploy
even writes the link's target). The deploy tweak ``volatile2dev`` turns them into block
devices, but a VM deployed before it still runs with file disks, which libvirt migrates as
local data ("it will not alter the currently running VMs", the Bash add-on's README). When a
VM reaches RUNNING the subscriber asks for this effect; the handler reads the live domain on
the VM's host, and where it finds such file disks it fixes the persistent definition
(``virsh define``) with the tweak's own conversion. The running domain is never touched.

A domain libvirt keeps no definition of (OpenNebula deploys with ``virsh create``: every
domain it starts is transient) gets none: one defined now would stay on the host after the
VM left it, and a later ``virsh create`` of a deployment without ``<uuid>`` would fail on
it. For those the record lists the disks (``at_migration``) that ``migrate-tweaks``
converts in the definition it gives the destination (``virsh migrate --xml``).

Idempotent: a run that finds the live domain clean, or the persistent definition fixed
already, records that there was nothing to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree

from onestorpool.drivers.host_domains import StorPoolDisks, read_domain, target_of
from onestorpool.drivers.vmm_tweaks import Validator, file_to_block
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import EventLog
from onestorpool.hosts import Host
from onestorpool.naming import Naming
from onestorpool.one import HookEvent, LcmState, PoolVm, Vm, VmState
from onestorpool.subscribers.handlers import EffectError
from onestorpool.subscribers.routes import Actions, history_seq_of

EFFECT_TYPE = "domain_fix"  # the effect a RUNNING VM's message requests
ROUTE = "vm.running"


def running(event: HookEvent) -> bool:
    return (event.kind == "STATE" and event.object == "VM" and event.state == "ACTIVE"
            and event.lcm_state == "RUNNING")


def vm_running(actions: Actions, event: HookEvent, seq: int) -> None:
    """A VM reached RUNNING (deployed, resumed, migrated, ...): check its domain once for
    this message (a later RUNNING is another occurrence, checked again)."""
    if event.object_id is None:
        return
    actions.request_effect({"type": EFFECT_TYPE, "key": f"{EFFECT_TYPE}:{event.object_id}:{seq}",
                            "vm": event.object_id, "history_seq": history_seq_of(event)},
                           seq, vm=event.object_id)


def running_catch_up(vm: PoolVm, config: Any) -> dict[str, Any] | None:
    """Reconciliation's check for a RUNNING VM whose message was lost."""
    if (vm.state, vm.lcm_state) != ("ACTIVE", "RUNNING") or vm.history_seq is None:
        return None
    if not config["DOMAIN_FIX"]:
        return None
    return {"type": EFFECT_TYPE, "key": f"{EFFECT_TYPE}:{vm.id}:{vm.history_seq}:catch-up",
            "vm": vm.id, "history_seq": vm.history_seq}


def domain_fix(record: Record, log: EventLog) -> dict[str, Any]:
    """The handler (``record`` requests it for ``record.vm``): see the module."""
    from onestorpool import config as config_module
    from onestorpool import hosts, oneapi

    vm_id = record.vm
    if vm_id is None:
        raise EffectError(f"record #{record.seq}: a domain fix names no VM")
    config = config_module.load()
    if not config["DOMAIN_FIX"]:
        return {"vm": vm_id, "fixed": [], "note": "DOMAIN_FIX is off: not looked at"}
    vm = oneapi.vm_info(vm_id)
    return fix_vm(vm, hosts.get, config.naming(), config["LIBVIRT_URI"])


def fix_vm(vm: Vm, host_of: Callable[[str], Host], naming: Naming, uri: str,
           ) -> dict[str, Any]:
    """What :func:`domain_fix` does once it has the VM from oned."""
    if (vm.state, vm.lcm_state) != (VmState.ACTIVE, LcmState.RUNNING):
        return {"vm": vm.id, "fixed": [],
                "note": f"the VM is {vm.state.name}/{vm.lcm_state.name} now: nothing to check"}
    if not vm.hostname or not vm.deploy_id:
        return {"vm": vm.id, "fixed": [], "note": "the VM has no host or domain id"}
    host: Host = host_of(vm.hostname)
    disks = StorPoolDisks(vm, host, naming)
    virsh = ["virsh", "-c", uri]
    outcome: dict[str, Any] = {"vm": vm.id, "host": host.name, "domain": vm.deploy_id}
    live = read_domain(host, [*virsh, "dumpxml", vm.deploy_id], vm.deploy_id)
    if live is None:  # gone since (or oned's view is stale): its next RUNNING is looked at
        return {**outcome, "fixed": [], "note": "the host has no such domain"}
    wanted = {target_of(element) for element in disks.files(live)}
    if not wanted:
        return {**outcome, "fixed": [],
                "note": "no StorPool volatile or context disk is a file in the live domain"}
    if not is_persistent(host, virsh, vm.deploy_id):
        # OpenNebula deploys with "virsh create": no definition outlives the domain, and
        # defining one would stay behind on the host (a later "virsh create" of a deployment
        # without <uuid> then fails). migrate-tweaks converts these disks when it migrates.
        return {**outcome, "fixed": [], "at_migration": sorted(wanted),
                "note": "transient domain: no persistent definition to fix; the live "
                        "migration (migrate-tweaks) makes these disks block devices"}
    persistent = read_domain(host, [*virsh, "dumpxml", "--inactive", vm.deploy_id],
                             vm.deploy_id)
    if persistent is None:
        return {**outcome, "fixed": [], "note": "the host has no such domain"}
    validator = Validator()
    valid_before = not validator.errors(persistent)
    fixed = []
    for element in disks.files(persistent):
        if target_of(element) in wanted and file_to_block(element):
            fixed.append({"target": target_of(element),
                          "source": element.find("source").get("dev", "")})
    if not fixed:
        return {**outcome, "fixed": [],
                "note": "the persistent definition has them as block devices already"}
    if valid_before and (errors := validator.errors(persistent)):
        raise EffectError(f"VM {vm.id}: the fixed definition of {vm.deploy_id} does not "
                          f"validate ({errors}); left as it is")
    host.run([*virsh, "define", "/dev/stdin"], stdin=etree.tostring(persistent), timeout=60)
    return {**outcome, "fixed": fixed, "persistent": "defined"}


def is_persistent(host: Host, virsh: list[str], deploy_id: str) -> bool:
    """Whether libvirt on ``host`` keeps a definition of the domain (``virsh dominfo``)."""
    done = host.run([*virsh, "dominfo", deploy_id], timeout=60)
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Persistent":
            return value.strip() == "yes"
    raise EffectError(f"{host.name}: virsh dominfo {deploy_id} tells no persistence")
