"""The event catalogue: one class per type, checked when made, upcast per class when read,
and the only way product code makes events."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from onestorpool.eventlog import EventLog, events
from onestorpool.eventlog.events import (
    CleanupSnapshot,
    DatastoreAction,
    DatastoreActionFailed,
    Effect,
    EffectRequested,
    EventTypeError,
    HookReceived,
    TransferActionFailed,
    UnknownEvent,
    decode,
)
from onestorpool.eventlog.verify import verify

ROOT = Path(__file__).resolve().parents[2]


def test_each_type_has_its_class():
    assert events.class_of("ds.cp") is DatastoreAction
    assert events.class_of("ds.export.delete") is DatastoreAction
    assert events.class_of("ds.rm.failed") is DatastoreActionFailed
    assert events.class_of("tm.clone.failed") is TransferActionFailed
    assert events.class_of("hook.received") is HookReceived
    assert events.class_of("something.new") is UnknownEvent
    assert events.class_of("dsx.cp") is UnknownEvent  # a prefix is a whole word


def test_first_class_fields_round_trip_through_the_log(tmp_path):
    effect = Effect("remote_backup", "remote_backup:one-img-7-del", {"location": "remote"})
    with EventLog(tmp_path / "e.db") as log:
        seq = log.append(DatastoreAction.new("ds/rm@h:1", type="ds.rm", duration_ms=3,
                                             image=7, removed=["one-img-7"],
                                             created=["one-img-7-del"], effect=effect))
        typed = decode(log.get(seq))
    assert isinstance(typed, DatastoreAction) and typed.type == "ds.rm"
    assert typed.removed == ("one-img-7",) and typed.created == ("one-img-7-del",)
    assert typed.effect == effect and typed.effect.details["location"] == "remote"
    assert typed.record.effect_key == "remote_backup:one-img-7-del"


@pytest.mark.parametrize("make, problem", [
    (lambda: HookReceived.new("w", route="vm.done", key="k"), "'kind' is missing"),
    (lambda: HookReceived.new("w", route="vm.done", key="k", kind=3), "'kind' must be str"),
    (lambda: DatastoreAction.new("w", type="ds.cp", duration_ms=True), "must be int"),
    (lambda: DatastoreAction.new("w", type="ds.cp.failed", duration_ms=1), "does not write"),
    (lambda: DatastoreAction.new("w", type="tm.clone", duration_ms=1), "does not write"),
    (lambda: DatastoreActionFailed.new("w", type="ds.cp.failed", duration_ms=1),
     "'error' is missing"),
    (lambda: EffectRequested.new("w", effect={"type": "remote_backup"}), "'key'"),
    (lambda: EffectRequested.new("w", effect={"type": "", "key": "k"}), "non-empty"),
    (lambda: CleanupSnapshot.new("w", key="k", reason="r", already_gone=False,
                                 removed="one-img-1-snap1"), "list of names"),
    (lambda: DatastoreAction.new("w", type="ds.cp", duration_ms=1, created=[""]),
     "list of names"),
])
def test_a_malformed_event_is_refused_when_made(make, problem):
    with pytest.raises(EventTypeError, match=problem):
        make()


def test_stored_records_decode_leniently(tmp_path):
    """A record is evidence: one written by an older or buggy writer still decodes, keeping
    what is well formed."""
    from onestorpool.eventlog import Event

    with EventLog(tmp_path / "e.db") as log:
        seq = log.append(Event("ds.rm", "old", {"removed": ["a", 7, ""],
                                                "effect": {"type": "x"}}))
        typed = decode(log.get(seq))
    assert typed.removed == ("a",) and typed.effect is None


def test_each_class_upcasts_its_own_old_payloads(tmp_path, monkeypatch):
    with EventLog(tmp_path / "e.db") as log:
        old = log.append(DatastoreAction.new("w", type="ds.cp", duration_ms=5, size=10))
        other = log.append(HookReceived.new("w", route="r", key="k", kind="API"))
        # a later release renames "size" to "size_mb" and bumps the datastore schema
        monkeypatch.setattr(DatastoreAction, "SCHEMA", 2)
        monkeypatch.setattr(DatastoreAction, "UPCASTERS",
                            {1: lambda p: {**{k: v for k, v in p.items() if k != "size"},
                                           "size_mb": p["size"]}})
        new = log.append(DatastoreAction.new("w", type="ds.cp", duration_ms=5, size_mb=11))
        records = {seq: log.get(seq) for seq in (old, other, new)}
        assert verify(log).ok  # upcasting never touches what is stored
    assert records[old].schema == 1 and records[new].schema == 2
    assert decode(records[old]).payload == {"duration_ms": 5, "size_mb": 10}
    assert records[old].payload == {"duration_ms": 5, "size": 10}  # as stored
    assert decode(records[new]).payload == {"duration_ms": 5, "size_mb": 11}
    assert decode(records[other]).payload["kind"] == "API"  # other types: untouched


def test_product_code_makes_events_only_through_the_catalogue():
    """``Event(...)`` outside the event log's storage would skip the type checks."""
    allowed = {ROOT / "eventlog" / "store.py", ROOT / "eventlog" / "events.py"}
    offenders = []
    for package in ("drivers", "eventlog", "subscribers", "hooks", "onestorpool"):
        for path in (ROOT / package).rglob("*.py"):
            if path in allowed or "sandbox" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Event":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_a_driver_action_with_a_malformed_payload_is_still_recorded(tmp_path, monkeypatch):
    """A driver bug in its event's fields costs the action none of its record."""
    from onestorpool.drivers.runtime import ActionRecord

    monkeypatch.setenv("ONESTORPOOL_EVENTLOG", str(tmp_path / "e.db"))
    with ActionRecord("tm", "clone") as action:
        action.payload = {"created": "one-img-1-2-0", "size": 3}  # a name, not a list
        action.subjects = {"vm": 2}
    with EventLog(tmp_path / "e.db") as log:
        (record,) = log.read()
    assert (record.type, record.vm) == ("tm.clone", 2)
    assert "list of names" in record.payload["invalid_payload"]
    assert set(record.payload) == {"duration_ms", "invalid_payload"}
