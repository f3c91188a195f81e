"""Views built from the log alone.

* :func:`history`: every record about one VM, image, datastore, volume or snapshot.
* :func:`believed_objects`: the StorPool volumes and snapshots the add-on believes exist,
  from what the drivers recorded creating, renaming and deleting.
* :func:`pending_effects`: side effects requested (``payload["effect"]``) and not yet
  recorded done by a consumer (the ``tracking`` table).

Effects protocol: an event whose payload has ``effect = {"type": T, "key": K, ...}`` asks
for an effect (K is its idempotency key, e.g. ``remote_backup:<tombstone>``). Whoever
performs it (:func:`onestorpool.eventlog.replay.run_effect`) appends ``effect.done`` and a
tracking row (consumer ``effects``, key K, position: the requesting record) in one
transaction; a failure appends ``effect.failed`` and leaves it pending.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from onestorpool.eventlog.events import Effect, EffectDone, EffectFailed, decode
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import EventLog

EFFECT_DONE = EffectDone.TYPE
EFFECTS = "effects"  # the tracking consumer of every side effect
EFFECT_FAILED = EffectFailed.TYPE


def history(log: EventLog, **subject: Any) -> Iterator[Record]:
    """``history(log, vm=42)``, ``history(log, volume="one-img-7")``, ..."""
    return log.read(**subject)


@dataclass(frozen=True)
class PendingEffect:
    effect: Effect
    requested_by: Record
    failures: int
    last_error: str

    @property
    def key(self) -> str:
        return self.effect.key

    @property
    def type(self) -> str:
        return self.effect.type


def pending_effects(log: EventLog, since_seq: int = 0,
                    effect_type: str | None = None) -> list[PendingEffect]:
    done = log.done_keys()
    requested: dict[str, tuple[Effect, Record]] = {}
    for record in log.read(since_seq=since_seq, effects_only=True):
        if record.effect_key not in done:
            effect = decode(record).effect
            if effect is not None and effect_type in (None, effect.type):
                requested.setdefault(effect.key, (effect, record))
    failures: dict[str, list[str]] = {}
    if requested:
        for record in log.read(since_seq=since_seq, types=[EFFECT_FAILED]):
            failures.setdefault(str(record.payload.get("key")), []).append(
                str(record.payload.get("error", "")))
    return [PendingEffect(effect, rec, len(failures.get(key, [])),
                          (failures.get(key) or [""])[-1])
            for key, (effect, rec) in requested.items()]


def believed_objects(log: EventLog) -> dict[str, dict[str, Any]]:
    """Volume/snapshot name → what the log says about it (creating event, owner ids).

    Writers list the StorPool objects an action created in ``payload["created"]`` and those
    it removed in ``payload["removed"]`` (renames appear in both); this view applies them in
    order. Failed actions roll back what they created, so they list nothing.
    """
    objects: dict[str, dict[str, Any]] = {}
    for record in log.read():
        if b"created" not in record.raw_payload and b"removed" not in record.raw_payload:
            continue  # msgpack keeps keys as plain bytes: skip decoding what cannot matter
        typed = decode(record)
        for name in typed.removed:
            objects.pop(name, None)
        for name in typed.created:
            objects[name] = {"seq": record.seq, "event": record.type, "vm": record.vm,
                             "image": record.image, "datastore": record.datastore}
    return objects
