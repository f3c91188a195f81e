"""KVM local actions (``VM_MAD ... -l deploy=deploy-tweaks,attach_disk=attach_disk.storpool,
save=tmsave,restore=tmrestore,snapshotcreate=snapshot_create-storpool,...``): one function
per action, run on the front-end by ``one_vmm_exec`` with oned's parameters, the VM id and
the host appended, and the action's data base64-encoded on stdin (the domain XML for deploy,
``VMM_DRIVER_ACTION_DATA`` for the others). Reference: addon-storpool.md §4b.

The hypervisor's own work stays with the host's native KVM scripts
(``<SCRIPTS_REMOTE_DIR>/vmm/kvm/<action>``), reached through :mod:`onestorpool.hosts`; these
actions do the StorPool part around them.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from onestorpool import hosts
from onestorpool.config import Config
from onestorpool.drivers import vmm_tweaks
from onestorpool.drivers.host_domains import StorPoolDisks, read_domain, target_of
from onestorpool.errors import InputError
from onestorpool.one import Datastore, Vm, VmmAction, decode_payload, parse_vmm_action

log = logging.getLogger("onestorpool.drivers")


@dataclass
class VmmContext:
    action: str
    args: list[str]
    stdin: str
    config: Config  # the add-on rc; :meth:`for_vm` adds the system datastore's attributes
    load_vm: Callable[[int], Vm]
    load_datastore: Callable[[int], Datastore]
    remotes: str = ""  # oned's remotes directory (where this action's executable is)
    event: dict[str, Any] = field(default_factory=dict)
    vm_id: int | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _sp: Any = None

    def close(self) -> None:
        self._stack.close()

    def action_data(self) -> VmmAction:
        if not self.stdin.strip():
            raise InputError(f"{self.action}: no VMM_DRIVER_ACTION_DATA on stdin")
        data = parse_vmm_action(self.stdin.strip())
        self.vm_id = data.vm.id
        return data

    def datastore_config(self, vm: Vm) -> tuple[Datastore, Config]:
        """The VM's system datastore and the configuration it gives."""
        if vm.system_ds_id is None:
            raise InputError(f"VM {vm.id} has no history record (no system datastore)")
        datastore = self.load_datastore(vm.system_ds_id)
        self.config = self.config.for_datastore(datastore.template,
                                                f"datastore {datastore.id}")
        return datastore, self.config

    @property
    def sp(self) -> Any:
        if self._sp is None:
            from onestorpool.storpool import StorPoolClient

            self._sp = self._stack.enter_context(StorPoolClient.from_config(self.config))
        return self._sp

    def native(self, host: hosts.Host, action: str, argv: list[str], stdin: bytes,
               timeout: float = 600) -> str:
        """The host's native ``vmm/kvm/<action>``; its stdout."""
        remote_dir = (self.config.extra.get("SCRIPTS_REMOTE_DIR")
                      or os.environ.get("SCRIPTS_REMOTE_DIR") or "/var/tmp/one")
        script = host.path(posixpath.join(remote_dir, "vmm", "kvm", action))
        done = host.run([script, *argv], stdin=stdin, timeout=timeout, check=False)
        if done.returncode != 0:  # the hypervisor's reason first: oned shows 100 characters
            reason = _last_line(done.stderr.decode("utf-8", "replace")) or "no error output"
            raise hosts.HostCommandError(f"{reason} (native {action} on {host.name}, exit "
                                         f"{done.returncode})")
        return done.stdout.decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_id(text: str, what: str) -> int:
    if not text.lstrip("-").isdigit():
        raise InputError(f"{what} must be an integer, got {text!r}")
    return int(text)


# -- deploy --------------------------------------------------------------------------------


def deploy(ctx: VmmContext) -> str:
    """``deploy-tweaks <deployment file> <host> <vm> <host>``, the domain on stdin: the
    tweaks of :mod:`vmm_tweaks` applied, then the host's native ``deploy`` with the result;
    prints the domain id it printed."""
    if len(ctx.args) < 3:
        raise InputError("deploy: expected deployment_file host vm_id [host]")
    dfile, host_name = ctx.args[0], ctx.args[1]
    vm_id = parse_id(ctx.args[2], "vm_id")
    ctx.vm_id = vm_id
    domain = decode_payload(ctx.stdin.strip(), "domain XML") if ctx.stdin.strip() else b""
    if not domain:
        domain = _read_frontend(dfile)
    vm = ctx.load_vm(vm_id)
    datastore, config = ctx.datastore_config(vm)
    names = [t.name for t in vmm_tweaks.TWEAKS
             if vmm_tweaks.enabled(t, config["DEPLOY_TWEAKS"], vm)]
    given = vmm_tweaks.TweakInput(vm, config.extra, config.naming())
    outcome = vmm_tweaks.apply_tweaks(domain, given, names)
    ctx.event.update(host=host_name, tweaks=outcome.applied, dropped=outcome.dropped)
    remote = posixpath.join(datastore.base_path.rstrip("/"), str(vm.id),
                            posixpath.basename(dfile))
    host = hosts.get(host_name)
    output = ctx.native(host, "deploy", [host.path(remote), host_name, str(vm.id), host_name],
                        outcome.xml.encode())
    domain_id = _last_line(output)
    if not domain_id:
        raise InputError(f"deploy: the native deploy on {host_name} printed no domain id")
    ctx.event["domain"] = domain_id
    return domain_id


def _read_frontend(path: str) -> bytes:
    try:
        with open(hosts.frontend().path(path), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InputError(f"deploy: no domain on stdin and {path} unreadable: "
                         f"{exc.strerror}") from None


# -- attach_disk ------------------------------------------------------------------------------


def attach_disk(ctx: VmmContext) -> str:
    """``attach_disk.storpool <domain> <source> <target> <target index> <drv msg?> <vm>
    <host>``: a CD-ROM into an empty persistent drive (``change-media --insert``); a
    StorPool disk handed to the native ``attach_disk`` as a block device."""
    data = ctx.action_data()
    vm = data.vm
    disk = vm.attaching_disk
    if disk is None:
        raise InputError(f"attach_disk: VM {vm.id} has no disk being attached (ATTACH=YES)")
    host = hosts.get(data.host)
    ctx.datastore_config(vm)
    ctx.event.update(disk_id=disk.disk_id, host=host.name)
    params = ctx.args[:-2]  # oned's parameters, without the id and host appended
    if disk.is_cdrom and (disk.get("DEV_PREFIX") or disk.target[:2]) == "hd":
        target = insert_cdrom(ctx, host, data.deploy_id, disk.target, data.disk_target_path)
        ctx.event.update(inserted=target)
        return ""
    original = payload = ctx.stdin.strip()
    ours = disk.tm_mad == "storpool" if disk.image_id is not None else \
        vm.system_tm_mad == "storpool"
    if ours and (disk.disk_type.upper(), disk.type.upper()) not in (
            ("BLOCK", "BLOCK"), ("BLOCK", "CDROM")):
        payload = _as_block(payload)
        ctx.event["as_block"] = True
    # the action's XML goes as it came: on stdin, and as a parameter where oned put it there
    params = [payload if p.strip() == original else p for p in params]
    ctx.native(host, "attach_disk", [*params, str(vm.id), host.name], payload.encode())
    return ""


def _as_block(payload: str) -> str:
    """The action's XML with the attaching DISK's ``DISK_TYPE=BLOCK`` and ``TYPE=BLOCK``
    (``CDROM`` stays), base64 again when it came so."""
    raw = decode_payload(payload, "VMM driver action")
    root = etree.fromstring(raw, etree.XMLParser(resolve_entities=False, no_network=True))
    for disk in root.iterfind("VM/TEMPLATE/DISK"):
        if (disk.findtext("ATTACH") or "").upper() != "YES":
            continue
        for tag, value in (("DISK_TYPE", "BLOCK"),
                           ("TYPE", "CDROM" if (disk.findtext("TYPE") or "").upper() == "CDROM"
                            else "BLOCK")):
            element = disk.find(tag)
            if element is None:
                element = etree.SubElement(disk, tag)
            element.text = value
    text = etree.tostring(root)
    return text.decode() if payload.lstrip().startswith("<") else base64.b64encode(
        text).decode()


def insert_cdrom(ctx: VmmContext, host: hosts.Host, domain: str, target: str,
                 source: str) -> str:
    """The CD-ROM into the domain's drive ``target`` if it is empty, else into the first
    empty ``hd*`` drive (the deploy tweak made them)."""
    uri = ctx.config["LIBVIRT_URI"]
    root = _domain(host, uri, domain)
    empty = [d.find("target").get("dev") for d in root.iterfind("devices/disk")
             if d.get("device") == "cdrom" and d.find("source") is None
             and d.find("target") is not None
             and d.find("target").get("dev", "").startswith("hd")]
    if not empty:
        raise InputError(f"attach_disk: domain {domain} has no empty CD-ROM drive to insert "
                         "into (deploy it with the persistent-cdrom tweak)")
    chosen = target if target in empty else empty[0]
    host.run(["virsh", "-c", uri, "change-media", domain, chosen, source, "--insert",
              "--live", "--block"], timeout=60)
    return chosen


def detach_disk(ctx: VmmContext) -> str:
    """``detach_disk.storpool``: a CD-ROM sitting in one of the persistent drives is ejected
    (``change-media --eject``), the drive stays; anything else goes to the native
    ``detach_disk``."""
    data = ctx.action_data()
    vm = data.vm
    disk = vm.attaching_disk
    host = hosts.get(data.host)
    ctx.datastore_config(vm)
    params = ctx.args[:-2]
    if disk is not None and disk.is_cdrom:
        uri = ctx.config["LIBVIRT_URI"]
        root = _domain(host, uri, data.deploy_id)
        for element in root.iterfind("devices/disk"):
            source, target = element.find("source"), element.find("target")
            if (element.get("device") == "cdrom" and source is not None and target is not None
                    and target.get("dev", "").startswith("hd")
                    and data.disk_target_path in (source.get("file"), source.get("dev"))):
                host.run(["virsh", "-c", uri, "change-media", data.deploy_id,
                          target.get("dev"), "--eject", "--live", "--force"], timeout=60)
                ctx.event.update(disk_id=disk.disk_id, ejected=target.get("dev"))
                return ""
    ctx.event.update(disk_id=None if disk is None else disk.disk_id, host=host.name)
    ctx.native(host, "detach_disk", [*params, str(vm.id), host.name], ctx.stdin.encode())
    return ""


# -- save/restore with the checkpoint on StorPool ---------------------------------------------


def tmsave(ctx: VmmContext) -> str:
    """``tmsave <domain> <checkpoint> <host> <vm> <host>``: the system datastore's TM
    ``presave``, the native ``save``, the TM ``postsave`` (each TM step only when the TM has
    it). With StorPool's TM and ``SP_CHECKPOINT_BD=1`` the checkpoint path is a link to a
    StorPool volume while the hypervisor writes it (reference §4 presave...)."""
    data = ctx.action_data()
    if len(ctx.args) < 3:
        raise InputError("save: expected domain checkpoint host")
    domain, checkpoint, host_name = ctx.args[:3]
    return _with_tm(ctx, data, "save", checkpoint, host_name,
                    [domain, checkpoint, host_name])


def tmrestore(ctx: VmmContext) -> str:
    """``tmrestore <checkpoint> <host> <domain> <vm> <host>``: TM ``prerestore``, the native
    ``restore``, TM ``postrestore`` (which deletes the checkpoint volume). Without
    ``SP_CHECKPOINT_BD``, a checkpoint the subscriber moved onto ``<px>-sys-<VM>-checkpoint``
    (or the Bash add-on archived there) is written back to the path first, and the volume
    removed once the restore succeeded (:mod:`onestorpool.subscribers.checkpoint`)."""
    data = ctx.action_data()
    if len(ctx.args) < 3:
        raise InputError("restore: expected checkpoint host domain")
    checkpoint, host_name, domain = ctx.args[:3]
    return _with_tm(ctx, data, "restore", checkpoint, host_name,
                    [checkpoint, host_name, domain])


def _with_tm(ctx: VmmContext, data: VmmAction, action: str, checkpoint: str, host_name: str,
             params: list[str]) -> str:
    vm = data.vm
    datastore = data.datastore
    ds_id = datastore.id if datastore is not None else vm.system_ds_id
    tm_mad = datastore.tm_mad if datastore is not None else vm.system_tm_mad
    ctx.datastore_config(vm)
    host = hosts.get(host_name)
    tm_args = [f"{host_name}:{checkpoint}", str(vm.id), str(ds_id)]
    ctx.event.update(host=host_name, checkpoint=checkpoint, tm=tm_mad)
    archived = action == "restore" and tm_mad == "storpool" and not ctx.config[
        "SP_CHECKPOINT_BD"]
    if archived:  # the subscriber may have moved the file onto its volume: bring it back
        from onestorpool.drivers import checkpoint_archive as archive

        with archive.locked(vm.id):
            ctx.event["checkpoint_from"] = archive.bring_back(
                ctx.sp, ctx.config, vm.id, archive.Place(host, checkpoint))
    ran = []
    if _tm(ctx, tm_mad, f"pre{action}", tm_args):
        ran.append(f"pre{action}")
    native = [host.path(checkpoint) if p == checkpoint else p for p in params]
    try:
        output = ctx.native(host, action, [*native, str(vm.id), host_name],
                            ctx.stdin.encode())
    except Exception:
        if action == "save" and ran:  # nothing usable was written: no checkpoint volume left
            _tm(ctx, tm_mad, "postrestore", tm_args, check=False)
        raise
    finally:
        ctx.event["tm_steps"] = ran
    if _tm(ctx, tm_mad, f"post{action}", tm_args):
        ran.append(f"post{action}")
    if archived:  # the VM runs again: its archived checkpoint is nobody's data now
        with archive.locked(vm.id):
            ctx.event["checkpoint_removed"] = archive.forget(ctx.sp, ctx.config, vm.id)
    return _last_line(output) if action == "restore" else ""


def _tm(ctx: VmmContext, tm_mad: str, action: str, args: list[str], check: bool = True
        ) -> bool:
    """``remotes/tm/<tm_mad>/<action> args`` when the TM has that action."""
    import subprocess

    if not tm_mad or "/" in tm_mad:
        return False
    script = os.path.join(ctx.remotes, "tm", tm_mad, action)
    if not os.access(script, os.X_OK):
        return False
    done = subprocess.run([script, *args], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0 and check:
        reasons = [line.strip() for line in done.stderr.splitlines() if line.strip()
                   and not line.startswith(("ERROR:", "INFO:", "WARN:", "DEBUG:"))]
        raise InputError(f"{action} ({tm_mad}): "
                         f"{'; '.join(reasons) or _last_line(done.stderr) or 'failed'}")
    return True


# -- live migration --------------------------------------------------------------------------


def uncached(domain: etree._Element) -> bool:
    """Every disk of the domain has ``cache="none"``: its data is on shared storage with no
    host cache to lose, so ``virsh migrate --unsafe`` is safe (libvirt refuses file disks
    it cannot prove shared without it)."""
    disks = domain.findall("devices/disk[@device='disk']")
    return bool(disks) and all(d.find("driver") is not None
                               and d.find("driver").get("cache") == "none" for d in disks)


def migrate(ctx: VmmContext) -> str:
    """``migrate-tweaks <domain> <destination> <source> <vm> <source>``: ``virsh migrate
    --live`` on the source host with ``MIGRATE_OPTIONS`` (add-on rc), ``--unsafe`` added only
    when every disk of the running domain has ``cache="none"`` (and taken out otherwise).

    A VM deployed before the ``volatile2dev`` tweak runs its StorPool volatile and context
    disks as files (the VM folder's ``disk.N``, a link to ``/dev/storpool/...``): libvirt
    would copy them as local data or refuse. The destination then gets, with ``--xml``, the
    migratable definition with those disks as the block devices they are (the Bash add-on's
    migrate-tweaks passed ``--xml`` too); otherwise no ``--xml``: libvirt's own."""
    data = ctx.action_data()
    if len(ctx.args) < 3:
        raise InputError("migrate: expected domain destination source")
    domain, destination, source = ctx.args[:3]
    _datastore, config = ctx.datastore_config(data.vm)
    host = hosts.get(source)
    virsh = ["virsh", "-c", config["LIBVIRT_URI"]]
    definition = _domain(host, config["LIBVIRT_URI"], domain, "--migratable")
    unsafe = uncached(definition)
    options = [o for o in config["MIGRATE_OPTIONS"].split()
               if o != "--unsafe"] + (["--unsafe"] if unsafe else [])
    converted = [target_of(element) for element in
                 StorPoolDisks(data.vm, host, config.naming()).files(definition)
                 if vmm_tweaks.file_to_block(element)]
    target = f"qemu+ssh://{destination}/system"
    if converted:
        host.run([*virsh, "migrate", "--live", *options, "--xml", "/dev/stdin", domain,
                  target], stdin=etree.tostring(definition), timeout=3600)
    else:
        host.run([*virsh, "migrate", "--live", *options, domain, target], timeout=3600)
    ctx.event.update(source=source, destination=destination, unsafe=unsafe,
                     converted_to_block=converted)
    return ""


def _domain(host: hosts.Host, uri: str, domain: str, *options: str) -> etree._Element:
    found = read_domain(host, ["virsh", "-c", uri, "dumpxml", *options, domain], domain)
    if found is None:
        raise InputError(f"{host.name} runs no domain {domain}")
    return found


ACTIONS: dict[str, Callable[[VmmContext], str]] = {
    "deploy": deploy, "attach_disk": attach_disk, "detach_disk": detach_disk,
    "save": tmsave, "restore": tmrestore, "migrate": migrate,
}
