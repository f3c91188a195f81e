"""Replay: feed the log's requested effects to their handlers, safely.

Handlers register per effect type (the subscriber's handlers do so when imported). A handler
gets the requesting record and returns a dict describing what it did; :func:`run_effect`
then appends ``effect.done`` and the tracking row in one transaction, so a crash never
records an effect twice and a second run finds the key done and skips it. A handler that
raises gets an ``effect.failed`` event and stays pending.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onestorpool.errors import AddonError
from onestorpool.eventlog.projections import EFFECT_DONE, EFFECT_FAILED, pending_effects
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import AlreadyDone, Event, EventLog

Handler = Callable[[Record, EventLog], dict[str, Any]]
HANDLERS: dict[str, Handler] = {}
HANDLER_MODULES = ("onestorpool.subscribers.handlers",)


def register_handler(effect_type: str, handler: Handler) -> Handler:
    HANDLERS[effect_type] = handler
    return handler


def load_handlers() -> None:
    """Import the modules that register the product's handlers."""
    import importlib

    for module in HANDLER_MODULES:
        importlib.import_module(module)


@dataclass(frozen=True)
class Outcome:
    key: str
    effect_type: str
    status: str  # "would-run", "done", "skipped", "failed", "no-handler"
    detail: str = ""


def run_effect(log: EventLog, record: Record, consumer: str = "replay") -> Outcome:
    effect = record.payload["effect"]
    key, effect_type = record.effect_key or "", str(effect.get("type"))
    if log.is_done(key):
        return Outcome(key, effect_type, "skipped", "already done")
    handler = HANDLERS.get(effect_type)
    if handler is None:
        return Outcome(key, effect_type, "no-handler")
    writer = f"{consumer}/{effect_type}@{socket.gethostname()}:{os.getpid()}"
    try:
        result = handler(record, log)
    except AddonError as exc:
        log.append(Event(EFFECT_FAILED, writer, {"key": key, "effect_type": effect_type,
                                                 "request_seq": record.seq, "error": str(exc)},
                         record.vm, record.image, record.datastore, record.volume,
                         record.snapshot))
        return Outcome(key, effect_type, "failed", str(exc))
    try:
        with log.transaction() as tx:
            seq = tx.append(Event(EFFECT_DONE, writer,
                                  {"key": key, "effect_type": effect_type,
                                   "request_seq": record.seq, **result},
                                  record.vm, record.image, record.datastore, record.volume,
                                  record.snapshot))
            tx.track(consumer, key, seq)
    except AlreadyDone:
        return Outcome(key, effect_type, "skipped", "done concurrently")
    return Outcome(key, effect_type, "done", ", ".join(f"{k}={v}" for k, v in result.items()))


def replay(log: EventLog, *, since_seq: int = 0, dry_run: bool = True,
           effect_type: str | None = None, consumer: str = "replay") -> list[Outcome]:
    """Run (or, dry, list) every effect requested after ``since_seq`` and not done yet."""
    outcomes = []
    for pending in pending_effects(log, since_seq, effect_type):
        if dry_run:
            details = {k: v for k, v in pending.details.items() if k not in ("type", "key")}
            outcomes.append(Outcome(pending.key, pending.type, "would-run",
                                    ", ".join(f"{k}={v}" for k, v in details.items())))
        else:
            outcomes.append(run_effect(log, pending.requested_by, consumer))
    return outcomes
