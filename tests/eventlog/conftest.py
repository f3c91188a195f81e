"""Fixtures for the event log tests: logs on tmp_path, an isolated handler registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from onestorpool.eventlog import replay as replay_module
from tests.eventlog.helpers import fill


@pytest.fixture
def filled_log(tmp_path) -> Path:
    """Ten records (``ds.cp``, image 0..9) in one batch."""
    return fill(tmp_path / "events.db")


@pytest.fixture(autouse=True)
def isolated_handlers(monkeypatch):
    """Tests register handlers freely; the product's registry comes back afterwards, and
    replay does not import the product's handler modules."""
    monkeypatch.setattr(replay_module, "HANDLERS", dict(replay_module.HANDLERS))
