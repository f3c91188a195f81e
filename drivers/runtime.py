"""What every driver process does around its action: arguments, configuration, the StorPool
client, the event, the error boundary.

A driver executable is three lines: it calls :func:`run_datastore_action` (or the TM/VMM
equivalent) with its action name. The runtime decodes oned's arguments (both calling
conventions), builds the configuration for the datastore, runs the action, appends one event
(success or failure) and prints what oned parses. Diagnostics and the reason of a failure
leave as the running OpenNebula release needs them (:mod:`onestorpool.driverlog`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from onestorpool.driverlog import DriverLog, one_release
from onestorpool.errors import AddonError, InputError, run_main

log = logging.getLogger("onestorpool.drivers")


def split_ds_arguments(argv: list[str], stdin: Callable[[], str]) -> tuple[str, int]:
    """oned's two DS conventions → (base64 driver action, object id).

    ``<b64> <id>`` (≤ 6.6), ``- <id>`` with stdin (6.4.7/6.6.3 ``-i``), ``<id>`` with stdin
    (≥ 6.8).
    """
    if len(argv) == 1:
        payload, raw_id = stdin(), argv[0]
    elif len(argv) == 2 and argv[0] == "-":
        payload, raw_id = stdin(), argv[1]
    elif len(argv) == 2:
        payload, raw_id = argv[0], argv[1]
    else:
        raise InputError(f"expected '<id>' with the action on stdin, or '<base64> <id>'; "
                         f"got {len(argv)} arguments")
    payload = payload.strip()
    if not payload:
        raise InputError("empty driver action: no base64 XML on stdin or in arguments")
    return payload, parse_object_id(raw_id)


def parse_object_id(raw: str) -> int:
    text = raw.strip()
    if not text.lstrip("-").isdigit():
        raise InputError(f"object id must be an integer, got {raw!r}")
    return int(text)


def writer_name(kind: str, action: str) -> str:
    return f"{kind}/{action}@{socket.gethostname()}:{os.getpid()}"


class ActionRecord:
    """The one event of a driver action. The log is opened before any work, so an
    unusable log fails the action before it touches storage; once the work is done, a log
    failure is only reported: turning it into a failure oned acts on would leave e.g. a
    volume behind an image in ERROR."""

    def __init__(self, kind: str, action: str):
        from onestorpool.config import event_log_path
        from onestorpool.eventlog import EventLog

        self.type, self.writer = f"{kind}.{action}", writer_name(kind, action)
        self.started = time.monotonic()
        self.payload: dict[str, Any] = {}
        self.subjects: dict[str, Any] = {}
        self.log = EventLog(event_log_path())

    def __enter__(self) -> ActionRecord:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        from onestorpool.eventlog.events import EventTypeError, class_of

        payload = {**self.payload,
                   "duration_ms": round((time.monotonic() - self.started) * 1000)}
        event_type = self.type
        if exc is not None:
            event_type += ".failed"
            payload["error"] = str(exc) if isinstance(exc, AddonError) else (
                f"internal error: {type(exc).__name__}")
        kind = class_of(event_type)
        try:
            try:
                event = kind.new(self.writer, payload, type=event_type, **self.subjects)
            except EventTypeError as problem:
                # A writer's bug must not cost the action its record: the record keeps what
                # every action has and says what was wrong with the rest.
                log.warning("event log: %s", problem)
                kept = {k: payload[k] for k in ("duration_ms", "error") if k in payload}
                event = kind.new(self.writer, kept, type=event_type,
                                 invalid_payload=str(problem), **self.subjects)
            self.log.append(event)
        except AddonError as log_error:
            log.warning("event log: %s", log_error)
        finally:
            self.log.close()


def emit(stdout: str) -> None:
    if stdout:
        sys.stdout.write(stdout if stdout.endswith("\n") else stdout + "\n")
        sys.stdout.flush()


def run_driver(tag: str, main: Callable[[list[str]], int | None],
               argv: list[str] | None = None) -> int:
    """``main`` under the error boundary, with the driver logging of :mod:`driverlog`.
    Called by an executable (``argv`` from its command line), the process ends here."""
    driver_log = DriverLog(tag, one_release())
    code = run_main(main, argv, report=driver_log.failed)
    if code == 0:
        driver_log.succeeded()
    else:
        driver_log.close()
    if argv is None:
        end_process(code)
    return code


def end_process(code: int) -> NoReturn:
    """Exit without the interpreter's finalization, which frees every module and object one
    by one: about a tenth of a short TM action's wall time (BENCHMARKS.md, "Transfer
    manager"). Nothing of a driver waits for it: the action's files, connections and event
    log are closed by then, and its output is flushed here."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # oned may have closed the pipe
            stream.flush()
    logging.shutdown()
    os._exit(code)


def run_datastore_action(action: str, argv: list[str] | None = None) -> int:
    """Entry point of ``drivers/remotes/datastore/storpool/<action>``."""
    return run_driver(f"onestorpool-ds-{action}", lambda args: _datastore_main(action, args),
                      argv)


def _datastore_main(action: str, argv: list[str]) -> int:
    from onestorpool.drivers import datastore, ds_request

    with ActionRecord("ds", action) as record:
        payload, object_id = split_ds_arguments(argv, sys.stdin.read)
        func = datastore.ACTIONS.get(action)
        if func is None:
            datastore.unsupported(action)
        ctx = ds_request.build_context(action, payload, object_id)
        record.subjects, record.payload = ds_request.subjects(ctx), ctx.event
        stdout = func(ctx)  # type: ignore[misc]
    emit(stdout)
    return 0


def run_tm_action(action: str, argv: list[str] | None = None) -> int:
    """Entry point of ``drivers/remotes/tm/storpool/<action>``."""
    return run_driver(f"onestorpool-tm-{action}", lambda args: _tm_main(action, args), argv)


def _tm_main(action: str, argv: list[str]) -> int:
    from onestorpool import config as config_module
    from onestorpool import oneapi
    from onestorpool.drivers import tm
    from onestorpool.storpool import StorPoolClient

    with ActionRecord("tm", action) as record:
        record.payload = {"args": list(argv)}
        func = tm.ACTIONS.get(action)
        if func is None:
            raise InputError(f"{action}: not an action of the StorPool transfer manager")
        # migrate actions get the VM on stdin; the others an empty, closed one
        stdin = sys.stdin.read() if action.endswith("migrate") else ""
        ds_id = tm.datastore_id_of(action, argv)
        datastore = oneapi.datastore_info(ds_id)
        config = config_module.load().for_datastore(datastore.template, f"datastore {ds_id}")
        with StorPoolClient.from_config(config) as sp:
            ctx = tm.TmContext(action, list(argv), datastore, config, config.naming(), sp,
                               oneapi.vm_info, stdin)
            record.subjects = {"datastore": ds_id}
            try:
                stdout = func(ctx)
            finally:
                record.payload.update(ctx.event)
                if ctx.vm_ids:
                    record.subjects["vm"] = ctx.vm_ids[0]
    emit(stdout)
    return 0


def run_vmm_action(action: str, argv: list[str] | None = None) -> int:
    """Entry point of the KVM local actions ``drivers/remotes/vmm/kvm/<script>``."""
    return run_driver(f"onestorpool-vmm-{action}", lambda args: _vmm_main(action, args), argv)


def _vmm_main(action: str, argv: list[str]) -> int:
    from onestorpool import config as config_module
    from onestorpool import oneapi
    from onestorpool.drivers import vm_snapshots, vmm

    with ActionRecord("vmm", action) as record:
        record.payload = {"args": list(argv)}
        func = vmm.ACTIONS.get(action) or vm_snapshots.ACTIONS.get(action)
        if func is None:
            raise InputError(f"{action}: not a StorPool KVM local action")
        ctx = vmm.VmmContext(action, list(argv), sys.stdin.read(), config_module.load(),
                             oneapi.vm_info, oneapi.datastore_info, _remotes_of_executable())
        try:
            stdout = func(ctx)
        finally:
            ctx.close()
            record.payload.update(ctx.event)
            if ctx.vm_id is not None:
                record.subjects = {"vm": ctx.vm_id}
    emit(stdout)
    return 0


def _remotes_of_executable() -> str:
    """oned's remotes directory: the executable runs as ``<remotes>/vmm/kvm/<script>``
    (links not followed: the remotes may link to the package's copies)."""
    from onestorpool import config as config_module

    script = os.path.abspath(sys.argv[0])
    parts = script.split(os.sep)
    if len(parts) > 3 and parts[-3:-1] == ["vmm", "kvm"]:
        return os.sep.join(parts[:-3])
    return str(config_module.remotes_dir())


def run_export_delete(argv: list[str] | None = None) -> int:
    """``export.delete <bridge> <file>``: the marketplace's DISPOSE_CMD after an export."""
    return run_driver("onestorpool-ds-export.delete", _export_delete_main, argv)


def _export_delete_main(argv: list[str]) -> int:
    from onestorpool import config as config_module
    from onestorpool import hosts
    from onestorpool.drivers.storage import delete_snapshot
    from onestorpool.storpool import StorPoolClient

    if len(argv) != 2:
        raise InputError("usage: export.delete <bridge host> <exported file or device>")
    bridge, location = argv
    config = config_module.load()
    naming = config.naming()
    with ActionRecord("ds", "export.delete") as record:
        record.payload.update(host=bridge, location=location)
        host = hosts.get(bridge)
        if location.startswith("/dev/storpool/"):
            snapshot = location.removeprefix("/dev/storpool/")
            parsed = naming.parse(snapshot)
            if parsed is None or parsed.kind != "export":
                raise InputError(f"export.delete: {snapshot} is not an export snapshot")
            with StorPoolClient.from_config(config) as sp:
                delete_snapshot(sp, snapshot)
            record.payload["removed"] = [snapshot]
        else:
            parsed = naming.parse(os.path.basename(location).rsplit(".", 1)[0])
            if parsed is None or parsed.kind != "export":
                raise InputError(f"export.delete: {location} is not an exported image")
            host.run(["rm", "-f", host.path(location)])
    return 0
