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

Idempotent: a run that finds the live domain clean, or the persistent definition fixed
already, records that there was nothing to fix.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Any

from lxml import etree

from onestorpool.drivers.vmm_tweaks import TweakInput, Validator, file_to_block
from onestorpool.errors import AddonError
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import EventLog
from onestorpool.hosts import Host
from onestorpool.naming import Naming
from onestorpool.one import HookEvent, LcmState, PoolVm, Vm, VmState, parse_xml
from onestorpool.subscribers.handlers import EffectError
from onestorpool.subscribers.routes import Actions, history_seq_of

EFFECT_TYPE = "domain_fix"  # the effect a RUNNING VM's message requests
ROUTE = "vm.running"
_DISK_N = re.compile(r"/disk\.(\d+)$")
MAX_DOMAIN_BYTES = 4 << 20  # a domain XML is a few KiB; a host sending more is refused
# virsh's words for a domain libvirt does not have (virsh's lookup, libvirt's VIR_ERR_NO_DOMAIN)
NOT_FOUND = re.compile(r"failed to get domain|Domain not found")


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


def running_catch_up(vm: PoolVm) -> dict[str, Any] | None:
    """Reconciliation's check for a RUNNING VM whose message was lost."""
    from onestorpool import config as config_module

    if (vm.state, vm.lcm_state) != ("ACTIVE", "RUNNING") or vm.history_seq is None:
        return None
    if not config_module.load()["DOMAIN_FIX"]:
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
    wanted = {_target(element) for element in disks.files(live)}
    if not wanted:
        return {**outcome, "fixed": [],
                "note": "no StorPool volatile or context disk is a file in the live domain"}
    persistent = read_domain(host, [*virsh, "dumpxml", "--inactive", vm.deploy_id],
                             vm.deploy_id)
    if persistent is None:
        return {**outcome, "fixed": [], "note": "the host has no such domain"}
    validator = Validator()
    valid_before = not validator.errors(persistent)
    fixed = []
    for element in disks.files(persistent):
        if _target(element) in wanted and file_to_block(element):
            fixed.append({"target": _target(element),
                          "source": element.find("source").get("dev", "")})
    if not fixed:
        return {**outcome, "fixed": [],
                "note": "the persistent definition has them as block devices already"}
    if valid_before and (errors := validator.errors(persistent)):
        raise EffectError(f"VM {vm.id}: the fixed definition of {vm.deploy_id} does not "
                          f"validate ({errors}); left as it is")
    host.run([*virsh, "define", "/dev/stdin"], stdin=etree.tostring(persistent), timeout=60)
    return {**outcome, "fixed": fixed, "persistent": "defined"}


def _target(element: etree._Element) -> str:
    target = element.find("target")
    return "" if target is None else target.get("dev", "")


class StorPoolDisks:
    """Which ``<disk>`` elements of a domain are the VM's StorPool volatile or context disks:
    the deploy tweak's selection (:meth:`TweakInput.storpool_disks`) restricted to disks
    without an image, with each one's DISK_ID read from a source that is the VM folder's
    ``disk.N`` linked (on the host) to that disk's StorPool device, or the device itself."""

    def __init__(self, vm: Vm, host: Host, naming: Naming):
        self.vm, self.host, self.naming = vm, host, naming
        # "/dev/storpool/" as the host's commands see it
        self.devices = posixpath.dirname(host.device("volume")) + "/"
        self.given = TweakInput(vm)
        self.volatile = {d.disk_id for d in vm.disks if d.image_id is None}
        if vm.context_disk_id is not None:
            self.volatile.add(vm.context_disk_id)
        self._links: dict[str, str] = {}

    def files(self, domain: etree._Element) -> list[etree._Element]:
        """Those still ``type="file"``."""
        return [element for element, _disk in self.given.storpool_disks(domain, self.disk_id)
                if element.get("type") == "file"]

    def disk_id(self, element: etree._Element) -> int | None:
        source = element.find("source")
        path = "" if source is None else (source.get("file") or source.get("dev") or "")
        match = _DISK_N.search(path)
        if match is None:
            return self._device_of(path)
        disk_id = int(match[1])
        if disk_id not in self.volatile:
            return None
        return disk_id if self._device_of(self._link(path)) == disk_id else None

    def _link(self, path: str) -> str:
        """Where ``path`` links to on the host ("" when it is no link)."""
        if path not in self._links:
            seen = self.host.path(path)
            done = self.host.run(["readlink", "--", seen], check=False, timeout=30)
            target = done.stdout.decode("utf-8", "replace").strip() \
                if done.returncode == 0 else ""
            if target and not target.startswith("/"):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(seen), target))
            self._links[path] = target
        return self._links[path]

    def _device_of(self, path: str) -> int | None:
        """The DISK_ID whose volatile or context volume ``path`` is the device of."""
        if not path.startswith(self.devices):
            return None
        parsed = self.naming.parse(path[len(self.devices):])
        if parsed is None or parsed.kind not in ("volatile", "context") \
                or parsed.vm_id != self.vm.id or parsed.disk_id not in self.volatile:
            return None
        return parsed.disk_id


def read_domain(host: Host, argv: list[str], deploy_id: str) -> etree._Element | None:
    """A domain XML from the host (``None``: libvirt there has no such domain), parsed with
    the project's hardened parser and checked to be the domain asked for (a hostile or
    confused host gets its answer refused). Any other failure raises: the effect is retried.
    """
    done = host.run(argv, check=False, timeout=60)
    what = f"{host.name}: domain {deploy_id}"
    if done.returncode != 0:
        error = done.stderr.decode("utf-8", "replace")
        if NOT_FOUND.search(error):
            return None
        lines = [line.strip() for line in error.splitlines() if line.strip()]
        raise EffectError(f"{what}: virsh dumpxml failed (exit {done.returncode}): "
                          f"{lines[-1] if lines else 'no error output'}")
    try:
        domain = parse_xml(done.stdout, what, max_bytes=MAX_DOMAIN_BYTES)
    except AddonError as exc:
        raise EffectError(str(exc)) from None
    if domain.tag != "domain":
        raise EffectError(f"{what}: expected a libvirt <domain>, got <{domain.tag}>")
    if deploy_id not in ((domain.findtext("name") or "").strip(),
                         (domain.findtext("uuid") or "").strip()):
        raise EffectError(f"{what}: the host answered with another domain")
    return domain
