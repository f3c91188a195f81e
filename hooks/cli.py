"""``onestorpool hooks install|uninstall|show|run``.

``install`` registers one ``onehook`` per subscriber route through XML-RPC
(``one.hook.allocate``, or ``one.hook.update`` when a hook of that name exists: running it
again changes nothing); ``uninstall`` deletes them; ``show`` prints the templates for
``onehook create``. ``run ROUTE`` is what the hooks execute: it decodes the argument onehem
passes on standard input, records it (``hook.executed``) and performs the route's action at
once with the subscriber's handlers, which are idempotent and tracked: with the daemon
running too, each effect still happens once.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import time
from typing import Any

from onestorpool.errors import InputError
from onestorpool.hooks import templates

WAIT = 120.0  # seconds run waits for a deletion's rm, or a VM to be idle for pruning


def default_command() -> str:
    return shutil.which("onestorpool") or "/usr/bin/onestorpool"


def _hooks_by_name() -> dict[str, int]:
    from onestorpool import oneapi
    from onestorpool.one import parse_xml

    pool = parse_xml(oneapi.one_call("one.hookpool.info", -2, -1, -1), "HOOK_POOL")
    return {str(h.findtext("NAME")): int(h.findtext("ID") or -1) for h in pool.iter("HOOK")}


def install(command: str) -> int:
    from onestorpool import oneapi

    existing = _hooks_by_name()
    for route in templates.TRIGGERS:
        text, name = templates.template(route, command), templates.name(route)
        if name in existing:
            oneapi.one_call("one.hook.update", existing[name], text, 0)
            print(f"{name}: hook {existing[name]} updated")
        else:
            hook_id = oneapi.one_call("one.hook.allocate", text)
            print(f"{name}: hook {hook_id} created")
    return 0


def uninstall() -> int:
    from onestorpool import oneapi

    existing = _hooks_by_name()
    for route in templates.TRIGGERS:
        name = templates.name(route)
        if name in existing:
            oneapi.one_call("one.hook.delete", existing[name])
            print(f"{name}: hook {existing[name]} deleted")
    return 0


def show(command: str) -> int:
    for route in templates.TRIGGERS:
        print(f"# onehook create <file> with:\n{templates.template(route, command)}")
    return 0


# -- run --------------------------------------------------------------------------------------


# A VM STATE hook's ON -> (STATE, LCM_STATE) it fires on (src/hm/HookStateVM.cc,
# HookStateVM::parse_template, release-6.10.5); CUSTOM names both itself.
STATE_CONDITIONS = {"PROLOG": ("ACTIVE", "PROLOG"), "RUNNING": ("ACTIVE", "RUNNING"),
                    "SHUTDOWN": ("ACTIVE", "EPILOG"), "STOP": ("STOPPED", "LCM_INIT"),
                    "DONE": ("DONE", "LCM_INIT"), "UNKNOWN": ("ACTIVE", "UNKNOWN")}


def state_condition(trigger: dict[str, str]) -> tuple[str, str]:
    on = trigger["ON"].upper()
    if on == "CUSTOM":
        return trigger["STATE"], trigger["LCM_STATE"]
    return STATE_CONDITIONS[on]


def hook_event(route: str, argument: str) -> Any:
    """The bus message the hook's argument stands for (the same parser, the same checks)."""
    from onestorpool.one import HookEvent, decode_base64, parse_hook_message, parse_xml

    raw = decode_base64(argument.strip(), f"hook {route} argument")
    trigger = templates.TRIGGERS[route]
    if trigger["TYPE"] == "state":
        body = parse_xml(raw, trigger["RESOURCE"])
        object_id = int(body.findtext("ID") or -1)
        state, lcm_state = state_condition(trigger)
        return HookEvent("STATE", f"EVENT STATE VM/{state}/{lcm_state}/{object_id} ",
                         object=trigger["RESOURCE"], object_id=object_id,
                         state=state, lcm_state=lcm_state, message=body)
    call = trigger["CALL"]
    info = raw.decode("utf-8", "replace")
    result = "1" if "<RESULT>1</RESULT>" in info else "0"
    message = f"<HOOK_MESSAGE><HOOK_TYPE>API</HOOK_TYPE><CALL>{call}</CALL>{info}</HOOK_MESSAGE>"
    return parse_hook_message(f"EVENT API {call} {result}",
                              base64.b64encode(message.encode()).decode())


class HookActions:
    """The route actions, done at once in this process (onehem waits for it)."""

    def __init__(self, log: Any, image: int | None = None, wait: float = WAIT):
        self.log, self.image, self.wait = log, image, wait

    def run_effects(self) -> None:
        from onestorpool.subscribers.reconcile import run_pending

        run_pending(self.log, 0, runner="hook")

    def request_effect(self, effect: dict[str, Any], seq: int, **subjects: Any) -> None:
        import os

        from onestorpool.eventlog.store import HOST
        from onestorpool.subscribers.daemon import request_effect

        request_effect(self.log, effect, seq, f"hook@{HOST}:{os.getpid()}", **subjects)
        self.run_effects()

    def scan_soon(self) -> None:
        """oned runs the image's rm after the call returned: wait for its record (image ids
        are never reused)."""
        deadline = time.monotonic() + self.wait
        while self.image is not None and time.monotonic() < deadline:
            if any(r.type.startswith("ds.rm") for r in
                   self.log.read(image=self.image, types=["ds.rm", "ds.rm.failed"])):
                break
            time.sleep(0.5)
        self.run_effects()

    def cleanup_vm(self, vm_id: int, seq: int) -> None:
        from onestorpool.subscribers.daemon import cleanup_vm

        cleanup_vm(self.log, vm_id, seq, runner="hook")

    def prune_later(self, vm_id: int, position: int) -> None:
        from onestorpool import config
        from onestorpool.subscribers.prune import Pruner

        pruner = Pruner(self.log, config.load(), runner="hook")
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            if pruner.prune(vm_id, position) in ("nothing", "failed"):
                return
            time.sleep(0.5)


def run(route: str, argument: str, log_path: str | None = None) -> int:
    import os

    from onestorpool.eventlog.events import HookExecuted
    from onestorpool.eventlog.store import HOST, EventLog
    from onestorpool.subscribers.composition import ROUTES
    from onestorpool.subscribers.routes import api_object_id

    if route not in templates.TRIGGERS:
        raise InputError(f"hooks run: unknown route {route!r} (one of "
                         f"{', '.join(templates.TRIGGERS)})")
    event = hook_event(route, argument)
    (chosen,) = [r for r in ROUTES if r.name == route]
    if not chosen.matches(event):
        print(f"hook {route}: nothing to do for {event.key.strip()!r}")
        return 0
    object_id = event.object_id if event.kind == "STATE" else api_object_id(event)
    vm = object_id if route != "image.delete" else None
    image = object_id if route == "image.delete" else None
    with EventLog.open(log_path) as log:
        seq = log.append(HookExecuted.new(f"hook/{route}@{HOST}:{os.getpid()}", route=route,
                                          key=event.key.strip(), vm=vm, image=image))
        chosen.action(HookActions(log, image=image), event, seq)
    return 0


def configure_install(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--command", default=None,
                        help="the onestorpool command the hooks run (default: the one on "
                             "PATH, else /usr/bin/onestorpool)")
    parser.set_defaults(run=lambda args: install(args.command or default_command()))


def configure_uninstall(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(run=lambda args: uninstall())


def configure_show(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--command", default=None, help="as for install")
    parser.set_defaults(run=lambda args: show(args.command or default_command()))


def configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("route", choices=sorted(templates.TRIGGERS),
                        help="the trigger the hook stands for")
    parser.add_argument("argument", nargs="?",
                        help="the hook's $TEMPLATE/$API (default: standard input)")
    parser.add_argument("--log", help="event log database (default: the configured one)")
    parser.set_defaults(run=lambda args: run(
        args.route, args.argument if args.argument is not None else sys.stdin.read(),
        args.log))
