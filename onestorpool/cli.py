"""The ``onestorpool`` admin command: one argparse tree, its leaves filled on demand.

Every command is a node of one :class:`argparse.ArgumentParser` tree, so ``onestorpool
--help``, ``onestorpool sandbox --help`` and ``onestorpool sandbox up --help`` all work and
a mistake anywhere is an argparse usage error (exit 2). The options of a command come from
the module that owns the feature (``configure(parser)`` sets them and ``run``); only the
module of the command being run is imported, so ``onestorpool --help`` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from onestorpool import __version__
from onestorpool.errors import InputError, run_main


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    module: str
    help: str
    # the module's function adding the options (it sets ``run``); None: the module parses
    # its own arguments with ``main(argv)``
    configure: str | None = "configure"
    # the command runs side-effect handlers: the composition root registers them first
    runs_effects: bool = False


GROUPS = {"sandbox": "the embedded sandboxes: a StorPool API cluster and an oned, to try the "
                     "add-on and to test it",
          "datastore": "StorPool datastores in OpenNebula",
          "subscriber": "the hook-bus subscriber: side effects of oned's state changes",
          "hooks": "OpenNebula hooks running the subscriber's handlers (instead of the "
                   "daemon)",
          "host": "KVM hosts",
          "context": "VM context disks"}

COMMANDS: list[Command] = [
    Command(("sandbox", "up"), "onestorpool.sandbox.up",
            "start both sandboxes in a directory and write the add-on's configuration there",
            "configure_up"),
    Command(("sandbox", "down"), "onestorpool.sandbox.up",
            "stop the sandboxes 'up' started in a directory", "configure_down"),
    Command(("sandbox", "storpool"), "onestorpool.sandbox.storpool",
            "run the StorPool API sandbox cluster in the foreground", None),
    Command(("sandbox", "oned"), "onestorpool.sandbox.oned",
            "run the oned sandbox in the foreground", None),
    Command(("log",), "onestorpool.eventlog.cli",
            "audit, verify, export and replay the event log", runs_effects=True),
    Command(("subscriber", "run"), "onestorpool.subscribers.daemon",
            "listen to oned's hook bus and perform the side effects, exactly once",
            runs_effects=True),
    Command(("subscriber", "log-volume"), "onestorpool.eventlog.volume",
            "the StorPool volume the event log lives on with OpenNebula HA "
            "(EVENT_LOG_VOLUME): init, status"),
    Command(("hooks", "install"), "onestorpool.hooks.cli",
            "register the add-on's hooks in oned (one.hook.allocate/update)",
            "configure_install"),
    Command(("hooks", "uninstall"), "onestorpool.hooks.cli",
            "delete the add-on's hooks from oned", "configure_uninstall"),
    Command(("hooks", "show"), "onestorpool.hooks.cli",
            "print the hook templates (for onehook create)", "configure_show"),
    Command(("hooks", "run"), "onestorpool.hooks.cli",
            "what the hooks execute: one route's action, once", "configure_run",
            runs_effects=True),
    Command(("remote-send",), "onestorpool.subscribers.remote_send",
            "send tombstones of deleted images to the remote location", None,
            runs_effects=True),
    Command(("config",), "onestorpool.config",
            "print the effective configuration (rc syntax, token never shown)"),
    Command(("install",), "onestorpool.install",
            "configure oned for the add-on (oned.conf, vmm_execrc, remotes), or undo it"),
    Command(("doctor",), "onestorpool.doctor",
            "check a front-end: oned, StorPool, templates, oned.conf, hosts, event log"),
    Command(("datastore", "create"), "onestorpool.datastore",
            "create a StorPool image or system datastore and its StorPool template"),
    Command(("host", "reserved"), "onestorpool.host_helpers",
            "print the RESERVED_CPU/RESERVED_MEM a host should get (what StorPool holds)",
            "configure_reserved"),
    Command(("context", "migrate"), "onestorpool.host_helpers",
            "move a running VM's file-based context ISO onto a StorPool volume",
            "configure_context_migrate"),
]


def _selected(argv: list[str]) -> tuple[str, ...]:
    """The command words at the start of ``argv`` (options before them skipped)."""
    words = [a for a in argv[:3] if not a.startswith("-")]
    for command in COMMANDS:
        if tuple(words[: len(command.words)]) == command.words:
            return command.words
    return ()


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The whole tree; the options of the command ``argv`` selects are filled in."""
    chosen = _selected(argv)
    parser = argparse.ArgumentParser(
        prog="onestorpool",
        description="The StorPool storage add-on for OpenNebula: configuration, event log, "
                    "side effects and sandboxes.")
    parser.add_argument("--version", action="version", version=f"onestorpool {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        *group, name = command.words
        if group:
            if group[0] not in groups:
                node = top.add_parser(group[0], help=GROUPS[group[0]],
                                      description=GROUPS[group[0]])
                groups[group[0]] = node.add_subparsers(dest="subcommand", metavar="COMMAND",
                                                       required=True)
            where = groups[group[0]]
        else:
            where = top
        prog = f"onestorpool {' '.join(command.words)}"
        # a module that parses its own arguments gets them all (see main)
        leaf = where.add_parser(name, help=command.help, description=command.help, prog=prog)
        if command.words == chosen:
            leaf.set_defaults(_command=command)
            if _configurable(command):
                getattr(importlib.import_module(command.module), str(command.configure))(leaf)
    return parser


def _configurable(command: Command) -> bool:
    """Whether the command's module adds its options to the tree (else it parses its own
    arguments, from ``main(argv)``)."""
    return command.configure is not None and hasattr(
        importlib.import_module(command.module), command.configure)


def main(argv: list[str]) -> int:
    chosen = next((c for c in COMMANDS if c.words == _selected(argv)), None)
    if chosen is not None and not _configurable(chosen) and \
            tuple(argv[: len(chosen.words)]) == chosen.words:
        rest = argv[len(chosen.words):]
        _install_effects(chosen)
        with _address_in_use(chosen, rest):
            return int(importlib.import_module(chosen.module).main(rest) or 0)
    args = build_parser(argv).parse_args(argv)
    command: Command = args._command
    _install_effects(command)
    with _address_in_use(command, argv):
        return int(args.run(args) or 0)


def _install_effects(command: Command) -> None:
    if command.runs_effects:
        from onestorpool.subscribers import composition

        composition.install()


@contextlib.contextmanager
def _address_in_use(command: Command, argv: list[str]) -> Iterator[None]:
    """A listening port taken by another process is one clear line, naming the options
    that chose the addresses."""
    try:
        yield
    except Exception as exc:  # OSError, and zmq.ZMQError, which is no OSError
        if getattr(exc, "errno", None) != errno.EADDRINUSE:
            raise
        given = [f"{option} {value}" for option, value in itertools.pairwise(argv)
                 if option in ("--port", "--hook-endpoint")]
        where = f" ({', '.join(given)})" if given else ""
        raise InputError(f"onestorpool {' '.join(command.words)}: address already in use"
                         f"{where}: stop what listens there or choose another") from None


def entry() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entry()
