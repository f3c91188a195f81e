"""``make demo``: the add-on at work on the embedded sandbox, step by step.

Everything runs against the StorPool sandbox cluster (a real HTTP server speaking StorPool's
JSON API, volumes backed by sparse files) in ``./demo-run/``; hosts are directories whose
``dev/storpool/<name>`` links are the volumes' devices, as on a StorPool client.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from onestorpool.naming import Naming
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


def main(argv: list[str] | None = None) -> int:
    workdir = Path(argv[0] if argv else "demo-run").resolve()
    if workdir.exists():
        from onestorpool.sandbox.storpool_state import Cluster

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
    print("\ndemo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
