"""Transfer manager actions: wall time against an interpreter floor, StorPool calls per
action, and the system datastore monitor at scale.

Run: ``.venv/bin/python bench/tm_bench.py [--rounds N] [--vms N] [--layout L] [--write]``
(``--write`` updates the ``## Transfer manager`` section of BENCHMARKS.md).

* Each action's executable is run as oned runs it, against a VM with 8 StorPool disks that
  the oned sandbox deployed; the floor is ``python3 -I -c "import json, http.client"``
  (an interpreter that could talk to StorPool at all). Medians of interleaved rounds.
* ``--layout installed`` (the default) runs the executables of a packaged install: the
  wheel built from this tree in a fresh virtualenv, as tests/test_release.py makes it and
  as a front-end runs it; ``development`` runs them from the editable install, whose import
  finder adds ~10 ms to every start.
* StorPool calls of each single action, counted by the StorPool sandbox, next to the
  Bash add-on's for the same case (``BASH_CALLS``, derived from its source).
* The largest imports of one ``snap_create`` (``-X importtime``), to see where start-up goes.
* ``monitor`` at scale: ``--vms`` running VMs (3 disks and 6 disk snapshots each) served by
  a stand-in oned (``one.vmpool.info``) and a stand-in StorPool API (``VolumesSpace``,
  ``SnapshotsSpace``, ``VolumeTemplatesStatus``) on loopback; wall time and the peak RSS of
  the action's process.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCServer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from eventlog_bench import write_named_section  # noqa: E402

from onestorpool.drivers.install import shipped_remotes  # noqa: E402
from onestorpool.sandbox.frontend import make_frontend  # noqa: E402
from onestorpool.sandbox.oned import OnedSandbox  # noqa: E402
from onestorpool.sandbox.storpool import StorPoolSandbox  # noqa: E402

MIB = 1 << 20
FLOOR = [sys.executable, "-I", "-c", "import json, http.client"]

# StorPool calls the Bash add-on makes for the same action and case: each `storpool` CLI run
# and each curl to the API is one call (reference §4 and §7, read in tm/storpool/* and
# storpool_common.sh; the host's client id comes from `storpool_confget`, no API call).
# Defaults of its addon-storpoolrc unless said: AUTO_TEMPLATE=0,
# VMSNAPSHOT_DELETE_ON_TERMINATE=1, DELAY_DELETE empty (immediate, as this bench runs ours).
BASH_CALLS: dict[str, tuple[int, list[str]]] = {
    "snap_create": (1, ["`volume <vol> snapshot <vol>-snap<N>` (the `DISKSNAPSHOT_LIMIT` "
                        "check reads oned only; `snap_create_live`'s fsfreeze is virsh)"]),
    "snap_delete": (1, ["`snapshot <vol>-snap<N> delete`"]),
    "delete (image disk 0)": (6, [
        "non-persistent (CLONE=YES) → `storpoolVolumeDelete <img>-<VM>-<DISK> force snaps`: "
        "`-j volume list` (exists?), `-j attach list`, `detach volume … all force yes` (it is "
        "attached), `volume … delete`, `-j snapshot list` (its `-snap` snapshots; +1 per "
        "snapshot, none here)",
        "VMSNAPSHOT_DELETE_ON_TERMINATE: `-j snapshot list` (its `-ONESNAP-` snapshots)",
        "DELAY_DELETE=48h (its default) adds `volume … snapshot deleteAfter` (+1); "
        "REMOTE_BACKUP_DELETE adds `volume … backup` (+1)"]),
    "clone (disk 0)": (4, [
        "`-j volume list` (storpoolVolumeCheck), `volume … baseOn <img> create`, "
        "`attach volume … client <id>`, `volume … tag … update`",
        "a SIZE above the image's adds `volume … size … update` (+1; not here)"]),
    "delete (volatile disk 4)": (7, [
        "the volatile disk → `storpoolVolumeDelete one-sys-<VM>-4-raw force snaps`: the 5 "
        "calls above (exists, attachments, detach, delete, `-snap` list)",
        "VMSNAPSHOT_DELETE_ON_TERMINATE: `-j snapshot list` (`-ONESNAP-`)",
        "a disk path → `storpoolVolumeStartswith one-sys-<VM>-4`: `-j volume list` "
        "(nothing left to delete)",
        "DELAY_DELETE=48h adds 1, as above"]),
    "mkimage (volatile disk 4)": (4, [
        "`-j volume list` (storpoolVolumeCheck), `volume … size … template … create`, "
        "`attach`, `volume … tag … update` (raw without FS; swap or mkfs attach once before "
        "formatting instead: same count)",
        "AUTO_TEMPLATE=1 adds `template … update` (+1)"]),
    "premigrate (8 disks)": (1, [
        "one `VolumesReassignWait` (curl, groupAttach) with every disk: 4 clones, 4 volatile",
        "each CDROM disk adds `-j volume list` (+1), and clone + tag (+2) when its per-VM "
        "clone is missing"]),
    "postmigrate (8 disks)": (1, [
        "one `VolumesReassignWait` (curl, groupDetach) with every disk",
        "each CDROM disk adds `-j attach list` + `detach` (+2)"]),
    "monitor (system datastore)": (0, [
        "none in the action: it reads the JSON cache of `monitor_helper-sync` (a timer "
        "every 4 min), which refreshes it with `-j template status`, `-j volume usedSpace`, "
        "`-j snapshot space` (3 calls, at most every 60/60/65 min by default)"]),
}


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr}")
    return elapsed


def installed_layout(scratch: Path) -> tuple[str, Path]:
    """A packaged install of this tree: (its interpreter, its TM executables)."""
    source = scratch / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".hypothesis",
        ".ruff_cache", "demo-run"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(scratch / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (scratch / "dist").glob("*.whl")
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True,
                   capture_output=True)
    remotes = subprocess.run(
        [python, "-c", "from onestorpool.drivers.install import shipped_remotes as r; "
         "print(r())"], check=True, capture_output=True, text=True, cwd=scratch).stdout.strip()
    return python, Path(remotes) / "tm" / "storpool"


def lifecycle(rounds: int, python: str, tm: Path):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        with StorPoolSandbox(root / "sp", "bench") as sandbox:
            frontend = make_frontend(root / "fe", sandbox)
            frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
            env = {k: v for k, v in frontend.env.items() if k.startswith("ONESTORPOOL_")}
            remotes = root / "remotes"
            for kind in ("datastore", "tm"):
                (remotes / kind).mkdir(parents=True)
                (remotes / kind / "storpool").symlink_to(shipped_remotes() / kind / "storpool")
            oned = OnedSandbox(root / "oned", remotes, driver_env=env,
                               storpool_admin=(sandbox.url, sandbox.token),
                               live_disk_snapshots={"kvm-storpool"}).start()
            try:
                image_ds = oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                                 DISK_TYPE="BLOCK")
                system_ds = oned.create_datastore("sys", "SYSTEM_DS", TM_MAD="storpool")
                node1, _node2 = oned.create_host("node1"), oned.create_host("node2")
                image = oned.create_image(image_ds, "base", size_mb=4)
                disks = "".join(f'DISK=[IMAGE_ID="{image}"]\n' for _ in range(4)) + "".join(
                    'DISK=[TYPE="fs",SIZE="4"]\n' for _ in range(4))
                vm = oned.instantiate(f'NAME="b"\nCPU="1"\nMEMORY="64"\n{disks}', node1,
                                      system_ds)
                return _measure(oned, sandbox, rounds, vm, image, image_ds, system_ds,
                                python, tm)
            finally:
                oned.stop()


def _measure(oned, sandbox, rounds, vm, image, image_ds, system_ds, python, tm):
    env = oned.drivers.env
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm}"
    source = f"localhost:one-ds-{image_ds}/one-img-{image}"
    disk0, disk4 = f"node1:{vm_dir}/disk.0", f"node1:{vm_dir}/disk.4"
    # pairs that leave the VM as they found it; each pair is timed together
    steps: list[tuple[str, list[tuple[str, list[str]]]]] = [
        ("snap_create + snap_delete", [
            ("snap_create", [str(tm / "snap_create"), disk0, "90", str(vm), str(image_ds)]),
            ("snap_delete", [str(tm / "snap_delete"), disk0, "90", str(vm), str(image_ds)])]),
        ("delete + clone (disk 0)", [
            ("delete (image disk 0)", [str(tm / "delete"), disk0, str(vm), str(image_ds)]),
            ("clone (disk 0)", [str(tm / "clone"), source, disk0, str(vm), str(image_ds)])]),
        ("delete + mkimage (volatile disk 4)", [
            ("delete (volatile disk 4)", [str(tm / "delete"), disk4, str(vm), str(system_ds)]),
            ("mkimage (volatile disk 4)", [str(tm / "mkimage"), "4", "raw", disk4, str(vm),
                                           str(system_ds)])]),
        ("premigrate + postmigrate, 8 disks", [
            ("premigrate (8 disks)", [str(tm / "premigrate"), "node1", "node2", vm_dir,
                                      str(vm), str(system_ds)]),
            ("postmigrate (8 disks)", [str(tm / "postmigrate"), "node1", "node2", vm_dir,
                                       str(vm), str(system_ds)]),
            ("premigrate (8 disks)", [str(tm / "premigrate"), "node2", "node1", vm_dir,
                                      str(vm), str(system_ds)]),
            ("postmigrate (8 disks)", [str(tm / "postmigrate"), "node2", "node1", vm_dir,
                                       str(vm), str(system_ds)])]),
        ("monitor (system datastore)", [
            ("monitor (system datastore)", [str(tm / "monitor"), str(system_ds)])]),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _ in steps}
    floors: list[float] = []
    calls: dict[str, set[tuple[str, ...]]] = {}  # action: the StorPool queries of each run
    for _ in range(rounds):
        floors.append(timed([python, *FLOOR[1:]], env))
        for name, commands in steps:
            elapsed = 0.0
            for action, argv in commands:
                sandbox.api_calls.clear()
                elapsed += timed([python, *argv], env)
                calls.setdefault(action, set()).add(tuple(sandbox.api_calls))
            samples[name].append(elapsed / len(commands))
    floor = statistics.median(floors)
    for action, runs in calls.items():
        if len(runs) != 1:  # the counts are meant to be exact, not a median
            raise SystemExit(f"{action}: StorPool calls differ between runs: {sorted(runs)}")
    profile = import_profile([python, *steps[0][1][0][1]], env)
    timed([python, *steps[0][1][1][1]], env)  # the profiled run's snapshot goes again
    return ([(name, statistics.median(samples[name]), statistics.median(samples[name]) / floor)
             for name, _ in steps], {action: runs.pop() for action, runs in calls.items()},
            floor, profile)


def import_profile(argv: list[str], env: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    """``-X importtime`` of one action: the total (ms) and its largest top-level imports.
    The figures carry the profiler's own overhead: read them as shares, not as wall time."""
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{argv[1]} failed: {done.stderr}")
    top: list[tuple[str, float]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and not name.startswith("  "):  # top level only
            top.append((name.strip(), int(cumulative) / 1000))
    return sum(ms for _, ms in top), sorted(top, key=lambda item: -item[1])[:8]


# -- monitor at scale ----------------------------------------------------------------------


def vm_pool_xml(vms: int, system_ds: int) -> str:
    parts = ["<VM_POOL>"]
    for vm in range(vms):
        disks = "".join(
            f"<DISK><DISK_ID>{d}</DISK_ID><IMAGE_ID>{d}</IMAGE_ID><SOURCE>one-ds-1/one-img-{d}"
            f"</SOURCE><CLONE>YES</CLONE><TM_MAD>storpool</TM_MAD><TYPE>BLOCK</TYPE></DISK>"
            for d in range(3))
        snapshots = "".join(
            f"<SNAPSHOTS><DISK_ID>{d}</DISK_ID>" + "".join(
                f"<SNAPSHOT><ID>{s}</ID><NAME>s</NAME><DATE>0</DATE><PARENT>-1</PARENT>"
                f"<SIZE>1</SIZE></SNAPSHOT>" for s in range(2)) + "</SNAPSHOTS>"
            for d in range(3))
        parts.append(
            f"<VM><ID>{vm}</ID><UID>0</UID><GID>0</GID><NAME>vm{vm}</NAME><STATE>3</STATE>"
            f"<LCM_STATE>3</LCM_STATE><DEPLOY_ID>one-{vm}</DEPLOY_ID><TEMPLATE>{disks}"
            f"</TEMPLATE><USER_TEMPLATE/>{snapshots}<HISTORY_RECORDS><HISTORY><SEQ>0</SEQ>"
            f"<HOSTNAME>node1</HOSTNAME><HID>0</HID><DS_ID>{system_ds}</DS_ID></HISTORY>"
            "</HISTORY_RECORDS></VM>")
    parts.append("</VM_POOL>")
    return "".join(parts)


def monitor_at_scale(vms: int, python: str, tm: Path) -> tuple[float, float, int]:
    system_ds = 0
    volumes = [{"name": f"one-img-{d}-{vm}-{d}", "spaceUsed": 5 * MIB, "storedSize": MIB}
               for vm in range(vms) for d in range(3)]
    snapshots = [{"name": f"one-img-{d}-{vm}-{d}-snap{s}", "spaceUsed": MIB}
                 for vm in range(vms) for d in range(3) for s in range(2)]
    replies = {
        "VolumesSpace": json.dumps({"data": volumes}).encode(),
        "SnapshotsSpace": json.dumps({"data": snapshots}).encode(),
        "VolumeTemplatesStatus": json.dumps({"data": [{"name": f"one-ds-{system_ds}", "stored": {
            "capacity": 1 << 40, "free": 1 << 39}}]}).encode()}
    served: list[str] = []

    class StorPool(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            query = self.path.rsplit("/", 1)[-1]
            served.append(query)
            body = replies[query]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    pool = vm_pool_xml(vms, system_ds)
    datastore = (f"<DATASTORE><ID>{system_ds}</ID><UID>0</UID><GID>0</GID><NAME>sys</NAME>"
                 "<DS_MAD>-</DS_MAD><TM_MAD>storpool</TM_MAD><BASE_PATH>/x</BASE_PATH>"
                 "<TYPE>1</TYPE><DISK_TYPE>0</DISK_TYPE><STATE>0</STATE><CLUSTERS/>"
                 "<TEMPLATE/></DATASTORE>")
    oned = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    oned.register_function(lambda *a: [True, pool, 0], "one.vmpool.info")
    oned.register_function(lambda *a: [True, datastore, 0], "one.datastore.info")
    storpool = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StorPool)
    for server in (oned, storpool):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "etc").mkdir()
        (root / "etc/storpool.conf").write_text(
            f"SP_API_HTTP_HOST=127.0.0.1\nSP_API_HTTP_PORT={storpool.server_address[1]}\n"
            "SP_AUTH_TOKEN=x\n")
        (root / "remotes").mkdir()
        (root / "remotes/VERSION").write_text("5.10.0\n")  # printed, not pushed
        (root / "remotes/tm").mkdir()
        (root / "remotes/tm/storpool").symlink_to(tm)
        auth = root / "one_auth"
        auth.write_text("oneadmin:x\n")
        env = {**os.environ, "ONESTORPOOL_ROOT": str(root),
               "ONESTORPOOL_EVENTLOG": str(root / "events.db"), "ONE_AUTH": str(auth),
               "ONE_XMLRPC": f"http://127.0.0.1:{oned.server_address[1]}/RPC2"}
        # output into files, so that the process can be reaped with its own peak RSS
        with (root / "out").open("w+") as out, (root / "err").open("w+") as err:
            started = time.perf_counter()
            monitor = subprocess.Popen([python, str(root / "remotes/tm/storpool/monitor"),
                                        str(system_ds)], stdout=out, stderr=err, env=env,
                                       stdin=subprocess.DEVNULL)
            _, status, usage = os.wait4(monitor.pid, 0)
            elapsed = time.perf_counter() - started
            monitor.returncode = os.waitstatus_to_exitcode(status)  # reaped here
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
    oned.shutdown()
    storpool.shutdown()
    if monitor.returncode != 0:
        raise SystemExit(f"monitor failed: {stderr}")
    assert stdout.count("VM=[") == vms, "every VM reported"
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    return elapsed, peak, len(served)


CALLS_NOTE = (
    "Calls of each single action, as the StorPool sandbox served them (its log of "
    "`/ctrl/1.0` queries, cleared before each action; every run of an action made the same "
    "calls, the bench stops otherwise), on the 8-disk VM above (4 non-persistent image "
    "disks, 4 volatile raw disks, no context disk), `DELAY_DELETE=0`.")
DELAY_NOTE = (
    "With a `DELAY_DELETE` (both add-ons default to 48 h) a delete keeps an expiring "
    "snapshot: the Bash add-on adds 1 call (6 → 7, 7 → 8); ours (`delete_volume` in "
    "drivers/storage.py) adds the snapshot for a clone (5 → 6) and, for a volume without a "
    "parent, a `VolumesSpace` first so that a volume that never held data keeps nothing "
    "(5 → 6 for the unwritten volatile disk here, 7 for one with data): still fewer. "
    "Counted once with `DELAY_DELETE=48h`, not by this bench.")
MONITOR_NOTE = (
    "`monitor` is the one action above the Bash add-on's count, by design: the issue asks "
    "for capacity and per-VM sizes from one `VolumesSpace` and one `SnapshotsSpace` call per "
    "monitor (plus `VolumeTemplatesStatus` for capacity), fresh each time oned asks "
    "(`MONITORING_INTERVAL_DATASTORE`, 300 s by default), and constant in the number of VMs "
    "(above). The Bash action makes none because it reads a cache its `monitor_helper-sync` "
    "timer fills with the same 3 queries, by default at most once an hour, so its sizes lag "
    "by up to that long; matching its count would mean shipping that cache and timer.")


def calls_section(calls_by_action: dict[str, tuple[str, ...]]) -> str:
    """Our calls per action next to the Bash add-on's, and how the latter were counted."""
    lines = ["| action | our calls | Bash add-on calls | goal (never more) met? |",
             "|---|---|---:|---|"]
    derivation = []
    for action, queries in calls_by_action.items():
        bash, steps = BASH_CALLS[action]
        met = "met" if len(queries) <= bash else "**not met** (see below)"
        lines.append(f"| {action} | {len(queries)} ({', '.join(queries) or 'none'}) | "
                     f"{bash} | {met} |")
        derivation.append(f"- {action}: {bash}\n" + "".join(f"  - {step}\n" for step in steps))
    migrate = [len(calls_by_action[a]) for a in ("premigrate (8 disks)", "postmigrate (8 disks)")]
    migrate_goal = (f"premigrate and postmigrate of the 8-disk VM: {migrate[0]} and "
                    f"{migrate[1]} StorPool call (goal 1 each: "
                    f"{'met' if migrate == [1, 1] else 'not met'}).")
    table = "\n".join(lines)
    return (f"### StorPool calls per action\n\n{CALLS_NOTE}\n\n{table}\n\n"
            f"- {migrate_goal}\n- {DELAY_NOTE}\n- {MONITOR_NOTE}\n\n"
            "The Bash add-on's counts, from reference §4 (each action's row) and §7 (each "
            "`storpool` CLI run or curl is one API call; `-j volume list`, `-j snapshot list`, "
            "`-j attach list`, `attach` and `tag … update` each count), read in its "
            "`tm/storpool/*` and `storpool_common.sh`; its defaults (`AUTO_TEMPLATE=0`, "
            "`VMSNAPSHOT_DELETE_ON_TERMINATE=1`) and an immediate delete (`DELAY_DELETE` "
            "empty) unless said:\n\n" + "".join(derivation).rstrip("\n"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--layout", choices=("installed", "development"),
                        default="installed", help="whose executables run (see above)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        python, tm = sys.executable, shipped_remotes() / "tm" / "storpool"
        if args.layout == "installed":
            python, tm = installed_layout(Path(scratch))
        results, calls_by_action, floor, (imports, largest) = lifecycle(
            args.rounds, python, tm)
        elapsed, peak, calls = monitor_at_scale(args.vms, python, tm)
    lines = ["| action | median ms | ratio to the floor (goal 3x) |",
             "|---|---:|---|",
             f"| floor: `python3 -I -c \"import json, http.client\"` | {floor * 1000:.0f} | "
             "1.00x |"]
    lines += [f"| {name} (per action) | {value * 1000:.0f} | {ratio:.2f}x "
              f"({'met' if ratio <= 3 else 'not met'}) |"
              for name, value, ratio in results]
    scale = (f"`monitor` of a system datastore with {args.vms:,} running VMs "
             f"({3 * args.vms:,} volumes, {6 * args.vms:,} snapshots): {elapsed:.2f} s "
             f"(goal 2 s: {'met' if elapsed <= 2 else 'not met'}), peak RSS {peak:.0f} MB "
             f"(goal 300 MB: {'met' if peak <= 300 else 'not met'}), {calls} StorPool calls "
             "(constant).")
    table = "\n".join(lines)
    profile = (f"Imports of one `snap_create` (`-X importtime`, which inflates them): "
               f"{imports:.0f} ms; the largest: "
               + ", ".join(f"{name} {ms:.1f}" for name, ms in largest) + ".")
    calls_text = calls_section(calls_by_action)
    print(table)
    print(scale)
    print(profile)
    print(calls_text)
    if args.write:
        layout = ("a packaged install (the wheel in a fresh virtualenv)"
                  if args.layout == "installed" else "the development virtualenv")
        command = " ".join(["bench/tm_bench.py", *sys.argv[1:]])
        note = (f"Measured {time.strftime('%Y-%m-%d')}, {args.rounds} interleaved rounds, "
                f"executables of {layout}; `.venv/bin/python {command}`. Pairs of actions "
                "are timed together and reported per action.")
        write_named_section("Transfer manager", f"{note}\n\n{table}\n\n- {scale}\n- {profile}"
                            f"\n\n{calls_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
