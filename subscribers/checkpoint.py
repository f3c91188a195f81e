"""Checkpoint relocation: a suspended or stopped VM's checkpoint file moves onto StorPool.

When a VM reaches SUSPENDED or STOPPED, the hypervisor's checkpoint (its memory) is a file
in the VM folder: on the host (suspended; stopped with ``SP_SYSTEM=shared``) or on the
front-end (stopped with ``SP_SYSTEM=ssh``: the TM ``mv`` of EPILOG_STOP carried the folder
there). With ``SP_CHECKPOINT`` set (``yes``/``nomigrate``, as in the Bash add-on) the
subscriber moves it onto the volume ``<px>-sys-<VM>-checkpoint`` (template ``<px>-ds-<DS>``
of the system datastore, tags ``virt``, ``nloc``, ``nvm``, ``type=CHKPNT``) and frees the
disk. With ``SP_CHECKPOINT_BD=1`` the checkpoint never was a file (the TM's presave made the
path a link to ``-rawcheckpoint``): nothing to do.

The volume holds what the Bash add-on's ``oneCheckpointSave`` wrote: a tar archive of the
file (member ``<path without the leading />``), compressed with ``SP_COMPRESSION`` (lz4),
from the first byte of the volume; so either add-on resumes a VM the other saved. A copy is
verified (read back from the volume: size and SHA-256 of the member) before the file is
removed, and the volume records them (tags ``bytes``, ``sha256``). Each step can be re-run:
a run that died after writing finds the volume, verifies it against the file and finishes;
the file is never removed unless the volume holds a verified copy.

Resume: the ``restore`` local action (:func:`onestorpool.drivers.vmm.tmrestore`) brings the
file back from the volume when it is absent (verified against the recorded checksum) before
the native restore, and removes the volume after it succeeded; the archive itself, shared by
both, is :mod:`onestorpool.drivers.checkpoint_archive`.

A relocation and a restore of one VM never overlap: both hold the VM's lock file beside the
event log on the front-end, where the subscriber and oned's local actions run.
"""

from __future__ import annotations

from typing import Any

from onestorpool.drivers.checkpoint_archive import forget, locked, saved_place, store
from onestorpool.errors import InputError
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import EventLog
from onestorpool.one import HookEvent, PoolVm, Vm, VmState
from onestorpool.subscribers.routes import Actions, history_seq_of
from onestorpool.subscribers.routes import vm_done as vm_done_cleanup

RELOCATE = "checkpoint_relocate"  # effect: a saved VM's checkpoint file onto its volume
DROP = "checkpoint_drop"  # effect: the volume of a VM that is DONE removed
SAVED_STATES = ("SUSPENDED", "STOPPED")
ONE_NO_EXISTS = 0x0400  # oned's error code for an object that does not exist


# -- the effects --------------------------------------------------------------------------


def _effect_vm(record: Record) -> tuple[dict[str, Any], int]:
    effect = record.payload["effect"]
    vm_id = effect.get("vm")
    if not isinstance(vm_id, int) or isinstance(vm_id, bool) or vm_id < 0:
        raise InputError(f"{effect.get('type')}: no valid VM id in {effect!r:.200}")
    return effect, vm_id


def _vm_now(vm_id: int) -> Vm | None:
    """The VM as oned has it now; ``None`` once it is gone from the pool."""
    from onestorpool import oneapi

    try:
        return oneapi.vm_info(vm_id)
    except oneapi.OneError as exc:
        if exc.code == ONE_NO_EXISTS:
            return None
        raise


def _drop_volume(sp: Any, config: Any, vm_id: int) -> list[str]:
    removed = forget(sp, config, vm_id)
    return [removed] if removed else []


def relocate(record: Record, log: EventLog) -> dict[str, Any]:
    """``checkpoint_relocate``: the checkpoint of a VM saved in history record
    ``history_seq`` onto its volume, when the VM still is where the request saw it."""
    from onestorpool import config as config_module
    from onestorpool import oneapi
    from onestorpool.storpool import StorPoolClient

    effect, vm_id = _effect_vm(record)
    history_seq = effect.get("history_seq")
    config = config_module.load()
    with locked(vm_id), StorPoolClient.from_config(config) as sp:
        vm = _vm_now(vm_id)
        if vm is None or vm.state == VmState.DONE:
            return {"vm": vm_id, "skipped": "the VM is done",
                    "removed": _drop_volume(sp, config, vm_id)}
        last = vm.last_history
        if vm.state.name not in SAVED_STATES or last is None or last.seq != history_seq:
            return {"vm": vm_id, "skipped": f"the VM is {vm.state.name}/{vm.lcm_state.name} "
                    "now (resumed or moved on)"}
        if last.tm_mad != "storpool":
            return {"vm": vm_id, "skipped": f"system datastore TM is {last.tm_mad}"}
        datastore = oneapi.datastore_info(last.ds_id)
        config = config.for_datastore(datastore.template, f"datastore {datastore.id}")
        if config["SP_CHECKPOINT_BD"]:
            return {"vm": vm_id, "skipped": "SP_CHECKPOINT_BD: the checkpoint is on "
                    "StorPool already"}
        if not config["SP_CHECKPOINT"]:
            return {"vm": vm_id, "skipped": "SP_CHECKPOINT is off"}
        place = saved_place(vm, datastore.base_path, config["SP_SYSTEM"])
        outcome = store(sp, config, vm, datastore.id, place, relay=vm.hostname)
        if "bytes" not in outcome:
            return outcome
        # the copy is verified; the file goes unless the VM started resuming meanwhile (a
        # resume that finds the file uses it and removes the volume after)
        now = _vm_now(vm_id)
        if now is None or now.state != vm.state or now.last_history != last:
            return {**outcome, "kept_file": "the VM moved on before the file was removed"}
        place.host.run(["rm", "-f", "--", place.host.path(place.path)])
        return {**outcome, "removed_file": True}


def drop(record: Record, log: EventLog) -> dict[str, Any]:
    """``checkpoint_drop``: a VM that is DONE keeps no checkpoint volume (the TM ``delete``
    removes it; this catches one a relocation made while the VM was being deleted)."""
    from onestorpool import config as config_module
    from onestorpool.storpool import StorPoolClient

    _, vm_id = _effect_vm(record)
    config = config_module.load()
    with locked(vm_id), StorPoolClient.from_config(config) as sp:
        vm = _vm_now(vm_id)
        if vm is not None and vm.state != VmState.DONE:
            return {"vm": vm_id, "skipped": f"the VM is {vm.state.name}"}
        return {"vm": vm_id, "removed": _drop_volume(sp, config, vm_id)}


# -- the routes -------------------------------------------------------------------------


def vm_saved(actions: Actions, event: HookEvent, seq: int) -> None:
    """A VM is SUSPENDED or STOPPED: relocate its checkpoint. Keyed by the VM, its history
    record and the message (a VM suspended twice in one history record is two
    relocations; the handler acts on the VM as it is when it runs)."""
    from onestorpool import config as config_module

    vm_id, history_seq = event.object_id, history_seq_of(event)
    if vm_id is None or history_seq is None:
        return
    config = config_module.load()  # neither is a datastore setting: decided here, once
    if not config["SP_CHECKPOINT"] or config["SP_CHECKPOINT_BD"]:
        return  # relocation off, or the checkpoint never was a file (on -rawcheckpoint)
    actions.request_effect({"type": RELOCATE, "key": f"{RELOCATE}:{vm_id}:{history_seq}:{seq}",
                            "vm": vm_id, "history_seq": history_seq, "state": event.state},
                           seq, vm=vm_id)


def saved_catch_up(vm: PoolVm, config: Any) -> dict[str, Any] | None:
    """Reconciliation's relocation for a VM SUSPENDED or STOPPED whose message was lost."""
    if vm.state not in SAVED_STATES or vm.lcm_state != "LCM_INIT" or vm.history_seq is None:
        return None
    if not config["SP_CHECKPOINT"] or config["SP_CHECKPOINT_BD"]:
        return None
    return {"type": RELOCATE, "key": f"{RELOCATE}:{vm.id}:{vm.history_seq}:catch-up",
            "vm": vm.id, "history_seq": vm.history_seq, "state": vm.state}


def vm_done(actions: Actions, event: HookEvent, seq: int) -> None:
    """A VM is DONE: the clean-up of :func:`onestorpool.subscribers.routes.vm_done`, and no
    checkpoint volume left. The TM ``delete`` of the terminate removed it, and a relocation
    still pending ran in that clean-up and found the VM done: a volume still there was made
    by one that ran while the VM was being deleted, and is dropped (asked for only then)."""
    from onestorpool import config as config_module
    from onestorpool.storpool import StorPoolClient

    vm_done_cleanup(actions, event, seq)
    vm_id = event.object_id
    if vm_id is None:
        return
    config = config_module.load()
    with StorPoolClient.from_config(config) as sp:
        left = sp.volume_exists(config.naming().checkpoint(vm_id))
    if left:
        actions.request_effect({"type": DROP, "key": f"{DROP}:{vm_id}", "vm": vm_id}, seq,
                               vm=vm_id)
