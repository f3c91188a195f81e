"""Reaching hosts: the front-end, bridges and KVM nodes, behind one small interface.

In production a host is reached with ``ssh`` as oneadmin (the front-end runs commands
locally) and StorPool devices are ``/dev/storpool/<name>``. Drivers only use :class:`Host`,
obtained from :func:`get` and :func:`frontend`, which ask the host provider:
:class:`SshHosts` unless ``$ONESTORPOOL_HOSTS`` names another (``module:callable``; the
sandbox's directory hosts are one, in :mod:`onestorpool.sandbox.hosts`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from onestorpool.errors import AddonError, ConfigError

PROVIDER_ENV = "ONESTORPOOL_HOSTS"  # module:callable giving another HostProvider
SSH_CONFIG_ENV = "ONESTORPOOL_SSH_CONFIG"  # an ssh_config(5) file instead of ~/.ssh/config
FRONTEND = "localhost"  # the name oned gives the front-end in ``fe:`` paths


class HostCommandError(AddonError):
    """A command on a host failed; the message carries the host and the command's stderr."""


class Host:
    """One machine the add-on acts on. ``name`` is the OpenNebula host name."""

    direct_io = True  # its devices are block devices: O_DIRECT (qemu-img -t none) works

    def __init__(self, name: str, *, ssh: bool):
        self.name, self.ssh = name, ssh

    def __repr__(self) -> str:
        return f"Host({self.name!r})"

    def device(self, volume: str) -> str:
        """The path of a StorPool volume or snapshot attached to this host."""
        return self.path(f"/dev/storpool/{volume}")

    def path(self, absolute: str) -> str:
        """An absolute path on this host as the commands run for it see it."""
        return absolute

    def wait_for_device(self, volume: str, timeout: float = 30.0) -> str:
        """StorPool creates the link asynchronously on real hosts; wait for it."""
        device = self.device(volume)
        deadline = time.monotonic() + timeout
        while not self._exists(device):
            if time.monotonic() > deadline:
                raise HostCommandError(f"{self.name}: {device} did not appear in {timeout:.0f}s")
            time.sleep(0.1)
        return device

    def _exists(self, path: str) -> bool:
        if not self.ssh:
            return os.path.exists(path)
        return self.run(["test", "-e", path], check=False).returncode == 0

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, check: bool = True,
            timeout: float | None = None, env: Mapping[str, str] | None = None,
            ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` on the host; a failure raises with the command's last stderr line."""
        command = self._ssh(argv) if self.ssh else list(argv)
        full_env = None if env is None else {**os.environ, **env}
        try:
            result = subprocess.run(command, input=stdin, capture_output=True, check=False,
                                    timeout=timeout, env=full_env)
        except FileNotFoundError as exc:
            raise HostCommandError(f"{self.name}: {argv[0]}: command not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise HostCommandError(f"{self.name}: {argv[0]} timed out") from exc
        if check and result.returncode != 0:
            raise HostCommandError(f"{self.name}: {shlex.join(argv)[:120]} failed "
                                   f"(exit {result.returncode}): {_last_line(result.stderr)}")
        return result

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen[bytes]:
        """Start ``argv`` on the host with pipes the caller connects (streaming copies)."""
        command = self._ssh(argv) if self.ssh else list(argv)
        return subprocess.Popen(command, **kwargs)

    def _ssh(self, argv: Sequence[str]) -> list[str]:
        """``ssh`` as oneadmin runs it to the host: never a password prompt; the client
        configuration of ``ONESTORPOOL_SSH_CONFIG`` when set."""
        config = os.environ.get(SSH_CONFIG_ENV)
        return ["ssh", "-o", "BatchMode=yes", *(["-F", config] if config else []), self.name,
                shlex.join(argv)]


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()
             if line.strip()]
    return lines[-1] if lines else "no error output"


class DirectoryHost(Host):
    """A host whose filesystem is under a local directory (a copy of a host's ``/sys``
    for ``onestorpool host reserved --root``; the sandbox's hosts): commands run here with
    every absolute path put under ``root``."""

    direct_io = False  # devices are files: no O_DIRECT on every filesystem

    def __init__(self, name: str, root: Path):
        super().__init__(name, ssh=False)
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DirectoryHost({self.name!r}, {str(self.root)!r})"

    def path(self, absolute: str) -> str:
        return str(self.root / absolute.lstrip("/"))


class HostProvider(Protocol):
    def get(self, name: str) -> Host: ...

    def frontend(self) -> Host: ...


class SshHosts:
    """Production: the front-end runs commands itself, every other host over ssh."""

    def get(self, name: str) -> Host:
        return Host(name, ssh=name not in (FRONTEND, os.uname().nodename))

    def frontend(self) -> Host:
        """Named as its ``[hostname]`` section of storpool.conf names it."""
        return Host(os.uname().nodename, ssh=False)


_PROVIDERS: dict[str, HostProvider] = {}


def provider() -> HostProvider:
    spec = os.environ.get(PROVIDER_ENV, "")
    if spec not in _PROVIDERS:
        if not spec:
            _PROVIDERS[spec] = SshHosts()
        else:
            import importlib

            module, _, attribute = spec.partition(":")
            try:
                factory = getattr(importlib.import_module(module), attribute)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ConfigError(f"{PROVIDER_ENV}={spec!r}: {exc}") from None
            _PROVIDERS[spec] = factory()
    return _PROVIDERS[spec]


def get(name: str) -> Host:
    """The host called ``name`` (``localhost`` or the front-end's name: run locally)."""
    if not name or "/" in name or name.startswith("-"):
        raise ConfigError(f"invalid host name {name!r}")
    return provider().get(name)


def frontend() -> Host:
    """The front-end itself."""
    return provider().frontend()


def client_id(host: Host, config, host_template: Mapping[str, str] | None = None) -> int:
    """The StorPool client id (``SP_OURID``) of a host, tried in ``STORPOOL_CLIENT_ID_SOURCES``
    order: LOCAL (front-end's storpool.conf ``[host]`` section, also ``host.COMMON_DOMAIN``),
    ONEHOST (the OpenNebula host template), FROMHOST (the host's own storpool.conf).

    The old add-on's HOSTHOSTNAME source called an undefined function; it is ignored here,
    as are BRIDGELIST and CLONEGW, which only relayed the LOCAL lookup over ssh.
    """
    from onestorpool import config as config_module

    names = [host.name]
    if config["COMMON_DOMAIN"]:
        names.append(f"{host.name}.{config['COMMON_DOMAIN']}")
    tried = []
    for source in config["STORPOOL_CLIENT_ID_SOURCES"]:
        value = None
        if source == "LOCAL":
            for name in names:
                value = value or config_module.storpool_conf_section(name).get("SP_OURID")
        elif source == "ONEHOST" and host_template:
            value = host_template.get("SP_OURID")
        elif source == "FROMHOST":
            value = _remote_ourid(host)
        tried.append(source)
        if value and value.strip().isdigit() and 0 < int(value) < 4096:
            return int(value)
    raise ConfigError(f"no StorPool client id (SP_OURID) for host {host.name!r}; tried "
                      f"{', '.join(tried)}: add [{host.name}] SP_OURID=<id> to /etc/storpool.conf"
                      " or SP_OURID to the host template")


def _remote_ourid(host: Host) -> str | None:
    result = host.run(["cat", host.path("/etc/storpool.conf")], check=False, timeout=10)
    if result.returncode != 0:
        return None
    from onestorpool.config import storpool_sections

    text = result.stdout.decode("utf-8", "replace")
    try:
        return storpool_sections(text, f"{host.name}:/etc/storpool.conf",
                                  host.name).get("SP_OURID")
    except ConfigError:
        return None
