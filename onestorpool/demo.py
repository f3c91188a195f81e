"""``make demo``: the add-on at work on the embedded sandbox, step by step.

Everything runs against the StorPool sandbox cluster (a real HTTP server speaking StorPool's
JSON API, volumes backed by sparse files) in ``./demo-run/``; hosts are directories whose
``dev/storpool/<name>`` links are the volumes' devices, as on a StorPool client.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onestorpool import config
from onestorpool.naming import Naming
from onestorpool.sandbox.frontend import ds_action, image_xml, make_frontend
from onestorpool.sandbox.storpool import StorPoolSandbox
from onestorpool.storpool import StorPoolClient

MIB = 1 << 20


def say(text: str) -> None:
    print(f"  {text}", flush=True)


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def storpool_basics(sp: StorPoolClient, sandbox: StorPoolSandbox, naming: Naming) -> None:
    template = naming.template(1)
    step(f"StorPool template {template}: one per OpenNebula datastore (the admin creates it)")
    sp.volume_template_create(template, replication=3, placeAll="hdd", placeTail="ssd")
    status = {t["name"]: t for t in sp.volume_templates_status()}[template]
    say(f"capacity {status['stored']['capacity'] // MIB} MiB, "
        f"free {status['stored']['free'] // MIB} MiB (client data, replication 3)")

    volume = naming.image(7)
    step(f"volume {volume}: what the datastore driver creates for image 7")
    sp.volume_create(volume, size=64 * MIB, template=template,
                     tags={"virt": "one", "nloc": naming.prefix})
    say(f"{volume}: {sp.volume(volume)['size'] // MIB} MiB, tags {sp.volume(volume)['tags']}")

    host_client = 1
    step(f"attach {volume} to host node1 (StorPool client {host_client}) and write data")
    sp.attach(volume, host_client, timeout=20)
    device = sandbox.client_dir(host_client) / "dev" / "storpool" / volume
    payload = os.urandom(4 * MIB)
    with device.open("r+b") as dev:
        dev.write(payload)
    say(f"wrote 4 MiB through {device.relative_to(Path.cwd())}, "
        f"md5 {hashlib.md5(payload).hexdigest()}")

    snapshot = naming.disk_snapshot(volume, 0)
    step(f"snapshot {snapshot}, then overwrite the volume")
    sp.volume_snapshot(volume, snapshot, tags={"virt": "one"})
    with device.open("r+b") as dev:
        dev.write(b"\0" * MIB)
    say("first MiB of the volume zeroed after the snapshot")

    clone = naming.clone(7, 42, 0)
    step(f"clone {clone} from the snapshot (a non-persistent disk of VM 42), read it back")
    sp.volume_create(clone, parent=snapshot, tags={"virt": "one", "nvm": "42", "type": "NPERS"})
    sp.attach(clone, 2, timeout=20)
    clone_device = sandbox.client_dir(2) / "dev" / "storpool" / clone
    data = clone_device.read_bytes()[: len(payload)]
    same = hashlib.md5(data).hexdigest() == hashlib.md5(payload).hexdigest()
    say(f"read 4 MiB through {clone_device.relative_to(Path.cwd())}: "
        f"{'identical to the data at snapshot time' if same else 'DIFFERENT'}")
    if not same:
        raise SystemExit("demo: the clone does not hold the snapshot's data")

    step("read-only snapshot attachment: writes are refused")
    sp.attach(snapshot, 3, mode="ro", snapshot=True)
    snap_device = sandbox.client_dir(3) / "dev" / "storpool" / snapshot
    try:
        snap_device.open("r+b").close()
        say("write allowed (this filesystem cannot enforce it)")
    except PermissionError:
        say(f"opening {snap_device.name} for writing: permission denied, as on StorPool")

    step("what StorPool holds now, and what each name means to OpenNebula")
    for obj in sp.volumes_list() + sp.snapshots_list():
        parsed = naming.parse(obj["name"])
        kind = parsed.kind if parsed else "not ours"
        say(f"{obj['name']:28} {kind:14} {obj['size'] // MIB:5} MiB")
    for attachment in sp.attachments_list():
        say(f"attached: {attachment['volume']} -> client {attachment['client']} "
            f"({attachment['rights']})")

    step("clean up the way the drivers do: detach everywhere, delete with a delayed copy")
    for name, is_snapshot in ((clone, False), (volume, False), (snapshot, True)):
        sp.detach(name, snapshot=is_snapshot)
    sp.volume_delete(clone)
    kept = sp.volume_snapshot(volume, delete_after=48 * 3600)["autoName"]
    sp.volume_delete(volume)
    say(f"{volume} deleted; its data stays 48h in the anonymous snapshot {kept}")
    sandbox.advance_clock(48 * 3600 + 1)
    sp.snapshot_delete(snapshot)
    say(f"48h later (sandbox clock): snapshots left: {[s['name'] for s in sp.snapshots_list()]}")


def datastore_imports(sandbox: StorPoolSandbox, workdir: Path) -> None:
    """The datastore driver importing VMware and Hyper-V disks, run as oned runs it."""
    frontend = make_frontend(workdir / "frontend", sandbox)
    frontend.sp.volume_template_create("one-ds-100", replication=3)
    images = workdir / "images"
    images.mkdir()
    payload = os.urandom(8 * MIB)
    (images / "disk.raw").write_bytes(payload)
    digest = hashlib.md5(payload).hexdigest()
    step("datastore driver 'cp': import a VMware (VMDK) and a Hyper-V (VHDX) disk")
    say(f"source disk: 8 MiB of random data, md5 {digest}")
    for image_id, fmt in ((10, "vmdk"), (11, "vhdx")):
        path = images / f"disk.{fmt}"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt,
                        str(images / "disk.raw"), str(path)], check=True)
        stat = frontend.run_ds("stat", ds_action(image_xml(-1, path=str(path))), 0)
        result = frontend.run_ds("cp", ds_action(image_xml(image_id, path=str(path),
                                                           size=stat.stdout.strip())),
                                 image_id)
        if result.returncode != 0:
            raise SystemExit(f"demo: import of {path.name} failed: {result.stderr.strip()}")
        say(f"{path.name} ({fmt}, {path.stat().st_size // 1024} KiB on disk): "
            f"stat said {stat.stdout.strip()} MB, cp printed '{result.stdout.strip()}'")
    step("the imported images are raw StorPool volumes with the same data")
    for image_id in (10, 11):
        volume = f"one-img-{image_id}"
        info = frontend.sp.volume(volume)
        frontend.sp.attach(volume, 3, mode="ro")
        data = frontend.device("node1", volume).read_bytes()[: len(payload)]
        frontend.sp.detach(volume, [3])
        same = hashlib.md5(data).hexdigest() == digest
        say(f"{volume}: {info['size'] // MIB} MiB, template {info['templateName']}, "
            f"tags {info['tags']}, data {'identical' if same else 'DIFFERENT'}")
        if not same:
            raise SystemExit(f"demo: {volume} does not hold the imported data")
    step("the event log recorded each driver action")
    shown = ("format", "size_mb", "created")
    for record in frontend.events():
        details = {k: v for k, v in record.payload.items() if k in shown}
        say(f"#{record.seq} {record.type:8} image={record.image} {details}")


def cloud_sandbox(workdir: Path) -> None:
    """``onestorpool sandbox up``: oned and StorPool as processes, driven with pyone."""
    import pyone
    import zmq

    from onestorpool.one import parse_hook_message

    directory = workdir / "cloud"
    cli = [sys.executable, "-m", "onestorpool.cli", "sandbox"]
    step(f"onestorpool sandbox up --dir {directory.relative_to(Path.cwd())}")
    started = subprocess.run([*cli, "up", "--dir", str(directory)], capture_output=True,
                             text=True, check=True)
    for line in started.stdout.splitlines():
        say(line)
    env = dict(line.removeprefix("export ").split("=", 1)
               for line in (directory / "sandbox.env").read_text().splitlines())
    events = zmq.Context.instance().socket(zmq.SUB)
    for prefix in (b"EVENT STATE IMAGE/", b"EVENT API one.image.", b"EVENT API one.datastore."):
        events.setsockopt(zmq.SUBSCRIBE, prefix)
    events.connect(env["ONE_ZMQ"])
    try:
        srv = pyone.OneServer(env["ONE_XMLRPC"], session="oneadmin:sandbox")
        step(f"pyone against oned {srv.system.version()}: a StorPool datastore and an image")
        # SAFE_DIRS: users may register images from there only (oned's default: /var/tmp)
        ds_id = srv.datastore.allocate('NAME="storpool"\nDS_MAD="storpool"\n'
                                       'TM_MAD="storpool"\nDISK_TYPE="BLOCK"\n'
                                       f'SAFE_DIRS="{workdir / "images"}"', -1)
        # the sandbox made the datastore's StorPool template one-ds-<ID>, as an admin would
        # PUB/SUB's slow joiner: repeat a harmless call until its event arrives.
        for _ in range(100):
            srv.datastore.update(ds_id, 'SP_DEMO="yes"', 1)
            if events.poll(100):
                break
        while events.poll(100):
            events.recv_multipart()
        image_id = srv.image.allocate(f'NAME="windows"\nPATH="{workdir / "images/disk.vhdx"}"',
                                      ds_id)
        for _ in range(300):
            image = srv.image.info(image_id)
            if image.STATE in (1, 5):
                break
            time.sleep(0.1)
        say(f"datastore {ds_id}; image {image_id} state "
            f"{'READY' if image.STATE == 1 else 'ERROR'}, SOURCE {image.SOURCE}, "
            f"{image.SIZE} MB, FORMAT {image.FORMAT}")
        if image.STATE != 1:
            raise SystemExit(f"demo: image import failed: {image.TEMPLATE.get('ERROR')}")
        vm_on_storpool(srv, directory, ds_id, image_id)
        remote_backup_on_delete(srv, directory, workdir, image_id)
        time.sleep(1)
        step("hook bus events received on a ZeroMQ SUB socket")
        while events.poll(500):
            key, payload = events.recv_multipart()
            event = parse_hook_message(key, payload)
            say(f"{key.decode()!r:48} {event.kind} "
                f"{event.method or event.object + ' ' + str(event.object_id)}")
    finally:
        events.close(linger=0)
        subprocess.run([*cli, "down", "--dir", str(directory)], capture_output=True,
                       check=False)
    say("sandbox down")


def wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: waited {timeout:.0f}s for {what}")
        time.sleep(0.2)
    return value


def vm_on_storpool(srv: Any, directory: Path, image_ds: int, image_id: int) -> None:
    """A VM whose every disk is a StorPool volume: deployed through the real TM and the
    add-on's deploy-tweaks, a VM snapshot (one atomic group snapshot), a suspend/resume
    whose checkpoint is a StorPool volume (SP_CHECKPOINT_BD), terminated."""
    rc = directory / "var/lib/one/remotes/addon-storpoolrc"
    rc.write_text(rc.read_text() + "SP_CHECKPOINT_BD=1\n")  # the checkpoint on StorPool
    os.environ["ONESTORPOOL_ROOT"] = str(directory)
    try:
        sp = StorPoolClient.from_config(config.load())
    finally:
        del os.environ["ONESTORPOOL_ROOT"]

    def state(vm_id: int) -> str:
        vm = srv.vm.info(vm_id)
        return f"{vm.STATE}/{vm.LCM_STATE}"

    step("a VM on StorPool: a clone of the image, a volatile disk and context, on node1")
    system_ds = srv.datastore.allocate('NAME="storpool-system"\nTYPE="SYSTEM_DS"\n'
                                       'TM_MAD="storpool"', -1)
    srv.host.allocate("node1", "kvm", "kvm", -1)
    vm_id = srv.vm.allocate(
        f'NAME="web"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]\n'
        'DISK=[TYPE="fs",SIZE="16",FORMAT="raw"]\nCONTEXT=[NETWORK="YES"]\n'
        f'SCHED_DS_REQUIREMENTS="ID={system_ds}"', False)
    wait("the VM to run", lambda: state(vm_id) == "3/3")  # the scheduler deployed it
    clients = {}
    for item in sp.attachments_list():
        clients.setdefault(item["volume"], []).append(item["client"])
    for volume in sorted(v["name"] for v in sp.volumes_list() if f"-{vm_id}-" in v["name"]):
        say(f"{volume:24} attached to client {clients.get(volume)}")

    step("a VM snapshot: every disk in one atomic VolumesGroupSnapshot")
    snap = srv.vm.snapshotcreate(vm_id, "before-upgrade")
    taken = wait("the snapshot", lambda: next(
        (s for s in (srv.vm.info(vm_id).TEMPLATE.get("SNAPSHOT") or [])
         if s.get("HYPERVISOR_ID")), None))
    say(f"snapshot {snap}, HYPERVISOR_ID {taken['HYPERVISOR_ID']}")
    for name in sorted(s["name"] for s in sp.snapshots_list() if taken["HYPERVISOR_ID"] in
                       s["name"]):
        say(f"  {name}")

    step("suspend and resume: the checkpoint written to a StorPool volume, not to the host")
    srv.vm.action("suspend", vm_id)
    wait("the VM to be suspended", lambda: state(vm_id) == "5/0")
    checkpoint = f"one-sys-{vm_id}-rawcheckpoint"
    folder = directory / f"hosts/node1/var/lib/one/datastores/{system_ds}/{vm_id}"
    on_host = folder / "checkpoint"
    say(f"suspended: volume {checkpoint} exists: {sp.volume_exists(checkpoint)}; "
        f"checkpoint file on the host: {on_host.is_file() and not on_host.is_symlink()}")
    srv.vm.action("resume", vm_id)
    wait("the VM to run again", lambda: state(vm_id) == "3/3")
    say(f"resumed: volume {checkpoint} exists: {sp.volume_exists(checkpoint)}")
    srv.vm.action("terminate-hard", vm_id)
    wait("the VM to be gone", lambda: state(vm_id) == "6/0")
    left = sorted(v["name"] for v in sp.volumes_list() if f"-{vm_id}-" in v["name"])
    say(f"terminated: volumes of VM {vm_id} left on StorPool: {left or 'none'}")
    sp.close()


def remote_backup_on_delete(srv: Any, directory: Path, workdir: Path, image_id: int) -> None:
    """REMOTE_BACKUP_DELETE: deleting the image leaves a tombstone snapshot; the subscriber
    (started by sandbox up) ships it to a second StorPool cluster, confirms the copy there,
    then lets the local one go. The event log tells the whole story."""
    import json
    import urllib.request

    step("image delete with REMOTE_BACKUP_DELETE: the subscriber ships it to another cluster")
    with StorPoolSandbox(workdir / "backup-site", token="backup-token") as remote:
        settings = dict(line.split("=", 1) for line in (directory / "etc/storpool.conf")
                        .read_text().splitlines() if "=" in line)
        request = urllib.request.Request(
            f"http://127.0.0.1:{settings['SP_API_HTTP_PORT']}/sandbox/locations",
            data=json.dumps({"name": "backup-site", "url": remote.url,
                             "token": remote.token}).encode(), method="POST",
            headers={"Authorization": f"Storpool v1:{settings['SP_AUTH_TOKEN']}"})
        urllib.request.urlopen(request, timeout=10).close()
        rc = directory / "var/lib/one/remotes/addon-storpoolrc"
        rc.write_text(rc.read_text() + 'REMOTE_BACKUP_DELETE="backup-site"\n')
        srv.image.delete(image_id)
        copies = wait("the copy on the remote cluster", lambda: [
            s for s in remote.cluster.snapshots.values() if not s.get("deleted")], 120)
        for copy in copies:
            say(f"backup-site holds {copy['name']} ({copy['size'] >> 20} MiB, tags "
                f"{copy.get('tags')})")
        time.sleep(1)  # the subscriber records its outcome after the remote lists the copy
    step("the audit trail: onestorpool log show")
    shown = subprocess.run([sys.executable, "-m", "onestorpool.cli", "log", "show", "--log",
                            str(directory / "events.db")], capture_output=True, text=True,
                           check=True)
    for line in shown.stdout.splitlines():
        say(line)


def main(argv: list[str] | None = None) -> int:
    workdir = Path(argv[0] if argv else "demo-run").resolve()
    if workdir.exists():
        from onestorpool.sandbox.storpool_state import Cluster

        if (workdir / "storpool").exists():
            Cluster(workdir / "storpool").release_immutable_files()
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    os.chdir(workdir.parent)
    print("opennebula-storpool demo: StorPool add-on for OpenNebula on the embedded sandbox")
    with StorPoolSandbox(workdir / "storpool", token="demo-token") as sandbox:
        say(f"StorPool sandbox API at {sandbox.url} (data in {workdir.name}/storpool)")
        naming = Naming("one")
        with StorPoolClient(sandbox.host, sandbox.port, sandbox.token) as sp:
            storpool_basics(sp, sandbox, naming)
        datastore_imports(sandbox, workdir)
    cloud_sandbox(workdir)
    print("\ndemo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
