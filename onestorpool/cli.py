"""The ``onestorpool`` admin command: one entry point, subcommands loaded on demand.

Each subcommand lives in the module that owns the feature and exposes ``main(argv) -> int``;
this file only dispatches, so ``onestorpool --help`` stays instant.
"""

from __future__ import annotations

import importlib
import sys

from onestorpool import __version__
from onestorpool.errors import InputError, run_main

# (words, module, help). The longest matching words win.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("sandbox", "storpool"), "onestorpool.sandbox.storpool",
     "run the StorPool API sandbox cluster"),
    (("sandbox", "oned"), "onestorpool.sandbox.oned", "run the oned sandbox"),
    (("sandbox", "up"), "onestorpool.sandbox.up", "start both sandboxes with a configuration"),
    (("sandbox", "down"), "onestorpool.sandbox.up", "stop the sandboxes started by 'up'"),
    (("log",), "onestorpool.eventlog.cli", "audit, verify, export and replay the event log"),
    (("remote-send",), "onestorpool.subscribers.remote_send",
     "send tombstones of deleted images to the remote location"),
    (("config",), "onestorpool.config", "print the effective configuration (token hidden)"),
]


def usage() -> str:
    lines = [f"onestorpool {__version__}: StorPool storage add-on for OpenNebula", "", "commands:"]
    lines += [f"  {' '.join(words):18} {text}" for words, _, text in COMMANDS]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    for words, module_name, _ in sorted(COMMANDS, key=lambda c: -len(c[0])):
        if tuple(argv[: len(words)]) == words:
            module = importlib.import_module(module_name)
            # 'sandbox up/down' share a module and get their own verb as argv[0].
            rest = argv[len(words) - 1:] if module_name.endswith(".up") else argv[len(words):]
            return int(module.main(rest) or 0)
    raise InputError(f"unknown command {' '.join(argv)!r}; run 'onestorpool --help'")


def entry() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entry()
