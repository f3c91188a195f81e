"""Replay: feed the log's requested effects to their handlers, safely.

This registry is the seam the subscriber daemon plugs into: handlers register per effect
type (the composition root, :mod:`onestorpool.subscribers.composition`, registers the
product's; this package names none), and the daemon, like
``onestorpool log replay``, calls :func:`run_effect` for each request.

A handler gets the requesting record and the log, does the work (idempotently: it checks
StorPool before acting), and returns a dict describing what it did. :func:`run_effect` then
appends ``effect.done`` and the tracking row in one transaction, so a crash never records an
effect twice and a second run finds the key done and skips it. A handler that raises gets an
``effect.failed`` event and the effect stays pending.

Every runner (replay, the subscriber) records under the one consumer :data:`EFFECTS`, so
the idempotency key is unique whoever ran the effect; the event's writer says who did.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onestorpool.errors import AddonError
from onestorpool.eventlog.events import EffectDone, EffectFailed, decode
from onestorpool.eventlog.projections import (
    EFFECTS,
    pending_effects,
)
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import HOST, AlreadyDone, EventLog

Handler = Callable[[Record, EventLog], dict[str, Any]]
HANDLERS: dict[str, Handler] = {}  # filled by the composition root (subscribers.composition)


def register_handler(effect_type: str, handler: Handler) -> Handler:
    """Make ``handler`` the one that performs effects of ``effect_type`` (the last
    registration wins, so a test or a site plug-in can replace a product handler)."""
    HANDLERS[effect_type] = handler
    return handler


@dataclass(frozen=True)
class Outcome:
    key: str
    effect_type: str
    status: str  # "would-run", "done", "skipped", "failed", "no-handler"
    detail: str = ""
    request_seq: int = 0


def run_effect(log: EventLog, record: Record, runner: str = "replay") -> Outcome:
    """Perform the effect ``record`` requests, unless it is done; record the outcome."""
    effect = decode(record).effect
    if effect is None:  # the key column says effect, the payload cannot: never run it
        return Outcome(record.effect_key or "", "", "failed", "malformed effect request",
                       record.seq)
    key, effect_type = effect.key, effect.type
    if log.is_done(key, EFFECTS):
        return Outcome(key, effect_type, "skipped", "already done", record.seq)
    handler = HANDLERS.get(effect_type)
    if handler is None:
        return Outcome(key, effect_type, "no-handler", "", record.seq)
    writer = f"{runner}/{effect_type}@{HOST}:{os.getpid()}"
    subjects = {"vm": record.vm, "image": record.image, "datastore": record.datastore,
                "volume": record.volume, "snapshot": record.snapshot}
    try:
        result = handler(record, log)
    except Exception as exc:
        # A bug in one handler must not stop the others: it is recorded and stays pending.
        error = str(exc) if isinstance(exc, AddonError) else f"{type(exc).__name__}: {exc}"
        log.append(EffectFailed.new(writer, key=key, effect_type=effect_type,
                                    request_seq=record.seq, error=error, **subjects))
        return Outcome(key, effect_type, "failed", error, record.seq)
    try:
        with log.transaction() as tx:
            seq = tx.append(EffectDone.new(writer, result, key=key, effect_type=effect_type,
                                           request_seq=record.seq, **subjects))
            tx.track(EFFECTS, key, position=record.seq, seq=seq)
    except AlreadyDone:
        return Outcome(key, effect_type, "skipped", "done concurrently", record.seq)
    return Outcome(key, effect_type, "done", _describe(result), record.seq)


def replay(log: EventLog, *, since_seq: int = 0, dry_run: bool = True,
           effect_type: str | None = None, runner: str = "replay") -> list[Outcome]:
    """Run (or, dry, list) every effect requested after ``since_seq`` and not done yet."""
    outcomes = []
    for pending in pending_effects(log, since_seq, effect_type):
        if not dry_run:
            outcomes.append(run_effect(log, pending.requested_by, runner))
            continue
        details = dict(pending.effect.details)
        status = "would-run" if pending.type in HANDLERS else "no-handler"
        outcomes.append(Outcome(pending.key, pending.type, status, _describe(details),
                                pending.requested_by.seq))
    return outcomes


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
