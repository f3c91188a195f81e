"""The StorPool sandbox against the official bindings and raw HTTP: calls, typed replies,
errors, validation, transactions, data semantics and space reports.

Attachments, the clock and persistence, remote locations and fault injection have their own
``test_storpool_sandbox_*`` files.
"""

from __future__ import annotations

import http.client
import json
import os

import pytest
from storpool import spapi, sptypes

from onestorpool.sandbox.storpool import StorPoolSandbox

MIB = 1 << 20


def bindings(sandbox: StorPoolSandbox, **kwargs) -> spapi.Api:
    kwargs.setdefault("transientRetries", 0)
    return spapi.Api(host=sandbox.host, port=sandbox.port, auth=sandbox.token, **kwargs)


def strict(api: spapi.Api, method: str, *args):
    """The reply parsed by the bindings' own return type, failing instead of falling back to
    a partly built object as the generated methods quietly do. (In storpool 7.3.0 each
    generated method keeps its return-type parser in its globals as ``returns``.)"""
    raw = getattr(api, method)(*args, returnRawAPIData=True)
    return getattr(spapi.Api, method).__globals__["returns"](raw)


def test_bindings_drive_the_whole_cycle(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeTemplateCreate({"name": "one-ds-1", "replication": 2, "placeAll": "hdd",
                              "placeTail": "ssd"})
    created = api.volumeCreate({"name": "one-img-1", "size": 4 * MIB, "template": "one-ds-1",
                                "tags": {"virt": "one"}})
    assert created.ok and created.globalId
    (volume,) = api.volumesList()
    assert isinstance(volume, sptypes.VolumeSummary)
    assert (volume.name, volume.size, volume.templateName, volume.replication) == (
        "one-img-1", 4 * MIB, "one-ds-1", 2)
    assert volume.tags == {"virt": "one"} and volume.placeTail == "ssd"
    assert volume.globalId == created.globalId

    api.volumesReassignWait({"reassign": [{"volume": "one-img-1", "rw": [1]}],
                             "attachTimeout": 10})
    (attachment,) = api.attachmentsList()
    assert isinstance(attachment, sptypes.AttachmentDesc)
    assert (attachment.volume, attachment.client, attachment.rights, attachment.snapshot) == (
        "one-img-1", 1, "rw", False)
    device = storpool_sandbox.device(1, "one-img-1")
    with open(device, "r+b") as dev:
        dev.write(b"payload")

    snap = api.snapshotCreate("one-img-1", {"name": "one-img-1-snap0"})
    assert snap.ok and snap.snapshotGlobalId and snap.autoName is None
    (snapshot,) = api.snapshotsList()
    assert isinstance(snapshot, sptypes.SnapshotSummary)
    assert (snapshot.name, snapshot.onVolume, snapshot.size, snapshot.deleted) == (
        "one-img-1-snap0", "one-img-1", 4 * MIB, False)
    assert api.volumeList("one-img-1")[0].parentName == "one-img-1-snap0"

    api.volumesReassign([{"volume": "one-img-1", "detach": [1]}])
    assert api.attachmentsList() == [] and not device.exists()
    api.volumeDelete("one-img-1")
    api.snapshotDelete("one-img-1-snap0")
    assert api.volumesList() == [] and api.snapshotsList() == []
    assert list((storpool_sandbox.data_dir / "objects").iterdir()) == []


def test_every_reply_parses_as_the_bindings_type(storpool_sandbox_factory):
    """No reply may fall back to a partial object: each parses with the strict type."""
    sandbox = storpool_sandbox_factory("typed")
    remote = storpool_sandbox_factory("typedremote", token="other")
    sandbox.add_remote_location("typedremote", remote)
    api = bindings(sandbox)
    strict(api, "volumeTemplateCreate", {"name": "t1", "replication": 2, "placeAll": "hdd"})
    strict(api, "volumeCreate", {"name": "v", "size": MIB, "template": "t1", "tags": {"a": "b"}})
    anonymous = strict(api, "volumeCreate", {"size": MIB})
    assert anonymous.name.startswith("~")
    strict(api, "snapshotCreate", "v", {"name": "s"})
    assert strict(api, "snapshotCreate", "v", {"bind": True}).autoName.startswith("*")
    strict(api, "volumeCreate", {"name": "c", "parent": "s"})
    strict(api, "volumeCreate", {"name": "b", "baseOn": "v"})
    strict(api, "volumesReassignWait", {"reassign": [{"volume": "v", "rw": [1]},
                                                     {"snapshot": "s", "ro": [2]}]})
    strict(api, "snapshotCreateGroup", {"volumes": [{"volume": "v", "name": "g1"},
                                                    {"volume": "c"}]})
    strict(api, "volumeBackup", {"volume": "c", "location": "typedremote"})
    strict(api, "volumesGroupBackup", {"volumes": ["c", "b"], "location": "typedremote"})
    strict(api, "volumeFreeze", "b")
    for method in ("volumesList", "snapshotsList", "attachmentsList", "volumeTemplatesList",
                   "volumeTemplatesStatus", "volumesSpace", "snapshotsSpace", "volumesStatus",
                   "volumesQuickStatus", "servicesList", "clientsConfigDump", "locationsList",
                   "clustersList", "snapshotsRemoteList"):
        assert strict(api, method) is not None, method
    for method in ("volumeList", "volumeDescribe", "volumeInfo", "volumeListSnapshots"):
        strict(api, method, "v")
    for method in ("snapshotList", "snapshotDescribe", "snapshotInfo"):
        strict(api, method, "s")
    strict(api, "volumeTemplateDescribe", "t1")
    strict(api, "clientConfigWait", 3)
    status = strict(api, "volumesStatus")
    assert status["s"].snapshot and not status["v"].snapshot
    services = strict(api, "servicesList")
    assert sorted(services.clients) == [1, 2, 3, 4]
    assert all(c.status == "running" for c in services.clients.values())


def test_volume_and_snapshot_reads(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    first = api.snapshotCreate("v", {"name": "v-1"})
    api.snapshotCreate("v", {"name": "v-2"})
    assert [s.name for s in api.volumeListSnapshots("v")] == ["v-2", "v-1"]
    assert api.snapshotList("v-1")[0].globalId == first.snapshotGlobalId
    # Objects are reachable by global id too, as ~<globalId>.
    assert api.snapshotList(f"~{first.snapshotGlobalId}")[0].name == "v-1"
    assert api.volumeDescribe("v").objects == []
    assert api.volumeInfo("v").name == "v"
    api.snapshotDeleteById(first.snapshotGlobalId)
    assert "v-1" in {s.name for s in api.snapshotsList() if s.deleted}  # v-2 hangs off it


def test_error_envelopes_match_storpool(storpool_sandbox, storpool_http):
    api = bindings(storpool_sandbox)
    with pytest.raises(spapi.ApiError) as missing:
        api.volumeDelete("nope")
    assert missing.value.name == "objectDoesNotExist" and not missing.value.transient
    api.volumeCreate({"name": "v", "size": MIB})
    with pytest.raises(spapi.ApiError) as taken:
        api.volumeCreate({"name": "v", "size": MIB})
    assert taken.value.name == "objectExists"
    with pytest.raises(spapi.ApiError) as taken:
        api.snapshotCreate("v", {"name": "v"})  # volumes and snapshots share the names
    assert taken.value.name == "objectExists"

    def error(method, path, body=None):
        status, reply = storpool_http(storpool_sandbox, method, path, body)
        assert set(reply) == {"error"}, reply
        assert set(reply["error"]) == {"name", "descr", "transient"}
        return status, reply["error"]

    cases = [
        ({"name": "w", "size": 1000}, "invalidParam", "multiple of 512"),
        ({"name": "bad name", "size": MIB}, "invalidParam", "invalid volume name"),
        ({"name": "list", "size": MIB}, "invalidParam", "must not be"),
        ({"name": "x" * 200, "size": MIB}, "invalidParam", "too long"),
        ({"name": "w", "size": "1M"}, "invalidParam", "integer"),
        ({"name": "w", "size": MIB, "tempalte": "t"}, "invalidParam", "unknown field"),
        ({"name": "w", "size": MIB, "template": "missing"}, "objectDoesNotExist", "missing"),
        ({"name": "w", "parent": "missing"}, "objectDoesNotExist", "snapshot missing"),
        ({"name": "w", "baseOn": "v", "parent": "s"}, "invalidParam", "mutually exclusive"),
        ({"name": "w"}, "invalidParam", "size is required"),
        ({"name": "w", "size": MIB, "replication": 4}, "invalidParam", "replication"),
        ({"name": "w", "size": MIB, "placeAll": "a.b"}, "invalidParam", "placement group"),
        ({"name": "w", "size": MIB, "iops": -1}, "invalidParam", "iops"),
        ({"name": "w", "size": MIB, "tags": {"a b": "c"}}, "invalidParam", "tag name"),
        ({"name": "w", "size": MIB, "tags": {"a": "c d"}}, "invalidParam", "tag a"),
    ]
    for body, name, text in cases:
        _, err = error("POST", "/ctrl/1.0/VolumeCreate", body)
        assert err["name"] == name and text in err["descr"], (body, err)
        assert not err["transient"]
    assert error("POST", "/ctrl/1.0/VolumeCreate", [1])[1]["name"] == "invalidParam"
    assert error("GET", "/ctrl/1.0/NoSuchCall")[1]["name"] == "invalidParam"
    status, err = error("GET", "/ctrl/1.0/VolumeCreate")
    assert status == 405 and "POST" in err["descr"]
    assert error("GET", "/ctrl/1.0/Volume")[1]["descr"] == "this call needs a name in its path"
    assert error("GET", "/ctrl/1.0/RemoteCommand/x/VolumesList")[1]["name"] == "invalidParam"
    assert error("GET", "/elsewhere")[0] == 404
    assert api.volumesList()[0].name == "v"  # nothing of the above got through


def test_bad_json_is_refused(storpool_sandbox):
    conn = http.client.HTTPConnection(storpool_sandbox.host, storpool_sandbox.port, timeout=10)
    conn.request("POST", "/ctrl/1.0/VolumeCreate", body=b"{not json",
                 headers={"Authorization": f"Storpool v1:{storpool_sandbox.token}"})
    response = conn.getresponse()
    assert response.status == 400
    assert json.load(response)["error"]["name"] == "jsonError"
    conn.close()


def test_wrong_or_missing_token_is_refused(storpool_sandbox, storpool_http):
    for token in ("wrong", ""):
        status, reply = storpool_http(storpool_sandbox, "GET", "/ctrl/1.0/VolumesList",
                                      token=token)
        assert status == 401 and reply["error"]["name"] == "invalidCredentials"
        assert set(reply["error"]) == {"name", "descr", "transient"}
    status, _ = storpool_http(storpool_sandbox, "POST", "/sandbox/clock", {"advance": 1},
                              token="wrong")
    assert status == 401  # the admin API is protected the same way
    with pytest.raises(spapi.ApiError) as caught:
        spapi.Api(host=storpool_sandbox.host, port=storpool_sandbox.port, auth="wrong",
                  transientRetries=0).volumesList()
    assert caught.value.status == 401 and caught.value.name == "invalidCredentials"
    # Bodies are refused unread: nothing was created.
    storpool_http(storpool_sandbox, "POST", "/ctrl/1.0/VolumeCreate",
                  {"name": "v", "size": MIB}, token="wrong")
    assert bindings(storpool_sandbox).volumesList() == []


def test_keep_alive_and_http10(storpool_sandbox_factory):
    for keep_alive, version in ((True, 11), (False, 10)):
        sandbox = storpool_sandbox_factory(f"ka{int(keep_alive)}", keep_alive=keep_alive)
        conn = http.client.HTTPConnection(sandbox.host, sandbox.port, timeout=10)
        headers = {"Authorization": f"Storpool v1:{sandbox.token}"}
        conn.request("GET", "/ctrl/1.0/VolumesList", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.version == version
        assert response.will_close is (not keep_alive)
        if keep_alive:  # the same connection answers a second call
            conn.request("GET", "/ctrl/1.0/VolumesList", headers=headers)
            assert conn.getresponse().status == 200
        conn.close()


def test_failed_request_changes_nothing(storpool_sandbox, storpool_http):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "a", "size": MIB, "tags": {"k": "v"}})
    api.volumeCreate({"name": "b", "size": MIB})
    before = api.volumesList(returnRawAPIData=True)
    # A valid resize with a rename to a taken name: all or nothing.
    with pytest.raises(spapi.ApiError, match="already exists"):
        api.volumeUpdate("a", {"size": 2 * MIB, "rename": "b", "tags": {"k": ""}})
    assert api.volumesList(returnRawAPIData=True) == before
    assert storpool_sandbox.cluster.object_path(
        storpool_sandbox.cluster.volumes["a"]).stat().st_size == MIB
    # A group snapshot with one bad member takes no snapshot at all.
    with pytest.raises(spapi.ApiError):
        api.snapshotCreateGroup({"volumes": [{"volume": "a", "name": "a-1"},
                                             {"volume": "missing", "name": "m-1"}]})
    assert api.snapshotsList() == []
    # A reassign with one bad item attaches nothing.
    _, reply = storpool_http(storpool_sandbox, "POST", "/ctrl/1.0/VolumesReassign",
                             [{"volume": "a", "rw": [1]}, {"volume": "b", "rw": [99]}])
    assert "client 99" in reply["error"]["descr"]
    assert api.attachmentsList() == [] and not storpool_sandbox.device(1, "a").exists()


def test_resize_rename_tags(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB, "tags": {"a": "1", "b": "2"}})
    api.volumeUpdate("v", {"size": 2 * MIB})
    api.volumeUpdate("v", {"sizeAdd": MIB})
    assert api.volumeList("v")[0].size == 3 * MIB
    with pytest.raises(spapi.ApiError, match="shrinkOk"):
        api.volumeUpdate("v", {"size": MIB})
    api.volumeUpdate("v", {"size": MIB, "shrinkOk": True})
    api.volumeUpdate("v", {"rename": "w", "tags": {"a": "", "c": "3"}, "iops": 1000,
                           "bw": "-"})
    (volume,) = api.volumeList("w")
    assert volume.size == MIB and volume.tags == {"b": "2", "c": "3"} and volume.iops == 1000
    assert storpool_sandbox.cluster.object_path(
        storpool_sandbox.cluster.volumes["w"]).stat().st_size == MIB
    with pytest.raises(spapi.ApiError):
        api.volumeList("v")
    api.snapshotCreate("w", {"name": "w-s"})
    api.snapshotUpdate("w-s", {"rename": "w-snap", "tags": {"keep": "y"}})
    (snapshot,) = api.snapshotsList()
    assert snapshot.name == "w-snap" and snapshot.tags == {"keep": "y"}
    assert api.volumeList("w")[0].parentName == "w-snap"  # the chain follows the rename


def test_data_semantics_snapshot_clone_base_on_revert(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "src", "size": 2 * MIB})
    api.volumesReassignWait({"reassign": [{"volume": "src", "rw": [1]}]})
    payload = os.urandom(MIB)
    with open(storpool_sandbox.device(1, "src"), "r+b") as dev:
        dev.write(payload)
    api.snapshotCreate("src", {"name": "src-snap1"})
    with open(storpool_sandbox.device(1, "src"), "r+b") as dev:
        dev.write(b"\xff" * 16)  # after the snapshot: must not leak into it
    api.volumeCreate({"name": "from-snap", "parent": "src-snap1"})
    api.volumeCreate({"name": "based", "baseOn": "src", "size": 4 * MIB})
    with pytest.raises(spapi.ApiError, match="smaller"):
        api.volumeCreate({"name": "small", "parent": "src-snap1", "size": MIB})
    api.volumesReassignWait({"reassign": [{"volume": "from-snap", "rw": [2]},
                                          {"volume": "based", "rw": [3]}]})
    assert storpool_sandbox.device(2, "from-snap").read_bytes()[:MIB] == payload
    based = storpool_sandbox.device(3, "based").read_bytes()
    assert based[:16] == b"\xff" * 16 and based[16:MIB] == payload[16:]
    assert len(based) == 4 * MIB
    assert api.volumeList("from-snap")[0].parentName == "src-snap1"
    # Revert: refused while attached; then the volume has the snapshot's data again.
    with pytest.raises(spapi.ApiError, match="attached"):
        api.volumeRevert("src", {"toSnapshot": "src-snap1"})
    api.volumesReassignWait({"reassign": [{"volume": "src", "detach": [1]}]})
    api.volumeCreate({"name": "unrelated", "size": MIB})
    with pytest.raises(spapi.ApiError, match="not a snapshot of"):
        api.volumeRevert("unrelated", {"toSnapshot": "src-snap1"})
    api.volumeRevert("src", {"toSnapshot": "src-snap1"})
    api.volumesReassignWait({"reassign": [{"volume": "src", "rw": [1]}]})
    assert storpool_sandbox.device(1, "src").read_bytes()[:MIB] == payload


def test_writes_that_truncate_do_not_shrink_the_volume(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [1]}]})
    storpool_sandbox.device(1, "v").write_bytes(b"kept")  # O_TRUNC: no block device does it
    api.volumesList()  # the next call puts the size back
    assert storpool_sandbox.device(1, "v").read_bytes() == b"kept" + b"\0" * (MIB - 4)


def test_freeze_turns_a_volume_into_a_snapshot(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [1]}]})
    with pytest.raises(spapi.ApiError, match="read-write"):
        api.volumeFreeze("v")
    api.volumesReassignWait({"reassign": [{"volume": "v", "detach": "all"}]})
    api.volumeFreeze("v")
    assert api.volumesList() == []
    (snapshot,) = api.snapshotsList()
    assert snapshot.name == "v" and snapshot.onVolume == "v"
    api.volumeCreate({"name": "w", "parent": "v"})


def test_templates(storpool_sandbox, storpool_http):
    api = bindings(storpool_sandbox)
    api.volumeTemplateCreate({"name": "one-ds-1", "replication": 3, "size": 8 * MIB})
    with pytest.raises(spapi.ApiError) as taken:
        api.volumeTemplateCreate({"name": "one-ds-1"})
    assert taken.value.name == "objectExists"
    _, reply = storpool_http(storpool_sandbox, "POST", "/ctrl/1.0/VolumeTemplateCreate",
                             {"name": "one.ds"})  # the bindings would refuse to send it
    assert "invalid template name" in reply["error"]["descr"]
    api.volumeCreate({"name": "v", "template": "one-ds-1"})  # the template's size
    (volume,) = api.volumesList()
    assert (volume.size, volume.replication, volume.templateName) == (8 * MIB, 3, "one-ds-1")
    api.volumeTemplateUpdate("one-ds-1", {"replication": 2, "placeAll": "ssd",
                                          "propagate": True})
    (volume,) = api.volumesList()
    assert (volume.replication, volume.placeAll) == (2, "ssd")
    # A volume moves to another template and takes its policy.
    api.volumeTemplateCreate({"name": "one-ds-2", "replication": 1, "iops": 500})
    api.volumeUpdate("v", {"template": "one-ds-2"})
    (volume,) = api.volumesList()
    assert (volume.templateName, volume.replication, volume.iops) == ("one-ds-2", 1, 500)
    with pytest.raises(spapi.ApiError, match="in use"):
        api.volumeTemplateDelete("one-ds-2")
    api.volumeTemplateUpdate("one-ds-2", {"rename": "one-ds-3"})
    assert api.volumesList()[0].templateName == "one-ds-3"
    api.volumeTemplateDelete("one-ds-1")
    assert [t.name for t in api.volumeTemplatesList()] == ["one-ds-3"]
    assert api.volumeTemplateDescribe("one-ds-3").iops == 500
    # A template with a parent snapshot: new volumes start from it.
    api.snapshotCreate("v", {"name": "base"})
    api.volumeTemplateCreate({"name": "golden", "parent": "base", "replication": 2})
    api.volumeCreate({"name": "from-golden", "template": "golden"})
    (volume,) = api.volumeList("from-golden")
    assert (volume.parentName, volume.size, volume.replication) == ("base", 8 * MIB, 2)


def test_space_reports_follow_written_data(storpool_sandbox_factory):
    sandbox = storpool_sandbox_factory("space", capacity=64 * MIB)
    api = bindings(sandbox)
    api.volumeTemplateCreate({"name": "t", "replication": 2})
    api.volumeCreate({"name": "v", "size": 8 * MIB, "template": "t"})
    (status,) = api.volumeTemplatesStatus()
    assert status.stored.capacity == 32 * MIB  # raw capacity / replication
    assert status.stored.free == 32 * MIB and status.capacityPlaceAll == 64 * MIB
    assert status.volumesCount == 1 and status.size == 8 * MIB
    api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [1]}]})
    with open(sandbox.device(1, "v"), "r+b") as dev:
        dev.write(os.urandom(2 * MIB))
        dev.flush()
        os.fsync(dev.fileno())
    (space,) = api.volumesSpace()
    assert 2 * MIB <= space.storedSize <= 8 * MIB
    (status,) = api.volumeTemplatesStatus()
    assert 32 * MIB - status.stored.free >= 2 * MIB  # client bytes, replication divided out
    assert status.storedSize >= 2 * MIB and status.onDiskSize == 2 * status.storedSize
    api.snapshotCreate("v", {"name": "v-1"})
    (status,) = api.volumeTemplatesStatus()
    assert status.snapshotsCount == 1 and status.stored.free <= 32 * MIB - 4 * MIB
    (snap_space,) = api.snapshotsSpace()
    assert snap_space.storedSize >= 2 * MIB and snap_space.spaceUsed == 0  # v hangs off it
    assert api.volumesStatus()["v"].storedSize >= 2 * MIB
