"""A running VM's libvirt domain on its host, as the add-on reads it: the XML (hardened
parser, checked to be the domain asked for) and which of its ``<disk>`` elements are the VM's
StorPool volatile or context disks still defined as files (``volatile2dev`` makes them block
devices at deploy; a VM deployed before it runs with files, which a live migration would
copy as local data). Used by the subscriber's domain fix and by ``migrate-tweaks``.
"""

from __future__ import annotations

import posixpath
import re

from lxml import etree

from onestorpool.drivers.vmm_tweaks import TweakInput
from onestorpool.errors import AddonError
from onestorpool.hosts import Host
from onestorpool.naming import Naming
from onestorpool.one import Vm, parse_xml

_DISK_N = re.compile(r"/disk\.(\d+)$")
MAX_DOMAIN_BYTES = 4 << 20  # a domain XML is a few KiB; a host sending more is refused
# virsh's words for a domain libvirt does not have (virsh's lookup, libvirt's VIR_ERR_NO_DOMAIN)
NOT_FOUND = re.compile(r"failed to get domain|Domain not found")


class DomainError(AddonError):
    """A host's answer about a domain cannot be used."""


def target_of(element: etree._Element) -> str:
    target = element.find("target")
    return "" if target is None else target.get("dev", "")


class StorPoolDisks:
    """Which ``<disk>`` elements of a domain are the VM's StorPool volatile or context disks:
    the deploy tweak's selection (:meth:`TweakInput.storpool_disks`) restricted to disks
    without an image, with each one's DISK_ID read from a source that is the VM folder's
    ``disk.N`` linked (on the host) to that disk's StorPool device, or the device itself."""

    def __init__(self, vm: Vm, host: Host, naming: Naming):
        self.vm, self.host, self.naming = vm, host, naming
        # "/dev/storpool/" as the host's commands see it
        self.devices = posixpath.dirname(host.device("volume")) + "/"
        self.given = TweakInput(vm, naming=naming)
        self.volatile = {d.disk_id for d in vm.disks if d.image_id is None}
        if vm.context_disk_id is not None:
            self.volatile.add(vm.context_disk_id)
        self._links: dict[str, str] = {}

    def files(self, domain: etree._Element) -> list[etree._Element]:
        """Those still ``type="file"``."""
        return [element for element, _disk in self.given.storpool_disks(domain, self.disk_id)
                if element.get("type") == "file"]

    def disk_id(self, element: etree._Element) -> int | None:
        source = element.find("source")
        path = "" if source is None else (source.get("file") or source.get("dev") or "")
        match = _DISK_N.search(path)
        if match is None:
            return self._device_of(path)
        disk_id = int(match[1])
        if disk_id not in self.volatile:
            return None
        return disk_id if self._device_of(self._link(path)) == disk_id else None

    def _link(self, path: str) -> str:
        """Where ``path`` links to on the host ("" when it is no link)."""
        if path not in self._links:
            seen = self.host.path(path)
            done = self.host.run(["readlink", "--", seen], check=False, timeout=30)
            target = done.stdout.decode("utf-8", "replace").strip() \
                if done.returncode == 0 else ""
            if target and not target.startswith("/"):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(seen), target))
            self._links[path] = target
        return self._links[path]

    def _device_of(self, path: str) -> int | None:
        """The DISK_ID whose volatile or context volume ``path`` is the device of."""
        if not path.startswith(self.devices):
            return None
        parsed = self.naming.parse(path[len(self.devices):])
        if parsed is None or parsed.kind not in ("volatile", "context") \
                or parsed.vm_id != self.vm.id or parsed.disk_id not in self.volatile:
            return None
        return parsed.disk_id


def read_domain(host: Host, argv: list[str], deploy_id: str) -> etree._Element | None:
    """A domain XML from the host (``None``: libvirt there has no such domain), parsed with
    the project's hardened parser and checked to be the domain asked for (a hostile or
    confused host gets its answer refused). Any other failure raises: the effect is retried.
    """
    done = host.run(argv, check=False, timeout=60)
    what = f"{host.name}: domain {deploy_id}"
    if done.returncode != 0:
        error = done.stderr.decode("utf-8", "replace")
        if NOT_FOUND.search(error):
            return None
        lines = [line.strip() for line in error.splitlines() if line.strip()]
        raise DomainError(f"{what}: virsh dumpxml failed (exit {done.returncode}): "
                          f"{lines[-1] if lines else 'no error output'}")
    try:
        domain = parse_xml(done.stdout, what, max_bytes=MAX_DOMAIN_BYTES)
    except AddonError as exc:
        raise DomainError(str(exc)) from None
    if domain.tag != "domain":
        raise DomainError(f"{what}: expected a libvirt <domain>, got <{domain.tag}>")
    if deploy_id not in ((domain.findtext("name") or "").strip(),
                         (domain.findtext("uuid") or "").strip()):
        raise DomainError(f"{what}: the host answered with another domain")
    return domain
