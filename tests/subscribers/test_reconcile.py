"""Reconciliation and clean-up on the sandboxes: what happened while the subscriber was down
is done when it starts, orphaned snapshots of the add-on go, nothing outside its namespace
does, a failing effect is recorded, stays pending and is retried."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from onestorpool.naming import Naming
from onestorpool.subscribers.cleanup import Owners, orphans
from tests.subscribers.conftest import deploy, events, remote_copies, subscriber_env, wait_for

pytest_plugins = ["tests.sandbox.conftest_oned"]  # make_world

OURS = {"virt": "one", "nloc": "one"}


def snap(w, volume: str, name: str, tags: dict[str, str], **extra) -> str:
    w.frontend.sp.volume_snapshot(volume, name, tags=tags, **extra)
    return name


def test_events_while_down_are_caught_on_start(cloud, start_daemon):
    w, _image_ds, system_ds, (node1, _), remote = cloud
    gone = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="2"')
    alive = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="2"')
    volume, other = f"one-sys-{gone}-0-raw", f"one-sys-{alive}-0-raw"
    ts = int(time.time())
    # backup snapshots: the TM's delete leaves them (it takes disk and VM snapshots)
    orphan = snap(w, volume, f"{volume}-ONEBACKUP-{ts}", OURS)
    kept = [snap(w, volume, f"{volume}-ONEBACKUP-{ts + 1}", {"virt": "one", "nloc": "other"}),
            snap(w, volume, f"{volume}-ONEBACKUP-{ts + 2}", {}),  # made by hand
            snap(w, volume, f"{volume}-ONEBACKUP-{ts + 3}", OURS, delete_after=3600),
            snap(w, volume, f"{volume}-mine", OURS),  # not one of the add-on's names
            snap(w, other, f"{other}-ONEBACKUP-{ts}", OURS)]  # its VM still runs
    # nobody listens: the DONE message and the tombstone's request wait in the log
    w.srv.vm.action("terminate", gone)
    w.oned.wait_vm(gone, "DONE")
    assert remote_copies(remote) == []
    assert orphan in w.frontend.storpool_names()
    daemon = start_daemon()  # READY after the first reconciliation
    assert len(remote_copies(remote)) == 1
    names = w.frontend.storpool_names()
    assert orphan not in names and set(kept) <= names
    (cleaned,) = events(w, "cleanup.snapshot")
    assert cleaned.payload["removed"] == [orphan] and cleaned.vm == gone
    assert "not in oned's pool" in cleaned.payload["reason"]
    (reconciled,) = events(w, "subscriber.reconciled")
    assert reconciled.payload["why"] == "start"
    # the tombstone sent, and the domain of the VM that started running unheard checked
    assert reconciled.payload["effects"] == {"done": 2}
    assert reconciled.payload["caught_up"] == 1
    assert reconciled.payload["cleanup"] == {"done": 1}
    assert daemon.stop() == 0


def test_a_done_vm_s_leftovers_go_on_its_message(cloud, start_daemon):
    w, _image_ds, system_ds, (node1, _), _remote = cloud
    daemon = start_daemon("--reconcile-interval", "3600")
    vm_id = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="2"')
    volume = f"one-sys-{vm_id}-0-raw"
    orphan = snap(w, volume, f"{volume}-ONEBACKUP-{int(time.time())}", OURS)
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    wait_for(lambda: events(w, "cleanup.snapshot"), "the clean-up")
    (cleaned,) = events(w, "cleanup.snapshot")
    assert cleaned.payload["reason"] == f"VM {vm_id} is DONE"
    assert orphan not in w.frontend.storpool_names()
    assert len(events(w, "subscriber.reconciled")) == 1  # only the start's
    assert daemon.stop() == 0


def run_once(w) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onestorpool.cli", "subscriber", "run",
                           "--once"], env=subscriber_env(w), capture_output=True, text=True,
                          timeout=120)


def test_a_tombstone_nobody_asked_to_ship_is_requested_and_shipped(cloud):
    """A driver that died between its snapshot and its log append left a tombstone."""
    w, image_ds, *_, remote = cloud
    image = w.oned.create_image(image_ds, "img", size_mb=1)
    tombstone = snap(w, f"one-img-{image}", f"one-img-{image}-ONEDELETE-{int(time.time())}",
                     {**OURS, "tombstone": "y"}, delete_after=48 * 3600)
    foreign = snap(w, f"one-img-{image}", f"one-img-{image}-ONEDELETE-1",
                   {"virt": "one", "nloc": "other", "tombstone": "y"})
    for _ in range(2):
        result = run_once(w)
        assert result.returncode == 0, result.stderr
    (requested,) = events(w, "subscriber.requested")
    assert requested.payload["effect"]["snapshot"] == tombstone
    (copy,) = remote_copies(remote)
    assert copy["tags"]["tombstone"] == tombstone
    assert foreign in w.frontend.storpool_names()


def test_a_failing_effect_is_recorded_kept_and_retried(cloud, tmp_path):
    w, image_ds, *_, remote = cloud
    w.frontend.write_rc('ONE_PX=one\nDELAY_DELETE=0\nREMOTE_BACKUP_DELETE="elsewhere"\n')
    image = w.oned.create_image(image_ds, "img", size_mb=1)
    w.srv.image.delete(image)
    wait_for(lambda: [e for e in events(w) if e.effect_key], "the rm's request")
    result = run_once(w)
    assert result.returncode == 0, result.stderr
    (failed,) = events(w, "effect.failed")
    assert "elsewhere" in failed.payload["error"]
    shown = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "show", "--failed"],
                           env=subscriber_env(w), capture_output=True, text=True, timeout=60)
    assert "effect.failed" in shown.stdout
    pending = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "pending"],
                             env=subscriber_env(w), capture_output=True, text=True, timeout=60)
    assert "remote_backup" in pending.stdout
    w.frontend.sandbox.add_remote_location("elsewhere", remote)
    assert run_once(w).returncode == 0
    assert len(events(w, "effect.done")) == 1 and len(remote_copies(remote)) == 1


def test_orphans_never_leave_the_namespace():
    naming = Naming("one")
    loc = ("nloc", "one")

    def s(name, tags=None, **extra):
        return {"name": name, "globalId": name, "tags": OURS if tags is None else tags,
                **extra}

    snapshots = [
        s("one-sys-5-0-raw-snap1"), s("one-img-3-5-0-ONESNAP-1-1700000000"),
        s("one-img-3-snap2"), s("one-img-4-snap2"),
        s("one-sys-5-0-raw-ONEDELETE-1700000000"),  # a tombstone: the handler's
        s("one-sys-5-0-raw"),  # a volume's name
        s("one-sys-5-0-raw-snap2", {"nloc": "two"}), s("one-sys-5-0-raw-snap3", {}),
        s("two-sys-5-0-raw-snap1"), s("one-sys-5-0-raw-snap4", deleteAfter=60),
        s("one-sys-5-0-raw-snap5", deleted=True), s("one-sys-6-0-raw-snap1"),
    ]
    found = orphans(snapshots, naming, loc, Owners(vms=frozenset({6}), images=frozenset({4})))
    assert [o.name for o in found] == ["one-sys-5-0-raw-snap1",
                                       "one-img-3-5-0-ONESNAP-1-1700000000", "one-img-3-snap2"]
    assert orphans(snapshots, naming, loc, Owners()) == []  # oned unreadable: nothing
    old, new = 1_000_000, 1_000_000 + 25 * 3600
    temporaries = [s("one-img-4-export-ab12cd", creationTimestamp=old),
                   s("one-img-4-export-ef34gh", creationTimestamp=new - 3600),
                   s("one-img-4-snap1", creationTimestamp=old)]  # not a temporary
    assert [o.name for o in orphans(temporaries, naming, loc, Owners(images=frozenset({4})),
                                    now=new)] == ["one-img-4-export-ab12cd"]
    assert [o.name for o in orphans(snapshots, naming, loc, Owners(gone_vm=6))] == [
        "one-sys-6-0-raw-snap1"]


def test_a_removal_a_killed_run_did_not_record_is_recorded_by_the_next(tmp_path,
                                                                       storpool_sandbox):
    """Killed between StorPool's delete and the record: the announcement stays, the next
    pass finds the snapshot gone and records its removal once; one still there is taken
    again the usual way."""
    from onestorpool.eventlog import EventLog
    from onestorpool.storpool import StorPoolClient
    from onestorpool.subscribers.cleanup import CLEANUP, Orphan, cleanup, remove

    sp = StorPoolClient(storpool_sandbox.host, storpool_sandbox.port, storpool_sandbox.token)
    sp.volume_create("one-sys-5-0-raw", size=1 << 20, tags=OURS)
    for name in ("one-sys-5-0-raw-snap1", "one-sys-5-0-raw-snap2"):
        sp.volume_snapshot("one-sys-5-0-raw", name, tags=OURS)
    ids = {s["name"]: s["globalId"] for s in sp.snapshots_list()}

    class KilledAfterDelete(BaseException):  # as SIGKILL: nothing of the run goes on
        pass

    class Dies(StorPoolClient):
        def snapshot_delete(self, name):
            super().snapshot_delete(name)
            raise KilledAfterDelete  # the process ends here, before the record

    dies = Dies(storpool_sandbox.host, storpool_sandbox.port, storpool_sandbox.token)
    with EventLog(tmp_path / "events.db") as log:
        killed = Orphan("one-sys-5-0-raw-snap1", ids["one-sys-5-0-raw-snap1"], "VM 5 is DONE",
                        5, None)
        with pytest.raises(KilledAfterDelete):
            remove(log, dies, killed, "subscriber", 0)
        assert not log.is_done(killed.key, CLEANUP)
        counts = cleanup(log, sp, Naming("one"), ("nloc", "one"), Owners(gone_vm=5),
                         position=log.head()[0])
        assert counts == {"finished": 1, "done": 1}
        records = [r for r in log.read(types=["cleanup.snapshot"])]
        assert [(r.snapshot, r.payload["already_gone"]) for r in records] == [
            ("one-sys-5-0-raw-snap1", True), ("one-sys-5-0-raw-snap2", False)]
        assert log.is_done(killed.key, CLEANUP)
        # a second pass: nothing more
        assert cleanup(log, sp, Naming("one"), ("nloc", "one"), Owners(gone_vm=5),
                       position=log.head()[0]) == {}


def test_catch_up_asks_once_per_vm_and_history_record_in_short_transactions(tmp_path,
                                                                            monkeypatch):
    """12,000 running VMs (more than one transaction may hold): one request each, in
    batches; the next gap asks only for a VM in a new history record."""
    from onestorpool.eventlog import EventLog
    from onestorpool.one import PoolVm
    from onestorpool.subscribers import reconcile
    from onestorpool.subscribers.routes import Route

    def wants(vm, config):
        return {"type": "look", "key": f"look:{vm.id}:{vm.history_seq}", "vm": vm.id,
                "history_seq": vm.history_seq} if vm.state == "ACTIVE" else None

    route = Route("vm.running", b"EVENT STATE VM/ACTIVE/RUNNING/", lambda e: True,
                  lambda a, e, s: None, wants)
    pool = [PoolVm(i, 0, None, (), "ACTIVE", "RUNNING", 0) for i in range(12_000)]
    pool.append(PoolVm(99_999, 0, None, (), "POWEROFF", "LCM_INIT", 0))
    batches: list[int] = []
    with EventLog(tmp_path / "events.db") as log:
        real = log.append_batch
        monkeypatch.setattr(log, "append_batch", lambda events: batches.append(len(events))
                            or real(events))
        assert reconcile.catch_up(log, pool, {}, [route]) == 12_000
        assert max(batches) <= reconcile.CATCH_UP_BATCH and sum(batches) == 12_000
        assert reconcile.catch_up(log, pool, {}, [route]) == 0
        pool[5] = PoolVm(5, 0, None, (), "ACTIVE", "RUNNING", 1)  # migrated: a new record
        assert reconcile.catch_up(log, pool, {}, [route]) == 1
