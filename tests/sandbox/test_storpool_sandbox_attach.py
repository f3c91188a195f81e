"""StorPool sandbox attachments: device links per client, read-only enforcement, several
writers, devices still open, unknown clients and the client admin API."""

from __future__ import annotations

import os

import pytest
from storpool import spapi

from onestorpool.sandbox.storpool import StorPoolSandbox

MIB = 1 << 20


def bindings(sandbox: StorPoolSandbox) -> spapi.Api:
    return spapi.Api(host=sandbox.host, port=sandbox.port, auth=sandbox.token,
                     transientRetries=0)


def reassign(api: spapi.Api, *items: dict) -> None:
    api.volumesReassignWait({"reassign": list(items)})


def test_attach_links_the_device_on_that_client_only(storpool_sandbox):
    api = bindings(storpool_sandbox)
    created = api.volumeCreate({"name": "v", "size": MIB})
    reassign(api, {"volume": "v", "rw": [2]})
    device = storpool_sandbox.device(2, "v")
    assert device.is_symlink() and device.resolve() == storpool_sandbox.cluster.object_path(
        storpool_sandbox.cluster.volumes["v"])
    by_id = storpool_sandbox.client_dir(2) / "dev" / "storpool-byid" / created.globalId
    assert by_id.resolve() == device.resolve()
    assert not storpool_sandbox.device(1, "v").exists()
    # Re-attaching is a no-op; a rename moves the link.
    reassign(api, {"volume": "v", "rw": [2]})
    api.volumeUpdate("v", {"rename": "w"})
    assert not device.exists() and storpool_sandbox.device(2, "w").exists()
    assert [(a.volume, a.client, a.pos) for a in api.attachmentsList()] == [("w", 2, 0)]
    reassign(api, {"volume": "w", "detach": "all"})
    assert not storpool_sandbox.device(2, "w").exists() and not by_id.exists()


def test_read_only_attachments_are_enforced(storpool_sandbox, storpool_http):
    if not storpool_sandbox.cluster.readonly_enforced and os.geteuid() == 0:
        pytest.skip("no immutable flag on this filesystem, and root ignores file modes")
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    reassign(api, {"volume": "v", "rw": [1]})
    with open(storpool_sandbox.device(1, "v"), "r+b") as dev:
        dev.write(b"data")
    api.snapshotCreate("v", {"name": "s"})
    reassign(api, {"volume": "v", "detach": "all", "ro": [1, 3]}, {"snapshot": "s", "ro": [2]})
    for client, name in ((1, "v"), (3, "v"), (2, "s")):
        path = storpool_sandbox.device(client, name)
        assert path.read_bytes()[:4] == b"data"
        with pytest.raises(PermissionError):
            path.open("r+b")
        with pytest.raises(PermissionError):
            path.write_bytes(b"")
    # Snapshots are never writable, attached or not: the bindings drop "rw" from snapshot
    # items, so say it on the wire.
    _, reply = storpool_http(storpool_sandbox, "POST", "/ctrl/1.0/VolumesReassignWait",
                             {"reassign": [{"snapshot": "s", "rw": [3]}]})
    assert "read-only" in reply["error"]["descr"]
    # Read-only and read-write at once is refused without force.
    with pytest.raises(spapi.ApiError, match=r"read-write .* and read-only"):
        reassign(api, {"volume": "v", "rw": [2]})
    # Attached read-write again, the volume is writable again, and resizable meanwhile.
    api.volumeUpdate("v", {"size": 2 * MIB})
    reassign(api, {"volume": "v", "detach": "all", "rw": [1]})
    with storpool_sandbox.device(1, "v").open("r+b") as dev:
        dev.write(b"ok")
    # The flags never stop the sandbox itself from deleting data.
    reassign(api, {"volume": "v", "detach": "all"}, {"snapshot": "s", "detach": "all"})
    api.volumeDelete("v")
    api.snapshotDelete("s")
    assert list((storpool_sandbox.data_dir / "objects").iterdir()) == []


def test_two_writers_need_force(storpool_sandbox_factory):
    sandbox = storpool_sandbox_factory()
    api = bindings(sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    reassign(api, {"volume": "v", "rw": [1]})
    with pytest.raises(spapi.ApiError, match="already attached read-write to client 1"):
        reassign(api, {"volume": "v", "rw": [2]})
    reassign(api, {"volume": "v", "rw": [2], "force": True})
    assert sorted(a.client for a in api.attachmentsList()) == [1, 2]
    assert sandbox.device(1, "v").exists() and sandbox.device(2, "v").exists()
    # A cluster that allows shared writers (live migration needs both hosts at once).
    shared = storpool_sandbox_factory("shared", allow_shared_rw=True)
    api = bindings(shared)
    api.volumeCreate({"name": "v", "size": MIB})
    reassign(api, {"volume": "v", "rw": [1]})
    reassign(api, {"volume": "v", "rw": [2]})
    with pytest.raises(spapi.ApiError, match="read-only"):
        reassign(api, {"volume": "v", "ro": [3]})


def test_unknown_clients_and_string_ids(storpool_sandbox, storpool_http):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    for bad, text in (([99], "client 99 does not exist"), ([0], "invalid client id"),
                      (["x"], "invalid client id"), ([True], "invalid client id")):
        _, reply = storpool_http(storpool_sandbox, "POST", "/ctrl/1.0/VolumesReassignWait",
                                 {"reassign": [{"volume": "v", "rw": bad}]})
        assert reply["error"]["name"] == "invalidParam" and text in reply["error"]["descr"]
    # Client ids as JSON strings, as the Bash add-on sends them.
    for item in ({"volume": "v", "rw": ["1"]}, {"volume": "v", "rw": ["2"], "force": True}):
        status, reply = storpool_http(storpool_sandbox, "POST",
                                      "/ctrl/1.0/VolumesReassignWait",
                                      {"attachTimeout": 20, "reassign": [item]})
        assert status == 200 and reply["data"]["ok"]
    _, reply = storpool_http(storpool_sandbox, "POST", "/ctrl/1.0/VolumesReassignWait",
                             {"reassign": [{"volume": "v", "detach": ["1", "2"],
                                            "force": True}]})
    assert reply["data"]["ok"] and api.attachmentsList() == []


def test_delete_refused_while_attached(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    api.snapshotCreate("v", {"name": "s"})
    reassign(api, {"volume": "v", "rw": [1]}, {"snapshot": "s", "ro": [1]})
    for delete, name in ((api.volumeDelete, "v"), (api.snapshotDelete, "s")):
        with pytest.raises(spapi.ApiError, match="attached to client"):
            delete(name)
    reassign(api, {"volume": "v", "detach": "all"}, {"snapshot": "s", "detach": "all"})
    api.volumeDelete("v")
    api.snapshotDelete("s")


def test_detaching_an_open_device_is_busy_unless_forced(storpool_sandbox):
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    reassign(api, {"volume": "v", "rw": [1]})
    with open(storpool_sandbox.device(1, "v"), "rb"):
        with pytest.raises(spapi.ApiError) as busy:
            reassign(api, {"volume": "v", "detach": "all"})
        assert busy.value.name == "busy" and "is open at client 1" in busy.value.desc
        assert storpool_sandbox.device(1, "v").exists()
        reassign(api, {"volume": "v", "detach": [1], "force": True})
    assert api.attachmentsList() == []
    reassign(api, {"volume": "v", "rw": [1]})
    reassign(api, {"volume": "v", "detach": [1]})  # closed: a plain detach works


def test_clients_registered_over_http(storpool_sandbox, storpool_http, tmp_path):
    host = tmp_path / "hosts" / "node7"
    status, _ = storpool_http(storpool_sandbox, "POST", "/sandbox/clients",
                              {"id": 7, "dir": str(host)})
    assert status == 200
    api = bindings(storpool_sandbox)
    api.volumeCreate({"name": "v", "size": MIB})
    reassign(api, {"volume": "v", "rw": [7]})
    assert (host / "dev" / "storpool" / "v").exists()
    assert 7 in api.servicesList().clients
    assert {c.id for c in api.clientsConfigDump()} == {1, 2, 3, 4, 7}
    # Moving a client to another directory moves its devices.
    moved = tmp_path / "hosts" / "node7b"
    storpool_sandbox.add_client(7, moved)
    assert not (host / "dev" / "storpool" / "v").exists()
    assert (moved / "dev" / "storpool" / "v").exists()
    _, reply = storpool_http(storpool_sandbox, "POST", "/sandbox/clients", {"id": 5000})
    assert reply["error"]["name"] == "invalidParam"
    _, info = storpool_http(storpool_sandbox, "GET", "/sandbox/info")
    assert info["data"]["clients"]["7"] == str(moved)


def test_two_clusters_can_share_a_host_directory(storpool_sandbox_factory, tmp_path):
    host = tmp_path / "shared-host"
    first = storpool_sandbox_factory("first", clients={1: host})
    second = storpool_sandbox_factory("second", clients={1: host})
    for sandbox, name in ((first, "a"), (second, "b")):
        api = bindings(sandbox)
        api.volumeCreate({"name": name, "size": MIB})
        reassign(api, {"volume": name, "rw": [1]})
    assert sorted(p.name for p in (host / "dev" / "storpool").iterdir()) == ["a", "b"]
    reassign(bindings(first), {"volume": "a", "detach": "all"})
    assert sorted(p.name for p in (host / "dev" / "storpool").iterdir()) == ["b"]
