"""What every driver process does around its action: arguments, configuration, the StorPool
client, the event, the error boundary.

A driver executable is three lines: it calls :func:`run_datastore_action` (or the TM/VMM
equivalent) with its action name. The runtime decodes oned's arguments (both calling
conventions), builds the configuration for the datastore, runs the action, appends one event
(success or failure) and prints what oned parses. Errors leave as one ``ERROR:`` line.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from onestorpool.errors import AddonError, InputError, run_main


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


def append_event(event_type: str, *, writer: str, payload: dict[str, Any], **subjects: Any
                 ) -> None:
    """Append the action's one event. The log is opened only now, after the work."""
    from onestorpool import eventlog

    eventlog.append_event(event_type, writer=writer, payload=payload, **subjects)


def check_event_log_writable() -> None:
    """Fail before touching storage when the audit log cannot take the event afterwards."""
    from onestorpool import eventlog

    path = eventlog.default_path()
    directory = os.path.dirname(path) or "."
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise AddonError(f"event log {path} is not writable")
    elif not os.access(directory if os.path.isdir(directory) else os.path.dirname(directory)
                       or ".", os.W_OK):
        raise AddonError(f"event log directory {directory} is not writable")


def emit(stdout: str) -> None:
    if stdout:
        sys.stdout.write(stdout if stdout.endswith("\n") else stdout + "\n")
        sys.stdout.flush()


def run_datastore_action(action: str, argv: list[str] | None = None) -> int:
    """Entry point of ``drivers/remotes/datastore/storpool/<action>``."""
    return run_main(lambda args: _datastore_main(action, args), argv)


def _datastore_main(action: str, argv: list[str]) -> int:
    from onestorpool.drivers import datastore, ds_request

    started = time.monotonic()
    payload, object_id = split_ds_arguments(argv, sys.stdin.read)
    func = datastore.ACTIONS.get(action)
    if func is None:
        datastore.unsupported(action)
    check_event_log_writable()
    ctx = ds_request.build_context(action, payload, object_id)
    subjects = ds_request.subjects(ctx)
    writer = writer_name("ds", action)
    try:
        stdout = func(ctx)  # type: ignore[misc]
    except AddonError as exc:
        ctx.event.update(error=str(exc))
        _append_quietly(f"ds.{action}.failed", writer, ctx.event, started, subjects)
        raise
    _append_quietly(f"ds.{action}", writer, ctx.event, started, subjects)
    emit(stdout)
    return 0


def _append_quietly(event_type: str, writer: str, payload: dict[str, Any], started: float,
                    subjects: dict[str, Any]) -> None:
    """The storage work is done: a log failure now is reported, not turned into a failure
    oned would act on (it would leave the volume behind an image in ERROR)."""
    payload = {**payload, "duration_ms": round((time.monotonic() - started) * 1000)}
    try:
        append_event(event_type, writer=writer, payload=payload, **subjects)
    except AddonError as exc:
        sys.stderr.write(f"WARN: event log: {exc}\n")


def run_export_delete(argv: list[str] | None = None) -> int:
    """``export.delete <bridge> <file>``: the marketplace's DISPOSE_CMD after an export."""
    return run_main(_export_delete_main, argv)


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
    host = hosts.get(bridge)
    payload: dict[str, Any] = {"host": bridge, "location": location}
    if location.startswith("/dev/storpool/"):
        snapshot = location.removeprefix("/dev/storpool/")
        parsed = naming.parse(snapshot)
        if parsed is None or parsed.kind != "export":
            raise InputError(f"export.delete: {snapshot} is not an export snapshot")
        with StorPoolClient.from_config(config) as sp:
            delete_snapshot(sp, snapshot)
        payload["removed"] = [snapshot]
    else:
        name = os.path.basename(location)
        parsed = naming.parse(name.rsplit(".", 1)[0])
        if parsed is None or parsed.kind != "export":
            raise InputError(f"export.delete: {location} is not an exported image")
        host.run(["rm", "-f", host.path(location)])
    _append_quietly("ds.export.delete", writer_name("ds", "export.delete"), payload,
                    time.monotonic(), {})
    return 0
