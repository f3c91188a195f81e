"""StorPool sandbox fault injection: transient errors, latency, dropped connections (before
and after the call is applied), per-query faults, and the same controls over HTTP."""

from __future__ import annotations

import http.client
import time

import pytest
from storpool import spapi

from onestorpool.sandbox.storpool import StorPoolSandbox

MIB = 1 << 20


def bindings(sandbox: StorPoolSandbox, **kwargs) -> spapi.Api:
    kwargs.setdefault("transientRetries", 0)
    return spapi.Api(host=sandbox.host, port=sandbox.port, auth=sandbox.token, **kwargs)


def test_transient_errors_for_the_next_calls(storpool_sandbox):
    api = bindings(storpool_sandbox)
    storpool_sandbox.inject_faults(transient=2)
    for _ in range(2):
        with pytest.raises(spapi.ApiError) as caught:
            api.volumesList()
        assert caught.value.transient and caught.value.status == 503
        assert caught.value.name == "busy"
    assert api.volumesList() == []
    # The bindings' own retry loop gets through (sleeping 0 s between attempts here).
    storpool_sandbox.inject_faults(transient=2, error="transientTest")
    retrying = bindings(storpool_sandbox, transientRetries=3, transientSleep=lambda n: 0)
    assert retrying.volumesList() == []


def test_faults_can_target_some_queries(storpool_sandbox):
    api = bindings(storpool_sandbox)
    storpool_sandbox.inject_faults(transient=1, queries={"VolumeCreate"})
    assert api.volumesList() == []  # not counted
    with pytest.raises(spapi.ApiError):
        api.volumeCreate({"name": "v", "size": MIB})
    api.volumeCreate({"name": "v", "size": MIB})
    assert [v.name for v in api.volumesList()] == ["v"]


def test_latency(storpool_sandbox):
    api = bindings(storpool_sandbox)
    storpool_sandbox.inject_faults(latency=0.3)
    started = time.monotonic()
    api.volumesList()
    assert time.monotonic() - started >= 0.3
    storpool_sandbox.clear_faults()
    started = time.monotonic()
    api.volumesList()
    assert time.monotonic() - started < 0.3


def test_dropped_connections(storpool_sandbox):
    api = bindings(storpool_sandbox)
    storpool_sandbox.inject_faults(drop=1)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        api.volumeCreate({"name": "v", "size": MIB})
    assert api.volumesList() == []  # dropped before anything was done
    # Applied, then dropped: the write went through although nobody heard the answer; a
    # client retrying it blindly meets objectExists, as on a real cluster.
    storpool_sandbox.inject_faults(drop_after=1)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        api.volumeCreate({"name": "v", "size": MIB})
    with pytest.raises(spapi.ApiError) as again:
        api.volumeCreate({"name": "v", "size": MIB})
    assert again.value.name == "objectExists"
    # The bindings treat a reset as transient and retry.
    storpool_sandbox.inject_faults(drop=1)
    assert len(bindings(storpool_sandbox, transientRetries=2,
                        transientSleep=lambda n: 0).volumesList()) == 1


def test_fault_controls_over_http(storpool_sandbox, storpool_http):
    status, reply = storpool_http(storpool_sandbox, "POST", "/sandbox/faults",
                                  {"transient": 1, "queries": ["VolumesList"]})
    assert status == 200 and reply["data"]["faults"]["transient"] == 1
    status, reply = storpool_http(storpool_sandbox, "GET", "/ctrl/1.0/VolumesList")
    assert status == 503 and reply["error"]["transient"] is True
    assert storpool_http(storpool_sandbox, "GET", "/ctrl/1.0/VolumesList")[0] == 200
    storpool_http(storpool_sandbox, "POST", "/sandbox/faults", {"latency": 5})
    _, info = storpool_http(storpool_sandbox, "GET", "/sandbox/info")  # admin: no latency
    assert info["data"]["faults"]["latency"] == 5
    storpool_http(storpool_sandbox, "POST", "/sandbox/faults", {})  # clears
    assert storpool_sandbox.faults.describe()["latency"] == 0
    _, reply = storpool_http(storpool_sandbox, "POST", "/sandbox/faults", {"explode": 1})
    assert reply["error"]["name"] == "invalidParam"
    _, reply = storpool_http(storpool_sandbox, "POST", "/sandbox/faults", {"drop": -1})
    assert reply["error"]["name"] == "invalidParam"
