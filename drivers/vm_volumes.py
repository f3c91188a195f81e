"""Which StorPool volume holds a VM's disk (the old add-on's ``oneVmVolumes``)."""

from __future__ import annotations

import re

from onestorpool.errors import InputError
from onestorpool.naming import Naming, volume_from_source
from onestorpool.one import PoolVm, Vm

VMSNAP_RE = re.compile(r"^VMSNAP:VM:(?P<vm>[0-9]+)-DISK:(?P<disk>[0-9]+)-VMSNAP:(?P<snap>[0-9]+)$")


def disk_volume(naming: Naming, vm: Vm | PoolVm, disk_id: int) -> str:
    """Image disks: the image volume, or its per-VM clone (non-persistent, CDROM);
    volatile disks: ``<px>-sys-<VM>-<DISK>-<fmt>``; the context disk: ``...-iso``."""
    if vm.context_disk_id == disk_id:
        return naming.context(vm.id, disk_id)
    disk = vm.disk(disk_id)
    if disk.source:
        volume = volume_from_source(disk.source)
        if disk.clone or disk.type.upper() == "CDROM":
            return naming.clone_of(volume, vm.id, disk_id)
        return volume
    fmt = "swap" if disk.type.lower() == "swap" else (disk.get("FORMAT") or "raw")
    return naming.volatile(vm.id, disk_id, fmt)


def vmsnap_snapshot(naming: Naming, path: str, image_uid: int, image_gid: int,
                    lookup_vm) -> tuple[str, Vm]:
    """``VMSNAP:VM:<vm>-DISK:<disk>-VMSNAP:<id>`` → the StorPool snapshot of that disk in
    that VM snapshot. Users outside the oneadmin group must own the VM."""
    match = VMSNAP_RE.match(path)
    if match is None:
        raise InputError(f"expected VMSNAP:VM:<vm>-DISK:<disk>-VMSNAP:<id>, got {path!r}")
    vm = lookup_vm(int(match["vm"]))
    if image_gid != 0 and image_uid != 0 and vm.uid != image_uid:
        raise InputError(f"VM {vm.id} does not belong to the image's owner")
    snap_id = match["snap"]
    for snapshot in vm.vm_snapshots:
        if snapshot.get("SNAPSHOT_ID") == snap_id:
            hypervisor_id = snapshot.get("HYPERVISOR_ID", "")
            break
    else:
        raise InputError(f"VM {vm.id} has no snapshot {snap_id}")
    if not hypervisor_id:
        raise InputError(f"VM {vm.id} snapshot {snap_id} has no HYPERVISOR_ID")
    volume = disk_volume(naming, vm, int(match["disk"]))
    return f"{volume}-{hypervisor_id}", vm
