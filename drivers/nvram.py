"""A VM's UEFI variable store on StorPool: ``T_OS_NVRAM=storpool[:template=<file> [type=block]]``
in its USER_TEMPLATE (reference addon-storpool.md §4 ``context``, §4b ``os.py``).

The volume ``<px>-sys-<VM>-NVRAM`` is made by the TM's ``context`` from the OVMF vars template
(a file of the front-end's ``OVMF_PATH``), follows the VM like its context ISO, and the deploy
tweak points the domain's ``<nvram>`` at ``/dev/storpool/<px>-sys-<VM>-NVRAM``.

Decided differently from the Bash add-on: the TM makes the volume only when the file part is
``storpool`` (the only case the domain uses it; Bash made one for any ``T_OS_NVRAM``), a missing
or unusable template is an error that stops the deploy (Bash logged it and deployed a VM whose
NVRAM device did not exist), and the template is a file of ``OVMF_PATH`` only: a user's VM
attribute never makes the front-end copy another of its files (``/etc/storpool.conf`` and its
token, for one) into a volume the guest reads.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from onestorpool.errors import InputError
from onestorpool.one import Vm

ATTRIBUTE = "T_OS_NVRAM"
ON_STORPOOL = "storpool"
# OVMF vars stores are 128 KiB to a few MiB; QEMU's pflash needs the device's exact size
TEMPLATE_MAX_BYTES = 64 << 20
SECTOR = 512


@dataclass(frozen=True)
class NvramRequest:
    """``T_OS_NVRAM`` parsed: ``<file>[:<key>=<value> ...]``."""

    file: str
    attributes: dict[str, str]

    @classmethod
    def of(cls, vm: Vm) -> NvramRequest | None:
        text = vm.user_template.get(ATTRIBUTE, "").strip()
        if not text:
            return None
        file, _, rest = text.partition(":")
        attributes = {}
        for word in rest.split():
            key, sep, value = word.partition("=")
            if not sep or not key:
                raise InputError(f"VM {vm.id}: {ATTRIBUTE}={text!r}: expected "
                                 "<file>[:key=value ...]")
            attributes[key] = value
        if attributes.get("type", "block") not in ("block", "file"):
            raise InputError(f"VM {vm.id}: {ATTRIBUTE}: type must be block or file, got "
                             f"{attributes['type']!r}")
        return cls(file.strip(), attributes)

    @property
    def on_storpool(self) -> bool:
        return self.file == ON_STORPOOL

    @property
    def device_type(self) -> str | None:
        """libvirt's ``<nvram type=...>`` (``block`` or ``file``), if asked for."""
        return self.attributes.get("type")


def on_storpool(vm: Vm) -> bool:
    """Whether the VM keeps its UEFI variables in ``<px>-sys-<VM>-NVRAM`` (a malformed
    ``T_OS_NVRAM`` counts as no: ``context`` refuses it before the VM can run)."""
    try:
        request = NvramRequest.of(vm)
    except InputError:
        return False
    return request is not None and request.on_storpool


def template_path(request: NvramRequest, ovmf_dir: Path, vm_id: int) -> Path:
    """The vars template ``template=`` names: a file name in ``ovmf_dir``, or an absolute
    path inside it."""
    name = request.attributes.get("template", "")
    if not name:
        raise InputError(f"VM {vm_id}: {ATTRIBUTE}=storpool needs template=<OVMF vars file> "
                         f"(a file of {ovmf_dir}) to initialise its NVRAM volume")
    if "\0" in name:
        raise InputError(f"VM {vm_id}: {ATTRIBUTE}: invalid template name")
    if name.startswith("/"):
        candidate = Path(os.path.normpath(name))
        if ovmf_dir != candidate.parent and ovmf_dir not in candidate.parents:
            raise InputError(f"VM {vm_id}: {ATTRIBUTE}: template {name} is not in the OVMF "
                             f"directory {ovmf_dir}")
        return candidate
    if "/" in name or name in (".", ".."):
        raise InputError(f"VM {vm_id}: {ATTRIBUTE}: template must be a file name in "
                         f"{ovmf_dir}, got {name!r}")
    return ovmf_dir / name


def read_template(path: Path, vm_id: int) -> bytes:
    """The template's bytes: a regular file, not empty, whole sectors, at most
    :data:`TEMPLATE_MAX_BYTES` (the admin's symbolic links in the OVMF directory are
    followed)."""
    try:
        # O_NONBLOCK: a FIFO or device put there answers fstat instead of hanging the open
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InputError(f"VM {vm_id}: NVRAM template {path.name} is not a regular "
                                 f"file ({path.parent})")
            size = info.st_size
            if size == 0 or size > TEMPLATE_MAX_BYTES or size % SECTOR:
                raise InputError(f"VM {vm_id}: NVRAM template {path.name} is {size} bytes: an "
                                 f"OVMF vars file is whole {SECTOR}-byte sectors, at most "
                                 f"{TEMPLATE_MAX_BYTES >> 20} MiB ({path.parent})")
            data = handle.read(size + 1)
    except OSError as exc:
        raise InputError(f"VM {vm_id}: NVRAM template {path.name}: {exc.strerror} "
                         f"({path.parent})") from None
    if len(data) != size:
        raise InputError(f"VM {vm_id}: NVRAM template {path.name} changed while read")
    return data
