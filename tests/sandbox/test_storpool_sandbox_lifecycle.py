"""StorPool sandbox over time: delayed deletion on the sandbox clock, bound and deleted
snapshots, persistence across restarts, the command line, and clean removal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from storpool import spapi

from onestorpool.sandbox.storpool import StorPoolSandbox

MIB = 1 << 20


def bindings(sandbox: StorPoolSandbox) -> spapi.Api:
    return spapi.Api(host=sandbox.host, port=sandbox.port, auth=sandbox.token,
                     transientRetries=0)


def test_delayed_deletion_follows_the_sandbox_clock(storpool_sandbox, storpool_http):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    reply = api.snapshotCreate("v", {"deleteAfter": 3600, "tags": {"del": "y"}})
    (snapshot,) = api.snapshotsList()
    assert snapshot.autoName and snapshot.name == reply.autoName
    assert snapshot.targetDeleteDate >= int(time.time()) + 3590
    assert storpool_sandbox.advance_clock(1800) >= int(time.time()) + 1790
    assert len(api.snapshotsList()) == 1
    storpool_sandbox.advance_clock(1801)
    # Due, but the volume hangs off it: deleted, listed until it is childless.
    (snapshot,) = api.snapshotsList()
    assert snapshot.deleted
    with pytest.raises(spapi.ApiError):
        api.snapshotList(reply.autoName)
    api.volumeDelete("v")
    assert api.snapshotsList() == []
    # The same over the admin API, for drivers in other processes.
    api.volumeCreate({"name": "w", "size": MIB})
    api.snapshotCreate("w", {"name": "w-keep", "deleteAfter": 60})
    api.volumeDelete("w")
    status, reply = storpool_http(storpool_sandbox, "POST", "/sandbox/clock", {"advance": 61})
    assert status == 200 and 0 <= storpool_sandbox.now() - reply["data"]["now"] <= 1
    assert api.snapshotsList() == []


def test_delete_dates_are_validated_and_cleared(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    with pytest.raises(spapi.ApiError, match="in the past"):
        api.snapshotCreate("v", {"name": "s", "targetDeleteDate": 1000})
    api.snapshotCreate("v", {"name": "s", "deleteAfter": 0})  # 0: no delete date
    assert api.snapshotList("s")[0].targetDeleteDate is None
    date = storpool_sandbox.now() + 100
    api.snapshotUpdate("s", {"targetDeleteDate": date})
    assert api.snapshotList("s")[0].targetDeleteDate == date
    api.snapshotUpdate("s", {"deleteAfter": 0})  # clears it again
    storpool_sandbox.advance_clock(200)
    assert api.snapshotList("s")[0].targetDeleteDate is None
    api.volumeFreeze("v", {"deleteAfter": 10})
    storpool_sandbox.advance_clock(11)
    assert [s.name for s in api.snapshotsList()] == ["s"]


def test_deleted_and_bound_snapshots_go_with_their_last_child(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.snapshotCreate("v", {"name": "s"})
    api.volumeCreate({"name": "child", "parent": "s"})
    api.snapshotDelete("s")
    (snapshot,) = [s for s in api.snapshotsList() if s.name == "s"]
    assert snapshot.deleted
    with pytest.raises(spapi.ApiError) as gone:
        api.snapshotDelete("s")
    assert gone.value.name == "objectDoesNotExist"
    with pytest.raises(spapi.ApiError):
        api.volumeCreate({"name": "other", "parent": "s"})
    api.volumeDelete("child")
    api.volumeDelete("v")
    assert api.snapshotsList() == []
    api.volumeCreate({"name": "b", "size": MIB})
    api.snapshotCreate("b", {"name": "b-bound", "bind": True})
    api.volumeCreate({"name": "b-clone", "parent": "b-bound"})
    api.volumeDelete("b")
    assert [s.name for s in api.snapshotsList()] == ["b-bound"]  # b-clone still hangs off it
    api.volumeDelete("b-clone")
    assert api.snapshotsList() == []


def test_state_survives_a_restart(tmp_path):
    data = tmp_path / "cluster"
    stale_host = tmp_path / "hosts" / "one"
    with StorPoolSandbox(data, "t", capacity=1 << 30, clients={9: stale_host}) as first:
        api = bindings(first)
        api.volumeTemplateCreate({"name": "one-ds-1", "replication": 2})
        api.volumeCreate({"name": "v", "size": MIB, "template": "one-ds-1", "tags": {"a": "b"}})
        api.volumeCreate({"name": "gone", "size": MIB})
        api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [1]},
                                              {"volume": "gone", "rw": [9]}]})
        with first.device(1, "v").open("r+b") as dev:
            dev.write(b"kept")
        api.snapshotCreate("v", {"name": "v-snap0", "deleteAfter": 7200})
        api.volumesReassignWait({"reassign": [{"snapshot": "v-snap0", "ro": [2]}]})
        first.advance_clock(3600)
        now = first.now()
        gid = api.volumeList("v")[0].globalId
    # Between runs: a device link goes missing and a stale one appears.
    first_device = data / "clients" / "1" / "dev" / "storpool" / "v"
    first_device.unlink()
    (stale_host / "dev" / "storpool" / "gone").unlink()
    stale = data / "clients" / "3" / "dev" / "storpool" / "x"
    stale.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(data / "objects" / "nothing", stale)
    with StorPoolSandbox(data, "t") as second:
        api = bindings(second)
        assert sorted(v.name for v in api.volumesList()) == ["gone", "v"]
        assert api.volumeList("v")[0].globalId == gid
        assert api.volumeList("v")[0].tags == {"a": "b"}
        assert [s.name for s in api.snapshotsList()] == ["v-snap0"]
        assert [t.name for t in api.volumeTemplatesList()] == ["one-ds-1"]
        assert sorted((a.volume, a.client) for a in api.attachmentsList()) == [
            ("gone", 9), ("v", 1), ("v-snap0", 2)]
        assert second.client_dir(9) == stale_host  # extra clients are remembered
        assert second.device(1, "v").read_bytes()[:4] == b"kept"  # link recreated
        assert (stale_host / "dev" / "storpool" / "gone").exists()
        assert not stale.is_symlink()  # a link into our objects no attachment explains
        assert second.cluster.capacity == 1 << 30  # remembered, not reset to the default
        assert now <= second.now() <= now + 60  # the clock offset is kept
        if second.cluster.readonly_enforced:  # flags cleared at stop come back
            with pytest.raises(PermissionError):
                second.device(2, "v-snap0").open("r+b")
        second.advance_clock(3601)
        assert [s.name for s in api.snapshotsList()] == ["v-snap0"]  # attached: kept
        api.volumesReassignWait({"reassign": [{"snapshot": "v-snap0", "detach": "all"}]})
        api.volumesReassignWait({"reassign": [{"volume": "v", "detach": "all"}]})
        api.volumeDelete("v")
        assert api.snapshotsList() == []
    state = json.loads((data / "state.json").read_text())
    assert state["version"] == 1 and "v" not in state["volumes"]
    assert not list(data.glob(".state.json.tmp"))


def test_stop_leaves_a_removable_directory(tmp_path):
    data = tmp_path / "cluster"
    sandbox = StorPoolSandbox(data, "t").start()
    api = bindings(sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.snapshotCreate("v", {"name": "s"})
    api.volumesReassignWait({"reassign": [{"volume": "v", "ro": [1]}]})
    sandbox.stop()
    sandbox.stop()  # idempotent
    shutil.rmtree(data)  # immutable files would make this fail
    assert not data.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_command_line_server(tmp_path):
    port = _free_port()
    data = tmp_path / "cli"
    process = subprocess.Popen(
        [sys.executable, "-m", "onestorpool.cli", "sandbox", "storpool", "--port", str(port),
         "--data", str(data), "--token", "cli-token", "--client", f"9={tmp_path / 'h9'}",
         "--clients", "6", "--capacity", "2G", "--name", "cli", "--http10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("StorPool sandbox cli on http://127.0.0.1:"), line
        api = spapi.Api(host="127.0.0.1", port=port, auth="cli-token", transientRetries=0)
        assert sorted(api.servicesList().clients) == [1, 2, 3, 4, 5, 6, 9]
        api.volumeTemplateCreate({"name": "t", "replication": 1})
        assert api.volumeTemplatesStatus()[0].stored.capacity == 2 << 30
        api.volumeCreate({"name": "v", "size": MIB})
        api.snapshotCreate("v", {"name": "s"})
        api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [9]},
                                              {"snapshot": "s", "ro": [6]}]})
        assert (tmp_path / "h9" / "dev" / "storpool" / "v").exists()
        assert (data / "clients" / "6" / "dev" / "storpool" / "s").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    shutil.rmtree(data)  # SIGTERM stopped it cleanly: no immutable file left behind


def test_command_line_release_and_bad_arguments(tmp_path):
    sandbox = StorPoolSandbox(tmp_path / "killed", "t")  # never stopped: flags stay set
    cluster = sandbox.cluster
    with cluster.transaction():
        cluster.vol_api.volume_create({"name": "v", "size": MIB})
        cluster.snap_api.volume_snapshot("v", {"name": "s"})  # an immutable file
    sandbox.server.server_close()
    cli = [sys.executable, "-m", "onestorpool.cli", "sandbox", "storpool"]
    done = subprocess.run([*cli, "--data", str(tmp_path / "killed"), "--release"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    shutil.rmtree(tmp_path / "killed")
    bad = subprocess.run([*cli, "--data", str(tmp_path / "x"), "--client", "nine=/tmp"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "ID=DIR" in bad.stderr
