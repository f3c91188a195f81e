"""Snapshot pruning: retention on a VM's disk snapshots, by count and by age.

``DISKSNAPSHOT_KEEP`` (the newest N snapshots of each disk are kept) and
``DISKSNAPSHOT_MAX_AGE`` (older snapshots go; ``N[s|m|h|d]``) come from the configuration,
a datastore's template overrides them for the disks on it, and the VM's user template
(attributes of the same names) overrides both for that VM. Unset: nothing is pruned.

Pruning asks oned to delete (``one.vm.disksnapshotdelete``) so OpenNebula's view stays
right: oned runs the TM's ``snap_delete``. Only what oned accepts in every orphan mode is
asked: never the active snapshot (the one last reverted to), never one with children. StorPool
disks have ``ALLOW_ORPHANS=YES`` (the add-on's ``TM_MAD_CONF``), where oned makes every
snapshot a root, so that costs nothing there; under ``MIXED``/``DENY`` chains only leaves go,
one after the other. One request per VM at a time, and only while the VM is RUNNING,
POWEROFF or SUSPENDED (a snapshot operation in progress defers the VM); a VM is looked at
again after each request until nothing is left to ask. Each
request has the idempotency key ``prune:<vm>:<disk>:<snapshot>:<date>``, is announced
(``prune.started``) before it is asked and recorded (``prune.snapshot``) with its tracking
row in one transaction once oned accepted it (a run killed in between leaves the
announcement: the next look at the VM records the deletion it finds done); a request oned
refuses is recorded as ``prune.failed`` and asked again by the next pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onestorpool.eventlog.events import PruneFailed, PruneSnapshot, PruneStarted
from onestorpool.eventlog.store import HOST, AlreadyDone, EventLog
from onestorpool.one import LcmState, Vm, VmState

PRUNE = "prune"  # the tracking consumer
SETTINGS = ("DISKSNAPSHOT_KEEP", "DISKSNAPSHOT_MAX_AGE")


@dataclass(frozen=True)
class Retention:
    keep: int | None = None
    max_age: int | None = None  # seconds

    @property
    def active(self) -> bool:
        return self.keep is not None or bool(self.max_age)


@dataclass(frozen=True)
class Candidate:
    vm: int
    disk: int
    snapshot: int
    date: int
    reason: str

    @property
    def key(self) -> str:
        return f"prune:{self.vm}:{self.disk}:{self.snapshot}:{self.date}"


def stable(vm: Vm) -> bool:
    """oned accepts a disk snapshot delete now (no other operation in flight)."""
    if vm.state == VmState.ACTIVE:
        return vm.lcm_state == LcmState.RUNNING
    return vm.state in (VmState.POWEROFF, VmState.SUSPENDED)


def retention_for(vm: Vm, disk_datastore: int | None, config: Any,
                  datastore_attributes: Callable[[int], dict[str, str]]) -> Retention:
    """Configuration, then the disk's datastore, then the VM's user template."""
    from onestorpool.config import parse_duration, parse_optional_int

    effective = config
    if disk_datastore is not None:
        attributes = datastore_attributes(disk_datastore)
        if any(name in attributes for name in SETTINGS):
            effective = config.for_datastore(attributes, f"datastore {disk_datastore}")
    keep, max_age = effective["DISKSNAPSHOT_KEEP"], effective["DISKSNAPSHOT_MAX_AGE"]
    user = vm.user_template
    if user.get("DISKSNAPSHOT_KEEP", "").strip():
        keep = parse_optional_int(user["DISKSNAPSHOT_KEEP"])
    if user.get("DISKSNAPSHOT_MAX_AGE", "").strip():
        max_age = parse_duration(user["DISKSNAPSHOT_MAX_AGE"])
    return Retention(keep, max_age or None)


def candidates(vm: Vm, retention_of: Callable[[int | None], Retention],
               now: float | None = None) -> list[Candidate]:
    """The snapshots to delete, oldest first, per disk: those older than the newest ``keep``
    (which always stay) or than ``max_age``. The active one and those with children are
    skipped (oned refuses them outside ``ALLOW_ORPHANS=YES``): a disk may stay above its
    count until they can go."""
    now = time.time() if now is None else now
    found = []
    for disk in vm.disks:
        if not disk.snapshots:
            continue
        retention = retention_of(disk.datastore_id)
        if not retention.active:
            continue
        ordered = sorted(disk.snapshots, key=lambda s: (s.date or 0, s.id))
        beyond = len(ordered) - retention.keep if retention.keep is not None else 0
        for index, snapshot in enumerate(ordered):
            if index < beyond:
                reason = f"more than {retention.keep} snapshots"
            elif retention.max_age and snapshot.date is not None and \
                    now - snapshot.date > retention.max_age and \
                    (retention.keep is None or index < len(ordered) - retention.keep):
                reason = f"older than {retention.max_age}s"
            else:
                continue
            if snapshot.active or snapshot.children:
                continue
            found.append(Candidate(vm.id, disk.disk_id, snapshot.id, snapshot.date or 0,
                                   reason))
    return found


class Pruner:
    """Prunes VMs through oned; ``call(method, *params)`` is the XML-RPC access."""

    def __init__(self, log: EventLog, config: Any, *,
                 call: Callable[..., Any] | None = None,
                 vm_info: Callable[[int], Vm] | None = None,
                 datastore_attributes: Callable[[int], dict[str, str]] | None = None,
                 runner: str = "subscriber"):
        from onestorpool import oneapi

        self.log, self.config, self.runner = log, config, runner
        self.call = call or oneapi.one_call
        self.vm_info = vm_info or oneapi.vm_info
        self._datastores: dict[int, dict[str, str]] = {}
        self._ds_attributes = datastore_attributes or (
            lambda ds_id: dict(oneapi.datastore_info(ds_id).template))

    def datastore_attributes(self, ds_id: int) -> dict[str, str]:
        if ds_id not in self._datastores:
            self._datastores[ds_id] = self._ds_attributes(ds_id)
        return self._datastores[ds_id]

    def plan(self, vm: Vm) -> list[Candidate]:
        return candidates(vm, lambda ds: retention_for(vm, ds, self.config,
                                                       self.datastore_attributes))

    def prune(self, vm_id: int, position: int) -> str:
        """Ask oned to delete the VM's first candidate: ``asked`` (look again when the VM is
        idle: the next may be allowed now), ``deferred`` (the VM is busy), ``nothing`` or
        ``failed``."""
        vm = self.vm_info(vm_id)
        if not stable(vm):
            return "deferred"  # the snapshot being made (or deleted) is not counted yet
        writer = f"{self.runner}/prune@{HOST}:{os.getpid()}"
        self.finish_started(vm, position, writer)
        plan = [c for c in self.plan(vm) if not self.log.is_done(c.key, PRUNE)]
        if not plan:
            return "nothing"
        first = plan[0]
        fields = {"key": first.key, "disk": first.disk, "snapshot_id": first.snapshot,
                  "reason": first.reason}
        self.log.append(PruneStarted.new(writer, fields, vm=vm_id))
        try:
            self.call("one.vm.disksnapshotdelete", vm_id, first.disk, first.snapshot)
        except Exception as exc:
            self.log.append(PruneFailed.new(writer, fields,
                                            error=f"{type(exc).__name__}: {exc}", vm=vm_id))
            return "failed"
        self._record(fields, vm_id, position, writer)
        return "asked"

    def _record(self, fields: dict[str, Any], vm_id: int, position: int, writer: str) -> None:
        try:
            with self.log.transaction() as tx:
                seq = tx.append(PruneSnapshot.new(writer, fields, vm=vm_id))
                tx.track(PRUNE, fields["key"], position=min(position, seq - 1), seq=seq)
        except AlreadyDone:
            pass

    def finish_started(self, vm: Vm, position: int, writer: str) -> None:
        """Record the deletions a killed run asked for and did not record: a started key
        not done whose snapshot the VM no longer has (one it still has is planned again)."""
        present = {f"prune:{vm.id}:{disk.disk_id}:{snapshot.id}:{snapshot.date or 0}"
                   for disk in vm.disks for snapshot in disk.snapshots}
        for record in self.log.read(vm=vm.id, types=[PruneStarted.TYPE]):
            fields = record.payload
            key = str(fields.get("key", ""))
            if key and key not in present and not self.log.is_done(key, PRUNE):
                self._record({**fields, "found_done": True}, vm.id, position, writer)
