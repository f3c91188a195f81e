"""The composition root of the side effects: every bus route and every effect handler the
product runs, in this one place.

The event log package knows no handler (its replay registry is filled from here by
:func:`install`); the daemon, the hooks (``onestorpool hooks run``), reconciliation and
``onestorpool log replay`` take their routes and handlers from here. A site plug-in or a test
replaces a handler with :func:`onestorpool.eventlog.replay.register_handler`.
"""

from __future__ import annotations

from onestorpool.eventlog import replay
from onestorpool.eventlog.replay import Handler
from onestorpool.subscribers import checkpoint, domain_fix
from onestorpool.subscribers.handlers import remote_backup
from onestorpool.subscribers.routes import (
    Route,
    disk_snapshot_created,
    image_deleted,
)

ROUTES: tuple[Route, ...] = (
    Route("vm.done", b"EVENT STATE VM/DONE/",
          lambda e: e.kind == "STATE" and e.object == "VM" and e.state == "DONE",
          checkpoint.vm_done),
    Route("vm.suspended", b"EVENT STATE VM/SUSPENDED/LCM_INIT/",
          lambda e: e.kind == "STATE" and e.object == "VM" and e.state == "SUSPENDED"
          and e.lcm_state == "LCM_INIT", checkpoint.vm_saved, checkpoint.saved_catch_up),
    Route("vm.stopped", b"EVENT STATE VM/STOPPED/LCM_INIT/",
          lambda e: e.kind == "STATE" and e.object == "VM" and e.state == "STOPPED"
          and e.lcm_state == "LCM_INIT", checkpoint.vm_saved, checkpoint.saved_catch_up),
    Route(domain_fix.ROUTE, b"EVENT STATE VM/ACTIVE/RUNNING/", domain_fix.running,
          domain_fix.vm_running, domain_fix.running_catch_up),
    Route("image.delete", b"EVENT API one.image.delete ",
          lambda e: e.kind == "API" and e.method == "one.image.delete" and bool(e.success),
          image_deleted),
    Route("disk.snapshot", b"EVENT API one.vm.disksnapshotcreate ",
          lambda e: e.kind == "API" and e.method == "one.vm.disksnapshotcreate"
          and bool(e.success), disk_snapshot_created),
)

# effect type (``payload["effect"]["type"]`` of a request) -> the handler that performs it
EFFECT_HANDLERS: dict[str, Handler] = {
    "remote_backup": remote_backup,
    checkpoint.RELOCATE: checkpoint.relocate,
    checkpoint.DROP: checkpoint.drop,
    domain_fix.EFFECT_TYPE: domain_fix.domain_fix,
}



def install() -> None:
    """Register :data:`EFFECT_HANDLERS` with the replay registry, leaving alone an effect
    type that has a handler already (a site's or a test's replacement stays)."""
    for effect_type, handler in EFFECT_HANDLERS.items():
        replay.HANDLERS.setdefault(effect_type, handler)
