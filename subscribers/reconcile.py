"""Reconciliation: what a lost hook message left undone, found from oned, StorPool and the log.

PUB/SUB drops messages while the subscriber is down, reconnecting or slow, so the bus is a
hint and these are the sources of truth. One pass:

1. every effect the log holds as requested and not done (failed ones included: this is
   their retry) runs through :func:`~onestorpool.eventlog.replay.run_effect`;
2. tombstones on StorPool that no log record asks to ship (a driver that died between its
   snapshot and its append) get a ``remote_backup`` request appended, when
   ``REMOTE_BACKUP_DELETE`` names a location, and then run like the others;
3. after a gap in listening (start, reconnect, a new leader: :data:`GAPS`), the effects a
   lost state message would have asked for: each route's ``catch_up`` looks at every VM of
   oned's pool (a SUSPENDED VM's checkpoint relocation, a RUNNING VM's domain check), asked
   for unless one of that type was asked for the VM and its history record already;
4. with ``CLEANUP_ORPHAN_SNAPSHOTS`` on, the add-on's snapshots of VMs and images oned no
   longer has are removed (:mod:`onestorpool.subscribers.cleanup`); an unreachable oned
   removes nothing.

The pass ends with one ``subscriber.reconciled`` record counting what it did.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from onestorpool.eventlog.events import EffectRequested, Reconciled, decode
from onestorpool.eventlog.projections import pending_effects
from onestorpool.eventlog.replay import run_effect
from onestorpool.eventlog.store import HOST, EventLog
from onestorpool.one import PoolVm
from onestorpool.subscribers.cleanup import Owners, cleanup
from onestorpool.subscribers.routes import Route

RECONCILED = Reconciled.TYPE
GAPS = ("start", "reconnected", "leader", "once")  # reasons after which messages were lost
CATCH_UP_BATCH = 1000  # requests per transaction: reconciliation may ask for many at once


def oned_vm_pool() -> list[PoolVm]:
    """oned's VMs as ``one.vmpool.info`` lists them (state and last history record)."""
    from onestorpool import oneapi
    from onestorpool.one import iter_vm_pool

    return list(iter_vm_pool(oneapi.one_call("one.vmpool.info", -2, -1, -1, -1)))


def catch_up(log: EventLog, vms: Iterable[PoolVm], config: Any,
             routes: Iterable[Route] | None = None) -> int:
    """Request, for each VM and route, what the route's lost message would have; returns how
    many requests were appended."""
    if routes is None:
        from onestorpool.subscribers.composition import ROUTES as routes
    wanting = [route.catch_up for route in routes if route.catch_up is not None]
    if not wanting:
        return 0
    asked = set()
    for record in log.read(types=[EffectRequested.TYPE]):
        effect = decode(record).effect
        if effect is not None:
            asked.add((effect.type, effect.details.get("vm"), effect.details.get("history_seq")))
    requests = []
    for vm in vms:
        for wants in wanting:
            effect = wants(vm, config)
            if effect is None or (effect["type"], vm.id, vm.history_seq) in asked:
                continue
            asked.add((effect["type"], vm.id, vm.history_seq))
            requests.append(EffectRequested.new(_writer("reconcile"), effect=effect,
                                                reason="catch-up: the state message was lost?",
                                                vm=vm.id))
    for start in range(0, len(requests), CATCH_UP_BATCH):  # short transactions
        log.append_batch(requests[start:start + CATCH_UP_BATCH])
    return len(requests)


def oned_owners() -> Owners:
    """The VMs (any state but DONE) and images oned has; unknown when oned does not answer."""
    from onestorpool import oneapi
    from onestorpool.one import iter_vm_pool, parse_xml

    try:
        vms = frozenset(vm.id for vm in iter_vm_pool(
            oneapi.one_call("one.vmpool.info", -2, -1, -1, -1)))
    except Exception as exc:
        print(f"WARN: reconcile: oned's VM pool unreadable, no VM snapshot removed: {exc}",
              file=sys.stderr)
        vms = None
    try:
        pool = parse_xml(oneapi.one_call("one.imagepool.info", -2, -1, -1), "IMAGE_POOL")
        images = frozenset(int(i) for i in pool.xpath("IMAGE/ID/text()"))
    except Exception as exc:
        print(f"WARN: reconcile: oned's image pool unreadable, no image snapshot removed: "
              f"{exc}", file=sys.stderr)
        images = None
    return Owners(vms=vms, images=images)


def run_pending(log: EventLog, since_seq: int = 0, runner: str = "subscriber",
                stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """Run the pending effects, one after the other until ``stop()`` says so (SIGTERM: the
    one in flight finishes, the others wait for the next run)."""
    from onestorpool.subscribers import composition

    composition.install()
    counts: dict[str, int] = {}
    for pending in pending_effects(log, since_seq):
        if stop():
            counts["left"] = counts.get("left", 0) + 1
            continue
        outcome = run_effect(log, pending.requested_by, runner)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status == "failed":
            print(f"WARN: effect {outcome.key} failed: {outcome.detail}", file=sys.stderr)
    return counts


def request_unrequested_tombstones(log: EventLog, config: Any, sp: Any) -> int:
    """Append a ``remote_backup`` request for each of the instance's tombstones that no
    record asks to ship and no remote lists yet."""
    location = config["REMOTE_BACKUP_DELETE"]
    if not location:
        return 0
    from onestorpool.drivers.storage import parse_extra_tags

    naming, loc = config.naming(), (config["LOC_TAG"], config.loc_tag_value)
    requested = {r.effect_key for r in log.read(effects_only=True)}
    tombstones = [s for s in sp.snapshots_list()
                  if not s.get("deleted") and (s.get("tags") or {}).get(loc[0]) == loc[1]
                  and (p := naming.parse(str(s.get("name", "")))) is not None
                  and p.kind == "tombstone"
                  and f"remote_backup:{s['name']}" not in requested]
    if not tombstones:
        return 0
    shipped = {(r.get("location"), (r.get("tags") or {}).get("tombstone"))
               for r in sp.snapshots_remote_list()}
    events = []
    for snapshot in tombstones:
        name = str(snapshot["name"])
        if (location[0], name) in shipped:
            continue
        effect = {"type": "remote_backup", "key": f"remote_backup:{name}", "snapshot": name,
                  "location": location[0], "tags": parse_extra_tags(location[1])}
        events.append(EffectRequested.new(_writer("reconcile"), effect=effect,
                                          reason="tombstone without a request",
                                          snapshot=name))
    for start in range(0, len(events), CATCH_UP_BATCH):  # short transactions
        log.append_batch(events[start:start + CATCH_UP_BATCH])
    return len(events)


def reconcile(log: EventLog, *, why: str, owners: Callable[[], Owners] = oned_owners,
              runner: str = "subscriber", stop: Callable[[], bool] = lambda: False,
              vm_pool: Callable[[], Iterable[PoolVm]] = oned_vm_pool) -> dict[str, Any]:
    from onestorpool import config as config_module
    from onestorpool.storpool import StorPoolClient

    config = config_module.load()
    summary: dict[str, Any] = {"why": why}
    start = log.head()[0]
    try:
        with StorPoolClient.from_config(config) as sp:
            summary["requested"] = request_unrequested_tombstones(log, config, sp)
    except Exception as exc:
        summary["tombstones_error"] = f"{type(exc).__name__}: {exc}"
    if why in GAPS:
        try:
            summary["caught_up"] = catch_up(log, vm_pool(), config)
        except Exception as exc:  # oned away: the next reconciliation after a gap tries again
            summary["catch_up_error"] = f"{type(exc).__name__}: {exc}"
    summary["effects"] = run_pending(log, 0, runner, stop)
    if config["CLEANUP_ORPHAN_SNAPSHOTS"] and not stop():
        try:
            with StorPoolClient.from_config(config) as sp:
                summary["cleanup"] = cleanup(
                    log, sp, config.naming(), (config["LOC_TAG"], config.loc_tag_value),
                    owners, position=start, runner=runner, stop=stop)
        except Exception as exc:
            summary["cleanup_error"] = f"{type(exc).__name__}: {exc}"
    log.append(Reconciled.new(_writer("reconcile"), summary))
    return summary


def _writer(what: str) -> str:
    return f"subscriber/{what}@{HOST}:{os.getpid()}"
