"""The bus routes: which hook messages the subscriber acts on, and what it does with each.

A route's action asks its :class:`Actions` for work (the daemon does it in its loop, a hook run
by onehem at once); the routes the product runs are listed in
:mod:`onestorpool.subscribers.composition`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from onestorpool.errors import AddonError
from onestorpool.one import HookEvent, PoolVm


class Actions(Protocol):
    """What a route's action may ask for: the daemon does it in its loop, a hook run by
    onehem (:mod:`onestorpool.hooks.run`) at once."""

    def run_effects(self) -> None: ...
    def request_effect(self, effect: dict[str, Any], seq: int, **subjects: Any) -> None: ...
    def scan_soon(self) -> None: ...
    def cleanup_vm(self, vm_id: int, seq: int) -> None: ...
    def prune_later(self, vm_id: int, position: int) -> None: ...


@dataclass(frozen=True)
class Route:
    """``prefix``: the ZeroMQ subscription; ``matches``: the exact filter after receiving
    (prefix matching over-matches); ``action(actions, event, seq)`` does the work (``seq``:
    the record of the message)."""

    name: str
    prefix: bytes
    matches: Callable[[HookEvent], bool]
    action: Callable[[Actions, HookEvent, int], None]
    # The effect a VM of oned's pool needs when this route's message for its state was lost
    # (PUB/SUB drops what is published while nobody listens): reconciliation asks after a
    # gap, once per VM and history record (the effect names ``vm`` and ``history_seq``).
    catch_up: Callable[[PoolVm, Any], dict[str, Any] | None] | None = None  # (VM, config)


def vm_done(daemon: Actions, event: HookEvent, seq: int) -> None:
    """A VM is DONE: the effects its disks' ``delete`` requested (tombstones to ship), then
    its snapshots the drivers left behind."""
    daemon.run_effects()
    if event.object_id is not None:
        daemon.cleanup_vm(event.object_id, seq)


def image_deleted(daemon: Actions, event: HookEvent, seq: int) -> None:
    """``one.image.delete`` succeeded: oned runs the datastore's ``rm`` next; its effect is
    picked up by following the log (and leftovers by reconciliation). Look a few times
    soon."""
    daemon.scan_soon()


def disk_snapshot_created(daemon: Actions, event: HookEvent, seq: int) -> None:
    """A disk snapshot was asked for: once the VM is idle again, prune its disks."""
    vm_id = api_object_id(event)
    if vm_id is not None:
        daemon.prune_later(vm_id, seq)


def history_seq_of(event: HookEvent) -> int | None:
    """The VM's last history record's SEQ, from the bus message (``HOOK_MESSAGE/VM``) or
    the hook's ``$TEMPLATE`` (the ``VM`` itself)."""
    from lxml import etree

    from onestorpool.one import parse_vm

    try:
        if event.message is not None and event.message.tag == "VM":
            vm = parse_vm(etree.tostring(event.message))
        else:
            vm = event.vm()
    except AddonError:
        return None
    last = vm.last_history
    return None if last is None else last.seq


def api_object_id(event: HookEvent) -> int | None:
    """The object an API call was about: its first argument after the session."""
    for parameter in event.parameters:
        if parameter.position == 2 and parameter.direction == "IN":
            try:
                return int(parameter.value)
            except (TypeError, ValueError):
                return None
    return None
