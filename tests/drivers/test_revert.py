"""Reverting a disk to a snapshot, interrupted at every StorPool call it makes: the volume
always holds data under its name, either the old or the snapshot's (issue 11)."""

from __future__ import annotations

import contextlib

import pytest

from onestorpool.drivers.storage import revert_volume
from onestorpool.storpool import StorPoolClient, StorPoolError

MIB = 1 << 20


def read(sandbox, client: StorPoolClient, name: str) -> bytes:
    client.attach(name, 1, mode="ro")
    try:
        return (sandbox.client_dir(1) / "dev/storpool" / name).read_bytes()[:8]
    finally:
        client.detach(name, [1])


@pytest.mark.parametrize("query", ["VolumeSnapshot", "VolumeRevert", "VolumeUpdate"])
@pytest.mark.parametrize("fault", ["drop", "drop_after"])
def test_an_interrupted_revert_never_leaves_the_disk_empty(storpool_sandbox, query, fault):
    client = StorPoolClient(storpool_sandbox.host, storpool_sandbox.port,
                            storpool_sandbox.token)
    client.volume_create("one-img-1", size=2 * MIB)
    client.attach("one-img-1", 1)
    device = storpool_sandbox.client_dir(1) / "dev/storpool/one-img-1"
    with device.open("r+b") as dev:
        dev.write(b"snapshot")
    client.volume_snapshot("one-img-1", "one-img-1-snap0")
    with device.open("r+b") as dev:
        dev.write(b"current!")
    storpool_sandbox.inject_faults(**{fault: 1}, queries={query})
    with contextlib.suppress(StorPoolError):  # the driver fails; what is left matters
        revert_volume(client, "one-img-1", "one-img-1-snap0", delay=3600,
                      tags={"nvm": "4"})
    storpool_sandbox.clear_faults()
    assert client.volume_exists("one-img-1")
    assert read(storpool_sandbox, client, "one-img-1") in (b"snapshot", b"current!")
