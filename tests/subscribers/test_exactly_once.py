"""SIGKILL the subscriber at random points of a 500-event workload (hook messages on the
real bus, tombstones requested in the log as the drivers request them) and restart it:
every side effect happens exactly once and nothing is lost; the log still verifies."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter

from onestorpool.drivers.storage import Tags, retire_volume
from onestorpool.eventlog import append_event
from onestorpool.naming import Naming
from tests.subscribers.conftest import events, remote_copies, subscriber_env, wait_for

pytest_plugins = ["tests.sandbox.conftest_oned"]  # make_world

MIB = 1 << 20
OURS = {"virt": "one", "nloc": "one"}


def done_message(vm_id: int) -> str:
    return (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
            f"<STATE>DONE</STATE><LCM_STATE>LCM_INIT</LCM_STATE><RESOURCE_ID>{vm_id}"
            f"</RESOURCE_ID><REMOTE_HOST/><VM><ID>{vm_id}</ID></VM></HOOK_MESSAGE>")


def runs_started(w) -> int:
    """The subscriber runs on record (none while the first is still creating the log)."""
    from onestorpool.eventlog import EventLogError

    try:
        return len(events(w, "subscriber.started"))
    except EventLogError:
        return 0


def test_sigkill_at_random_points_loses_and_repeats_nothing(cloud, start_daemon):
    w, *_, remote = cloud
    sp, rng = w.frontend.sp, random.Random(13)
    naming, tags = Naming("one"), Tags("nloc", "one")
    log_path = w.frontend.env["ONESTORPOOL_EVENTLOG"]
    # 50 terminated VMs whose disk snapshots were left behind
    orphans = []
    for vm_id in range(1000, 1050):
        volume = f"one-sys-{vm_id}-0-raw"
        sp.volume_create(volume, size=MIB, tags=OURS)
        sp.volume_snapshot(volume, f"{volume}-snap1", tags=OURS)
        sp.volume_delete(volume)
        orphans.append(f"{volume}-snap1")
    work: list[tuple[str, int]] = [("rm", i) for i in range(40)] + \
        [("done", 1000 + i % 50) for i in range(460)]  # each VM's DONE message, repeated
    rng.shuffle(work)
    for i in range(40):
        sp.volume_create(f"one-img-{i}", size=MIB, tags=OURS)
    kills = 0
    for chunk in range(10):
        daemon = start_daemon(wait=False)
        # each run is killed among its work, not before it began (a loaded machine starts
        # a process slowly): its start is on record first
        wait_for(lambda c=chunk: runs_started(w) > c, "the run's start")
        for kind, number in work[chunk * 50:(chunk + 1) * 50]:
            if kind == "rm":  # what the datastore's rm does
                volume = f"one-img-{number}"
                fields = retire_volume(sp, naming, tags, volume, delay=0,
                                       remote=("backup-site", ""))
                append_event("ds.rm", writer="ds/rm", payload={**fields, "duration_ms": 1},
                             image=number, volume=volume, path=log_path)
            else:
                w.oned.hooks.publish([f"EVENT STATE VM/DONE/LCM_INIT/{number} "],
                                     done_message(number))
            time.sleep(rng.uniform(0, 0.01))
        time.sleep(rng.uniform(0.05, 1.0))
        daemon.stop(signal.SIGKILL)
        kills += 1
    daemon = start_daemon()  # reconciles on start
    wait_for(lambda: len(remote_copies(remote)) >= 40 and not (
        set(orphans) & w.frontend.storpool_names()), "every effect", 120)
    assert daemon.stop() == 0
    assert kills == 10
    log = events(w)
    starts = [e.seq for e in log if e.type == "subscriber.started"]
    assert len(starts) == 11 and len([e for e in log if e.type == "subscriber.stopped"]) == 1
    # the killed runs did work (the kills fell among it), the last one the rest
    assert [e for e in log if e.type in ("effect.done", "cleanup.snapshot") and e.seq < starts[-1]]
    # exactly once: one remote copy per tombstone, one outcome per key
    copies = Counter(c["tags"]["tombstone"] for c in remote_copies(remote))
    requested = {e.effect_key for e in events(w) if e.effect_key}
    assert len(requested) == 40 and set(copies) == {k.split(":", 1)[1] for k in requested}
    assert set(copies.values()) == {1}
    assert Counter(e.payload["key"] for e in events(w, "effect.done")) == Counter(requested)
    cleaned = Counter(e.payload["removed"][0] for e in events(w, "cleanup.snapshot"))
    assert set(cleaned) == set(orphans) and set(cleaned.values()) == {1}
    # nothing else is left: no carrier volume, no snapshot a backup was sent from
    assert w.frontend.storpool_names() == set(copies)
    verify = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "verify"],
                            env=subscriber_env(w), capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_concurrent_runners_send_each_tombstone_once(cloud):
    """Four runners at once (the daemon, a hook, two admins' replays look alike to the log):
    the remote check and the send are one step, so no tombstone travels twice."""
    w, *_, remote = cloud
    sp, naming, tags = w.frontend.sp, Naming("one"), Tags("nloc", "one")
    for i in range(6):
        volume = f"one-img-{i}"
        sp.volume_create(volume, size=MIB, tags=OURS)
        fields = retire_volume(sp, naming, tags, volume, delay=0, remote=("backup-site", ""))
        append_event("ds.rm", writer="ds/rm", payload={**fields, "duration_ms": 1}, image=i,
                     volume=volume, path=w.frontend.env["ONESTORPOOL_EVENTLOG"])
    runners = [subprocess.Popen([sys.executable, "-m", "onestorpool.cli", "log", "replay",
                                 "--execute"], env=subscriber_env(w), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [r.communicate(timeout=120)[0] for r in runners]
    assert all(r.returncode == 0 for r in runners), outputs
    copies = Counter(c["tags"]["tombstone"] for c in remote_copies(remote))
    assert len(copies) == 6 and set(copies.values()) == {1}
    assert len(events(w, "effect.done")) == 6
