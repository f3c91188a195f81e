"""A VM snapshot revert gives every disk the snapshot's data or leaves every disk as it was
(the group revert against the StorPool sandbox, with a revert failing on the third disk)."""

from __future__ import annotations

import pytest

from onestorpool.drivers.storage import StorageError
from onestorpool.drivers.vm_snapshots import revert_group
from onestorpool.naming import Naming
from onestorpool.storpool import ApiError, StorPoolClient

MIB = 1 << 20
VOLUMES = ["one-img-3-7-0", "one-img-4", "one-sys-7-2-raw", "one-sys-7-3-iso"]
SUFFIX = "ONESNAP-0-1700000000"


class FailingRevert(StorPoolClient):
    """Fails the revert of one volume (the n-th revert call)."""

    def __init__(self, *args, fail_on: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_on, self.reverts = fail_on, 0

    def volume_revert(self, name, to_snapshot):
        self.reverts += 1
        if self.reverts == self.fail_on:
            raise ApiError("invalidParam", "simulated failure")
        return super().volume_revert(name, to_snapshot)


def write(sandbox, client: StorPoolClient, data: bytes) -> None:
    for volume in VOLUMES:
        client.attach(volume, 1)
        with (sandbox.client_dir(1) / "dev/storpool" / volume).open("r+b") as dev:
            dev.write(data + volume.encode())
        client.detach(volume, [1])


def contents(sandbox, client: StorPoolClient) -> set[bytes]:
    found = set()
    for volume in VOLUMES:
        client.attach(volume, 1, mode="ro")
        data = (sandbox.client_dir(1) / "dev/storpool" / volume).read_bytes()[:8]
        client.detach(volume, [1])
        found.add(data)
    return found


@pytest.fixture
def vm_disks(storpool_sandbox):
    client = StorPoolClient(storpool_sandbox.host, storpool_sandbox.port,
                            storpool_sandbox.token)
    for volume in VOLUMES:
        client.volume_create(volume, size=2 * MIB)
    write(storpool_sandbox, client, b"snapshot")
    client.volumes_group_snapshot([{"volume": v, "name": f"{v}-{SUFFIX}"} for v in VOLUMES])
    write(storpool_sandbox, client, b"current!")
    return client


def test_every_disk_gets_the_snapshots_data(storpool_sandbox, vm_disks):
    kept = revert_group(vm_disks, Naming(), [(v, f"{v}-{SUFFIX}") for v in VOLUMES],
                        keep_seconds=3600)
    assert contents(storpool_sandbox, vm_disks) == {b"snapshot"}
    assert len(kept) == len(VOLUMES)  # the data before, expiring
    assert all(vm_disks.snapshot(name)["targetDeleteDate"] for name in kept)


@pytest.mark.parametrize("fail_on", [1, 3, 4])
def test_a_revert_failing_on_one_disk_leaves_all_disks_as_they_were(storpool_sandbox,
                                                                     vm_disks, fail_on):
    client = FailingRevert(storpool_sandbox.host, storpool_sandbox.port,
                           storpool_sandbox.token, fail_on=fail_on)
    with pytest.raises(StorageError, match=f"revert failed on {VOLUMES[fail_on - 1]}.*"
                                           "every disk keeps the data it had"):
        revert_group(client, Naming(), [(v, f"{v}-{SUFFIX}") for v in VOLUMES],
                     keep_seconds=3600)
    assert contents(storpool_sandbox, vm_disks) == {b"current!"}
    names = {s["name"] for s in vm_disks.snapshots_list() if not s.get("deleted")}
    assert names == {f"{v}-{SUFFIX}" for v in VOLUMES}  # no temporaries left


def test_a_missing_snapshot_changes_nothing(storpool_sandbox, vm_disks):
    vm_disks.snapshot_delete(f"{VOLUMES[2]}-{SUFFIX}")
    with pytest.raises(Exception, match="not"):
        revert_group(vm_disks, Naming(), [(v, f"{v}-{SUFFIX}") for v in VOLUMES])
    assert contents(storpool_sandbox, vm_disks) == {b"current!"}


def test_a_snapshot_id_reused_within_a_second_takes_the_next_seconds_names(storpool_sandbox,
                                                                           vm_disks):
    """oned gives id 0 again once snapshot 0 is gone, and StorPool keeps a deleted snapshot
    with children under its name: the same second's names are refused, the next taken."""
    from onestorpool.drivers.vm_snapshots import STAMP_TRIES, take_group

    taken = {f"{v}-ONESNAP-0-{1800000000 + s}" for v in VOLUMES[:1] for s in range(2)}
    for name in taken:
        vm_disks.volume_snapshot(VOLUMES[0], name)
    suffix, names = take_group(vm_disks, Naming(), VOLUMES, 0, {"nvm": "7"},
                               clock=lambda: 1800000000.4)
    assert suffix == "ONESNAP-0-1800000002"
    assert names == [f"{v}-{suffix}" for v in VOLUMES]
    assert {n for n in names if vm_disks.snapshot(n)["tags"].get("nvm") == "7"} == set(names)
    # every second taken: one clear error, nothing made
    for second in range(STAMP_TRIES):
        vm_disks.volume_snapshot(VOLUMES[1], f"{VOLUMES[1]}-ONESNAP-1-{1800000000 + second}")
    before = {s["name"] for s in vm_disks.snapshots_list()}
    with pytest.raises(StorageError, match="are all taken"):
        take_group(vm_disks, Naming(), VOLUMES, 1, {}, clock=lambda: 1800000000.0)
    assert {s["name"] for s in vm_disks.snapshots_list()} == before
