"""Deleting a snapshot: one StorPool call when it is not attached (the Bash add-on's
``snapshot <s> delete <s>``, reference §7.2), still deleted when it is attached."""

from __future__ import annotations

from onestorpool.drivers.storage import delete_snapshot

MIB = 1 << 20


def test_a_detached_snapshot_goes_in_one_call(frontend):
    sp, sandbox = frontend.sp, frontend.sandbox
    sp.volume_create("one-img-1", size=MIB, template="one-ds-100")
    sp.volume_snapshot("one-img-1", "one-img-1-snap0")
    sandbox.api_calls.clear()
    assert delete_snapshot(sp, "one-img-1-snap0") is True
    assert sandbox.api_calls == ["SnapshotDelete"]
    assert not sp.snapshot_exists("one-img-1-snap0")


def test_an_attached_snapshot_is_detached_and_deleted(frontend):
    sp, sandbox = frontend.sp, frontend.sandbox
    sp.volume_create("one-img-1", size=MIB, template="one-ds-100")
    sp.volume_snapshot("one-img-1", "one-img-1-snap0")
    sp.attach("one-img-1-snap0", 1, mode="ro", snapshot=True)
    sp.attach("one-img-1-snap0", 2, mode="ro", snapshot=True)
    sandbox.api_calls.clear()
    assert delete_snapshot(sp, "one-img-1-snap0") is True
    # refused while attached, detached from every client, deleted
    assert sandbox.api_calls == ["SnapshotDelete", "VolumesReassignWait", "SnapshotDelete"]
    assert not sp.snapshot_exists("one-img-1-snap0")
    assert not [a for a in sp.attachments_list() if a.get("snapshot")]


def test_a_missing_snapshot_is_reported_gone(frontend):
    frontend.sandbox.api_calls.clear()
    assert delete_snapshot(frontend.sp, "one-img-1-snap7") is False
    assert frontend.sandbox.api_calls == ["SnapshotDelete"]
