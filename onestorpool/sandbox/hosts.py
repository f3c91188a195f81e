"""The sandbox's hosts: each a directory ``$ONESTORPOOL_SANDBOX_HOSTS/<name>/``.

Commands run locally with every absolute path put under the host's directory, and the
StorPool sandbox makes ``<dir>/dev/storpool/<name>`` the device of an attached volume. A
host's commands find its own ``virsh`` first on their ``PATH``: libvirt's test driver on the
host's state file, kept between commands (:mod:`onestorpool.sandbox.kvm_host`). The
drivers get these through ``ONESTORPOOL_HOSTS=onestorpool.sandbox.hosts:provider``
(:data:`ENV`), so product code never asks whether it runs in a sandbox.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onestorpool.hosts import FRONTEND, PROVIDER_ENV, DirectoryHost, Host, HostCommandError

ROOT_ENV = "ONESTORPOOL_SANDBOX_HOSTS"


class SandboxHost(DirectoryHost):
    """A directory host whose commands reach its hypervisor: its ``virsh`` on their PATH."""

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        from onestorpool.sandbox.kvm_host import host_path

        given = dict(env or {})
        path = given.get("PATH", os.environ.get("PATH", os.defpath))
        return {**given, "PATH": host_path(self.root, path)}

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, check: bool = True,
            timeout: float | None = None, env: Mapping[str, str] | None = None,
            ) -> subprocess.CompletedProcess[bytes]:
        return super().run(argv, stdin=stdin, check=check, timeout=timeout,
                           env=self._env(env))

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs["env"] = {**(kwargs.get("env") or os.environ), **self._env(kwargs.get("env"))}
        return super().popen(argv, **kwargs)


def env(root: Path | str) -> dict[str, str]:
    """The environment that makes a process's hosts the directories under ``root``."""
    return {PROVIDER_ENV: f"{__name__}:provider", ROOT_ENV: str(root)}


class DirectoryHosts:
    """Hosts under ``$ONESTORPOOL_SANDBOX_HOSTS`` (read at each call: tests change it)."""

    @staticmethod
    def root() -> Path:
        value = os.environ.get(ROOT_ENV)
        if not value:
            raise HostCommandError(f"{ROOT_ENV} is not set: where are the sandbox's hosts?")
        return Path(value)

    def get(self, name: str) -> Host:
        directory = self.root() / name
        if not directory.is_dir():
            raise HostCommandError(f"sandbox host {name!r} does not exist ({directory})")
        return SandboxHost(name, directory)

    def frontend(self) -> Host:
        (self.root() / FRONTEND).mkdir(parents=True, exist_ok=True)
        return self.get(FRONTEND)


def provider() -> DirectoryHosts:
    return DirectoryHosts()
