"""Shared fixtures: StorPool sandbox clusters on loopback.

* ``storpool_sandbox``: one started cluster in ``tmp_path`` (clients 1..4 with host
  directories under its data directory), stopped at teardown.
* ``storpool_sandbox_factory``: ``factory(name="b", token=..., **options)`` starts more
  clusters (options as :class:`~onestorpool.sandbox.storpool.StorPoolSandbox` takes them);
  each lives in ``tmp_path/storpool-<name>``; all stop at teardown.
* ``storpool_http``: ``call(sandbox, method, path, body=None, token=None)`` makes one raw
  HTTP request and returns ``(status, decoded JSON)``, for checks below the clients.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

    def start(name: str = "sandbox", token: str = TOKEN, **options: Any) -> StorPoolSandbox:
        sandbox = StorPoolSandbox(tmp_path / f"storpool-{name}", token, name=name, **options)
        started.append(sandbox.start())
        return sandbox

    yield start
    for sandbox in reversed(started):
        sandbox.stop()  # also clears immutable flags, so tmp_path can be removed


@pytest.fixture
def storpool_sandbox(storpool_sandbox_factory: Callable[..., StorPoolSandbox]
                     ) -> StorPoolSandbox:
    """One started sandbox cluster with clients 1..4 under its data directory."""
    return storpool_sandbox_factory()


@pytest.fixture
def storpool_http() -> Callable[..., tuple[int, Any]]:
    """``call(sandbox, method, path, body=None, token=None) -> (status, JSON reply)``."""

    def call(sandbox: StorPoolSandbox, method: str, path: str, body: Any = None,
             token: str | None = None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{sandbox.url}{path}", data=payload, method=method,
            headers={"Authorization": f"Storpool v1:{sandbox.token if token is None else token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.load(exc)

    return call
