"""Transfer manager actions (``TM_MAD=storpool``): one function per action.

oned calls them with ``host:path`` arguments (reference opennebula-interfaces.md §2.7; the
argument order of ``src/tm/TransferManager.cc``); the VM comes from oned's XML-RPC
(``one.vm.info``) or, for the migrate actions, from stdin. A disk lives in one StorPool
volume named as the Bash add-on names it (reference addon-storpool.md §4, §5), is attached to
the host's StorPool client and linked from the VM folder (``disk.N -> /dev/storpool/<vol>``).

Each action records what it did in ``ctx.event`` and undoes what it created when it fails.
The Bash add-on's data-loss bugs are not inherited: a volatile disk is deleted by its exact
name (never by a name prefix that also matches disks 10-19), and snapshots are chosen by
parsing their names with this instance's ``ONE_PX``, never by substring.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from onestorpool import hosts
from onestorpool.config import Config
from onestorpool.drivers import nvram
from onestorpool.drivers.storage import (
    MIB,
    Rollback,
    StorageError,
    Tags,
    create_volume,
    delete_snapshot,
    delete_volume,
    detach_all,
    qos_class,
    retire_volume,
    revert_volume,
    round_up,
)
from onestorpool.drivers.vm_volumes import disk_volume
from onestorpool.errors import InputError
from onestorpool.naming import Naming, volume_from_source
from onestorpool.one import Datastore, DatastoreType, Disk, LcmState, Vm
from onestorpool.storpool import NotFound, StorPoolClient

log = logging.getLogger("onestorpool.drivers")


# -- the request ----------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A ``host:path`` argument; ``disk_id`` when the path is a disk (``.../disk.N``)."""

    host: str
    path: str

    @classmethod
    def parse(cls, text: str, what: str = "path") -> Location:
        host, sep, path = text.partition(":")
        if not sep or not host or not path.startswith("/") or "\0" in text:
            raise InputError(f"{what}: expected host:/absolute/path, got {text!r}")
        return cls(host, path)

    @staticmethod
    def source_volume(text: str) -> str:
        """The image volume of a ``fe:SOURCE`` argument (``one-ds-1/one-img-0``)."""
        _host, sep, source = text.partition(":")
        if not sep or not source:
            raise InputError(f"source: expected host:SOURCE, got {text!r}")
        return volume_from_source(source)

    @property
    def disk_id(self) -> int | None:
        name = os.path.basename(self.path.rstrip("/"))
        stem, dot, suffix = name.rpartition(".")
        if dot and stem == "disk" and suffix.isdigit():
            return int(suffix)
        return None

    def require_disk(self) -> int:
        if self.disk_id is None:
            raise InputError(f"{self.path}: expected a disk path (.../disk.N)")
        return self.disk_id


@dataclass
class TmContext:
    action: str
    args: list[str]
    datastore: Datastore
    config: Config
    naming: Naming
    sp: StorPoolClient
    load_vm: Callable[[int], Vm]
    stdin: str = ""
    event: dict[str, Any] = field(default_factory=dict)
    _vms: dict[int, Vm] = field(default_factory=dict)

    def vm(self, vm_id: int) -> Vm:
        if vm_id not in self._vms:
            self._vms[vm_id] = self.load_vm(vm_id)
        return self._vms[vm_id]

    @property
    def vm_ids(self) -> list[int]:
        """The VMs the action looked at (the event's subject)."""
        return list(self._vms)

    @property
    def tags(self) -> Tags:
        return Tags.from_config(self.config)

    @property
    def is_system_ds(self) -> bool:
        return self.datastore.type == DatastoreType.SYSTEM

    def host(self, name: str) -> tuple[hosts.Host, int]:
        host = hosts.get(name)
        return host, hosts.client_id(host, self.config)

    def expect(self, count: int, usage: str) -> list[str]:
        if len(self.args) != count:
            raise InputError(f"{self.action}: expected {usage}, got {len(self.args)} "
                             "arguments")
        return self.args


def own_volume(ctx: TmContext, volume: str) -> str:
    """``volume`` if it is a name of this OpenNebula instance (``ONE_PX``): a disk whose
    SOURCE names another instance's volume is refused, never attached or deleted."""
    if ctx.naming.parse(volume) is None:
        raise InputError(f"{volume} is not this instance's volume (ONE_PX="
                         f"{ctx.naming.prefix}); refusing to touch it")
    return volume


def parse_id(text: str, what: str) -> int:
    if not text.lstrip("-").isdigit():
        raise InputError(f"{what} must be an integer, got {text!r}")
    return int(text)


# -- shared steps ----------------------------------------------------------------------


def link_disk(host: hosts.Host, volume: str, path: str, *, markers: bool = True,
              ds_marker: str | None = None) -> None:
    """``<path> -> /dev/storpool/<volume>`` on the host (its folder made first), in one
    command. With ``markers``, the Bash add-on's ``oneSymlink`` markers: ``storpool`` in
    ``<path>.monitor`` and, given ``ds_marker`` (a system datastore that is not shared), its
    TM name in ``<vmdir>/../.monitor``, the mark of a datastore its hosts monitor."""
    script = 'mkdir -p "${2%/*}" && ln -sfn "$1" "$2"'
    args = [host.device(volume), host.path(path)]
    if markers:
        script += ' && echo storpool > "$2.monitor"'
    if markers and ds_marker:
        script += ' && echo "$3" > "${2%/*}/../.monitor"'
        args.append(ds_marker)
    host.run(["sh", "-c", script, "link_disk", *args])


def unlink_disk(host: hosts.Host, path: str) -> None:
    """The link and its ``.monitor`` marker (one the Bash add-on left included)."""
    host.run(["rm", "-f", host.path(path), host.path(path) + ".monitor"])


def ds_marker(ctx: TmContext, vm: Vm) -> str | None:
    """The VM's system datastore's TM name when that datastore is not shared (``SHARED`` of
    its ``TM_MAD_CONF``), for ``<vmdir>/../.monitor``; ``None`` when shared. Actions of the
    system datastore read its template; an image disk's (clone, ln) takes a StorPool system
    datastore as shared (the ``SHARED=yes`` of the add-on's ``TM_MAD_CONF``; its empty
    ``TM_MAD_SYSTEM`` keeps StorPool images off other system datastores) rather than ask
    oned on every disk; mkimage and context mark an unshared one all the same."""
    history = vm.last_history
    if ctx.is_system_ds and (history is None or history.ds_id == ctx.datastore.id):
        system = ctx.datastore
    elif history is None or vm.system_tm_mad == "storpool":
        return None
    else:
        from onestorpool import oneapi

        system = oneapi.datastore_info(history.ds_id)
    if system.shared:
        return None
    if not system.tm_mad.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"datastore {system.id}: invalid TM_MAD {system.tm_mad!r}")
    return system.tm_mad


def attach_exclusively(sp: StorPoolClient, volume: str, client: int, mode: str,
                       timeout: int) -> None:
    """Attached to ``client`` only: any other client (a host the VM left) is forced off in
    the same call."""
    sp.volumes_reassign_wait([{"volume": volume, "detach": "all", "force": True},
                              {"volume": volume, mode: [client]}], attach_timeout=timeout)


def disk_kind(disk: Disk, persistent: bool) -> str:
    """The ``type`` tag the Bash add-on writes."""
    if disk.is_cdrom:
        return "CDROM"
    base = "PERS" if persistent else "NPERS"
    return base + ("RO" if disk.readonly else "")


def disk_qos(ctx: TmContext, disk: Disk) -> str:
    return qos_class(disk.get("SP_QOSCLASS"), ctx.config["SP_QOSCLASS"],
                     ctx.config["DEFAULT_QOSCLASS"])


def attach_mode(ctx: TmContext, disk: Disk | None) -> str:
    return ctx.config["READONLY_MODE"] if disk is not None and disk.readonly else "rw"


def vm_volumes(ctx: TmContext, vm: Vm, *, system: bool) -> list[tuple[str, str]]:
    """(volume, mode) of every StorPool disk of the VM: image disks whose TM is ours, and
    with ``system`` (the system datastore is ours) volatile and context disks too."""
    found = []
    for disk in vm.disks:
        ours = disk.tm_mad == "storpool" if disk.image_id is not None else system
        if ours:
            found.append((disk_volume(ctx.naming, vm, disk.disk_id), attach_mode(ctx, disk)))
    if system and vm.context_disk_id is not None:
        found.append((ctx.naming.context(vm.id, vm.context_disk_id), "rw"))
    if system and nvram.on_storpool(vm):
        found.append((ctx.naming.nvram(vm.id), "rw"))
    return found


# -- clone, ln: image disks ---------------------------------------------------------------


def clone(ctx: TmContext) -> str:
    """``clone fe:SOURCE host:disk.N vm ds``: a non-persistent disk, a ``baseOn`` clone of
    the image volume, grown to the disk's SIZE."""
    src, dst, vm_id, _ds = ctx.expect(4, "SOURCE host:path vm_id ds_id")
    image_volume = own_volume(ctx, Location.source_volume(src))
    where = Location.parse(dst, "destination")
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    disk = vm.disk(where.require_disk())
    volume = ctx.naming.clone_of(image_volume, vm.id, disk.disk_id)
    host, client = ctx.host(where.host)
    tags = ctx.tags.for_vm(vm.id, disk.disk_id, disk_kind(disk, False), disk_qos(ctx, disk))
    ctx.event.update(volume=volume, parent=image_volume, host=host.name)
    with Rollback() as undo:
        if create_volume(ctx.sp, volume, base_on=image_volume, tags=tags,
                         template=None if ctx.config["NO_VOLUME_TEMPLATE"]
                         else ctx.naming.template(ctx.datastore.id)):
            undo.push(f"delete {volume}", delete_volume, ctx.sp, volume)
            ctx.event["created"] = [volume]
        _grow(ctx.sp, volume, disk.size_mb)
        attach_exclusively(ctx.sp, volume, client, attach_mode(ctx, disk),
                           ctx.config["ATTACH_TIMEOUT"])
        undo.push(f"detach {volume}", detach_all, ctx.sp, volume)
        link_disk(host, volume, where.path, ds_marker=ds_marker(ctx, vm))
    return ""


def ln(ctx: TmContext) -> str:
    """``ln fe:SOURCE host:disk.N vm ds``: a persistent disk, the image volume itself (a
    CD-ROM gets a per-VM clone), taken from wherever it was attached."""
    src, dst, vm_id, _ds = ctx.expect(4, "SOURCE host:path vm_id ds_id")
    image_volume = own_volume(ctx, Location.source_volume(src))
    where = Location.parse(dst, "destination")
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    disk = vm.disk(where.require_disk())
    if disk.shareable:
        raise InputError(f"disk {disk.disk_id}: SHAREABLE disks are not supported on StorPool")
    host, client = ctx.host(where.host)
    volume = image_volume
    tags = ctx.tags.for_vm(vm.id, disk.disk_id, disk_kind(disk, True), disk_qos(ctx, disk))
    with Rollback() as undo:
        if disk.is_cdrom:  # one image in many VMs' drives: each VM its own clone
            volume = ctx.naming.clone_of(image_volume, vm.id, disk.disk_id)
            if create_volume(ctx.sp, volume, base_on=image_volume, tags=tags):
                undo.push(f"delete {volume}", delete_volume, ctx.sp, volume)
                ctx.event["created"] = [volume]
        else:
            ctx.sp.volume_update(volume, tags=tags)
        ctx.event.update(volume=volume, host=host.name)
        attach_exclusively(ctx.sp, volume, client, attach_mode(ctx, disk),
                           ctx.config["ATTACH_TIMEOUT"])
        undo.push(f"detach {volume}", detach_all, ctx.sp, volume)
        link_disk(host, volume, where.path, ds_marker=ds_marker(ctx, vm))
    return ""


def _grow(sp: StorPoolClient, volume: str, size_mb: int | None) -> None:
    if size_mb and size_mb * MIB > int(sp.volume(volume).get("size") or 0):
        sp.volume_update(volume, size=size_mb * MIB)


# -- volatile disks and the context CD-ROM -------------------------------------------------


def mkimage(ctx: TmContext) -> str:
    """``mkimage size format host:disk.N vm ds``: a volatile disk as
    ``<px>-sys-<VM>-<DISK>-raw`` in the system datastore's template."""
    size, fmt, dst, vm_id, _ds = ctx.expect(5, "size format host:path vm_id ds_id")
    return _volatile(ctx, size, fmt, dst, vm_id)


def mkswap(ctx: TmContext) -> str:
    """``mkswap size host:disk.N vm ds``: ``<px>-sys-<VM>-<DISK>-swap``, formatted."""
    size, dst, vm_id, _ds = ctx.expect(4, "size host:path vm_id ds_id")
    return _volatile(ctx, size, "swap", dst, vm_id)


def _volatile(ctx: TmContext, size: str, fmt: str, dst: str, vm_id: str) -> str:
    if fmt not in ("raw", "swap"):
        raise InputError(f"{ctx.action}: StorPool volatile disks are raw, not {fmt!r} (set "
                         "FORMAT=raw on the disk)")
    size_mb = parse_id(size, "size")
    if size_mb <= 0:
        raise InputError(f"{ctx.action}: size must be a positive number of MB")
    where = Location.parse(dst, "destination")
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    disk = vm.disk(where.require_disk())
    volume = ctx.naming.volatile(vm.id, disk.disk_id, fmt)
    host, client = ctx.host(where.host)
    tags = ctx.tags.for_vm(vm.id, disk.disk_id, "VOLRO" if disk.readonly else "VOL",
                           disk_qos(ctx, disk))
    ctx.event.update(volume=volume, size_mb=size_mb, host=host.name)
    with Rollback() as undo:
        if create_volume(ctx.sp, volume, size=size_mb * MIB, tags=tags,
                         template=ctx.naming.template(ctx.datastore.id)):
            undo.push(f"delete {volume}", delete_volume, ctx.sp, volume)
            ctx.event["created"] = [volume]
        attach_exclusively(ctx.sp, volume, client, "rw", ctx.config["ATTACH_TIMEOUT"])
        undo.push(f"detach {volume}", detach_all, ctx.sp, volume)
        device = host.wait_for_device(volume)
        if fmt == "swap":
            host.run(["mkswap", "-L", "swap", device], timeout=300)
        elif disk.get("FS"):
            fs = disk.get("FS")
            if not fs.isalnum():
                raise InputError(f"{ctx.action}: invalid filesystem type {fs!r}")
            host.run([*ctx.config["MKFS"].split(), "-F", "-t", fs, device], timeout=600)
        link_disk(host, volume, where.path, ds_marker=ds_marker(ctx, vm))
    return ""


def context(ctx: TmContext) -> str:
    """``context file... host:disk.N vm ds``: the context ISO, built on the front-end and
    written to ``<px>-sys-<VM>-<DISK>-iso`` on the host."""
    if len(ctx.args) < 4:
        raise InputError(f"{ctx.action}: expected file... host:path vm_id ds_id")
    *files, dst, vm_id, _ds = ctx.args
    where = Location.parse(dst, "destination")
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    disk_id = where.require_disk()
    volume = ctx.naming.context(vm.id, disk_id)
    host, client = ctx.host(where.host)
    uefi_vars = _nvram_to_create(ctx, vm)  # checked before anything is made
    iso = _build_iso(files, vm.id)
    size = round_up(len(iso), MIB)
    tags = ctx.tags.for_vm(vm.id, disk_id, "CNTXT")
    ctx.event.update(volume=volume, iso_bytes=len(iso), host=host.name)
    with Rollback() as undo:
        if ctx.sp.volume_exists(volume):
            ctx.sp.volume_update(volume, size=size, shrink_ok=True, tags=tags)
        else:
            create_volume(ctx.sp, volume, size=size, tags=tags,
                          template=ctx.naming.template(ctx.datastore.id))
            undo.push(f"delete {volume}", delete_volume, ctx.sp, volume)
            ctx.event["created"] = [volume]
        attach_exclusively(ctx.sp, volume, client, "rw", ctx.config["ATTACH_TIMEOUT"])
        undo.push(f"detach {volume}", detach_all, ctx.sp, volume)
        device = host.wait_for_device(volume)
        host.run(["dd", f"of={device}", "bs=1M", "conv=notrunc,fsync", "status=none"],
                 stdin=iso, timeout=300)
        link_disk(host, volume, where.path, ds_marker=ds_marker(ctx, vm))
        if nvram.on_storpool(vm):
            _attach_nvram(ctx, vm, host, client, uefi_vars, undo)
    return ""


def _nvram_to_create(ctx: TmContext, vm: Vm) -> bytes | None:
    """``T_OS_NVRAM=storpool``: the OVMF vars template's bytes when the VM's NVRAM volume
    is still to be made (``None`` when it is there already, or the VM has none)."""
    request = nvram.NvramRequest.of(vm)
    if request is None or not request.on_storpool:
        return None
    if ctx.sp.volume_exists(ctx.naming.nvram(vm.id)):
        return None
    from onestorpool.config import ovmf_dir

    return nvram.read_template(nvram.template_path(request, ovmf_dir(ctx.config), vm.id),
                               vm.id)


def _attach_nvram(ctx: TmContext, vm: Vm, host: hosts.Host, client: int,
                  uefi_vars: bytes | None, undo: Rollback) -> None:
    """``<px>-sys-<VM>-NVRAM`` attached to the host; made from the template first when
    ``uefi_vars`` are given. An existing one is never written: it holds the guest's UEFI
    variables (boot entries, Secure Boot keys)."""
    volume = ctx.naming.nvram(vm.id)
    if uefi_vars is not None:
        create_volume(ctx.sp, volume, size=len(uefi_vars),
                      template=ctx.naming.template(ctx.datastore.id),
                      tags=ctx.tags.for_vm(vm.id, None, "NVRAM"))
        undo.push(f"delete {volume}", delete_volume, ctx.sp, volume)
        ctx.event.setdefault("created", []).append(volume)
    attach_exclusively(ctx.sp, volume, client, "rw", ctx.config["ATTACH_TIMEOUT"])
    undo.push(f"detach {volume}", detach_all, ctx.sp, volume)
    if uefi_vars is not None:
        device = host.wait_for_device(volume)
        host.run(["dd", f"of={device}", "bs=128k", "conv=notrunc,fsync", "status=none"],
                 stdin=uefi_vars, timeout=120)
    ctx.event["nvram"] = volume


def _build_iso(files: Iterable[str], vm_id: int) -> bytes:
    """``mkisofs -V CONTEXT -J -R`` of the context files (``src:name`` renames a file);
    only files of the front-end, as oned names them."""
    import shutil  # only this action needs them: not on every TM action's start-up
    import tempfile

    frontend = hosts.frontend()
    tool = shutil.which("genisoimage") or shutil.which("mkisofs") or shutil.which("xorriso")
    if tool is None:
        raise StorageError("context: neither genisoimage, mkisofs nor xorriso is installed "
                           "on the front-end")
    with tempfile.TemporaryDirectory(prefix=f"one-context-{vm_id}-") as scratch:
        tree = os.path.join(scratch, "iso")
        os.mkdir(tree)
        for item in files:
            source, _, name = item.partition(":")
            if not source.startswith("/"):
                raise InputError(f"context: {source!r} is not a file of the front-end")
            target = os.path.join(tree, os.path.basename(name or source))
            try:
                shutil.copyfile(frontend.path(source), target)
            except OSError as exc:
                raise InputError(f"context: cannot read {source}: {exc.strerror}") from None
        iso = os.path.join(scratch, "context.iso")
        argv = [tool, "-as", "mkisofs"] if tool.endswith("xorriso") else [tool]
        done = subprocess.run([*argv, "-quiet", "-o", iso, "-V", "CONTEXT", "-J", "-R", tree],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise StorageError(f"context: {os.path.basename(tool)} failed: "
                               f"{done.stderr.strip()[-200:]}")
        with open(iso, "rb") as handle:
            return handle.read()


# -- delete ----------------------------------------------------------------------


def delete(ctx: TmContext) -> str:
    """``delete host:path vm ds``: a disk (its per-VM volume; a persistent image is only
    detached) or, on the system datastore, the VM folder with the VM's volatile, context,
    NVRAM and checkpoint volumes. Volumes go by their exact names."""
    path, vm_id, _ds = ctx.expect(3, "host:path vm_id ds_id")
    where = Location.parse(path)
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    host = hosts.get(where.host)
    delay = ctx.config["DELAY_DELETE"]
    removed: list[str] = []
    if where.disk_id is None:
        if not ctx.is_system_ds:
            raise InputError(f"delete: {where.path} is not a disk of datastore "
                             f"{ctx.datastore.id}")
        volatile = [disk_volume(ctx.naming, vm, disk.disk_id) for disk in vm.disks
                    if disk.is_volatile]
        # the guest's UEFI variables are its data: kept for DELAY_DELETE like its disks
        # (the Bash add-on deleted them at once, reference §10)
        uefi_vars = ctx.naming.nvram(vm.id)
        names = [ctx.naming.rawcheckpoint(vm.id), ctx.naming.checkpoint(vm.id)]
        if vm.context_disk_id is not None:
            names.insert(0, ctx.naming.context(vm.id, vm.context_disk_id))
        listing = ctx.sp.snapshots_list()  # once for every volume of the folder
        for name in (_snapshots_of(ctx, listing, volatile, None)
                     + _snapshots_of(ctx, listing, [*names, uefi_vars], vm.id,
                                     disk_snapshots=False)):
            if delete_snapshot(ctx.sp, name):
                removed.append(name)
        for volume in [*volatile, uefi_vars]:
            removed += _retire(ctx, volume, delay, None)
        for name in names:  # no data a user would want back: at once
            if ctx.sp.volume_exists(name):
                delete_volume(ctx.sp, name)
                removed.append(name)
        host.run(["rm", "-rf", host.path(where.path)])
    else:
        disk = vm.disk(where.disk_id)
        volume = disk_volume(ctx.naming, vm, disk.disk_id)
        if not disk.source or volume != volume_from_source(disk.source):
            removed += _delete_with_snapshots(ctx, volume, delay,  # the VM's own volume
                                              ctx.config["REMOTE_BACKUP_DELETE"])
        else:  # the image itself: it stays, without the VM's tags
            detach_all(ctx.sp, volume)
            ctx.sp.volume_update(volume, tags={ctx.tags.vm_tag: "", "type": "", "diskid": ""})
            ctx.event["detached"] = volume
        unlink_disk(host, where.path)
    ctx.event.update(removed=removed)
    return ""


def _tagged_for(ctx: TmContext, snapshot: dict[str, Any], vm_id: int | None) -> bool:
    """A VM snapshot is this instance's (and this VM's) by its tags when it has them; the
    Bash add-on's untagged ones go by their name alone."""
    tags = snapshot.get("tags") or {}
    location = tags.get(ctx.tags.loc_tag)
    if location is not None and location != ctx.tags.loc_value:
        return False
    owner = tags.get(ctx.tags.vm_tag) if ctx.tags.vm_tag else None
    return vm_id is None or owner is None or owner == str(vm_id)


def _vm_snapshots_go(ctx: TmContext) -> bool:
    """The VM's StorPool VM snapshots (``<vol>-ONESNAP-...``) go with its volumes
    (``VMSNAPSHOT_DELETE_ON_TERMINATE``), except on a recreate (``CLEANUP_RESUBMIT``)."""
    if not ctx.config["VMSNAPSHOT_DELETE_ON_TERMINATE"]:
        return False
    return not any(ctx.vm(vm_id).lcm_state == LcmState.CLEANUP_RESUBMIT
                   for vm_id in ctx.vm_ids)


def _delete_with_snapshots(ctx: TmContext, volume: str, delay: int,
                           remote: tuple[str, str] | None = None) -> list[str]:
    """The volume (delayed, or a tombstone for ``remote`` backup) and its snapshots."""
    removed = [name for name in _snapshots_of(ctx, ctx.sp.snapshots_list(), [volume], None)
               if delete_snapshot(ctx.sp, name)]
    return removed + _retire(ctx, volume, delay, remote)


def _snapshots_of(ctx: TmContext, listing: list[dict[str, Any]], volumes: list[str],
                  vm_id: int | None, disk_snapshots: bool = True) -> list[str]:
    """The snapshots of ``volumes`` in ``listing``: disk snapshots ``<volume>-snap<N>`` and,
    when they go with the VM, its VM snapshots, matched by name parsing
    (``one-sys-5-1-raw`` never takes ``one-sys-5-10-raw`` or another prefix's) and tags."""
    vm_snapshots = _vm_snapshots_go(ctx)
    found = []
    for snapshot in listing:
        name = str(snapshot.get("name", ""))
        parsed = ctx.naming.parse(name)
        if parsed is None or snapshot.get("deleted"):
            continue
        disk_snapshot = (disk_snapshots and parsed.kind == "disk_snapshot"
                         and name.rsplit("-snap", 1)[0] in volumes)
        vm_snapshot = (vm_snapshots and parsed.kind == "vm_snapshot"
                       and any(name.startswith(ctx.naming.vm_snapshot_marker(v))
                               for v in volumes)
                       and _tagged_for(ctx, snapshot, vm_id))
        if disk_snapshot or vm_snapshot:
            found.append(name)
    return found


def _retire(ctx: TmContext, volume: str, delay: int,
            remote: tuple[str, str] | None) -> list[str]:
    with contextlib.suppress(NotFound):
        if ctx.sp.volume_exists(volume):
            # one volume per disk: its remote-backup effect is the action's one effect
            ctx.event.update(retire_volume(ctx.sp, ctx.naming, ctx.tags, volume, delay=delay,
                                           remote=remote))
            return [volume]
    return []


# -- mv: the VM moves, stops, resumes -------------------------------------------------------

_MOVE = {LcmState.PROLOG_MIGRATE, LcmState.PROLOG_MIGRATE_POWEROFF,
         LcmState.PROLOG_MIGRATE_SUSPEND, LcmState.PROLOG_MIGRATE_UNKNOWN,
         LcmState.PROLOG_MIGRATE_UNKNOWN_FAILURE}
_ATTACH = {LcmState.PROLOG_RESUME, LcmState.PROLOG_UNDEPLOY}
_DETACH = {LcmState.EPILOG_STOP, LcmState.EPILOG_UNDEPLOY}


def mv(ctx: TmContext) -> str:
    """``mv src dst vm ds``, by the VM's LCM state: stop/undeploy detach the volumes from
    the host, resume attaches them to the new one, cold migration moves them."""
    src, dst, vm_id, _ds = ctx.expect(4, "host:path host:path vm_id ds_id")
    source, target = Location.parse(src, "source"), Location.parse(dst, "destination")
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    state = vm.lcm_state
    if state not in _MOVE | _ATTACH | _DETACH:
        raise InputError(f"mv: VM {vm.id} is in LCM state {state.name}; the StorPool TM "
                         "moves disks only to stop, undeploy, resume or migrate a VM")
    moved: list[tuple[str, str, str | None]]  # volume, attach mode, link (if any)
    if target.disk_id is not None:
        disk = vm.disk(target.disk_id)
        moved = [(disk_volume(ctx.naming, vm, disk.disk_id), attach_mode(ctx, disk),
                  target.path)]
    else:  # the VM folder: the system datastore's own volumes go with the VM
        moved = []
        if ctx.is_system_ds and vm.context_disk_id is not None:
            moved.append((ctx.naming.context(vm.id, vm.context_disk_id), "rw",
                          f"{target.path.rstrip('/')}/disk.{vm.context_disk_id}"))
        if ctx.is_system_ds and nvram.on_storpool(vm):  # no link: the domain names the device
            moved.append((ctx.naming.nvram(vm.id), "rw", None))
    src_host = hosts.get(source.host)
    src_client = hosts.client_id(src_host, ctx.config) if state == LcmState.EPILOG_STOP \
        else None
    marker = ds_marker(ctx, vm) if state in _ATTACH or state in _MOVE else None
    for volume, mode, path in moved:
        if state in _DETACH or state in _MOVE:
            if src_client is None:
                detach_all(ctx.sp, volume)
            else:
                with contextlib.suppress(NotFound):
                    ctx.sp.detach(volume, [src_client], force=True)
        if state in _ATTACH or state in _MOVE:
            host, client = ctx.host(target.host)
            if ctx.is_system_ds:
                _follow_datastore(ctx, volume)
            attach_exclusively(ctx.sp, volume, client, mode, ctx.config["ATTACH_TIMEOUT"])
            if path is not None:
                link_disk(host, volume, path, ds_marker=marker)
    if target.disk_id is None:
        dst_host = hosts.get(target.host)
        if ctx.config["SP_SYSTEM"] == "ssh" and (src_host.name, source.path) != (
                dst_host.name, target.path):
            move_folder(src_host, source.path, dst_host, target.path)
            ctx.event["folder_moved"] = True
        elif state not in _DETACH:
            dst_host.run(["mkdir", "-p", dst_host.path(target.path)])
        if marker:  # the host monitors a datastore that is not shared (ssh_make_path)
            dst_host.run(["sh", "-c", 'echo "$2" > "$1/../.monitor"', "mv",
                          dst_host.path(target.path.rstrip("/")), marker])
    ctx.event.update(lcm_state=state.name, volumes=[v for v, _, _ in moved])
    return ""


def _follow_datastore(ctx: TmContext, volume: str) -> None:
    """A VM moved to another system datastore (``DS_MIGRATE``): its volatile, context and
    NVRAM volumes keep their data and take the new datastore's template (placement,
    capacity)."""
    parsed = ctx.naming.parse(volume)
    if parsed is None or parsed.kind not in ("volatile", "context", "nvram"):
        return
    template = ctx.naming.template(ctx.datastore.id)
    if ctx.sp.volume(volume).get("templateName") != template:
        ctx.sp.volume_update(volume, template=template)
        ctx.event.setdefault("template_changed", []).append(volume)


def move_folder(src: hosts.Host, src_path: str, dst: hosts.Host, dst_path: str, *,
                keep_source: bool = False) -> None:
    """``SP_SYSTEM=ssh``: the VM folder's files (checkpoint, deployment files, disk links)
    stream from one host to the other through ``tar`` (sparse files stay sparse), then the
    source is removed (unless ``keep_source``: a live migration's until it succeeds)."""
    dst.run(["mkdir", "-p", dst.path(dst_path)])
    reader = src.popen(["tar", "-C", src.path(src_path), "-cSf", "-", "."],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # --skip-old-files: the disk links the disks' own mv made there already stay
    writer = dst.popen(["tar", "-C", dst.path(dst_path), "--skip-old-files", "-xSf", "-"],
                       stdin=reader.stdout, stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # the writer holds it; the reader sees a closed pipe if it dies
    _, written_error = writer.communicate(timeout=3600)
    read_error = reader.stderr.read()
    reader.stderr.close()
    if reader.wait() != 0 or writer.returncode != 0:
        error = (read_error or written_error or b"").decode(errors="replace").strip()
        raise StorageError(f"copying {src.name}:{src_path} to {dst.name}:{dst_path} "
                           f"failed: {error[-200:]}")
    if not keep_source:
        src.run(["rm", "-rf", src.path(src_path)])


# -- migration ----------------------------------------------------------------------


def premigrate(ctx: TmContext) -> str:
    """``premigrate src dst vmdir vm ds [template]``: every StorPool volume of the VM
    attached to the destination too, in one ``VolumesReassignWait``."""
    return _migrate(ctx, "attach")


def postmigrate(ctx: TmContext) -> str:
    """Every volume detached from the source, in one call."""
    return _migrate(ctx, "detach_source")


def failmigrate(ctx: TmContext) -> str:
    """The migration failed: every volume detached from the destination, in one call."""
    return _migrate(ctx, "detach_destination")


def _migrate(ctx: TmContext, step: str) -> str:
    if len(ctx.args) < 5:
        raise InputError(f"{ctx.action}: expected src dst vmdir vm_id ds_id")
    src_name, dst_name, vmdir, vm_id = ctx.args[:4]
    if len(ctx.args) > 6 and ctx.args[6].startswith("storpool"):
        return ""  # called back through migrate_other by ourselves
    vm = _vm_from_stdin(ctx) or ctx.vm(parse_id(vm_id, "vm_id"))
    system = ctx.datastore.tm_mad == "storpool"
    volumes = vm_volumes(ctx, vm, system=system)
    src_host, dst_host = hosts.get(src_name), hosts.get(dst_name)
    # SP_SYSTEM=ssh: the VM folder (deployment file, disk links) is on the source only;
    # the destination's hypervisor needs it before the VM moves, the source's goes after
    with Rollback() as undo:
        if system and ctx.is_system_ds and ctx.config["SP_SYSTEM"] == "ssh" and \
                src_host.name != dst_host.name:
            folder = Location.parse(f"{dst_name}:{vmdir}", "vmdir").path
            if step == "attach":
                move_folder(src_host, folder, dst_host, folder, keep_source=True)
                undo.push(f"remove {dst_name}:{folder}", dst_host.run,
                          ["rm", "-rf", dst_host.path(folder)])
                marker = ds_marker(ctx, vm)
                if marker:
                    dst_host.run(["sh", "-c", 'echo "$2" > "$1/../.monitor"', "premigrate",
                                  dst_host.path(folder.rstrip("/")), marker])
            else:
                gone = src_host if step == "detach_source" else dst_host
                gone.run(["rm", "-rf", gone.path(folder)])
            ctx.event["folder"] = step
        if volumes:
            _reassign(ctx, step, volumes, src_host, dst_host)
    return ""


def _reassign(ctx: TmContext, step: str, volumes: list[tuple[str, str]],
              src_host: hosts.Host, dst_host: hosts.Host) -> None:
    """Every volume attached to the destination, or detached from one side, in one
    ``VolumesReassignWait``."""
    src_client = hosts.client_id(src_host, ctx.config)
    dst_client = hosts.client_id(dst_host, ctx.config)
    if step == "attach":
        # read-write on both hosts until the hypervisor has moved the VM: force says so
        items = [{"volume": v, mode: [dst_client], "force": True} for v, mode in volumes]
    else:
        client = src_client if step == "detach_source" else dst_client
        items = [{"volume": v, "detach": [client], "force": True} for v, _ in volumes]
    ctx.sp.volumes_reassign_wait(items, attach_timeout=ctx.config["ATTACH_TIMEOUT"])
    ctx.event.update(volumes=[v for v, _ in volumes], source=src_host.name,
                     destination=dst_host.name)


def _vm_from_stdin(ctx: TmContext) -> Vm | None:
    if not ctx.stdin.strip():
        return None
    from onestorpool.one import parse_vm

    return parse_vm(ctx.stdin.strip())


# -- resize, snapshots, save-as --------------------------------------------------------------


def resize(ctx: TmContext) -> str:
    """``resize host:disk.N size vm ds``: grow only (StorPool never shrinks a disk here)."""
    dst, size, vm_id, _ds = ctx.expect(4, "host:path size_mb vm_id ds_id")
    where = Location.parse(dst)
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    volume = disk_volume(ctx.naming, vm, where.require_disk())
    new = parse_id(size, "size") * MIB
    current = int(ctx.sp.volume(volume).get("size") or 0)
    if new < current:
        raise InputError(f"resize: {volume} is {current // MIB} MB; disks only grow")
    if new > current:
        ctx.sp.volume_update(volume, size=new)
    ctx.event.update(volume=volume, size_mb=new // MIB)
    return ""


def snap_create(ctx: TmContext) -> str:
    """``snap_create host:disk.N snap_id vm ds``: ``<volume>-snap<snap_id>``, within
    ``DISKSNAPSHOT_LIMIT`` (rc, then the system and image datastores, then the VM)."""
    dst, snap_id, vm_id, _ds = ctx.expect(4, "host:path snap_id vm_id ds_id")
    where = Location.parse(dst)
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    disk = vm.disk(where.require_disk())
    if disk.is_cdrom:
        raise InputError(f"disk {disk.disk_id} is a CD-ROM: it has no snapshots")
    limit = _snapshot_limit(ctx, vm, disk)
    if limit is not None and len(disk.snapshots) > limit:
        raise InputError(f"disk {disk.disk_id} has reached its snapshot limit "
                         f"(DISKSNAPSHOT_LIMIT={limit})")
    volume = disk_volume(ctx.naming, vm, disk.disk_id)
    snapshot = ctx.naming.disk_snapshot(volume, parse_id(snap_id, "snap_id"))
    freeze = ctx.action == "snap_create_live" and ctx.config["DISK_SNAPSHOT_FSFREEZE"]
    with _guest_frozen(ctx, where.host, vm.deploy_id) if freeze else contextlib.nullcontext():
        ctx.sp.volume_snapshot(volume, snapshot, tags={**ctx.tags.base(),
                                                       ctx.tags.vm_tag: str(vm.id)})
    ctx.event.update(volume=volume, snapshot=snapshot, created=[snapshot], fsfreeze=freeze)
    return ""


@contextlib.contextmanager
def _guest_frozen(ctx: TmContext, host_name: str, domain: str) -> Iterator[None]:
    """``DISK_SNAPSHOT_FSFREEZE``: the guest's filesystems frozen through its agent for the
    snapshot (``virsh domfsfreeze``) and thawed after, whatever happens."""
    host = hosts.get(host_name)
    uri = ctx.config["LIBVIRT_URI"]
    host.run(["virsh", "-c", uri, "domfsfreeze", domain], timeout=60)
    try:
        yield
    finally:
        host.run(["virsh", "-c", uri, "domfsthaw", domain], timeout=60)


def _snapshot_limit(ctx: TmContext, vm: Vm, disk: Disk) -> int | None:
    """``DISKSNAPSHOT_LIMIT``: the VM's attribute, else the disk's image datastore, else the
    VM's system datastore, else addon-storpoolrc (the Bash add-on's precedence)."""
    value = vm.user_template.get("DISKSNAPSHOT_LIMIT") or vm.template.get(
        "DISKSNAPSHOT_LIMIT")
    if value and value.strip().isdigit():
        return int(value)
    datastores = [disk.datastore_id if disk.image_id is not None else None,
                  vm.last_history.ds_id if vm.last_history is not None else None]
    for ds_id in datastores:
        if ds_id is None:
            continue
        if ds_id == ctx.datastore.id:
            template = ctx.datastore.template
        else:
            from onestorpool import oneapi

            template = oneapi.datastore_info(ds_id).template
        value = template.get("DISKSNAPSHOT_LIMIT", "").strip()
        if value.isdigit():
            return int(value)
    return ctx.config["DISKSNAPSHOT_LIMIT"]


def snap_delete(ctx: TmContext) -> str:
    dst, snap_id, vm_id, _ds = ctx.expect(4, "host:path snap_id vm_id ds_id")
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    volume = disk_volume(ctx.naming, vm, Location.parse(dst).require_disk())
    snapshot = ctx.naming.disk_snapshot(volume, parse_id(snap_id, "snap_id"))
    deleted = delete_snapshot(ctx.sp, snapshot)
    ctx.event.update(volume=volume, snapshot=snapshot, removed=[snapshot] if deleted else [])
    return ""


def snap_revert(ctx: TmContext) -> str:
    """The disk's data replaced by the snapshot's in place (the old data kept for
    ``DELAY_DELETE``), and the disk attached and linked again."""
    dst, snap_id, vm_id, _ds = ctx.expect(4, "host:path snap_id vm_id ds_id")
    where = Location.parse(dst)
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    disk = vm.disk(where.require_disk())
    volume = disk_volume(ctx.naming, vm, disk.disk_id)
    snapshot = ctx.naming.disk_snapshot(volume, parse_id(snap_id, "snap_id"))
    host, client = ctx.host(where.host)
    kept = revert_volume(ctx.sp, volume, snapshot, delay=ctx.config["DELAY_DELETE"],
                         tags=ctx.tags.for_vm(vm.id, disk.disk_id, disk_kind(
                             disk, disk.persistent), disk_qos(ctx, disk)))
    attach_exclusively(ctx.sp, volume, client, attach_mode(ctx, disk),
                       ctx.config["ATTACH_TIMEOUT"])
    link_disk(host, volume, where.path, ds_marker=ds_marker(ctx, vm))
    ctx.event.update(volume=volume, reverted_from=snapshot, kept_snapshot=kept)
    return ""


def cpds(ctx: TmContext) -> str:
    """``cpds host:disk.N fe:NEW_SOURCE snap_id vm ds``: disk save-as into the new image's
    volume, from the live disk (``-1``) or one of its snapshots."""
    src, target_source, snap_id, vm_id, _ds = ctx.expect(
        5, "host:path SOURCE snap_id vm_id ds_id")
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    volume = disk_volume(ctx.naming, vm, Location.parse(src).require_disk())
    target = volume_from_source(target_source)  # SOURCE as mkfs printed it
    if ctx.naming.parse(target) is None:
        raise InputError(f"cpds: {target} is not this instance's volume")
    template = target_source.rsplit("/", 1)[0] if "/" in target_source else None
    if template is not None and (ctx.naming.parse(template) is None
                                 or ctx.naming.parse(template).kind != "template"):
        raise InputError(f"cpds: {template} is not one of this instance's templates")
    snap = parse_id(snap_id, "snap_id")
    delete_volume(ctx.sp, target)  # mkfs left nothing there; a failed earlier try might have
    tags = ctx.tags.base(qos_class(ctx.config["SP_QOSCLASS"], ctx.config["DEFAULT_QOSCLASS"]))
    if snap < 0:
        create_volume(ctx.sp, target, base_on=volume, tags=tags, template=template)
    else:
        create_volume(ctx.sp, target, parent=ctx.naming.disk_snapshot(volume, snap), tags=tags,
                      template=template)
    ctx.event.update(volume=volume, created=[target], snapshot_id=snap)
    return ""


def mvds(ctx: TmContext) -> str:
    """``mvds host:disk.N fe:SOURCE vm ds``: a persistent disk goes back to its image:
    detached everywhere, the VM's tags cleared, the link removed."""
    src, _source, vm_id, _ds = ctx.expect(4, "host:path SOURCE vm_id ds_id")
    where = Location.parse(src)
    vm = ctx.vm(parse_id(vm_id, "vm_id"))
    volume = disk_volume(ctx.naming, vm, where.require_disk())
    detach_all(ctx.sp, volume)
    ctx.sp.volume_update(volume, tags={ctx.tags.vm_tag: "", "type": "", "diskid": ""})
    removed = []
    if _vm_snapshots_go(ctx):  # the VM's snapshots of the image go with the VM
        for snapshot in ctx.sp.snapshots_list():
            name = str(snapshot.get("name", ""))
            parsed = ctx.naming.parse(name)
            if (parsed is not None and parsed.kind == "vm_snapshot"
                    and not snapshot.get("deleted")
                    and name.startswith(ctx.naming.vm_snapshot_marker(volume))
                    and (snapshot.get("tags") or {}).get(ctx.tags.vm_tag) == str(vm.id)
                    and delete_snapshot(ctx.sp, name)):
                removed.append(name)
    unlink_disk(hosts.get(where.host), where.path)
    ctx.event.update(volume=volume, removed=removed)
    return ""


# -- monitor ----------------------------------------------------------------------


def monitor(ctx: TmContext) -> str:
    """The system datastore's capacity (its StorPool template) and the disk and snapshot
    usage of the VMs running on it, from one ``VolumesSpace`` and one ``SnapshotsSpace``
    call: printed as ``VM=[ID=..., POLL="..."]`` lines before 5.12, sent to the monitor
    daemon over UDP from 5.12 on (``send_to_monitor`` of scripts_common.sh)."""
    template = ctx.naming.template(ctx.datastore.id)
    for status in ctx.sp.volume_templates_status():
        if status.get("name") == template:
            stored = status.get("stored") or {}
            total, free = int(stored.get("capacity") or 0), int(stored.get("free") or 0)
            break
    else:
        raise StorageError(f"StorPool template {template} does not exist (one per datastore)")
    lines = [f"USED_MB={max(0, total - free) // MIB}", f"TOTAL_MB={total // MIB}",
             f"FREE_MB={free // MIB}"]
    usage = vm_disk_usage(ctx) if ctx.is_system_ds else {}
    ctx.event.update(template=template, total=total, free=free, vms=len(usage))
    if usage:
        from onestorpool.driverlog import one_release

        release = one_release()
        if release is not None and release < (5, 12):
            lines += [f'VM=[ID={vm_id},POLL="{" ".join(text.split())}"]'
                      for vm_id, text in usage.items()]
        else:
            send_to_monitor(usage)
    return "\n".join(lines)


def vm_disk_usage(ctx: TmContext) -> dict[int, str]:
    """``DISK_SIZE``/``SNAPSHOT_SIZE`` lines (MiB used) of each running VM of this system
    datastore, keyed by VM id."""
    from onestorpool import oneapi
    from onestorpool.one import iter_vm_pool

    vms = [vm for vm in iter_vm_pool(oneapi.one_call("one.vmpool.info", -2, -1, -1, 3))
           if vm.system_ds == ctx.datastore.id]
    if not vms:
        return {}
    used = {v.get("name"): int(v.get("spaceUsed") or 0) for v in ctx.sp.volumes_space()}
    snapshot_used = {s.get("name"): int(s.get("spaceUsed") or 0)
                     for s in ctx.sp.snapshots_space()}
    usage = {}
    for vm in vms:
        lines = []
        for disk in vm.disks:
            volume = disk_volume(ctx.naming, vm, disk.disk_id)
            if volume in used:
                lines.append(f"DISK_SIZE=[ID={disk.disk_id},SIZE={used[volume] // MIB}]")
            for snapshot_id in disk.snapshot_ids:
                name = ctx.naming.disk_snapshot(volume, snapshot_id)
                if name in snapshot_used:
                    lines.append(f"SNAPSHOT_SIZE=[ID={snapshot_id},DISK_ID={disk.disk_id},"
                                 f"SIZE={snapshot_used[name] // MIB}]")
        if lines:
            usage[vm.id] = "\n".join(lines) + "\n"
    return usage


def send_to_monitor(usage: dict[int, str]) -> None:
    """``MONITOR_VM SUCCESS -1 0 <payload>`` to the monitor daemon (UDP): one
    ``VM=[ID=<id>, MONITOR="<base64>"]`` line per VM, zlib-deflated and base64-encoded;
    its address from ``monitord.conf`` (``MONITOR_ADDRESS``/``MONITOR_PORT`` in the
    environment win). Messages are not encrypted: a monitord ``PUBKEY`` is not supported."""
    import base64
    import socket
    import zlib

    address, port = _monitord_address()
    text = "".join(f'VM=[ID={vm_id}, MONITOR="{base64.b64encode(lines.encode()).decode()}"]\n'
                   for vm_id, lines in usage.items())
    payload = base64.b64encode(zlib.compress(text.encode())).decode()
    message = f"MONITOR_VM SUCCESS -1 0 {payload}".encode()  # object -1: time stamp 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(message, (address, port))


def _monitord_address() -> tuple[str, int]:
    import re

    from onestorpool import config as config_module

    address, port = os.environ.get("MONITOR_ADDRESS", ""), os.environ.get("MONITOR_PORT", "")
    if not (address and port):
        location = os.environ.get("ONE_LOCATION")
        path = (f"{location}/etc/monitord.conf" if location
                else str(config_module.root() / "etc/one/monitord.conf"))
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise StorageError(f"monitor: cannot read {path}: {exc.strerror}") from None
        found_address = re.search(r'MONITOR_ADDRESS\s*=\s*"?([^",\s]+)', text)
        found_port = re.search(r'\bPORT\s*=\s*(\d+)', text)
        address = address or (found_address[1] if found_address else "127.0.0.1")
        port = port or (found_port[1] if found_port else "4124")
    if address == "auto" or "auto" in address:
        address = "127.0.0.1"
    return address, int(port)


# -- checkpoints on StorPool (SP_CHECKPOINT_BD), run by the tmsave/tmrestore local actions ---


def presave(ctx: TmContext) -> str:
    """``presave host:checkpoint vm ds``: with ``SP_CHECKPOINT_BD`` a fresh
    ``<px>-sys-<VM>-rawcheckpoint`` of twice the VM's memory, attached to the host, and the
    checkpoint path a link to it: the hypervisor writes the checkpoint onto StorPool, never
    onto the host's disk."""
    where, vm = _checkpoint_request(ctx)
    if not ctx.config["SP_CHECKPOINT_BD"]:
        return noop(ctx)
    volume = ctx.naming.rawcheckpoint(vm.id)
    memory_mb = int(vm.template.get("MEMORY", "0") or 0)
    if memory_mb <= 0:
        raise InputError(f"presave: VM {vm.id} has no MEMORY to size its checkpoint by")
    host, client = ctx.host(where.host)
    removed = delete_volume(ctx.sp, volume)  # an earlier checkpoint nobody restored
    with Rollback() as undo:
        create_volume(ctx.sp, volume, size=2 * memory_mb * MIB,
                      template=ctx.naming.template(ctx.datastore.id),
                      tags=ctx.tags.for_vm(vm.id, None, "CHKPNT"))
        undo.push(f"delete {volume}", delete_volume, ctx.sp, volume)
        attach_exclusively(ctx.sp, volume, client, "rw", ctx.config["ATTACH_TIMEOUT"])
        host.wait_for_device(volume)
        link_disk(host, volume, where.path, markers=False)
    ctx.event.update(volume=volume, created=[volume], size_mb=2 * memory_mb, host=host.name,
                     replaced=removed is not None)
    return ""


def postsave(ctx: TmContext) -> str:
    """The checkpoint is written: its volume detached from the host, the link removed."""
    where, vm = _checkpoint_request(ctx)
    if not ctx.config["SP_CHECKPOINT_BD"]:
        return noop(ctx)
    volume = ctx.naming.rawcheckpoint(vm.id)
    detach_all(ctx.sp, volume)
    unlink_disk(hosts.get(where.host), where.path)
    ctx.event.update(volume=volume, detached=volume)
    return ""


def prerestore(ctx: TmContext) -> str:
    """The checkpoint volume attached to the host the VM resumes on, the path linked to it."""
    where, vm = _checkpoint_request(ctx)
    if not ctx.config["SP_CHECKPOINT_BD"]:
        return noop(ctx)
    volume = ctx.naming.rawcheckpoint(vm.id)
    if not ctx.sp.volume_exists(volume):
        raise StorageError(f"prerestore: VM {vm.id} has no checkpoint volume {volume} (was it "
                           "saved with SP_CHECKPOINT_BD=1?)")
    host, client = ctx.host(where.host)
    attach_exclusively(ctx.sp, volume, client, "rw", ctx.config["ATTACH_TIMEOUT"])
    host.wait_for_device(volume)
    link_disk(host, volume, where.path, markers=False)
    ctx.event.update(volume=volume, host=host.name)
    return ""


def postrestore(ctx: TmContext) -> str:
    """The VM runs again: the checkpoint volume is deleted at once, the link removed."""
    where, vm = _checkpoint_request(ctx)
    if not ctx.config["SP_CHECKPOINT_BD"]:
        return noop(ctx)
    volume = ctx.naming.rawcheckpoint(vm.id)
    delete_volume(ctx.sp, volume)
    unlink_disk(hosts.get(where.host), where.path)
    ctx.event.update(volume=volume, removed=[volume])
    return ""


def _checkpoint_request(ctx: TmContext) -> tuple[Location, Vm]:
    path, vm_id, _ds = ctx.expect(3, "host:checkpoint vm_id ds_id")
    return Location.parse(path, "checkpoint"), ctx.vm(parse_id(vm_id, "vm_id"))


def noop(ctx: TmContext) -> str:
    """Actions with nothing to do on StorPool (the data is already where it must be)."""
    ctx.event["noop"] = True
    return ""


ACTIONS: dict[str, Callable[[TmContext], str]] = {
    "clone": clone, "ln": ln, "mkimage": mkimage, "mkswap": mkswap, "context": context,
    "delete": delete, "mv": mv, "mvds": mvds, "cpds": cpds, "resize": resize,
    "snap_create": snap_create, "snap_create_live": snap_create, "snap_delete": snap_delete,
    "snap_revert": snap_revert, "premigrate": premigrate, "postmigrate": postmigrate,
    "failmigrate": failmigrate, "monitor": monitor, "presave": presave,
    "postsave": postsave, "prerestore": prerestore, "postrestore": postrestore,
}


def datastore_id_of(action: str, args: list[str]) -> int:
    """The datastore an action's configuration comes from: its last argument, except the
    migrate actions (``src dst vmdir vm ds [template] ...``)."""
    if action in ("premigrate", "postmigrate", "failmigrate"):
        if len(args) < 5:
            raise InputError(f"{action}: expected src dst vmdir vm_id ds_id")
        return parse_id(args[4], "ds_id")
    if not args:
        raise InputError(f"{action}: no arguments")
    return parse_id(args[-1], "ds_id")
