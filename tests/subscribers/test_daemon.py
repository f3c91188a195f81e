"""``onestorpool subscriber run`` as a process on the oned sandbox's real hook bus: readiness
and watchdog to systemd, the remote backup of a terminated VM's disks and a deleted image
shipped once, hostile messages skipped, SIGTERM finishing cleanly; and the bus's reconnects
with a real PUB socket that goes away and comes back."""

from __future__ import annotations

import signal
import time

import pytest
import zmq

from onestorpool.errors import AddonError
from onestorpool.eventlog import EventLog
from onestorpool.subscribers.composition import ROUTES
from onestorpool.subscribers.daemon import Daemon
from onestorpool.subscribers.notify import Notifier
from tests.subscribers.conftest import deploy, events, remote_copies, wait_for

pytest_plugins = ["tests.sandbox.conftest_oned"]  # make_world


def test_terminate_and_image_delete_ship_tombstones_once(cloud, start_daemon):
    w, image_ds, system_ds, (node1, _), remote = cloud
    daemon = start_daemon()
    assert daemon.notified("READY=1")
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"', 'TYPE="fs",SIZE="2"')
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    wait_for(lambda: len(remote_copies(remote)) == 2, "two disks on the remote")
    w.srv.image.delete(base)
    wait_for(lambda: len(remote_copies(remote)) == 3, "the image on the remote")
    copies = {c["tags"]["tombstone"].split("-ONEDELETE-")[0] for c in remote_copies(remote)}
    assert copies == {f"one-img-{base}-{vm_id}-0", f"one-sys-{vm_id}-1-raw", f"one-img-{base}"}
    # the bus message was recorded before acting, the outcomes after, each key once
    received = events(w, "hook.received")
    assert [(r.payload["route"], r.vm, r.image) for r in received] == [
        ("vm.running", vm_id, None), ("vm.done", vm_id, None), ("image.delete", None, base)]
    done = events(w, "effect.done")
    assert sorted(r.payload["key"] for r in done) == sorted(
        {r.effect_key for r in events(w) if r.effect_key})
    shipped = [r for r in done if r.payload["effect_type"] == "remote_backup"]
    assert len(shipped) == 3 and len(done) == 4  # and the running VM's domain looked at
    # the local helpers are gone, the tombstones stay until they expire
    left = w.frontend.storpool_names()
    assert all("-ONEDELETE-" in name for name in left) and len(left) == 3
    assert all(w.frontend.sp.snapshot(name)["targetDeleteDate"] for name in left)
    assert daemon.stop() == 0
    assert daemon.notified("STOPPING=1")
    assert daemon.notified("WATCHDOG=1")  # WATCHDOG_USEC=2s: pinged every second
    assert events(w)[-1].type == "subscriber.stopped"
    assert events(w, "log.checkpoint")  # the first one at once, then hourly


def test_malformed_messages_are_logged_and_skipped(cloud, start_daemon):
    w, _image_ds, system_ds, (node1, _), remote = cloud
    daemon = start_daemon()
    bus = w.oned.hooks
    hostile = [
        [b"EVENT STATE VM/DONE/LCM_INIT/7 ", b"!!! not base64 !!!"],
        [b"EVENT STATE VM/DONE/LCM_INIT/7 ", b"PCFET0NUWVBFIGZvbyBbPCFFTlRJVFkgeCAieCI+XT4="],
        [b"EVENT STATE VM/DONE/LCM_INIT/7 "],
        [b"EVENT STATE VM/DONE/LCM_INIT/7 ", b"", b"third"],
        [b"EVENT API one.image.delete 1", b"PEhPT0tfTUVTU0FHRT4="],  # <HOOK_MESSAGE> cut
        [b"EVENT STATE VM/DONE/\xff\xfe ", b"eA=="],
    ]
    with bus.lock:
        for frames in hostile:
            bus.socket.send_multipart(frames)
    wait_for(lambda: len(events(w, "hook.malformed")) >= 5, "the malformed messages logged")
    assert daemon.process.poll() is None
    # and it goes on working
    vm_id = deploy(w, system_ds, node1, 'TYPE="fs",SIZE="2"')
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    wait_for(lambda: len(remote_copies(remote)) == 1, "the volatile disk on the remote")
    assert daemon.stop() == 0


def test_sigterm_finishes_the_effect_in_flight(cloud, start_daemon):
    w, _image_ds, system_ds, (node1, _), remote = cloud
    daemon = start_daemon()
    vm_id = deploy(w, system_ds, node1, *['TYPE="fs",SIZE="2"'] * 3)
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    wait_for(lambda: events(w, "hook.received"), "the DONE message")
    assert daemon.stop(signal.SIGTERM) == 0
    started = {r.effect_key for r in events(w) if r.effect_key}
    done = {r.payload["key"] for r in events(w, "effect.done")
            if r.payload["effect_type"] == "remote_backup"}
    # each effect it began is finished and recorded; what it did not begin stays pending
    assert done <= started
    assert len(remote_copies(remote)) == len(done)
    assert events(w)[-1].type == "subscriber.stopped"


def test_reconnects_after_the_publisher_restarts(tmp_path):
    """A real PUB socket bound, closed and bound again on the same port: the daemon sees the
    disconnect, reconnects by itself and reconciles (what was published meanwhile is lost)."""
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    reconciled: list[str] = []

    def reconcile(log, *, why):
        reconciled.append(why)
        return {}

    with EventLog(tmp_path / "events.db") as log:
        daemon = Daemon(f"tcp://127.0.0.1:{port}", log, reconcile=reconcile,
                        reconcile_every=3600, checkpoint_every=0, notifier=Notifier({}),
                        context=context, leader=None)
        daemon.connect()
        try:
            wait_for(lambda: daemon.step(0.1) or daemon._connected, "connected", 10)
            assert reconciled == ["start"]
            pub.close()
            wait_for(lambda: daemon.step(0.1) or not daemon._connected, "disconnected", 10)
            pub = context.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.bind(f"tcp://127.0.0.1:{port}")
            wait_for(lambda: daemon.step(0.1) or daemon._connected, "reconnected", 20)
            daemon.step(0.1)
            assert reconciled == ["start", "reconnected"]
            types = [r.type for r in log.read()]
            assert types.count("subscriber.disconnected") == 1
            assert types.count("subscriber.connected") == 2
        finally:
            daemon.close()
            pub.close()
            context.term()


def test_subscriptions_are_the_routes_prefixes():
    prefixes = [r.prefix for r in ROUTES]
    assert b"EVENT STATE VM/DONE/" in prefixes
    assert all(not p.startswith(b"EVENT VM ") for p in prefixes)  # VM events once, not twice


def test_only_the_leader_acts_and_a_new_leader_reconciles_first(tmp_path):
    """Two subscribers on one bus (two front-ends of an HA zone, each with its log): the
    follower drains, the leader acts; when leadership moves, the new leader reconciles
    before it acts on the next message, the old one stands by."""
    from onestorpool.subscribers.daemon import Route

    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    leader = {"a": True}
    acted: list[tuple[str, str]] = []

    def daemon(name: str, log) -> Daemon:
        route = Route("vm.done", b"EVENT STATE VM/DONE/", lambda e: e.state == "DONE",
                      lambda d, e, seq: acted.append((name, f"vm {e.object_id}")))

        def reconcile(log, *, why):
            acted.append((name, f"reconcile {why}"))
            return {}

        return Daemon(f"tcp://127.0.0.1:{port}", log, routes=(route,), reconcile=reconcile,
                      reconcile_every=3600, checkpoint_every=0, notifier=Notifier({}),
                      context=context, leader=lambda: leader["a"] == (name == "a"),
                      leader_every=0)

    def message(vm_id: int) -> list[bytes]:
        import base64

        body = (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
                f"<STATE>DONE</STATE><LCM_STATE>LCM_INIT</LCM_STATE><RESOURCE_ID>{vm_id}"
                f"</RESOURCE_ID><REMOTE_HOST/><VM><ID>{vm_id}</ID></VM></HOOK_MESSAGE>")
        return [f"EVENT STATE VM/DONE/LCM_INIT/{vm_id} ".encode(),
                base64.b64encode(body.encode())]

    with EventLog(tmp_path / "a.db") as log_a, EventLog(tmp_path / "b.db") as log_b:
        a, b = daemon("a", log_a), daemon("b", log_b)
        for d in (a, b):
            d.connect()
        try:
            wait_for(lambda: [d.step(0.05) for d in (a, b)] and a._connected and b._connected,
                     "both connected", 10)
            time.sleep(0.3)  # past the slow joiner
            pub.send_multipart(message(1))
            wait_for(lambda: [d.step(0.05) for d in (a, b)] and ("a", "vm 1") in acted,
                     "the leader acting", 10)
            leader["a"] = False
            pub.send_multipart(message(2))
            wait_for(lambda: [d.step(0.05) for d in (a, b)] and ("b", "vm 2") in acted,
                     "the new leader acting", 10)
            for d in (a, b):
                d.step(0.05)
            assert acted == [("a", "reconcile start"), ("a", "vm 1"), ("b", "reconcile leader"),
                             ("b", "vm 2")]
            assert [r.type for r in log_b.read()].count("subscriber.leader") == 1
            assert "subscriber.standby" in [r.type for r in log_a.read()]
            assert a.counts["received"] >= 2 and b.counts["received"] >= 2
        finally:
            for d in (a, b):
                d.close()
            pub.close()
            context.term()


def test_raft_leader_ip_decides_where_it_acts(tmp_path):
    from onestorpool import config
    from onestorpool.subscribers.daemon import ip_is_local, leader_check, raft_leader

    assert ip_is_local("127.0.0.1") and not ip_is_local("192.0.2.77")  # TEST-NET-1
    rc = tmp_path / "rc"
    for value, expected in (("disabled", None), ("127.0.0.1", True), ("192.0.2.77", False)):
        rc.write_text(f"RAFT_LEADER_IP={value}\n")
        check = leader_check(config.load(rc_paths=[rc], storpool_paths=[], environ={}))
        assert (check if check is None else check()) == expected
    rc.write_text("")
    assert leader_check(config.load(rc_paths=[rc], storpool_paths=[], environ={})) is raft_leader
    rc.write_text("RAFT_LEADER_IP=leader.example\n")
    with pytest.raises(AddonError, match="not an IP address"):
        leader_check(config.load(rc_paths=[rc], storpool_paths=[], environ={}))
