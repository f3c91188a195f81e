"""Our StorPool client against the sandbox cluster: every call path the add-on uses.

The same calls are checked against the official bindings' request types (``sptypes``) so a
misspelt field name or a bad value fails here rather than on a real cluster.
"""

from __future__ import annotations

import pytest
from storpool import sptypes

from onestorpool.retry import RetryPolicy
from onestorpool.storpool import (
    AlreadyExists,
    InvalidParam,
    NotFound,
    StorPoolClient,
    TransportError,
    _drop_none,
)

MIB = 1 << 20


@pytest.fixture
def client(storpool_sandbox):
    with StorPoolClient(storpool_sandbox.host, storpool_sandbox.port, storpool_sandbox.token,
                        retry=RetryPolicy(attempts=3, sleep=lambda _: None)) as sp:
        yield sp


def test_volume_lifecycle(client, storpool_sandbox):
    client.volume_template_create("one-ds-1", replication=2, placeAll="hdd", placeTail="ssd")
    client.volume_create("one-img-1", size=MIB, template="one-ds-1", tags={"virt": "one"})
    assert client.volume_exists("one-img-1") and not client.volume_exists("one-img-2")
    assert client.volume("one-img-1")["templateName"] == "one-ds-1"
    assert client.volume_describe("one-img-1")["size"] == MIB
    assert client.volume_info("one-img-1")["globalId"]
    client.volume_update("one-img-1", size=2 * MIB, tags={"nloc": "one"})
    assert client.volume("one-img-1")["tags"] == {"virt": "one", "nloc": "one"}
    with pytest.raises(AlreadyExists):
        client.volume_create("one-img-1", size=MIB)
    with pytest.raises(InvalidParam):
        client.volume_update("one-img-1", size=MIB)
    client.volume_update("one-img-1", rename="one-img-9")
    assert [v["name"] for v in client.volumes_list()] == ["one-img-9"]
    client.volume_delete("one-img-9")
    with pytest.raises(NotFound):
        client.volume_delete("one-img-9")
    assert client.last_generation and client.last_generation > 1


def test_snapshots_and_attachments(client, storpool_sandbox):
    client.volume_create("v", size=MIB)
    client.attach("v", 1, timeout=10)
    device = storpool_sandbox.client_dir(1) / "dev/storpool/v"
    with device.open("r+b") as dev:
        dev.write(b"abc")
    assert client.attachments_list()[0]["client"] == 1
    client.volume_snapshot("v", "v-snap0", tags={"virt": "one"})
    anonymous = client.volume_snapshot("v", delete_after=60)
    assert anonymous["autoName"].startswith("*")
    assert client.snapshot_exists("v-snap0") and client.snapshot("v-snap0")["onVolume"] == "v"
    client.snapshot_update("v-snap0", rename="v-snap1", tags={"x": "y"})
    assert client.snapshot("v-snap1")["tags"] == {"virt": "one", "x": "y"}
    assert next(s["name"] for s in client.volume_list_snapshots("v")) == anonymous["autoName"]
    client.attach("v-snap1", 2, mode="ro", snapshot=True)
    assert (storpool_sandbox.client_dir(2) / "dev/storpool/v-snap1").read_bytes()[:3] == b"abc"
    client.detach("v-snap1", snapshot=True)
    client.detach("v", [1])
    client.volume_create("w", size=MIB)
    reply = client.volumes_group_snapshot([{"volume": "v", "name": "v-G"},
                                           {"volume": "w", "name": "w-G"}], tags={"nvm": "3"})
    assert {s["snapshot"] for s in reply["snapshots"]} == {"v-G", "w-G"}
    client.volumes_reassign([{"volume": "w", "rw": [3], "force": False}])
    client.volume_revert("v", "v-snap1")
    client.detach("w")
    client.volume_freeze("w")
    assert client.snapshot_exists("w") and not client.volume_exists("w")
    client.snapshot_delete("v-snap1")
    assert not client.snapshot_exists("v-snap1")


def test_space_templates_services(client):
    client.volume_template_create("one-ds-7", replication=3)
    client.volume_template_update("one-ds-7", replication=2)
    assert client.volume_template_describe("one-ds-7")["replication"] == 2
    assert [t["name"] for t in client.volume_templates_list()] == ["one-ds-7"]
    client.volume_create("v", size=MIB, template="one-ds-7")
    (status,) = client.volume_templates_status()
    assert status["name"] == "one-ds-7" and status["stored"]["capacity"] > 0
    assert client.volumes_space()[0]["name"] == "v"
    client.volume_snapshot("v", "s")
    assert client.snapshots_space()[0]["name"] == "s"
    assert client.volumes_status()["v"]["status"] == "up"
    assert client.services_list()["clusterStatus"] == "running"
    assert len(client.clients_config_dump()) == 4
    assert client.clusters_list()[0]["name"] == "sandbox"
    with pytest.raises(InvalidParam):
        client.volume_template_delete("one-ds-7")


def test_backup_to_a_remote_location(storpool_sandbox_factory):
    local = storpool_sandbox_factory("site-a")
    remote = storpool_sandbox_factory("site-b", token="b-token")
    local.add_remote_location("site-b", remote)
    with StorPoolClient(local.host, local.port, local.token) as sp:
        assert [loc["name"] for loc in sp.locations_list()] == ["site-b"]
        sp.volume_create("one-img-3", size=MIB)
        reply = sp.volume_backup("one-img-3", "site-b", tags={"del": "y"})
        sp.volume_create("one-img-4", size=MIB)
        group = sp.volumes_group_backup(["one-img-4"], "site-b")
        remote_ids = {s["remoteId"] for s in sp.snapshots_remote_list()}
    assert reply["remoteId"] in remote_ids
    assert group["backups"]["one-img-4"]["remoteId"] in remote_ids


def test_transient_faults_are_retried_with_the_sandbox(client, storpool_sandbox):
    storpool_sandbox.inject_faults(transient=2)
    assert client.volumes_list() == []
    storpool_sandbox.inject_faults(transient=5)
    with pytest.raises(Exception) as caught:
        client.volumes_list()
    assert getattr(caught.value, "transient", False)
    storpool_sandbox.inject_faults(drop=1)
    assert client.volumes_list() == []  # a read survives a dropped connection


def test_wrong_token_is_an_api_error_without_the_token(storpool_sandbox):
    with StorPoolClient(storpool_sandbox.host, storpool_sandbox.port, "not-the-token") as sp, \
            pytest.raises(Exception) as caught:
        sp.volumes_list()
    assert "invalidCredentials" in str(caught.value)
    assert "not-the-token" not in str(caught.value)


def test_unreachable_cluster(storpool_sandbox):
    port = storpool_sandbox.port
    storpool_sandbox.stop()
    sp = StorPoolClient("127.0.0.1", port, "t", retry=RetryPolicy(attempts=2,
                                                                  sleep=lambda _: None))
    with pytest.raises(TransportError, match="refused"):
        sp.volumes_list()


# The bodies our client sends, validated by the official request types.
PAYLOADS = [
    (sptypes.VolumeCreateDesc, {"name": "one-img-1", "size": MIB, "template": "one-ds-1",
                                "tags": {"virt": "one", "nloc": "one"}}),
    (sptypes.VolumeCreateDesc, {"name": "one-img-1-7-0", "baseOn": "one-img-1"}),
    (sptypes.VolumeCreateDesc, {"name": "one-img-2", "parent": "one-img-1-snap0"}),
    (sptypes.VolumeUpdateDesc, {"size": 2 * MIB, "shrinkOk": True, "rename": "x",
                                "tags": {"nvm": ""}}),
    (sptypes.VolumeSnapshotDesc, {"name": "one-img-1-snap0", "tags": {"virt": "one"},
                                  "deleteAfter": 172800}),
    (sptypes.SnapshotUpdateDesc, {"rename": "y", "tags": {"a": "b"}}),
    (sptypes.VolumeRevertDesc, {"toSnapshot": "one-img-1-snap0"}),
    (sptypes.VolumeBackupDesc, {"volume": "one-img-1", "location": "remote",
                                "tags": {"del": "y"}}),
]


@pytest.mark.parametrize(("desc", "body"), PAYLOADS)
def test_request_bodies_match_the_official_types(desc, body):
    body = _drop_none(body)
    assert set(body) <= set(desc.__jsonAttrDefs__), "a field the API does not know"
    desc(body)  # raises on a bad value
