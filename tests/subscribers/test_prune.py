"""Snapshot pruning through oned on the sandboxes: the subscriber keeps each disk's newest
N snapshots (configuration, datastore, VM user template), asking oned to delete the oldest
so OpenNebula's view and StorPool agree; by age at reconciliation; the active snapshot and
snapshots with children stay."""

from __future__ import annotations

import time

import pytest

from onestorpool.one import Snapshot
from onestorpool.subscribers.prune import Retention, candidates
from tests.subscribers.conftest import deploy, events, wait_for

pytest_plugins = ["tests.sandbox.conftest_oned"]  # make_world


def disk_snapshots(w, vm_id: int, disk: int = 0) -> list[int]:
    vm = w.srv.vm.info(vm_id)
    trees = vm.SNAPSHOTS if isinstance(vm.SNAPSHOTS, list) else [vm.SNAPSHOTS]
    for tree in trees:
        if tree is not None and int(tree.DISK_ID) == disk:
            return sorted(int(s.ID) for s in tree.SNAPSHOT)
    return []


def take(w, vm_id: int, count: int) -> list[int]:
    made = []
    for i in range(count):
        made.append(w.srv.vm.disksnapshotcreate(vm_id, 0, f"s{i}"))
        w.oned.wait_idle()
    return made


def revert(w, vm_id: int, snapshot: int) -> None:
    """Revert (in POWEROFF, as oned wants) and resume."""
    w.srv.vm.action("poweroff", vm_id)
    w.oned.wait_vm(vm_id, "POWEROFF")
    w.srv.vm.disksnapshotrevert(vm_id, 0, snapshot)
    w.oned.wait_idle()


def test_keeps_the_newest_snapshots_of_each_disk(cloud, start_daemon):
    """The sandbox chains a disk's snapshots and refuses to delete one with children (what
    oned does in MIXED mode), so the one that can go is made by a revert: s0, s1, revert to
    s0, s2 leave s1 a leaf. With one snapshot to keep, s1 goes (the oldest that oned lets
    go), s2 stays (the newest), s0 stays (it has a child)."""
    w, image_ds, system_ds, (node1, _), _remote = cloud
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\nDISKSNAPSHOT_KEEP=3\n")
    daemon = start_daemon()
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"')
    other = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"')
    w.srv.vm.update(other, 'DISKSNAPSHOT_KEEP="1"', 1)  # the VM's own retention wins
    made = take(w, vm_id, 3)
    s0, s1 = take(w, other, 2)
    revert(w, other, s0)
    (s2,) = take(w, other, 1)
    wait_for(lambda: disk_snapshots(w, other) == [s0, s2], "the oldest leaf pruned", 60)
    w.oned.wait_idle()
    assert disk_snapshots(w, vm_id) == made  # 3 kept
    volume = f"one-img-{base}-{other}-0"
    assert {n for n in w.frontend.storpool_names() if n.startswith(f"{volume}-snap")} == {
        f"{volume}-snap{s0}", f"{volume}-snap{s2}"}  # oned's view and StorPool agree
    (pruned,) = events(w, "prune.snapshot")
    assert (pruned.vm, pruned.payload["snapshot_id"]) == (other, s1)
    assert pruned.payload["reason"] == "more than 1 snapshots"
    assert daemon.stop() == 0


def test_age_is_pruned_by_reconciliation(cloud, start_daemon):
    w, image_ds, system_ds, (node1, _), _remote = cloud
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"')
    made = take(w, vm_id, 2)
    revert(w, vm_id, made[0])  # the active one stays whatever its age
    time.sleep(2.2)
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\nDISKSNAPSHOT_MAX_AGE=2s\n")
    daemon = start_daemon("--reconcile-interval", "3600")  # the start's pass only
    wait_for(lambda: disk_snapshots(w, vm_id) == made[:1], "the old snapshot pruned", 60)
    (pruned,) = events(w, "prune.snapshot")
    assert pruned.payload["reason"] == "older than 2s"
    assert daemon.stop() == 0


def test_retention_configuration_datastore_vm(tmp_path):
    from types import SimpleNamespace

    from onestorpool import config
    from onestorpool.subscribers.prune import retention_for

    rc = tmp_path / "rc"
    rc.write_text("DISKSNAPSHOT_KEEP=5\nDISKSNAPSHOT_MAX_AGE=7d\n")
    cfg = config.load(rc_paths=[rc], storpool_paths=[], environ={})
    plain = SimpleNamespace(user_template={})
    assert retention_for(plain, 1, cfg, lambda ds: {}) == Retention(5, 7 * 86400)
    assert retention_for(plain, 1, cfg, lambda ds: {"DISKSNAPSHOT_KEEP": "2"}) == \
        Retention(2, 7 * 86400)
    own = SimpleNamespace(user_template={"DISKSNAPSHOT_KEEP": "1",
                                         "DISKSNAPSHOT_MAX_AGE": "1h"})
    assert retention_for(own, 1, cfg, lambda ds: {"DISKSNAPSHOT_KEEP": "2"}) == \
        Retention(1, 3600)


def test_candidates_skip_what_oned_refuses():
    from types import SimpleNamespace

    def s(i, date, *, active=False, children=()):
        return Snapshot(i, f"s{i}", -1, tuple(children), active, date, 1)

    disk = SimpleNamespace(disk_id=0, datastore_id=1,
                           snapshots=(s(0, 10, children=[1]), s(1, 20), s(2, 30, active=True),
                                      s(3, 40), s(4, 50)))
    vm = SimpleNamespace(id=7, disks=(disk,))
    keep2 = candidates(vm, lambda ds: Retention(keep=2), now=100)
    assert [c.snapshot for c in keep2] == [1]  # 0 has a child, 2 is active, 3 and 4 newest
    old = candidates(vm, lambda ds: Retention(max_age=65), now=100)
    assert [c.snapshot for c in old] == [1]
    both = candidates(vm, lambda ds: Retention(keep=1, max_age=55), now=100)
    assert [c.snapshot for c in both] == [1, 3]
    assert candidates(vm, lambda ds: Retention(), now=100) == []


def test_a_deletion_a_killed_run_asked_for_is_recorded_by_the_next(tmp_path):
    """oned accepted the delete, the run died before its record: the announcement stays,
    and the next look at the VM records the deletion it finds done, once."""
    from types import SimpleNamespace

    from onestorpool import config
    from onestorpool.eventlog import EventLog
    from onestorpool.one import LcmState, VmState
    from onestorpool.subscribers.prune import PRUNE, Pruner

    rc = tmp_path / "rc"
    rc.write_text("DISKSNAPSHOT_KEEP=1\n")
    cfg = config.load(rc_paths=[rc], storpool_paths=[], environ={})

    def vm_with(*ids):
        disk = SimpleNamespace(disk_id=0, datastore_id=1, snapshots=tuple(
            Snapshot(i, f"s{i}", -1, (), False, 10 * (i + 1), 1) for i in ids))
        return SimpleNamespace(id=7, disks=(disk,), state=VmState.ACTIVE,
                               lcm_state=LcmState.RUNNING, user_template={})

    class Killed(BaseException):  # as SIGKILL: nothing of the run goes on
        pass

    def dies(method, *params):
        raise Killed  # oned has taken the request; the run ends before its record

    current = [vm_with(0, 1)]
    with EventLog(tmp_path / "events.db") as log:
        pruner = Pruner(log, cfg, call=dies, vm_info=lambda vm_id: current[0],
                        datastore_attributes=lambda ds: {})
        with pytest.raises(Killed):
            pruner.prune(7, 0)
        assert not log.is_done("prune:7:0:0:10", PRUNE)
        current[0] = vm_with(1)  # oned deleted snapshot 0
        asked: list[tuple] = []
        pruner = Pruner(log, cfg, call=lambda *a: asked.append(a),
                        vm_info=lambda vm_id: current[0], datastore_attributes=lambda ds: {})
        assert pruner.prune(7, log.head()[0]) == "nothing" and asked == []
        (record,) = log.read(types=["prune.snapshot"])
        assert (record.payload["key"], record.payload["found_done"]) == ("prune:7:0:0:10", True)
        assert log.is_done("prune:7:0:0:10", PRUNE)
        assert pruner.prune(7, log.head()[0]) == "nothing"
        assert len(list(log.read(types=["prune.snapshot"]))) == 1
