"""Clean-up of the add-on's StorPool snapshots that no OpenNebula object references any more.

A snapshot is removed only when all of these hold:

* its name is one of this instance's derived names (``naming.parse``: ``ONE_PX``) of a kind
  the add-on makes and forgets on failure: disk and VM snapshots, backup and export
  snapshots, revert and restore temporaries (:data:`CLEANABLE`); never a tombstone (the
  remote-backup handler owns those), never a volume;
* it carries the instance's location tag (``LOC_TAG=LOC_TAG_VAL``): a snapshot of another
  OpenNebula instance, or one made by hand, is never touched, whatever its name;
* it is not already expiring (``deleteAfter`` set: StorPool removes it itself);
* its owner is gone: the VM it belongs to is DONE (the bus said so) or absent from oned's VM
  pool, or, for a snapshot of an image, the image is absent from the image pool. The pools
  are read *after* the snapshot list, so an object allocated before its snapshot was made is
  always seen; an unreadable pool removes nothing. Or it is a temporary (a marketplace
  export's snapshot, a restore's or revert's temporary: :data:`TEMPORARY`) older than
  :data:`TEMPORARY_MAX_AGE`, whoever owns it: the action that made it is long over.

Each removal has the idempotency key ``cleanup:<name>:<globalId>``: it is announced
(``cleanup.started``) before the delete and recorded (``cleanup.snapshot``, ``removed``
listing the name) with its tracking row in one transaction after it; a run killed between
the two leaves the announcement, and the next pass records the removal it finds done.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from onestorpool.eventlog.events import CleanupFailed, CleanupSnapshot, CleanupStarted
from onestorpool.eventlog.store import HOST, AlreadyDone, EventLog
from onestorpool.naming import Naming
from onestorpool.storpool import NotFound, StorPoolClient

CLEANUP = "cleanup"  # the tracking consumer
CLEANUP_EVENT = CleanupSnapshot.TYPE
CLEANABLE = frozenset({"disk_snapshot", "vm_snapshot", "backup", "export", "revert_temp",
                       "vmsnap_revert_temp", "restore_temp"})
TEMPORARY = frozenset({"export", "revert_temp", "vmsnap_revert_temp", "restore_temp"})
TEMPORARY_MAX_AGE = 24 * 3600


@dataclass(frozen=True)
class Owners:
    """What OpenNebula still has: ``None`` where it is unknown (nothing of that kind goes)."""

    vms: frozenset[int] | None = None
    images: frozenset[int] | None = None
    gone_vm: int | None = None  # a VM known DONE (the bus said so)


@dataclass(frozen=True)
class Orphan:
    name: str
    global_id: str
    reason: str
    vm: int | None
    image: int | None

    @property
    def key(self) -> str:
        return f"cleanup:{self.name}:{self.global_id}"


def orphans(snapshots: Iterable[Mapping[str, Any]], naming: Naming, loc: tuple[str, str],
            owners: Owners, now: float | None = None) -> list[Orphan]:
    now = time.time() if now is None else now
    found = []
    for snapshot in snapshots:
        name = str(snapshot.get("name", ""))
        if snapshot.get("deleted") or snapshot.get("deleteAfter") or \
                snapshot.get("targetDeleteDate"):
            continue
        if (snapshot.get("tags") or {}).get(loc[0]) != loc[1]:
            continue
        parsed = naming.parse(name)
        if parsed is None or parsed.kind not in CLEANABLE or parsed.base is None:
            continue
        vm, image = parsed.base.vm_id, parsed.base.image_id
        reason = None
        if vm is not None:
            if owners.gone_vm == vm:
                reason = f"VM {vm} is DONE"
            elif owners.vms is not None and vm not in owners.vms:
                reason = f"VM {vm} is not in oned's pool"
        elif image is not None and owners.images is not None and image not in owners.images:
            reason = f"image {image} is not in oned's pool"
        created = snapshot.get("creationTimestamp")
        if reason is None and parsed.kind in TEMPORARY and isinstance(created, (int, float)) \
                and now - created > TEMPORARY_MAX_AGE:
            reason = f"a {parsed.kind} left for {int((now - created) // 3600)}h"
        if reason is not None:
            found.append(Orphan(name, str(snapshot.get("globalId", "")), reason, vm, image))
    return found


def remove(log: EventLog, sp: StorPoolClient, orphan: Orphan, runner: str,
           position: int) -> str:
    """Delete one orphan, once (``position``: the log record that decided it); returns
    ``done``, ``skipped`` or ``failed: ...``."""
    if log.is_done(orphan.key, CLEANUP):
        return "skipped"
    writer = f"{runner}/cleanup@{HOST}:{os.getpid()}"
    log.append(CleanupStarted.new(writer, key=orphan.key, reason=orphan.reason, vm=orphan.vm,
                                  image=orphan.image, snapshot=orphan.name))
    gone = False
    try:
        with contextlib.suppress(NotFound):
            sp.detach(orphan.name, snapshot=True, force=False)
        sp.snapshot_delete(orphan.name)
    except NotFound:
        gone = True
    except Exception as exc:  # recorded, retried by the next reconciliation
        log.append(CleanupFailed.new(writer, key=orphan.key,
                                     error=f"{type(exc).__name__}: {exc}", vm=orphan.vm,
                                     image=orphan.image, snapshot=orphan.name))
        return f"failed: {exc}"
    return _record(log, orphan, gone, writer, position)


def _record(log: EventLog, orphan: Orphan, gone: bool, writer: str, position: int) -> str:
    try:
        with log.transaction() as tx:
            seq = tx.append(CleanupSnapshot.new(writer, key=orphan.key, reason=orphan.reason,
                                                removed=[orphan.name], already_gone=gone,
                                                vm=orphan.vm, image=orphan.image,
                                                snapshot=orphan.name))
            tx.track(CLEANUP, orphan.key, position=min(position, seq - 1), seq=seq)
    except AlreadyDone:
        return "skipped"
    return "done"


def finish_started(log: EventLog, present: set[str], position: int, runner: str) -> int:
    """Record the removals a killed run made and did not record: each started key not done
    whose snapshot StorPool no longer lists but as deleted (``present``: the names it lists,
    read before this); one still there is an orphan again and taken the usual way."""
    writer = f"{runner}/cleanup@{HOST}:{os.getpid()}"
    finished = 0
    for record in log.read(types=[CleanupStarted.TYPE]):
        key, name = str(record.payload.get("key", "")), record.snapshot
        if not name or name in present or log.is_done(key, CLEANUP):
            continue
        orphan = Orphan(name, key.rsplit(":", 1)[-1], str(record.payload.get("reason", "")),
                        record.vm, record.image)
        if orphan.key == key and _record(log, orphan, True, writer, position) == "done":
            finished += 1
    return finished


def cleanup(log: EventLog, sp: StorPoolClient, naming: Naming, loc: tuple[str, str],
            owners: Owners | Callable[[], Owners], *, position: int,
            runner: str = "subscriber",
            stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """Remove the orphans; ``owners`` is called *after* StorPool's snapshot list is read."""
    counts: dict[str, int] = {}
    snapshots = sp.snapshots_list()
    present = {str(s.get("name", "")) for s in snapshots if not s.get("deleted")}
    if finished := finish_started(log, present, position, runner):
        counts["finished"] = finished
    known = owners() if callable(owners) else owners
    for orphan in orphans(snapshots, naming, loc, known):
        if stop():
            break
        status = remove(log, sp, orphan, runner, position).split(":")[0]
        counts[status] = counts.get(status, 0) + 1
    return counts
