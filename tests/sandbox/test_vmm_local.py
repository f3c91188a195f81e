"""The add-on's KVM local actions run by the oned sandbox as one_vmm_exec runs them, with the
real StorPool TM and datastore drivers: the hosts' native KVM scripts are stand-ins that hand
every domain to libvirt's in-process test driver (define and start), so each produced domain
XML goes through the parser a real host uses."""

from __future__ import annotations

import base64
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from lxml import etree

from onestorpool.drivers.install import shipped_remotes

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: make_world

FAKE = Path(__file__).resolve().parent / "fake_remotes"
NATIVE_DEPLOY = textwrap.dedent("""\
    #!/bin/sh
    # native vmm/kvm/deploy stand-in: the domain from stdin into the deployment file, then
    # libvirt's test driver defines and starts it (one virsh process: its state is per process)
    set -e
    mkdir -p "$(dirname "$1")"
    cat > "$1"
    name=$(sed -n 's:.*<name>\\(.*\\)</name>.*:\\1:p' "$1" | head -n1)
    virsh -c test:///default "define $1; start $name" >"$1.virsh" 2>&1 || {
        cat "$1.virsh" >&2; exit 1; }
    echo "$name"
    """)


def kvm_remotes(directory: Path, native_log: Path) -> Path:
    """remotes/: the add-on's datastore and TM drivers, and vmm/kvm with the add-on's local
    actions beside the recording stand-ins."""
    remotes = directory / "remotes"
    for kind in ("datastore", "tm"):
        (remotes / kind).mkdir(parents=True)
        (remotes / kind / "storpool").symlink_to(shipped_remotes() / kind / "storpool")
    kvm = remotes / "vmm" / "kvm"
    kvm.mkdir(parents=True)
    for source in [*(shipped_remotes() / "vmm" / "kvm").iterdir(),
                   *(FAKE / "vmm" / "kvm").iterdir()]:
        (kvm / source.name).symlink_to(source)
    return remotes


def install_native(w, host: str, scripts: dict[str, str]) -> Path:
    kvm = w.frontend.root / "hosts" / host / "var/tmp/one/vmm/kvm"
    kvm.mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        (kvm / name).write_text(text)
        (kvm / name).chmod(0o755)
    return kvm


@pytest.fixture
def cloud(make_world, tmp_path):
    if shutil.which("virsh") is None:
        pytest.skip("virsh (libvirt-clients) is not installed")
    w = make_world(remotes=kvm_remotes(tmp_path / "r", tmp_path / "native.log"),
                   vmm_local="deploy=deploy-tweaks")
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\nT_NIC_QUEUES=2\n")
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    hosts = [w.oned.create_host(name) for name in ("node1", "node2")]
    for name in ("node1", "node2"):
        install_native(w, name, {"deploy": NATIVE_DEPLOY})
    return w, image_ds, system_ds, hosts


def events(w, kind: str) -> list[dict]:
    return [{"type": e.type, **e.payload} for e in w.frontend.events()
            if e.type.startswith(kind)]


def test_deploy_tweaks_through_oned(cloud):
    w, image_ds, system_ds, (node1, _node2) = cloud
    base = w.oned.create_image(image_ds, "base", size_mb=4)
    vm_id = w.oned.instantiate(w.vm_template(
        "web", f'IMAGE_ID="{base}"', 'TYPE="fs",SIZE="6",FORMAT="raw"', context=True,
        extra='T_IOTHREADS_OVERRIDE="1"\nT_PERSISTENT_CDROM="3"\n'), node1, system_ds)
    vm = w.srv.vm.info(vm_id)
    assert f"one-{vm_id}" == vm.DEPLOY_ID  # what the native deploy printed
    deployed = (w.frontend.root / "hosts/node1" /
                f"var/lib/one/datastores/{system_ds}/{vm_id}/deployment.0")
    doc = etree.parse(str(deployed)).getroot()
    disks = doc.findall("devices/disk")
    # the volatile disk (1) and the context CD-ROM (2) are block devices on StorPool now
    assert [(d.get("type"), d.get("device")) for d in disks] == [
        ("block", "disk"), ("block", "disk"), ("block", "cdrom"), ("block", "cdrom"),
        ("block", "cdrom")]  # T_PERSISTENT_CDROM=3: three drives, the context's counted
    assert {(d.find("driver").get("cache"), d.find("driver").get("io"))
            for d in disks[:3]} == {("none", "native")}
    assert doc.findtext("iothreads") == "1"
    assert [d.find("source") for d in disks[3:]] == [None, None]  # empty, for hot insert
    (record,) = [e for e in events(w, "vmm.deploy")]
    assert record["type"] == "vmm.deploy" and record["domain"] == f"one-{vm_id}"
    assert record["tweaks"] == ["volatile2dev", "cache-io", "iothreads", "persistent-cdrom"]


def test_a_refused_deploy_reaches_the_user(cloud):
    w, _image_ds, system_ds, (node1, _node2) = cloud
    install_native(w, "node1", {"deploy": "#!/bin/sh\necho 'libvirt: no room' >&2\nexit 1\n"})
    vm_id = w.srv.vm.allocate(w.vm_template("x", 'TYPE="fs",SIZE="6",FORMAT="raw"'), False)
    w.srv.vm.deploy(vm_id, node1, False, system_ds)
    w.oned.wait_vm(vm_id, "ACTIVE", "BOOT_FAILURE")
    assert "libvirt: no room" in w.srv.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    assert [e["type"] for e in events(w, "vmm.deploy")] == ["vmm.deploy.failed"]


NATIVE_RECORD = textwrap.dedent("""\
    #!/bin/sh
    # native stand-in: its arguments and stdin recorded beside it
    dir=$(dirname "$0"); name=$(basename "$0")
    printf '%s\\n' "$@" > "$dir/$name.args"
    cat > "$dir/$name.stdin"
    """)
FAKE_VIRSH = textwrap.dedent("""\
    #!/bin/sh
    # virsh stand-in on the host: the test driver (deploy) is the real virsh; dumpxml prints
    # the deployed domain, the rest is recorded
    [ "$2" = "test:///default" ] && exec "$REAL_VIRSH" "$@"
    for a in "$@"; do case "$a" in
        dumpxml) cat "$FAKE_VIRSH_DOMAIN"; exit 0;;
    esac; done
    printf '%s\\n' "$*" >> "$FAKE_VIRSH_LOG"
    """)


@pytest.fixture
def attach_cloud(make_world, tmp_path):
    if shutil.which("virsh") is None:
        pytest.skip("virsh (libvirt-clients) is not installed")
    w = make_world(remotes=kvm_remotes(tmp_path / "r", tmp_path / "native.log"),
                   vmm_local="deploy=deploy-tweaks,attach_disk=attach_disk.storpool,"
                            "detach_disk=detach_disk.storpool")
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK", SAFE_DIRS=str(tmp_path),
                                       RESTRICTED_DIRS="/")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    node1 = w.oned.create_host("node1")
    native = install_native(w, "node1", {"deploy": NATIVE_DEPLOY,
                                         "attach_disk": NATIVE_RECORD,
                                         "detach_disk": NATIVE_RECORD})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "virsh").write_text(FAKE_VIRSH)
    (bin_dir / "virsh").chmod(0o755)
    w.oned.driver_env["PATH"] = os.pathsep.join(
        [str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]])
    w.oned.driver_env["FAKE_VIRSH_LOG"] = str(tmp_path / "virsh.log")
    w.oned.driver_env["REAL_VIRSH"] = shutil.which("virsh")
    return w, image_ds, system_ds, node1, native


def test_attach_disk_hands_storpool_disks_over_as_block_devices(attach_cloud, tmp_path):
    w, _image_ds, system_ds, node1, native = attach_cloud
    vm_id = w.oned.instantiate(w.vm_template("a", 'TYPE="fs",SIZE="6",FORMAT="raw"',
                                             context=True), node1, system_ds)
    w.srv.vm.attach(vm_id, 'DISK=[TYPE="fs",SIZE="8",FORMAT="raw"]')
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    args = (native / "attach_disk.args").read_text().splitlines()
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    assert args[:3] == [f"one-{vm_id}", f"{vm_dir}/disk.2", "sdb"]
    assert args[-2:] == [str(vm_id), "node1"]
    action = etree.fromstring(base64.b64decode((native / "attach_disk.stdin").read_text()))
    (disk,) = [d for d in action.iterfind("VM/TEMPLATE/DISK") if d.findtext("ATTACH") == "YES"]
    assert (disk.findtext("DISK_TYPE"), disk.findtext("TYPE")) == ("BLOCK", "BLOCK")
    assert base64.b64decode(args[4]) == base64.b64decode(
        (native / "attach_disk.stdin").read_text())  # the parameter says the same
    assert w.srv.vm.info(vm_id).TEMPLATE["DISK"][1]["DISK_ID"] == "2"


def test_a_cdrom_goes_into_an_empty_drive(attach_cloud, tmp_path):
    w, image_ds, system_ds, node1, native = attach_cloud
    (tmp_path / "tools.iso").write_bytes(b"\0" * (1 << 20))
    iso = w.oned.create_image(image_ds, "iso", path=str(tmp_path / "tools.iso"),
                              image_type="CDROM")
    vm_id = w.oned.instantiate(w.vm_template("c", 'TYPE="fs",SIZE="6",FORMAT="raw"',
                                             context=True), node1, system_ds)
    w.oned.driver_env["FAKE_VIRSH_DOMAIN"] = str(
        w.frontend.root / "hosts/node1" /
        f"var/lib/one/datastores/{system_ds}/{vm_id}/deployment.0")
    w.srv.vm.attach(vm_id, f'DISK=[IMAGE_ID="{iso}",DEV_PREFIX="hd"]')
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    vm = w.srv.vm.info(vm_id)
    assert "ERROR" not in vm.USER_TEMPLATE, vm.USER_TEMPLATE.get("ERROR")
    (inserted,) = (tmp_path / "virsh.log").read_text().splitlines()
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    # the context CD-ROM is hda; the tweak's empty drive hdb takes the image
    assert inserted.split()[-7:] == ["change-media", f"one-{vm_id}", "hdb",
                                     f"{vm_dir}/disk.2", "--insert", "--live", "--block"]
    assert not (native / "attach_disk.args").exists()
    # detach: the CD-ROM is ejected from the drive it sits in, the drive stays
    deployed = Path(w.oned.driver_env["FAKE_VIRSH_DOMAIN"])
    live = tmp_path / "live.xml"
    live.write_text(deployed.read_text().replace(
        "<target dev=\"hdb\"", f"<source dev=\"{vm_dir}/disk.2\"/><target dev=\"hdb\""))
    assert live.read_text() != deployed.read_text()
    w.oned.driver_env["FAKE_VIRSH_DOMAIN"] = str(live)
    disk_id = int(w.srv.vm.info(vm_id).TEMPLATE["DISK"][-1]["DISK_ID"])
    w.srv.vm.detach(vm_id, disk_id)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert "ERROR" not in w.srv.vm.info(vm_id).USER_TEMPLATE
    ejected = (tmp_path / "virsh.log").read_text().splitlines()[-1]
    assert ejected.split()[-6:] == ["change-media", f"one-{vm_id}", "hdb", "--eject", "--live",
                                    "--force"]
    assert not (native / "detach_disk.args").exists()
    # a disk that is no CD-ROM goes to the native detach
    w.srv.vm.detach(vm_id, 0)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    assert (native / "detach_disk.args").read_text().splitlines()[0] == f"one-{vm_id}"


NATIVE_SAVE = textwrap.dedent("""\
    #!/bin/sh
    # native save stand-in: 1 MiB of "memory" written through the checkpoint path, which
    # must be a link (to the StorPool device), never a file in the VM folder
    dir=$(dirname "$0")
    [ -L "$2" ] || { echo "the checkpoint is not a link: $2" >&2; exit 1; }
    head -c 1048576 /dev/urandom > "$dir/memory"
    dd if="$dir/memory" of="$2" conv=notrunc,fsync status=none
    sha256sum < "$dir/memory" > "$dir/saved.sha"
    """)
NATIVE_RESTORE = textwrap.dedent("""\
    #!/bin/sh
    dir=$(dirname "$0")
    [ -L "$1" ] || { echo "checkpoint $1 is not a link" >&2; exit 1; }
    head -c 1048576 "$1" | sha256sum > "$dir/restored.sha"
    """)


def test_suspend_and_resume_with_the_checkpoint_on_storpool(make_world, tmp_path):
    if shutil.which("virsh") is None:
        pytest.skip("virsh (libvirt-clients) is not installed")
    w = make_world(remotes=kvm_remotes(tmp_path / "r", tmp_path / "native.log"),
                   vmm_local="deploy=deploy-tweaks,save=tmsave,restore=tmrestore")
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\nSP_CHECKPOINT_BD=1\n")
    w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool", DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    node1 = w.oned.create_host("node1")
    native = install_native(w, "node1", {"deploy": NATIVE_DEPLOY, "save": NATIVE_SAVE,
                                         "restore": NATIVE_RESTORE})
    vm_id = w.oned.instantiate(w.vm_template("s", 'TYPE="fs",SIZE="6",FORMAT="raw"',
                                             extra='MEMORY="64"\n'), node1, system_ds)
    folder = w.frontend.root / f"hosts/node1/var/lib/one/datastores/{system_ds}/{vm_id}"
    volume = f"one-sys-{vm_id}-rawcheckpoint"
    w.srv.vm.action("suspend", vm_id)
    w.oned.wait_vm(vm_id, "SUSPENDED")
    assert not os.path.lexists(folder / "checkpoint")  # the host folder never holds it
    assert w.frontend.sp.volume(volume)["size"] == 128 << 20  # 2 x MEMORY
    assert w.frontend.sp.volume(volume)["tags"]["type"] == "CHKPNT"
    assert not [a for a in w.frontend.sp.attachments_list() if a["volume"] == volume]
    w.srv.vm.action("resume", vm_id)
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert (native / "restored.sha").read_text() == (native / "saved.sha").read_text()
    assert not w.frontend.sp.volume_exists(volume)  # read back, then deleted
    assert not os.path.lexists(folder / "checkpoint")
    kinds = [e.type for e in w.frontend.events() if e.type.startswith(("vmm.", "tm.p"))]
    assert kinds == ["vmm.deploy", "tm.presave", "tm.postsave", "vmm.save",
                     "tm.prerestore", "tm.postrestore", "vmm.restore"]
    # without SP_CHECKPOINT_BD the TM steps do nothing: the path is the hypervisor's own
    # (the stand-in refuses a checkpoint that is no link: the save fails, the VM runs on)
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\n")
    w.srv.vm.action("suspend", vm_id)
    w.oned.wait_idle()
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert "SAVE: the checkpoint is not a link" in w.srv.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    assert not w.frontend.sp.volume_exists(volume)


SNAPSHOT_ACTIONS = ("snapshotcreate=snapshot_create-storpool,"
                    "snapshotrevert=snapshot_revert-storpool,"
                    "snapshotdelete=snapshot_delete-storpool")


@pytest.fixture
def snapshot_cloud(make_world, tmp_path):
    if shutil.which("virsh") is None:
        pytest.skip("virsh (libvirt-clients) is not installed")
    w = make_world(remotes=kvm_remotes(tmp_path / "r", tmp_path / "native.log"),
                   vmm_local=f"deploy=deploy-tweaks,{SNAPSHOT_ACTIONS}")
    w.frontend.write_rc("ONE_PX=one\nDELAY_DELETE=0\nVMSNAPSHOT_LIMIT=2\n")
    image_ds = w.oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                       DISK_TYPE="BLOCK")
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    node1 = w.oned.create_host("node1")
    install_native(w, "node1", {"deploy": NATIVE_DEPLOY})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "virsh").write_text(FAKE_VIRSH)
    (bin_dir / "virsh").chmod(0o755)
    w.oned.driver_env["PATH"] = os.pathsep.join(
        [str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]])
    w.oned.driver_env["FAKE_VIRSH_LOG"] = str(tmp_path / "virsh.log")
    w.oned.driver_env["REAL_VIRSH"] = shutil.which("virsh")
    return w, image_ds, system_ds, node1


def write_disks(w, volumes: list[str], data: bytes) -> None:
    for volume in volumes:
        with (w.frontend.root / "hosts/node1/dev/storpool" / volume).open("r+b") as dev:
            dev.write(data)


def read_disks(w, volumes: list[str]) -> set[bytes]:
    return {(w.frontend.root / "hosts/node1/dev/storpool" / v).read_bytes()[:8]
            for v in volumes}


def test_vm_snapshot_create_revert_delete(snapshot_cloud, tmp_path):
    w, image_ds, system_ds, node1 = snapshot_cloud
    base = w.oned.create_image(image_ds, "base", size_mb=4)
    data = w.oned.create_image(image_ds, "data", size_mb=4, persistent=True)
    vm_id = w.oned.instantiate(w.vm_template(
        "s", f'IMAGE_ID="{base}"', f'IMAGE_ID="{data}"', 'TYPE="fs",SIZE="6",FORMAT="raw"',
        context=True), node1, system_ds)
    volumes = [f"one-img-{base}-{vm_id}-0", f"one-img-{data}", f"one-sys-{vm_id}-2-raw"]
    write_disks(w, volumes, b"before!!")
    snap = w.srv.vm.snapshotcreate(vm_id, "s1")
    w.oned.wait_idle()
    (record,) = w.srv.vm.info(vm_id).TEMPLATE["SNAPSHOT"]
    suffix = record["HYPERVISOR_ID"]
    assert suffix.startswith(f"ONESNAP-{snap}-")
    made = {s["name"]: s for s in w.frontend.sp.snapshots_list() if suffix in s["name"]}
    assert set(made) == {f"{v}-{suffix}" for v in [*volumes, f"one-sys-{vm_id}-3-iso"]}
    assert {s["tags"]["nvm"] for s in made.values()} == {str(vm_id)}
    assert {(s["tags"]["nloc"], s["tags"]["virt"]) for s in made.values()} == {("one", "one")}
    write_disks(w, volumes, b"after!!!")
    w.srv.vm.snapshotrevert(vm_id, snap)
    w.oned.wait_idle()
    vm = w.srv.vm.info(vm_id)
    assert "ERROR" not in vm.USER_TEMPLATE, vm.USER_TEMPLATE.get("ERROR")
    assert read_disks(w, volumes) == {b"before!!"}  # every disk holds the snapshot's data
    client = next(int(a["client"]) for a in w.frontend.sp.attachments_list()
                  if a["volume"] == volumes[0])
    assert {a["volume"] for a in w.frontend.sp.attachments_list()
            if int(a["client"]) == client} >= set(volumes)  # attached again
    virsh = (tmp_path / "virsh.log").read_text().splitlines()
    assert [line.split()[2] for line in virsh] == ["destroy", "create"]
    # the limit (rc: 2) counts the snapshots the VM has
    second = w.srv.vm.snapshotcreate(vm_id, "s2")
    w.oned.wait_idle()
    w.srv.vm.snapshotcreate(vm_id, "s3")
    w.oned.wait_idle()
    vm = w.srv.vm.info(vm_id)
    assert len(vm.TEMPLATE["SNAPSHOT"]) == 2
    assert "VM 0 has 2 snapshots, its limit (VMSNAPSHOT_LIMIT=2)".replace(
        "VM 0", f"VM {vm_id}") in vm.USER_TEMPLATE["ERROR"]
    w.srv.vm.snapshotdelete(vm_id, snap)
    w.oned.wait_idle()
    w.srv.vm.snapshotdelete(vm_id, second)
    w.oned.wait_idle()
    assert not [s for s in w.frontend.sp.snapshots_list()
                if "ONESNAP" in s["name"] and not s.get("deleted")]
    kinds = [e.type for e in w.frontend.events() if e.type.startswith("vmm.snapshot")]
    assert kinds == ["vmm.snapshot_create", "vmm.snapshot_revert", "vmm.snapshot_create",
                     "vmm.snapshot_create.failed", "vmm.snapshot_delete",
                     "vmm.snapshot_delete"]
    # a terminated VM takes its VM snapshots along (VMSNAPSHOT_DELETE_ON_TERMINATE), those
    # of its persistent image too
    w.srv.vm.snapshotcreate(vm_id, "last")
    w.oned.wait_idle()
    assert len([s for s in w.frontend.sp.snapshots_list()
                if "ONESNAP" in s["name"] and not s.get("deleted")]) == 4
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    assert not [s["name"] for s in w.frontend.sp.snapshots_list()
                if "ONESNAP" in s["name"] and not s.get("deleted")]


def test_live_migration_is_unsafe_only_with_every_disk_uncached(make_world, tmp_path):
    if shutil.which("virsh") is None:
        pytest.skip("virsh (libvirt-clients) is not installed")
    w = make_world(remotes=kvm_remotes(tmp_path / "r", tmp_path / "native.log"),
                   vmm_local="deploy=deploy-tweaks,migrate=migrate-tweaks")
    w.frontend.write_rc('ONE_PX=one\nDELAY_DELETE=0\nMIGRATE_OPTIONS="--unsafe --verbose"\n')
    system_ds = w.oned.create_datastore("spsys", "SYSTEM_DS", TM_MAD="storpool")
    node1, node2 = w.oned.create_host("node1"), w.oned.create_host("node2")
    for name in ("node1", "node2"):
        install_native(w, name, {"deploy": NATIVE_DEPLOY})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "virsh").write_text(FAKE_VIRSH)
    (bin_dir / "virsh").chmod(0o755)
    w.oned.driver_env.update(
        PATH=os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable),
                              os.environ["PATH"]]),
        FAKE_VIRSH_LOG=str(tmp_path / "virsh.log"), REAL_VIRSH=shutil.which("virsh"))
    vm_id = w.oned.instantiate(w.vm_template("m", 'TYPE="fs",SIZE="6",FORMAT="raw"',
                                             context=True), node1, system_ds)
    deployed = (w.frontend.root / "hosts/node1" /
                f"var/lib/one/datastores/{system_ds}/{vm_id}/deployment.0")
    w.oned.driver_env["FAKE_VIRSH_DOMAIN"] = str(deployed)
    domain = deployed.read_text()  # postmigrate removes node1's folder (SP_SYSTEM=ssh)
    w.srv.vm.migrate(vm_id, node2, True, False, system_ds, 0)
    w.oned.wait_idle()
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert w.srv.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "node2"
    (line,) = (tmp_path / "virsh.log").read_text().splitlines()
    assert line.split()[2:] == ["migrate", "--live", "--verbose", "--unsafe", f"one-{vm_id}",
                                "qemu+ssh://node2/system"]
    # a disk with the host's cache: no --unsafe (libvirt then refuses what is not shared)
    uncached = tmp_path / "cached.xml"
    uncached.write_text(domain.replace('cache="none"', 'cache="writeback"', 1))
    w.oned.driver_env["FAKE_VIRSH_DOMAIN"] = str(uncached)
    w.srv.vm.migrate(vm_id, node1, True, False, system_ds, 0)
    w.oned.wait_idle()
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    line = (tmp_path / "virsh.log").read_text().splitlines()[-1]
    assert "--unsafe" not in line.split() and "--verbose" in line.split()


def test_context_migrate_moves_a_file_context_onto_storpool(snapshot_cloud, tmp_path):
    import subprocess

    w, _image_ds, system_ds, node1 = snapshot_cloud
    vm_id = w.oned.instantiate(w.vm_template("c", 'TYPE="fs",SIZE="6",FORMAT="raw"',
                                             context=True), node1, system_ds)
    volume = f"one-sys-{vm_id}-1-iso"
    folder = w.frontend.root / f"hosts/node1/var/lib/one/datastores/{system_ds}/{vm_id}"
    # a VM from before the add-on handled the context: its ISO is a file in the folder
    w.frontend.sp.volumes_reassign([{"volume": volume, "detach": "all", "force": True}])
    w.frontend.sp.volume_delete(volume)
    (folder / "disk.1").unlink()
    (folder / "disk.1").write_bytes(b"CD001 context" + b"\0" * 4000)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from onestorpool.cli import entry; entry()", *argv],
            env=w.oned.driver_env, capture_output=True, text=True, timeout=120)

    done = cli("context", "migrate", str(vm_id))
    assert done.returncode == 0, done.stderr
    assert volume in done.stdout
    assert os.readlink(folder / "disk.1").endswith(f"/dev/storpool/{volume}")
    assert (folder / "disk.1").read_bytes()[:13] == b"CD001 context"
    assert w.frontend.sp.volume(volume)["tags"]["type"] == "CNTXT"
    (line,) = (tmp_path / "virsh.log").read_text().splitlines()
    assert line.split()[2:5] == ["change-media", f"one-{vm_id}", "hda"]
    assert not (folder / "disk.1.file").exists()  # disk.1.monitor: the TM's marker
    again = cli("context", "migrate", str(vm_id))
    assert again.returncode == 0 and "already a StorPool volume" in again.stdout
