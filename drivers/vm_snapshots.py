"""VM snapshots on StorPool (``-l snapshotcreate=snapshot_create-storpool,
snapshotrevert=snapshot_revert-storpool,snapshotdelete=snapshot_delete-storpool``; reference
addon-storpool.md §4b): one atomic ``VolumesGroupSnapshot`` of every StorPool volume of the
VM, named ``<volume>-<VMSNAPSHOT_TAG>-<id>-<ts>``; the suffix is what oned stores as the
snapshot's HYPERVISOR_ID.

A revert gives every disk the snapshot's data or leaves every disk as it was: the current
data of all the volumes is kept first in one group snapshot, and if any volume's revert
fails, those already reverted go back to it.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections.abc import Callable, Sequence
from typing import Any

from onestorpool import hosts
from onestorpool.drivers import nvram
from onestorpool.drivers.storage import (
    StorageError,
    Tags,
    delete_snapshot,
    detach_all,
    random_suffix,
)
from onestorpool.drivers.vm_volumes import disk_volume
from onestorpool.drivers.vmm import VmmContext, parse_id
from onestorpool.errors import InputError
from onestorpool.naming import Naming
from onestorpool.one import Vm
from onestorpool.storpool import AlreadyExists, NotFound, StorPoolClient, StorPoolError


def vm_volumes(ctx: VmmContext, vm: Vm, system_tm: str) -> list[tuple[str, str]]:
    """(volume, attach mode) of every StorPool volume of the VM: image disks of the StorPool
    TM, and with a StorPool system datastore its volatile disks, context ISO and NVRAM.
    Read-only disks are left out with ``VMSNAPSHOT_EXCLUDE_READONLY``."""
    naming: Naming = ctx.config.naming()
    system = system_tm == "storpool"
    found = []
    for disk in vm.disks:
        ours = disk.tm_mad == "storpool" if disk.image_id is not None else system
        if not ours or (disk.readonly and ctx.config["VMSNAPSHOT_EXCLUDE_READONLY"]):
            continue
        mode = ctx.config["READONLY_MODE"] if disk.readonly else "rw"
        found.append((disk_volume(naming, vm, disk.disk_id), mode))
    if system and vm.context_disk_id is not None:
        found.append((naming.context(vm.id, vm.context_disk_id), "rw"))
    # NVRAM is in the snapshot (the Bash add-on never took it, reference §10): a revert
    # gives back the boot entries and keys that go with the disks' data. Asked of StorPool
    # only for a VM with T_OS_NVRAM=storpool (a Bash-laid one may lack the volume).
    if system and nvram.on_storpool(vm) and ctx.sp.volume_exists(naming.nvram(vm.id)):
        found.append((naming.nvram(vm.id), "rw"))
    return found


def _request(ctx: VmmContext) -> tuple[Any, Vm, str, str]:
    data = ctx.action_data()
    if len(ctx.args) < 2:
        raise InputError(f"{ctx.action}: expected domain snapshot [vm_id host]")
    vm = data.vm
    ctx.datastore_config(vm)
    system_tm = data.datastore.tm_mad if data.datastore is not None else vm.system_tm_mad
    return data, vm, ctx.args[1], system_tm


def snapshot_limit(ctx: VmmContext, vm: Vm) -> int | None:
    """``VMSNAPSHOT_LIMIT``: the VM's attribute, else the system datastore's, else the rc."""
    value = (vm.user_template.get("VMSNAPSHOT_LIMIT") or vm.template.get("VMSNAPSHOT_LIMIT")
             or "").strip()
    if value:
        if not value.isdigit():
            raise InputError(f"VM {vm.id}: VMSNAPSHOT_LIMIT must be a number, got {value!r}")
        return int(value)
    return ctx.config["VMSNAPSHOT_LIMIT"]


def create(ctx: VmmContext) -> str:
    """``snapshot_create-storpool <domain> <snap id> <vm> <host>``: prints the suffix."""
    _data, vm, raw_id, system_tm = _request(ctx)
    snap_id = parse_id(raw_id, "snapshot id")
    earlier = [s for s in vm.vm_snapshots if s.snapshot_id != snap_id]
    limit = snapshot_limit(ctx, vm)
    if ctx.config["VMSNAPSHOT_ENABLE_LIMIT"] and limit is not None and len(earlier) >= limit:
        raise InputError(f"VM {vm.id} has {len(earlier)} snapshots, its limit "
                         f"(VMSNAPSHOT_LIMIT={limit}): delete one first")
    volumes = vm_volumes(ctx, vm, system_tm)
    if not volumes:
        raise InputError(f"VM {vm.id} has no StorPool disk to snapshot")
    tags = Tags.from_config(ctx.config)
    suffix, names = take_group(
        ctx.sp, ctx.config.naming(), [volume for volume, _ in volumes], snap_id,
        {**tags.base(), **({tags.vm_tag: str(vm.id)} if tags.vm_tag else {})})
    ctx.event.update(snapshot_id=snap_id, suffix=suffix, created=names)
    return suffix


STAMP_TRIES = 5


def take_group(sp: Any, naming: Naming, volumes: list[str], snap_id: int,
               tags: dict[str, str], clock: Callable[[], float] = time.time,
               ) -> tuple[str, list[str]]:
    """One atomic ``VolumesGroupSnapshot`` of ``volumes`` named ``<vol>-ONESNAP-<id>-<ts>``;
    returns the suffix and the names. oned gives a new snapshot the lowest free id again
    once the others are deleted, and StorPool keeps a deleted snapshot that still has
    children (a reverted disk's) under its name: the same id within the same second is a
    name StorPool refuses, so the next second's names are tried (nothing was made)."""
    stamp = int(clock())
    for attempt in range(STAMP_TRIES):
        names = [naming.vm_snapshot(volume, snap_id, stamp + attempt) for volume in volumes]
        try:
            sp.volumes_group_snapshot([{"volume": volume, "name": name}
                                       for volume, name in zip(volumes, names, strict=True)],
                                      tags=tags)
        except AlreadyExists:
            continue
        return naming.vm_snapshot_suffix(snap_id, stamp + attempt), names
    raise StorageError(f"snapshot {snap_id}: the names of {STAMP_TRIES} seconds from "
                       f"{stamp} are all taken on StorPool")


def _suffix(ctx: VmmContext, text: str) -> str:
    import re

    if not re.fullmatch(rf"{re.escape(ctx.config.naming().vmsnap_tag)}-[0-9]+-[0-9]+", text):
        raise InputError(f"{ctx.action}: {text!r} is not a StorPool VM snapshot id")
    return text


def delete(ctx: VmmContext) -> str:
    """``snapshot_delete-storpool <domain> <hypervisor id> <vm> <host>``: the snapshots of
    that id that belong to the VM (its ``nvm``/``nloc`` tags; untagged ones by volume)."""
    _data, vm, raw, system_tm = _request(ctx)
    suffix = _suffix(ctx, raw)
    tags = Tags.from_config(ctx.config)
    current = {volume for volume, _ in vm_volumes(ctx, vm, system_tm)}
    removed = []
    for snapshot in ctx.sp.snapshots_list():
        name = str(snapshot.get("name", ""))
        if snapshot.get("deleted") or not name.endswith(f"-{suffix}"):
            continue
        owner = (snapshot.get("tags") or {})
        if owner.get(tags.vm_tag) if tags.vm_tag else None:
            mine = owner.get(tags.vm_tag) == str(vm.id) and \
                owner.get(tags.loc_tag) == tags.loc_value
        else:
            mine = name[:-len(suffix) - 1] in current
        if mine and delete_snapshot(ctx.sp, name):
            removed.append(name)
    ctx.event.update(suffix=suffix, removed=removed)
    return ""


def revert(ctx: VmmContext) -> str:
    """``snapshot_revert-storpool <domain> <hypervisor id> <vm> <host>``: the domain is
    stopped, every volume with a snapshot of that id gets its data (all or none), the
    volumes are attached again and the domain is started from its deployment file."""
    data, vm, raw, system_tm = _request(ctx)
    suffix = _suffix(ctx, raw)
    volumes = vm_volumes(ctx, vm, system_tm)
    pairs = [(volume, f"{volume}-{suffix}", mode) for volume, mode in volumes
             if ctx.sp.snapshot_exists(f"{volume}-{suffix}")]
    if not pairs:
        raise StorageError(f"VM {vm.id}: no StorPool snapshot {suffix} of its disks")
    host = hosts.get(data.host)
    client = hosts.client_id(host, ctx.config)
    uri = ctx.config["LIBVIRT_URI"]
    domain = data.deploy_id or ctx.args[0]
    host.run(["virsh", "-c", uri, "destroy", domain], check=False, timeout=120)
    try:
        kept = revert_group(ctx.sp, ctx.config.naming(), [(v, s) for v, s, _ in pairs],
                            keep_seconds=ctx.config["DELAY_DELETE"])
    finally:  # reverted or not, the disks go back to the host and the domain starts
        ctx.sp.volumes_reassign_wait([{"volume": v, mode: [client]} for v, _, mode in pairs],
                                     attach_timeout=ctx.config["ATTACH_TIMEOUT"])
        if data.datastore is not None and vm.last_history is not None:
            deployment = posixpath.join(data.datastore.base_path.rstrip("/"), str(vm.id),
                                        f"deployment.{vm.last_history.seq}")
            host.run(["virsh", "-c", uri, "create", host.path(deployment)], timeout=120)
    ctx.event.update(suffix=suffix, reverted=[v for v, _, _ in pairs], kept=kept)
    return ""


def revert_group(sp: StorPoolClient, naming: Naming, pairs: Sequence[tuple[str, str]], *,
                 keep_seconds: int = 0) -> list[str]:
    """Each volume of ``pairs`` reverted to its snapshot, all or none. The volumes' current
    data is first kept in one group snapshot (``<volume>-SPTMP-<epoch>-<random>``); a volume
    whose revert fails sends those already reverted back to it. On success the kept
    snapshots expire after ``keep_seconds`` (or go at once); on failure they are deleted
    once every volume is back, kept (and named in the error) otherwise."""
    for volume, snapshot in pairs:  # NotFound before anything changes
        sp.volume(volume)
        sp.snapshot(snapshot)
    for volume, _ in pairs:
        detach_all(sp, volume)
    epoch = int(time.time())
    before = {volume: naming.vmsnap_revert_temp(volume, epoch, random_suffix(8))
              for volume, _ in pairs}
    sizes = {volume: int(sp.volume(volume).get("size") or 0) for volume, _ in pairs}
    sp.volumes_group_snapshot([{"volume": v, "name": before[v]} for v, _ in pairs],
                              tags={"del": "y"})
    reverted: list[str] = []
    failed = ""
    try:
        for volume, snapshot in pairs:
            failed = volume
            reverted.append(volume)  # (a revert that fails may still have happened)
            sp.volume_revert(volume, snapshot)
            if sizes[volume] > int(sp.volume(volume).get("size") or 0):
                sp.volume_update(volume, size=sizes[volume])
    except StorPoolError as exc:
        stuck = []
        for volume in reverted:
            try:
                sp.volume_revert(volume, before[volume])
                if sizes[volume] > int(sp.volume(volume).get("size") or 0):
                    sp.volume_update(volume, size=sizes[volume])
            except StorPoolError:
                stuck.append(volume)
        if stuck:
            raise StorageError(
                f"revert failed on {failed} ({exc}), and {', '.join(stuck)} could not be put "
                f"back: their data before the revert is in "
                f"{', '.join(before[v] for v in stuck)}") from exc
        for name in before.values():
            delete_snapshot(sp, name)
        raise StorageError(f"revert failed on {failed} ({exc}); every disk keeps the data "
                           "it had") from exc
    kept = []
    for name in before.values():
        if keep_seconds > 0:
            with contextlib.suppress(NotFound):
                sp.snapshot_update(name, delete_after=keep_seconds)
                kept.append(name)
        else:
            delete_snapshot(sp, name)
    return kept


ACTIONS = {"snapshot_create": create, "snapshot_delete": delete, "snapshot_revert": revert}
