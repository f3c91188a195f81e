"""Admin helpers for KVM hosts (the Bash add-on's ``misc/reserved.sh`` and
``spMigrateContext.sh``).

* ``onestorpool host reserved [HOST]``: the ``RESERVED_CPU``/``RESERVED_MEM`` a host should
  get so OpenNebula does not schedule VMs onto what StorPool's services hold: the CPUs and
  memory outside ``machine.slice`` (where libvirt runs the VMs), from the host's cgroup tree
  (v1 or v2). Append the output to the host: ``onehost update HOST --append FILE``.
* ``onestorpool context migrate VM``: a running VM's context ISO, still a file in the VM
  folder (deployed before the system datastore was StorPool's), copied onto
  ``<px>-sys-<VM>-<DISK>-iso`` and the CD-ROM switched to it.
"""

from __future__ import annotations

import argparse
import posixpath
from dataclasses import dataclass
from pathlib import Path

from onestorpool import hosts
from onestorpool.errors import InputError

CGROUP = "/sys/fs/cgroup"


def configure_reserved(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", nargs="?", default="",
                        help="the KVM host (ssh as oneadmin); default: this machine")
    parser.add_argument("--root", type=Path, default=None,
                        help="read /sys and /proc under this directory (a copy of a host's)")
    parser.set_defaults(run=run_reserved)


def run_reserved(args: argparse.Namespace) -> int:
    if args.root is not None:
        host: hosts.Host = hosts.DirectoryHost(args.host or "root", args.root)
    else:
        host = hosts.get(args.host) if args.host else hosts.Host("localhost", ssh=False)
    found = reserved(host)
    print(f'RESERVED_CPU="{found.cpu}"')
    print(f'RESERVED_MEM="{found.memory_kib}"')
    return 0


@dataclass(frozen=True)
class Reserved:
    cpu: int  # in OpenNebula's units: 100 per CPU
    memory_kib: int
    cgroup_version: int


def _read(host: hosts.Host, path: str) -> str | None:
    done = host.run(["cat", host.path(path)], check=False, timeout=30)
    return done.stdout.decode().strip() if done.returncode == 0 else None


def cpu_count(cpuset: str) -> int:
    """``0-3,8,10-11`` → 7."""
    total = 0
    for part in filter(None, (p.strip() for p in cpuset.split(","))):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise InputError(f"not a CPU list: {cpuset!r}")
        total += int(last or first) - int(first) + 1
    return total


def _limit(text: str | None) -> int | None:
    """A memory limit in bytes; ``None`` when unlimited (``max``, v1's huge number)."""
    if not text or text == "max" or not text.isdigit() or int(text) >= 1 << 60:
        return None
    return int(text)


def reserved(host: hosts.Host) -> Reserved:
    """CPUs outside machine.slice's cpuset x 100, and memory outside its limit (KiB).
    Without a machine.slice limit, StorPool's own slice limits are what is reserved."""
    v2 = _read(host, f"{CGROUP}/cgroup.controllers") is not None
    meminfo = _read(host, "/proc/meminfo") or ""
    total_kib = next((int(line.split()[1]) for line in meminfo.splitlines()
                      if line.startswith("MemTotal:")), 0)
    if not total_kib:
        raise InputError(f"{host.name}: no MemTotal in /proc/meminfo")
    def cpus(slice_dir: str) -> str | None:
        if v2:
            return (_read(host, f"{CGROUP}/{slice_dir}cpuset.cpus.effective")
                    or _read(host, f"{CGROUP}/{slice_dir}cpuset.cpus"))
        return _read(host, f"{CGROUP}/cpuset/{slice_dir}cpuset.cpus")

    def memory(slice_dir: str) -> int | None:
        if v2:
            return _limit(_read(host, f"{CGROUP}/{slice_dir}memory.max"))
        return _limit(_read(host, f"{CGROUP}/memory/{slice_dir}memory.limit_in_bytes"))

    all_cpus = cpus("")
    if not all_cpus:
        raise InputError(f"{host.name}: no cpuset in the cgroup tree ({CGROUP})")
    machine_cpus = cpus("machine.slice/")
    if machine_cpus:
        reserved_cpus = cpu_count(all_cpus) - cpu_count(machine_cpus)
    else:
        reserved_cpus = cpu_count(cpus("storpool.slice/") or "")
    machine_memory = memory("machine.slice/")
    if machine_memory is not None:
        reserved_kib = max(0, total_kib - machine_memory // 1024)
    else:
        reserved_kib = (memory("storpool.slice/") or 0) // 1024
    return Reserved(max(0, reserved_cpus) * 100, reserved_kib, 2 if v2 else 1)


# -- context migrate ---------------------------------------------------------------------------


def configure_context_migrate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vm", type=int, help="the VM id")
    parser.set_defaults(run=run_context_migrate)


def run_context_migrate(args: argparse.Namespace) -> int:
    print(context_migrate(args.vm))
    return 0


def context_migrate(vm_id: int) -> str:
    from onestorpool import config as config_module
    from onestorpool import oneapi
    from onestorpool.drivers.storage import MIB, Tags, create_volume, round_up
    from onestorpool.drivers.tm import attach_exclusively
    from onestorpool.storpool import StorPoolClient

    vm = oneapi.vm_info(vm_id)
    if vm.context_disk_id is None:
        raise InputError(f"VM {vm_id} has no context disk")
    if vm.system_ds_id is None or not vm.hostname:
        raise InputError(f"VM {vm_id} is not deployed")
    datastore = oneapi.datastore_info(vm.system_ds_id)
    if datastore.tm_mad != "storpool":
        raise InputError(f"VM {vm_id}: its system datastore {datastore.id} is not StorPool's "
                         f"(TM_MAD={datastore.tm_mad})")
    config = config_module.load().for_datastore(datastore.template, f"datastore {datastore.id}")
    naming = config.naming()
    host = hosts.get(vm.hostname)
    path = posixpath.join(datastore.base_path.rstrip("/"), str(vm.id),
                          f"disk.{vm.context_disk_id}")
    if host.run(["test", "-L", host.path(path)], check=False).returncode == 0:
        return f"VM {vm_id}: the context disk is already a StorPool volume"
    size = host.run(["stat", "-c", "%s", host.path(path)], timeout=30).stdout.decode().strip()
    if not size.isdigit():
        raise InputError(f"VM {vm_id}: cannot read the size of {path}")
    volume = naming.context(vm.id, vm.context_disk_id)
    target = vm.context.get("TARGET", "") if vm.context is not None else ""
    with StorPoolClient.from_config(config) as sp:
        create_volume(sp, volume, size=round_up(max(int(size), 1), MIB),
                      template=naming.template(datastore.id),
                      tags=Tags.from_config(config).for_vm(vm.id, vm.context_disk_id, "CNTXT"))
        attach_exclusively(sp, volume, hosts.client_id(host, config), "rw",
                           config["ATTACH_TIMEOUT"])
        device = host.wait_for_device(volume)
        host.run(["dd", f"if={host.path(path)}", f"of={device}", "bs=1M", "conv=notrunc,fsync",
                  "status=none"], timeout=600)
        saved = f"{host.path(path)}.file"
        host.run(["mv", host.path(path), saved])
        host.run(["ln", "-sfn", device, host.path(path)])
        if target and vm.deploy_id:
            host.run(["virsh", "-c", config["LIBVIRT_URI"], "change-media", vm.deploy_id,
                      target, host.path(path), "--update", "--live", "--block"], timeout=60)
        host.run(["rm", "-f", saved])
    return f"VM {vm_id}: context disk {vm.context_disk_id} moved to StorPool volume {volume}"

