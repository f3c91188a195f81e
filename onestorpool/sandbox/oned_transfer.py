"""Transfer-file lines as ``src/tm/TransferManager.cc`` writes them.

Each line is a list of words: ``[ACTION[.SYS_TM], TM_MAD, arg...]``. ``host:path`` arguments
use oned's system directory ``/var/lib/one//datastores/<sys ds>/<vm>`` (with its double
slash); ``fe`` is oned's HOSTNAME. Two quirks of oned are kept on purpose: a disk's
``.<TM_MAD_SYSTEM>`` suffix sticks to the following disks of the same file (the variable is
not reset in the loop), and swap/fs disks without SIZE (or FORMAT) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from onestorpool.sandbox.oned_objects import Vm, is_volatile

Line = list[str]


class TransferError(Exception):
    """The transfer file cannot be written (oned: prolog failure without running drivers)."""


@dataclass(frozen=True)
class Place:
    """Where a VM's system directory is: host, directory, system TM and datastore."""

    host: str
    system_dir: str
    tm_mad: str
    ds_id: int


def _disk_tm(disk: dict[str, str], place: Place) -> tuple[str, str] | None:
    """(TM_MAD, DATASTORE_ID) a line for this disk uses; volatile disks use the system
    datastore's. None: the disk has no TM (skipped)."""
    if is_volatile(disk):
        return place.tm_mad, str(place.ds_id)
    tm_mad, ds_id = disk.get("TM_MAD", ""), disk.get("DATASTORE_ID", "")
    if not tm_mad or not ds_id:
        return None
    return tm_mad, ds_id


def prolog_disk(vm: Vm, disk: dict[str, str], place: Place, fe: str) -> Line | None:
    """``prolog_transfer_command``: MKSWAP, MKIMAGE, or CLONE/LN of an image."""
    disk_id = disk["DISK_ID"]
    target = f"{place.host}:{place.system_dir}/disk.{disk_id}"
    kind = disk.get("TYPE", "").upper()
    if kind == "SWAP":
        size = disk.get("SIZE", "")
        return ["MKSWAP", place.tm_mad, size, target, str(vm.id), str(place.ds_id)] \
            if size else None
    if kind == "FS":
        size, fmt = disk.get("SIZE", ""), disk.get("FORMAT", "")
        if not size or not fmt:
            return None
        return ["MKIMAGE", place.tm_mad, size, fmt, target, str(vm.id), str(place.ds_id)]
    source, tm_mad = disk.get("SOURCE", ""), disk.get("TM_MAD", "")
    ds_id, clone = disk.get("DATASTORE_ID", ""), disk.get("CLONE", "")
    if not (source and tm_mad and ds_id and clone):
        raise TransferError(f"missing DISK mandatory attributes (SOURCE, TM_MAD, CLONE, "
                            f"DATASTORE_ID) for VM {vm.id}, DISK {disk_id}")
    verb = "CLONE" if clone.upper() == "YES" else "LN"
    suffix = f".{disk['TM_MAD_SYSTEM']}" if disk.get("TM_MAD_SYSTEM") else ""
    # SOURCE is prefixed with the front-end only if it has no ':' (TM-specific protocol)
    src = source if ":" in source else f"{fe}:{source}"
    return [verb + suffix, tm_mad, src, target, str(vm.id), ds_id]


def prolog(vm: Vm, place: Place, fe: str) -> list[Line]:
    """``trigger_prolog``: one line per disk (context is done at boot by the VMM)."""
    return [line for disk in vm.disks if (line := prolog_disk(vm, disk, place, fe))]


def context(vm: Vm, place: Place, context_file: str, files: list[str]) -> Line | None:
    """``prolog_context_command``: ``CONTEXT tm ctx_file [files] host:dir/disk.N vm ds``,
    the TM_COMMAND of DEPLOY/RESTORE."""
    vectors = vm.template.get("CONTEXT") or []
    if not vectors:
        return None
    disk_id = vectors[0]["DISK_ID"]
    return ["CONTEXT", place.tm_mad, context_file, *files,
            f"{place.host}:{place.system_dir}/disk.{disk_id}", str(vm.id), str(place.ds_id)]


def epilog_disk(vm: Vm, disk: dict[str, str], place: Place) -> Line | None:
    """``epilog_transfer_command``: MVDS for a disk saved back to its image, else DELETE."""
    disk_id = disk["DISK_ID"]
    path = f"{place.host}:{place.system_dir}/disk.{disk_id}"
    suffix = f".{disk['TM_MAD_SYSTEM']}" if disk.get("TM_MAD_SYSTEM") else ""
    if disk.get("SAVE", "").upper() == "YES":
        tm_mad, ds_id, source = (disk.get("TM_MAD", ""), disk.get("DATASTORE_ID", ""),
                                 disk.get("SOURCE", ""))
        if not (tm_mad and ds_id and source):
            return None
        return ["MVDS" + suffix, tm_mad, path, source, str(vm.id), ds_id]
    found = _disk_tm(disk, place)
    if found is None:
        return None
    return ["DELETE" + suffix, found[0], path, str(vm.id), found[1]]


def epilog(vm: Vm, place: Place) -> list[Line]:
    """``trigger_epilog``: save or delete each disk, then DELETE the system directory."""
    lines = [line for disk in vm.disks if (line := epilog_disk(vm, disk, place))]
    return [*lines, ["DELETE", place.tm_mad, f"{place.host}:{place.system_dir}", str(vm.id),
                     str(place.ds_id)]]


def move(vm: Vm, src: Place, dst: Place) -> list[Line]:
    """``trigger_epilog_stop`` (host to fe), ``trigger_prolog_resume`` (fe to host) and
    ``trigger_prolog_migr`` (previous host to new): MV each disk, then the directory."""
    lines, suffix = [], ""
    for disk in vm.disks:
        found = _disk_tm(disk, dst)
        if found is None:
            continue
        if disk.get("TM_MAD_SYSTEM"):
            suffix = f".{disk['TM_MAD_SYSTEM']}"  # not reset for later disks, as oned
        disk_id = disk["DISK_ID"]
        lines.append(["MV" + suffix, found[0], f"{src.host}:{src.system_dir}/disk.{disk_id}",
                      f"{dst.host}:{dst.system_dir}/disk.{disk_id}", str(vm.id), found[1]])
    lines.append(["MV", dst.tm_mad, f"{src.host}:{src.system_dir}",
                  f"{dst.host}:{dst.system_dir}", str(vm.id), str(dst.ds_id)])
    return lines


def delete_all(vm: Vm, place: Place) -> list[Line]:
    """``epilog_delete_commands`` (recover --delete, cleanups): DELETE every disk, saved
    or not, then the directory."""
    lines, suffix = [], ""
    for disk in vm.disks:
        found = _disk_tm(disk, place)
        if found is None:
            continue
        if disk.get("TM_MAD_SYSTEM"):
            suffix = f".{disk['TM_MAD_SYSTEM']}"
        lines.append(["DELETE" + suffix, found[0],
                      f"{place.host}:{place.system_dir}/disk.{disk['DISK_ID']}", str(vm.id),
                      found[1]])
    lines.append(["DELETE", place.tm_mad, f"{place.host}:{place.system_dir}", str(vm.id),
                  str(place.ds_id)])
    return lines


def disk_action(verb: str, vm: Vm, disk: dict[str, str], place: Place, *args: str) -> Line:
    """SNAP_CREATE/SNAP_REVERT/SNAP_DELETE (snap id) and RESIZE (size) of one disk:
    ``VERB[.sys] tm host:dir/disk.N <arg> vm ds``."""
    found = _disk_tm(disk, place) or (disk.get("TM_MAD", ""), disk.get("DATASTORE_ID", ""))
    suffix = f".{disk['TM_MAD_SYSTEM']}" if disk.get("TM_MAD_SYSTEM") else ""
    return [verb + suffix, found[0], f"{place.host}:{place.system_dir}/disk.{disk['DISK_ID']}",
            *args, str(vm.id), found[1]]


def cpds(vm: Vm, disk: dict[str, str], place: Place, source: str, snap_id: int,
         tm_mad: str, ds_id: int) -> Line:
    """``trigger_saveas_hot``: ``CPDS[.sys] tm host:dir/disk.N new_source snap vm ds``."""
    suffix = f".{disk['TM_MAD_SYSTEM']}" if disk.get("TM_MAD_SYSTEM") else ""
    return ["CPDS" + suffix, tm_mad, f"{place.host}:{place.system_dir}/disk.{disk['DISK_ID']}",
            source, str(snap_id), str(vm.id), str(ds_id)]


def migrate(vm: Vm, src_host: str, place: Place) -> Line:
    """``migrate_transfer_command``: the VMM driver turns ``MIGRATE`` into PREMIGRATE,
    POSTMIGRATE or FAILMIGRATE of the system TM."""
    return ["MIGRATE", place.tm_mad, src_host, place.host, place.system_dir, str(vm.id),
            str(place.ds_id)]


def file_text(lines: list[Line]) -> str:
    return "".join(" ".join(line) + "\n" for line in lines)
