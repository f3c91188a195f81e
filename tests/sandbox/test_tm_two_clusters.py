"""Two StorPool clusters under one OpenNebula (reference addon-storpool.md §4 and the
datastore template's ``SP_API_HTTP_HOST``/``SP_API_HTTP_PORT``/``SP_AUTH_TOKEN``): cluster A
is the front-end's storpool.conf, cluster B is named by its datastores' templates. A VM on
each, driven by the oned sandbox with the real drivers through deploy (persistent,
non-persistent, volatile and context disks), data written through the host's device links,
a disk snapshot, live migration, poweroff/resume and terminate. After each step every
volume, snapshot and attachment of a VM is on its own cluster and nothing of it on the
other, and B's token never shows in the event log or in what the drivers print.

A host is a client of both clusters in the sandbox: the same host directory registered in
each cluster under the host's one ``SP_OURID`` (the product looks a host's client id up per
host, as the Bash add-on's ``storpoolClientId`` did, not per cluster)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onestorpool.storpool import StorPoolClient
from tests.sandbox.test_tm_lifecycle import client_of, disk_link, storpool_remotes

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: make_world

MIB = 1 << 20
TOKEN_B = "cluster-b-secret-5f1d7c"


def names(sp: StorPoolClient) -> set[str]:
    return ({v["name"] for v in sp.volumes_list()}
            | {s["name"] for s in sp.snapshots_list() if not s.get("deleted")})


def attachments(sp: StorPoolClient) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for item in sp.attachments_list():
        found.setdefault(item["volume"], set()).add(int(item["client"]))
    return found


class Side:
    """One cluster with its image and system datastores and the VM deployed on it."""

    def __init__(self, name: str, sp: StorPoolClient, image_ds: int, system_ds: int):
        self.name, self.sp, self.image_ds, self.system_ds = name, sp, image_ds, system_ds
        self.images: set[str] = set()
        self.snapshots: set[str] = set()
        self.vm = -1
        self.disks: dict[int, str] = {}

    @property
    def expected_names(self) -> set[str]:
        return self.images | set(self.disks.values()) | self.snapshots


@pytest.fixture
def clouds(make_world, tmp_path, storpool_sandbox_factory):
    w = make_world(remotes=storpool_remotes(tmp_path / "r"), live_disk_snapshots={"kvm-storpool"})
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    hosts = {name: w.oned.create_host(name) for name in ("node1", "node2")}
    cluster_b = storpool_sandbox_factory("cluster-b", token=TOKEN_B)
    for name in ("localhost", "node1", "node2"):  # the front-end and the hosts: B's clients
        cluster_b.add_client(client_of(w, name), w.frontend.host_dir(name))
    sp_b = StorPoolClient(cluster_b.host, cluster_b.port, cluster_b.token)
    a = Side("A", w.frontend.sp, w.oned.create_datastore(
        "sp-a", DS_MAD="storpool", TM_MAD="storpool", DISK_TYPE="BLOCK"),
        w.oned.create_datastore("sys-a", "SYSTEM_DS", TM_MAD="storpool"))
    endpoint_b = {"SP_API_HTTP_HOST": cluster_b.host, "SP_API_HTTP_PORT": str(cluster_b.port),
                  "SP_AUTH_TOKEN": TOKEN_B}
    b = Side("B", sp_b, w.oned.create_datastore(
        "sp-b", DS_MAD="storpool", TM_MAD="storpool", DISK_TYPE="BLOCK", **endpoint_b),
        w.oned.create_datastore("sys-b", "SYSTEM_DS", TM_MAD="storpool", **endpoint_b))
    for ds_id in (b.image_ds, b.system_ds):  # the admin makes B's templates on B
        w.frontend.sp.volume_template_delete(f"one-ds-{ds_id}")  # (the sandbox made them on A)
        sp_b.volume_template_create(f"one-ds-{ds_id}")
    return w, hosts, a, b


def check(w, a: Side, b: Side, host: str) -> None:
    """Each VM's volumes, snapshots and attachments on its own cluster only, attached to
    ``host``'s client; B's token nowhere in the event log or the drivers' output."""
    client = client_of(w, host)
    for side in (a, b):
        assert names(side.sp) == side.expected_names, side.name
        assert attachments(side.sp) == {v: {client} for v in side.disks.values()}, side.name
    events = w.frontend.events()
    assert events and not any(TOKEN_B in repr(e.payload) for e in events)
    assert TOKEN_B.encode() not in Path(w.frontend.env["ONESTORPOOL_EVENTLOG"]).read_bytes()
    assert w.oned.driver_log
    for run in w.oned.driver_log:
        assert TOKEN_B not in run.stdout + run.stderr + run.info, (run.kind, run.action)


def test_a_vm_on_each_of_two_clusters(clouds):
    w, hosts, a, b = clouds
    payload = {}
    for side in (a, b):
        base = w.oned.create_image(side.image_ds, f"base-{side.name}", size_mb=2)
        data = w.oned.create_image(side.image_ds, f"data-{side.name}", size_mb=2,
                                   persistent=True)
        side.images = {f"one-img-{base}", f"one-img-{data}"}
        assert side.images <= names(side.sp)
        vm = side.vm = w.oned.instantiate(w.vm_template(
            f"vm-{side.name}", f'IMAGE_ID="{base}"', f'IMAGE_ID="{data}"',
            'TYPE="fs",SIZE="3",FORMAT="raw"', context=True), hosts["node1"], side.system_ds)
        side.disks = {0: f"one-img-{base}-{vm}-0", 1: f"one-img-{data}",
                      2: f"one-sys-{vm}-2-raw", 3: f"one-sys-{vm}-3-iso"}
        assert side.sp.volume(side.disks[2])["templateName"] == f"one-ds-{side.system_ds}"
        payload[side.name] = os.urandom(MIB)
        for disk_id in (0, 1, 2):
            with disk_link(w, "node1", side.system_ds, vm, disk_id).open("r+b") as dev:
                dev.write(payload[side.name])
    check(w, a, b, "node1")

    def data_intact(host: str) -> None:
        # through the host's devices: the disk links live migration copied from node1
        # point into node1's directory in the sandbox (on a real host, /dev/storpool/...)
        for side in (a, b):
            for disk_id in (0, 1, 2):
                with w.frontend.device(host, side.disks[disk_id]).open("rb") as dev:
                    assert dev.read(MIB) == payload[side.name], (side.name, disk_id)
                link = disk_link(w, host, side.system_ds, side.vm, disk_id)
                assert os.readlink(link).endswith(f"/dev/storpool/{side.disks[disk_id]}")

    for side in (a, b):
        snap = w.srv.vm.disksnapshotcreate(side.vm, 0, "s")
        w.oned.wait_idle()
        side.snapshots = {f"{side.disks[0]}-snap{snap}"}
    check(w, a, b, "node1")

    for side in (a, b):
        w.srv.vm.migrate(side.vm, hosts["node2"], True, False, -1, 0)
        w.oned.wait_vm(side.vm, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    check(w, a, b, "node2")
    data_intact("node2")

    for side in (a, b):
        w.srv.vm.action("poweroff", side.vm)
        w.oned.wait_vm(side.vm, "POWEROFF")
    check(w, a, b, "node2")
    for side in (a, b):
        w.srv.vm.action("resume", side.vm)
        w.oned.wait_vm(side.vm, "ACTIVE", "RUNNING")
    check(w, a, b, "node2")
    data_intact("node2")

    for side in (a, b):
        w.srv.vm.action("terminate", side.vm)
        w.oned.wait_vm(side.vm, "DONE")
        side.disks, side.snapshots = {}, set()
    w.oned.wait_idle()
    check(w, a, b, "node2")
    assert any(e.type == "tm.delete" for e in w.frontend.events())
