"""The sandbox's hosts: each a directory ``$ONESTORPOOL_SANDBOX_HOSTS/<name>/``.

Commands run locally with every absolute path put under the host's directory, and the
StorPool sandbox makes ``<dir>/dev/storpool/<name>`` the device of an attached volume. The
drivers get these through ``ONESTORPOOL_HOSTS=onestorpool.sandbox.hosts:provider``
(:data:`ENV`), so product code never asks whether it runs in a sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path

from onestorpool.hosts import FRONTEND, PROVIDER_ENV, DirectoryHost, Host, HostCommandError

ROOT_ENV = "ONESTORPOOL_SANDBOX_HOSTS"


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
        return DirectoryHost(name, directory)

    def frontend(self) -> Host:
        (self.root() / FRONTEND).mkdir(parents=True, exist_ok=True)
        return self.get(FRONTEND)


def provider() -> DirectoryHosts:
    return DirectoryHosts()
