"""The StorPool sandbox against the official bindings, raw HTTP and its own data semantics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from storpool import spapi, sptypes

from onestorpool.sandbox.storpool import StorPoolSandbox

MIB = 1 << 20


def bindings(sandbox: StorPoolSandbox, **kwargs) -> spapi.Api:
    kwargs.setdefault("transientRetries", 0)
    return spapi.Api(host=sandbox.host, port=sandbox.port, auth=sandbox.token, **kwargs)


def raw(sandbox: StorPoolSandbox, method: str, path: str, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{sandbox.url}{path}", data=data, method=method,
        headers={"Authorization": f"Storpool v1:{token or sandbox.token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def device(sandbox: StorPoolSandbox, client: int, name: str) -> Path:
    return sandbox.client_dir(client) / "dev" / "storpool" / name


def test_bindings_drive_the_whole_cycle(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeTemplateCreate({"name": "one-ds-1", "replication": 2, "placeAll": "hdd",
                              "placeTail": "ssd"})
    api.volumeCreate({"name": "one-img-1", "size": 4 * MIB, "template": "one-ds-1",
                      "tags": {"virt": "one"}})
    (volume,) = api.volumesList()
    assert isinstance(volume, sptypes.VolumeSummary)
    assert (volume.name, volume.size, volume.templateName, volume.replication) == (
        "one-img-1", 4 * MIB, "one-ds-1", 2)
    assert volume.tags == {"virt": "one"} and volume.placeTail == "ssd"

    api.volumesReassignWait({"reassign": [{"volume": "one-img-1", "rw": [1]}],
                             "attachTimeout": 10})
    (attachment,) = api.attachmentsList()
    assert (attachment.volume, attachment.client, attachment.rights) == ("one-img-1", 1, "rw")
    with open(device(storpool_sandbox, 1, "one-img-1"), "r+b") as dev:
        dev.write(b"payload")

    created = api.snapshotCreate("one-img-1", {"name": "one-img-1-snap0"})
    assert created.ok and created.snapshotGlobalId
    (snapshot,) = api.snapshotsList()
    assert isinstance(snapshot, sptypes.SnapshotSummary)
    assert (snapshot.name, snapshot.onVolume, snapshot.size) == ("one-img-1-snap0",
                                                                 "one-img-1", 4 * MIB)

    status = {t.name: t for t in api.volumeTemplatesStatus()}["one-ds-1"]
    assert status.stored.capacity > status.stored.free > 0
    assert status.volumesCount == 1 and status.snapshotsCount == 1

    api.volumesReassignWait({"reassign": [{"volume": "one-img-1", "detach": "all"}]})
    assert api.attachmentsList() == []
    assert not device(storpool_sandbox, 1, "one-img-1").exists()
    api.volumeDelete("one-img-1")
    api.snapshotDelete("one-img-1-snap0")
    assert api.volumesList() == [] and api.snapshotsList() == []


def test_error_envelopes_match_storpool(storpool_sandbox):
    api = bindings(storpool_sandbox)
    with pytest.raises(spapi.ApiError) as missing:
        api.volumeDelete("nope")
    assert missing.value.name == "objectDoesNotExist"
    api.volumeCreate({"name": "v", "size": MIB})
    with pytest.raises(spapi.ApiError) as exists:
        api.volumeCreate({"name": "v", "size": MIB})
    assert exists.value.name == "objectExists"
    _, reply = raw(storpool_sandbox, "POST", "/ctrl/1.0/VolumeCreate",
                        {"name": "w", "size": 1000})
    assert reply["error"]["name"] == "invalidParam" and "multiple of 512" in reply[
        "error"]["descr"]
    _, reply = raw(storpool_sandbox, "POST", "/ctrl/1.0/VolumeCreate",
                        {"name": "bad name", "size": MIB})
    assert reply["error"]["name"] == "invalidParam"
    _status, reply = raw(storpool_sandbox, "POST", "/ctrl/1.0/VolumeCreate",
                        {"name": "t", "size": MIB, "template": "missing"})
    assert reply["error"]["name"] == "objectDoesNotExist"


def test_wrong_or_missing_token_is_refused(storpool_sandbox):
    status, reply = raw(storpool_sandbox, "GET", "/ctrl/1.0/VolumesList", token="wrong")
    assert status == 401 and set(reply["error"]) == {"name", "descr", "transient"}
    with pytest.raises(spapi.ApiError) as caught:
        spapi.Api(host=storpool_sandbox.host, port=storpool_sandbox.port, auth="wrong",
                  transientRetries=0).volumesList()
    assert caught.value.status == 401


def test_clone_from_snapshot_and_base_on_read_back_the_data(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "src", "size": 2 * MIB})
    api.volumesReassignWait({"reassign": [{"volume": "src", "rw": [1]}]})
    payload = os.urandom(MIB)
    with open(device(storpool_sandbox, 1, "src"), "r+b") as dev:
        dev.write(payload)
    api.snapshotCreate("src", {"name": "src-snap1"})
    with open(device(storpool_sandbox, 1, "src"), "r+b") as dev:
        dev.write(b"\0" * 16)  # after the snapshot: must not leak into it
    api.volumeCreate({"name": "from-snap", "parent": "src-snap1"})
    api.volumeCreate({"name": "based", "baseOn": "src", "size": 4 * MIB})
    api.volumesReassignWait({"reassign": [{"volume": "from-snap", "rw": [2]},
                                          {"volume": "based", "rw": [3]}]})
    assert device(storpool_sandbox, 2, "from-snap").read_bytes()[:MIB] == payload
    based = device(storpool_sandbox, 3, "based").read_bytes()
    assert based[:16] == b"\0" * 16 and based[16:MIB] == payload[16:]
    assert len(based) == 4 * MIB
    # Revert discards the volume's data for the snapshot's.
    api.volumesReassignWait({"reassign": [{"volume": "src", "detach": [1]}]})
    api.volumeRevert("src", {"toSnapshot": "src-snap1"})
    api.volumesReassignWait({"reassign": [{"volume": "src", "rw": [1]}]})
    assert device(storpool_sandbox, 1, "src").read_bytes()[:MIB] == payload


def test_resize_rename_tags(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB, "tags": {"a": "1", "b": "2"}})
    api.volumeUpdate("v", {"size": 2 * MIB})
    with pytest.raises(spapi.ApiError, match="shrinkOk"):
        api.volumeUpdate("v", {"size": MIB})
    api.volumeUpdate("v", {"size": MIB, "shrinkOk": True})
    api.volumeUpdate("v", {"rename": "w", "tags": {"a": "", "c": "3"}})
    (volume,) = api.volumeList("w")
    assert volume.size == MIB and volume.tags == {"b": "2", "c": "3"}


def test_read_only_attachments_are_enforced(storpool_sandbox):
    if not storpool_sandbox.cluster.readonly_enforced and os.geteuid() == 0:
        pytest.skip("filesystem has no immutable flag; root bypasses file modes")
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.snapshotCreate("v", {"name": "s"})
    api.volumesReassignWait({"reassign": [{"volume": "v", "ro": [1]},
                                          {"snapshot": "s", "ro": [2]}]})
    for path in (device(storpool_sandbox, 1, "v"), device(storpool_sandbox, 2, "s")):
        assert path.read_bytes() == b"\0" * MIB
        with pytest.raises(PermissionError):
            path.open("r+b")
    # (The bindings drop "rw" from snapshot items; say it on the wire.)
    _, reply = raw(storpool_sandbox, "POST", "/ctrl/1.0/VolumesReassignWait",
                   {"reassign": [{"snapshot": "s", "rw": [3]}]})
    assert "read-only" in reply["error"]["descr"]
    # Re-attached read-write, the volume is writable again.
    api.volumesReassignWait({"reassign": [{"volume": "v", "detach": "all", "rw": [1]}]})
    with device(storpool_sandbox, 1, "v").open("r+b") as dev:
        dev.write(b"ok")


def test_two_writers_need_force_and_unknown_clients_are_refused(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [1]}]})
    with pytest.raises(spapi.ApiError, match="already attached read-write to client 1"):
        api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [2]}]})
    api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [2], "force": True}]})
    assert sorted(a.client for a in api.attachmentsList()) == [1, 2]
    _, reply = raw(storpool_sandbox, "POST", "/ctrl/1.0/VolumesReassignWait",
                        {"reassign": [{"volume": "v", "rw": ["99"]}]})
    assert reply["error"]["name"] == "invalidParam" and "client 99" in reply["error"]["descr"]
    # Client ids as JSON strings, as the Bash add-on sends them.
    _status, reply = raw(storpool_sandbox, "POST", "/ctrl/1.0/VolumesReassignWait",
                        {"reassign": [{"volume": "v", "detach": ["1", "2"], "force": True}]})
    assert reply["data"]["ok"] and api.attachmentsList() == []
    with pytest.raises(spapi.ApiError, match="attached"):
        api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [1]}]})
        api.volumeDelete("v")


def test_delayed_deletion_follows_the_sandbox_clock(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    reply = api.snapshotCreate("v", {"deleteAfter": 3600})
    (snapshot,) = api.snapshotsList()
    assert snapshot.autoName and snapshot.name == reply.autoName
    assert snapshot.targetDeleteDate >= int(time.time()) + 3590
    storpool_sandbox.advance_clock(1800)
    assert len(api.snapshotsList()) == 1
    api.volumeDelete("v")  # the volume hung off its snapshot; now nothing does
    storpool_sandbox.advance_clock(1801)
    assert api.snapshotsList() == []


def test_deleted_snapshot_with_children_lingers_until_childless(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.snapshotCreate("v", {"name": "s"})
    api.volumeCreate({"name": "child", "parent": "s"})
    api.snapshotDelete("s")
    (snapshot,) = [s for s in api.snapshotsList() if s.name == "s"]
    assert snapshot.deleted
    with pytest.raises(spapi.ApiError):
        api.snapshotList("s")
    api.volumeDelete("child")
    api.volumeDelete("v")
    assert api.snapshotsList() == []


def test_group_snapshot_is_all_or_nothing(storpool_sandbox):
    api = bindings(storpool_sandbox)
    for name in ("a", "b"):
        api.volumeCreate({"name": name, "size": MIB})
    with pytest.raises(spapi.ApiError):
        api.snapshotCreateGroup({"volumes": [{"volume": "a", "name": "a-1"},
                                             {"volume": "missing", "name": "m-1"}]})
    assert api.snapshotsList() == []
    reply = api.snapshotCreateGroup({"volumes": [{"volume": "a", "name": "a-1"},
                                                 {"volume": "b", "name": "b-1"}],
                                     "tags": {"nvm": "7"}})
    assert {s.snapshot for s in reply.snapshots} == {"a-1", "b-1"}
    assert all(s.tags == {"nvm": "7"} for s in api.snapshotsList())


def test_space_reports_follow_written_data(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeTemplateCreate({"name": "t", "replication": 3})
    api.volumeCreate({"name": "v", "size": 8 * MIB, "template": "t"})
    before = api.volumeTemplatesStatus()[0].stored.free
    api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [1]}]})
    with open(device(storpool_sandbox, 1, "v"), "r+b") as dev:
        dev.write(os.urandom(2 * MIB))
        dev.flush()
        os.fsync(dev.fileno())
    (space,) = api.volumesSpace()
    assert space.storedSize >= 2 * MIB
    after = api.volumeTemplatesStatus()[0].stored.free
    assert before - after >= 2 * MIB  # client bytes (replication already divided out)


def test_state_survives_a_restart(tmp_path):
    data = tmp_path / "cluster"
    with StorPoolSandbox(data, "t") as first:
        api = bindings(first)
        api.volumeTemplateCreate({"name": "one-ds-1", "replication": 2})
        api.volumeCreate({"name": "v", "size": MIB, "template": "one-ds-1"})
        api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [1]}]})
        device(first, 1, "v").write_bytes(b"kept")  # truncates the file, as no device can
        assert first.cluster.object_path(first.cluster.volumes["v"]).stat().st_size == 4
        api.volumesList()  # the sandbox restores the size a block device cannot lose
        api.snapshotCreate("v", {"name": "v-snap0"})
    with StorPoolSandbox(data, "t") as second:
        api = bindings(second)
        assert [v.name for v in api.volumesList()] == ["v"]
        assert [s.name for s in api.snapshotsList()] == ["v-snap0"]
        assert [t.name for t in api.volumeTemplatesList()] == ["one-ds-1"]
        assert [(a.volume, a.client) for a in api.attachmentsList()] == [("v", 1)]
        assert device(second, 1, "v").read_bytes() == b"kept" + b"\0" * (MIB - 4)
        if second.cluster.readonly_enforced:
            api.volumesReassignWait({"reassign": [{"snapshot": "v-snap0", "ro": [2]}]})
            with pytest.raises(PermissionError):
                device(second, 2, "v-snap0").open("r+b")


def test_backup_to_a_second_cluster(storpool_sandbox_factory):
    local = storpool_sandbox_factory("local")
    remote = storpool_sandbox_factory("remote", token="other-token")
    local.add_remote_location("remote", remote)
    api = bindings(local)
    api.volumeCreate({"name": "one-img-5", "size": MIB, "tags": {"virt": "one"}})
    api.volumesReassignWait({"reassign": [{"volume": "one-img-5", "rw": [1]}]})
    with device(local, 1, "one-img-5").open("r+b") as dev:
        dev.write(b"precious")
    assert [loc.name for loc in api.locationsList()["locations"]] == ["remote"]
    reply = api.volumeBackup({"volume": "one-img-5", "location": "remote",
                              "tags": {"del": "y"}})
    assert reply.ok and reply.remoteId
    (copy,) = bindings(remote).snapshotsList()
    assert copy.backup and copy.globalId == reply.remoteId
    assert copy.tags == {"virt": "one", "del": "y"}
    bindings(remote).volumeCreate({"name": "restored", "parent": copy.name})
    assert remote.cluster.object_path(remote.cluster.volumes["restored"]).read_bytes()[
        :8] == b"precious"
    (listed,) = api.snapshotsRemoteList()["snapshots"]
    assert listed.location == "remote" and listed.remoteId == reply.remoteId


def test_fault_injection(storpool_sandbox):
    api = bindings(storpool_sandbox)
    storpool_sandbox.inject_faults(transient=2)
    for _ in range(2):
        with pytest.raises(spapi.ApiError) as caught:
            api.volumesList()
        assert caught.value.transient
    assert api.volumesList() == []
    storpool_sandbox.inject_faults(drop=1)
    with pytest.raises(Exception):  # noqa: B017 (the bindings raise http.client errors)
        api.volumesList()
    assert api.volumesList() == []
    storpool_sandbox.inject_faults(latency=0.3)
    started = time.monotonic()
    api.volumesList()
    assert time.monotonic() - started >= 0.3
    # The same controls over HTTP, for drivers running in other processes.
    status, reply = raw(storpool_sandbox, "POST", "/sandbox/faults", {"transient": 1})
    assert status == 200
    status, reply = raw(storpool_sandbox, "GET", "/ctrl/1.0/VolumesList")
    assert reply["error"]["transient"] is True


def test_admin_api_clients_and_clock(storpool_sandbox, tmp_path):
    host = tmp_path / "hosts" / "node7"
    status, _ = raw(storpool_sandbox, "POST", "/sandbox/clients", {"id": 7, "dir": str(host)})
    assert status == 200
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [7]}]})
    assert (host / "dev" / "storpool" / "v").exists()
    assert any(c == 7 for c in api.servicesList().clients)
    status, info = raw(storpool_sandbox, "GET", "/sandbox/info")
    now = info["data"]["now"]
    raw(storpool_sandbox, "POST", "/sandbox/clock", {"advance": 100})
    assert raw(storpool_sandbox, "GET", "/sandbox/info")[1]["data"]["now"] >= now + 100


def test_command_line_server(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "onestorpool.cli", "sandbox", "storpool", "--port", str(port),
         "--data", str(tmp_path / "cli"), "--token", "cli-token", "--client",
         f"9={tmp_path / 'h9'}"], stdout=subprocess.PIPE, text=True)
    try:
        assert "StorPool sandbox" in process.stdout.readline()
        api = spapi.Api(host="127.0.0.1", port=port, auth="cli-token", transientRetries=0)
        api.volumeCreate({"name": "v", "size": MIB})
        api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [9]}]})
        assert (tmp_path / "h9" / "dev" / "storpool" / "v").exists()
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
