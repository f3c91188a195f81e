"""StorPool sandbox remote locations: backups sent to a second sandbox cluster, the remote
snapshot list, and copies back with SnapshotFromRemote/VolumeFromRemote."""

from __future__ import annotations

import os

import pytest
from storpool import spapi

from onestorpool.sandbox.storpool import StorPoolSandbox

MIB = 1 << 20


def bindings(sandbox: StorPoolSandbox) -> spapi.Api:
    return spapi.Api(host=sandbox.host, port=sandbox.port, auth=sandbox.token,
                     transientRetries=0)


@pytest.fixture
def sites(storpool_sandbox_factory):
    local = storpool_sandbox_factory("local")
    remote = storpool_sandbox_factory("remote", token="other-token")
    local.add_remote_location("remote", remote)
    return local, remote


def write(sandbox: StorPoolSandbox, name: str, payload: bytes, offset: int = 0) -> None:
    api = bindings(sandbox)
    api.volumesReassignWait({"reassign": [{"volume": name, "rw": [1]}]})
    with sandbox.device(1, name).open("r+b") as dev:
        dev.seek(offset)
        dev.write(payload)
    api.volumesReassignWait({"reassign": [{"volume": name, "detach": [1]}]})


def test_backup_sends_a_snapshot_to_the_other_cluster(sites):
    local, remote = sites
    api, remote_api = bindings(local), bindings(remote)
    assert [(loc.name, loc.id) for loc in api.locationsList()["locations"]] == [
        ("remote", remote.cluster.location_id)]
    assert [c.location for c in api.clustersList()["clusters"]] == ["local", "remote"]
    api.volumeCreate({"name": "one-img-5", "size": 64 * MIB, "tags": {"virt": "one"}})
    write(local, "one-img-5", b"precious", offset=32 * MIB)
    reply = api.volumeBackup({"volume": "one-img-5", "location": "remote",
                              "tags": {"del": "y"}})
    assert reply.ok and reply.remoteId and reply.autoName.startswith("*")
    (copy,) = remote_api.snapshotsList()
    assert copy.backup and copy.globalId == reply.remoteId
    assert copy.backupOfGlobalId == api.volumeList("one-img-5")[0].globalId
    assert copy.tags == {"virt": "one", "del": "y"} and copy.onVolume == "one-img-5"
    assert copy.size == 64 * MIB
    # Only the data ranges travelled: the copy is as sparse as the original.
    assert os.stat(remote.cluster.object_path(remote.cluster.snapshots[copy.name])
                   ).st_blocks * 512 < 4 * MIB
    remote_api.volumeCreate({"name": "restored", "parent": copy.name})
    remote_api.volumesReassignWait({"reassign": [{"volume": "restored", "ro": [1]}]})
    with remote.device(1, "restored").open("rb") as dev:
        dev.seek(32 * MIB)
        assert dev.read(8) == b"precious"
    # The local snapshot the backup was taken from is bound to its volume.
    (local_snap,) = api.snapshotsList()
    assert local_snap.name == reply.autoName and local_snap.bound
    (listed,) = api.snapshotsRemoteList()["snapshots"]
    assert (listed.location, listed.remoteId, listed.name) == ("remote", reply.remoteId,
                                                               "one-img-5")
    assert listed.tags == {"virt": "one", "del": "y"}
    assert listed.localSnapshot == reply.autoName
    api.volumeDelete("one-img-5")
    assert api.snapshotsList() == []  # the bound snapshot went with its volume


def test_group_backup_and_unknown_location(sites, storpool_http):
    local, remote = sites
    api = bindings(local)
    for name in ("a", "b"):
        api.volumeCreate({"name": name, "size": MIB})
    reply = api.volumesGroupBackup({"volumes": ["a", "b"], "location": "remote",
                                    "tags": {"nvm": "3"}})
    assert set(reply.backups) == {"a", "b"}
    remote_ids = {s.globalId for s in bindings(remote).snapshotsList()}
    assert {b.remoteId for b in reply.backups.values()} == remote_ids
    _, err = storpool_http(local, "POST", "/ctrl/1.0/VolumeBackup",
                           {"volume": "a", "location": "nowhere"})
    assert err["error"]["name"] == "objectDoesNotExist"
    _, err = storpool_http(local, "POST", "/ctrl/1.0/VolumeBackup",
                           {"volume": "missing", "location": "remote"})
    assert err["error"]["name"] == "objectDoesNotExist"
    assert len(bindings(remote).snapshotsList()) == 2
    anonymous = api.volumeCreate({"size": MIB}).name  # ~<globalId>: no name to build on
    api.volumeBackup({"volume": anonymous, "location": "remote"})
    assert sum(s.onVolume == anonymous for s in bindings(remote).snapshotsList()) == 1


def test_copies_come_back_from_the_remote(sites):
    local, _remote = sites
    api = bindings(local)
    api.volumeCreate({"name": "v", "size": 2 * MIB})
    payload = os.urandom(MIB)
    write(local, "v", payload)
    remote_id = api.volumeBackup({"volume": "v", "location": "remote"}).remoteId
    api.snapshotFromRemote({"remoteLocation": "remote", "remoteId": remote_id,
                            "name": "v-restored", "tags": {"r": "1"}})
    api.volumeFromRemote({"remoteLocation": "remote", "remoteId": remote_id,
                          "name": "v-new"})
    restored = api.snapshotList("v-restored")[0]
    assert restored.tags == {"r": "1"} and restored.size == 2 * MIB
    api.volumesReassignWait({"reassign": [{"volume": "v-new", "rw": [2]},
                                          {"snapshot": "v-restored", "ro": [3]}]})
    assert local.device(2, "v-new").read_bytes()[:MIB] == payload
    assert local.device(3, "v-restored").read_bytes()[:MIB] == payload
    listed = api.snapshotsRemoteList()["snapshots"]
    assert [s.localSnapshot for s in listed if s.remoteId == remote_id] == ["v-restored"]
    with pytest.raises(spapi.ApiError) as missing:
        api.snapshotFromRemote({"remoteLocation": "remote", "remoteId": "remote.b.zz"})
    assert missing.value.name == "objectDoesNotExist"
    with pytest.raises(spapi.ApiError) as taken:
        api.volumeFromRemote({"remoteLocation": "remote", "remoteId": remote_id,
                              "name": "v-new"})
    assert taken.value.name == "objectExists"


def test_exported_snapshots_are_listed_and_copied(sites):
    local, remote = sites
    remote.add_remote_location("local", local)
    remote_api = bindings(remote)
    remote_api.volumeCreate({"name": "golden", "size": MIB})
    remote_api.snapshotCreate("golden", {"name": "golden-1"})
    api = bindings(local)
    assert api.snapshotsRemoteList()["snapshots"] == []  # not exported to us yet
    remote_api.snapshotExport({"snapshot": "golden-1", "location": "local"})
    (listed,) = api.snapshotsRemoteList()["snapshots"]
    assert listed.name == "golden-1" and listed.onVolume == "golden"
    api.snapshotFromRemote({"remoteLocation": "remote", "remoteId": listed.remoteId})
    assert len(api.snapshotsList()) == 1
    remote_api.snapshotUnexport({"snapshot": "golden-1", "location": "local"})
    assert api.snapshotsRemoteList()["snapshots"] == []


def test_registered_over_http_and_unreachable(storpool_sandbox_factory, storpool_http):
    local = storpool_sandbox_factory("local")
    remote = storpool_sandbox_factory("remote", token="other-token")
    _, info = storpool_http(remote, "GET", "/sandbox/info")
    status, _ = storpool_http(local, "POST", "/sandbox/locations",
                              {"name": "dr", "url": remote.url, "token": "other-token",
                               "id": info["data"]["locationId"]})
    assert status == 200
    api = bindings(local)
    api.volumeCreate({"name": "v", "size": MIB})
    assert api.volumeBackup({"volume": "v", "location": "dr"}).remoteId
    remote.stop()
    with pytest.raises(spapi.ApiError) as unreachable:
        api.volumeBackup({"volume": "v", "location": "dr"})
    assert unreachable.value.transient and unreachable.value.name == "remoteError"
    with pytest.raises(spapi.ApiError):
        api.snapshotsRemoteList()
