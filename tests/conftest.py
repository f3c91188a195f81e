"""Shared fixtures: StorPool sandbox clusters on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from onestorpool.sandbox.storpool import StorPoolSandbox

# Shared CI machines are noisy: no per-example deadline (timing is the benchmarks' job).
settings.register_profile("project", deadline=None)
settings.load_profile("project")

TOKEN = "sandbox-test-token"


@pytest.fixture
def storpool_sandbox_factory(tmp_path: Path) -> Iterator[Callable[..., StorPoolSandbox]]:
    """Start sandbox clusters (``factory(name="b", **options)``); all stop at teardown."""
    started: list[StorPoolSandbox] = []

    def start(name: str = "sandbox", token: str = TOKEN, **options) -> StorPoolSandbox:
        sandbox = StorPoolSandbox(tmp_path / f"storpool-{name}", token, name=name, **options)
        started.append(sandbox.start())
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def storpool_sandbox(storpool_sandbox_factory) -> StorPoolSandbox:
    """One started sandbox cluster with clients 1..4 under its data directory."""
    return storpool_sandbox_factory()
