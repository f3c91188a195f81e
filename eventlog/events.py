"""The catalogue of event types: one class per type the add-on appends.

Storage has one record shape (:mod:`onestorpool.eventlog.record`); these classes give each
type its meaning:

* ``FIELDS``: the payload fields every event of the type carries, with their types, checked
  when the event is made (:meth:`TypedEvent.new`), so a writer cannot append a record its
  readers would misread;
* the fields the projections rely on, first class on every event: ``created`` and
  ``removed`` (the StorPool objects an action made and deleted) and ``effect`` (the side
  effect it requests, an :class:`Effect` with its idempotency key);
* ``SCHEMA`` and ``UPCASTERS``: each class versions its own payload; a stored record keeps
  the schema it was written with and is upcast when decoded (:func:`decode`), never
  rewritten (the chain forbids it).

A driver action's type names its action (``ds.cp``, ``tm.clone.failed``): the actions of one
driver record the same fields, so one class per driver and outcome carries them
(:data:`FAMILIES`). Readers that need meaning (projections, replay, the handlers) decode;
``Record.payload`` stays the payload as stored.

Drivers import this on their start-up path: plain classes, no ``dataclasses``, no ``re``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, NamedTuple

from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import ARCHIVED, Event

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class EventTypeError(ValueError):
    """An event made without a field its type requires, or with one of the wrong type."""


class Effect(NamedTuple):
    """A side effect an event requests: ``type`` names its handler, ``key`` makes it happen
    once, ``details`` are what the handler needs (a snapshot name, a location, ...)."""

    type: str
    key: str
    details: Mapping[str, Any]

    @classmethod
    def parse(cls, value: object) -> Effect:
        if not isinstance(value, dict):
            raise EventTypeError(f"effect: a dict is needed, not {type(value).__name__}")
        effect_type, key = value.get("type"), value.get("key")
        if not isinstance(effect_type, str) or not effect_type \
                or not isinstance(key, str) or not key:
            raise EventTypeError(f"effect: a non-empty 'type' and 'key' are needed: {value!r}")
        return cls(effect_type, key,
                   {k: v for k, v in value.items() if k not in ("type", "key")})

    def to_payload(self) -> dict[str, Any]:
        return {"type": self.type, "key": self.key, **self.details}


class TypedEvent:
    """A decoded record (:func:`decode`), or the maker of an event to append (:meth:`new`)."""

    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    SCHEMA: ClassVar[int] = 1
    UPCASTERS: ClassVar[Mapping[int, Upcaster]] = {}  # schema N -> N+1

    __slots__ = ("created", "effect", "payload", "record", "removed")

    def __init__(self, record: Record):
        self.record = record
        payload = record.payload
        for schema in range(record.schema, self.SCHEMA):
            payload = self.UPCASTERS[schema](payload)
        self.payload: dict[str, Any] = payload
        # Lenient on what is stored (a record is evidence, even a malformed one): the names
        # that are strings, the effect when it is well formed.
        self.created: tuple[str, ...] = _names(payload.get("created"))
        self.removed: tuple[str, ...] = _names(payload.get("removed"))
        try:
            self.effect: Effect | None = (Effect.parse(payload["effect"])
                                          if "effect" in payload else None)
        except EventTypeError:
            self.effect = None

    @property
    def type(self) -> str:
        return self.record.type

    @classmethod
    def matches(cls, event_type: str) -> bool:
        return event_type == cls.TYPE

    @classmethod
    def new(cls, writer: str, payload: Mapping[str, Any] | None = None, *,
            type: str | None = None, vm: int | None = None, image: int | None = None,
            datastore: int | None = None, volume: str | None = None,
            snapshot: str | None = None, created: Iterable[str] | None = None,
            removed: Iterable[str] | None = None, effect: Effect | Mapping[str, Any] | None = None,
            **fields: Any) -> Event:
        """The event to append, checked against the type: ``payload`` and ``fields`` make
        its payload, ``created``/``removed``/``effect`` its first-class fields."""
        event_type = cls.TYPE if type is None else type
        if not cls.matches(event_type):
            raise EventTypeError(f"{cls.__name__} does not write {event_type!r}")
        data = {**(payload or {}), **fields}
        for name, names in (("created", created), ("removed", removed)):
            if isinstance(names, str):  # a name, not names: list("abc") would be 3 names
                raise EventTypeError(f"{event_type}: {name!r} must be a list of names")
            if names is not None:
                data[name] = list(names)
        if effect is not None:
            data["effect"] = effect.to_payload() if isinstance(effect, Effect) else dict(effect)
        cls.check(data, event_type)
        return Event(event_type, writer, data, vm, image, datastore, volume, snapshot,
                     cls.SCHEMA)

    @classmethod
    def check(cls, data: Mapping[str, Any], event_type: str) -> None:
        for name, kind in cls.FIELDS.items():
            if name not in data:
                raise EventTypeError(f"{event_type}: the field {name!r} is missing")
            value = data[name]
            # bool is an int to Python; not to a reader of the log
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
                raise EventTypeError(f"{event_type}: {name!r} must be {_kind_name(kind)}, "
                                     f"not {value!r}")
        for name in ("created", "removed"):
            if name in data and (not isinstance(data[name], list)
                                 or not all(isinstance(n, str) and n for n in data[name])):
                raise EventTypeError(f"{event_type}: {name!r} must be a list of names")
        if "effect" in data:
            try:
                Effect.parse(data["effect"])
            except EventTypeError as exc:
                raise EventTypeError(f"{event_type}: {exc}") from None


class DriverAction(TypedEvent):
    """A driver action that succeeded: ``<driver>.<action>`` (``PREFIX``)."""

    PREFIX: ClassVar[str] = ""
    FIELDS = {"duration_ms": int}

    @classmethod
    def matches(cls, event_type: str) -> bool:
        return event_type.startswith(cls.PREFIX) and not event_type.endswith(".failed")


class DriverActionFailed(DriverAction):
    """A driver action that failed: ``<driver>.<action>.failed``, with the reason oned got."""

    FIELDS = {"duration_ms": int, "error": str}

    @classmethod
    def matches(cls, event_type: str) -> bool:
        return event_type.startswith(cls.PREFIX) and event_type.endswith(".failed")


class DatastoreAction(DriverAction):
    PREFIX = "ds."


class DatastoreActionFailed(DriverActionFailed):
    PREFIX = "ds."


class TransferAction(DriverAction):
    PREFIX = "tm."


class TransferActionFailed(DriverActionFailed):
    PREFIX = "tm."


class VmmAction(DriverAction):
    PREFIX = "vmm."


class VmmActionFailed(DriverActionFailed):
    PREFIX = "vmm."


# -- the log's own ------------------------------------------------------------------------

class LogCheckpoint(TypedEvent):
    """An anchor published outside the log (:mod:`onestorpool.eventlog.anchor`)."""

    TYPE = "log.checkpoint"
    FIELDS = {"previous": str}


class LogArchived(TypedEvent):
    """The cut before which records moved to an archive file (:mod:`.archive`)."""

    TYPE = ARCHIVED
    FIELDS = {"first": int, "through": int, "file": str, "dir": str, "head_hash": str,
              "sha256": str}


class LogVolumeAcquired(TypedEvent):
    """The first record of a leader's term with the log on a StorPool volume
    (``EVENT_LOG_VOLUME``): the volume it took and the head it verified."""

    TYPE = "log.volume.acquired"
    FIELDS = {"volume": str, "client": int, "head": int, "head_hash": str, "records": int}


# -- the hook bus -------------------------------------------------------------------------

class HookReceived(TypedEvent):
    """A bus message a route acts on, recorded before the action."""

    TYPE = "hook.received"
    FIELDS = {"route": str, "key": str, "kind": str}


class HookMalformed(TypedEvent):
    TYPE = "hook.malformed"
    FIELDS = {"key": str, "frames": int, "error": str}


class HookExecuted(TypedEvent):
    """What an OpenNebula hook (``onestorpool hooks run``) was run for."""

    TYPE = "hook.executed"
    FIELDS = {"route": str, "key": str}


# -- the subscriber -----------------------------------------------------------------------

class SubscriberStarted(TypedEvent):
    TYPE = "subscriber.started"
    FIELDS = {"endpoint": str, "subscriptions": list}


class SubscriberStopped(TypedEvent):
    """The daemon's counters when it stopped."""

    TYPE = "subscriber.stopped"


class SubscriberConnected(TypedEvent):
    TYPE = "subscriber.connected"
    FIELDS = {"endpoint": str}


class SubscriberDisconnected(TypedEvent):
    TYPE = "subscriber.disconnected"
    FIELDS = {"endpoint": str}


class SubscriberLeader(TypedEvent):
    """This front-end leads (RAFT): it acts from now on, after reconciling."""

    TYPE = "subscriber.leader"
    FIELDS = {"endpoint": str}


class SubscriberStandby(TypedEvent):
    TYPE = "subscriber.standby"
    FIELDS = {"endpoint": str}


class SubscriberFailed(TypedEvent):
    """A route's action raised (the loop went on)."""

    TYPE = "subscriber.failed"
    FIELDS = {"route": str, "key": str, "request_seq": int, "error": str}


class EffectRequested(TypedEvent):
    """A side effect asked for by a route or by reconciliation (drivers ask in their own
    action's event)."""

    TYPE = "subscriber.requested"
    FIELDS = {"effect": dict}


class Reconciled(TypedEvent):
    """One reconciliation pass and what it did."""

    TYPE = "subscriber.reconciled"
    FIELDS = {"why": str}


class EffectDone(TypedEvent):
    """An effect performed (its tracking row is written in the same transaction)."""

    TYPE = "effect.done"
    FIELDS = {"key": str, "effect_type": str, "request_seq": int}


class EffectFailed(TypedEvent):
    """An effect that failed this time: it stays pending, reconciliation retries it."""

    TYPE = "effect.failed"
    FIELDS = {"key": str, "effect_type": str, "request_seq": int, "error": str}


class CleanupSnapshot(TypedEvent):
    """An orphan snapshot of the add-on removed (``removed`` names it)."""

    TYPE = "cleanup.snapshot"
    FIELDS = {"key": str, "reason": str, "removed": list, "already_gone": bool}


class CleanupStarted(TypedEvent):
    """An orphan snapshot about to be deleted: a run killed after the delete leaves this,
    and the next one records the removal it finds done."""

    TYPE = "cleanup.started"
    FIELDS = {"key": str, "reason": str}


class CleanupFailed(TypedEvent):
    TYPE = "cleanup.failed"
    FIELDS = {"key": str, "error": str}


class PruneSnapshot(TypedEvent):
    """oned asked to delete a disk snapshot beyond the retention."""

    TYPE = "prune.snapshot"
    FIELDS = {"key": str, "disk": int, "snapshot_id": int, "reason": str}


class PruneStarted(TypedEvent):
    """A snapshot deletion about to be asked of oned: a run killed after oned accepted it
    leaves this, and the next look at the VM records the deletion it finds done."""

    TYPE = "prune.started"
    FIELDS = {"key": str, "disk": int, "snapshot_id": int, "reason": str}


class PruneFailed(TypedEvent):
    TYPE = "prune.failed"
    FIELDS = {"key": str, "disk": int, "snapshot_id": int, "reason": str, "error": str}


class UnknownEvent(TypedEvent):
    """A type this version does not know (a newer writer's, a plug-in's, a test's): decoded,
    its payload as stored and its well-formed first-class fields; made, only those
    checked."""

    @classmethod
    def matches(cls, event_type: str) -> bool:
        return bool(event_type) and class_of(event_type) is UnknownEvent


EXACT: dict[str, type[TypedEvent]] = {
    cls.TYPE: cls for cls in (
        LogCheckpoint, LogArchived, LogVolumeAcquired, HookReceived, HookMalformed, HookExecuted,
        SubscriberStarted, SubscriberStopped, SubscriberConnected, SubscriberDisconnected,
        SubscriberLeader, SubscriberStandby, SubscriberFailed, EffectRequested, Reconciled,
        EffectDone, EffectFailed, CleanupStarted, CleanupSnapshot, CleanupFailed,
        PruneStarted, PruneSnapshot, PruneFailed)}
FAMILIES: tuple[type[DriverAction], ...] = (
    DatastoreActionFailed, DatastoreAction, TransferActionFailed, TransferAction,
    VmmActionFailed, VmmAction)


def class_of(event_type: str) -> type[TypedEvent]:
    """The class of a type (:class:`UnknownEvent` for one the catalogue does not hold)."""
    found = EXACT.get(event_type)
    if found is not None:
        return found
    return next((family for family in FAMILIES if family.matches(event_type)), UnknownEvent)


def decode(record: Record) -> TypedEvent:
    return class_of(record.type)(record)


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(name for name in value if isinstance(name, str) and name)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
