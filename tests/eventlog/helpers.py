"""Helpers shared by the event log tests."""

from __future__ import annotations

from pathlib import Path

from onestorpool.eventlog import Event, EventLog


def fill(path: Path, count: int = 10) -> Path:
    """A log of ``count`` records, one per image 0..count-1."""
    with EventLog(path) as log:
        for start in range(0, count, 5000):  # a transaction holds at most 10,000
            log.append_batch([Event("ds.cp", "test", {"n": n}, image=n)
                              for n in range(start, min(count, start + 5000))])
    return path


def effect(key: str, kind: str = "test_effect", **details) -> dict:
    """The payload part that requests a side effect."""
    return {"effect": {"type": kind, "key": key, **details}}
