"""Datastore actions other than import: mkfs, rm (delayed delete, remote backup tombstone),
clone, image snapshots, monitor, export; prefixes of several OpenNebula instances."""

from __future__ import annotations

import pytest

from onestorpool.eventlog import EventLog
from onestorpool.eventlog.projections import believed_objects, pending_effects
from tests.drivers.frontend import datastore_xml, ds_action, image_xml, make_frontend

MIB = 1 << 20


def source(image_id: int, ds: int = 100, px: str = "one") -> str:
    return f"{px}-ds-{ds}/{px}-img-{image_id}"


def test_mkfs_empty_and_with_filesystem(frontend):
    result = frontend.run_ds("mkfs", ds_action(image_xml(20, size=8)), 20)
    assert (result.returncode, result.stdout) == (0, "one-ds-100/one-img-20\n")
    assert frontend.sp.volume("one-img-20")["size"] == 8 * MIB
    result = frontend.run_ds("mkfs", ds_action(image_xml(21, size=8, fs="ext4")), 21)
    assert result.returncode == 0, result.stderr
    frontend.sp.attach("one-img-21", 3, mode="ro")
    with frontend.device("node1", "one-img-21").open("rb") as dev:
        dev.seek(1024 + 56)
        assert dev.read(2) == b"\x53\xef"  # the ext2/3/4 superblock magic
    frontend.sp.detach("one-img-21", [3])


def test_mkfs_save_as_only_names_the_image(frontend):
    result = frontend.run_ds("mkfs", ds_action(image_xml(22, size=8, fmt="save_as")), 22)
    assert (result.returncode, result.stdout) == (0, "one-ds-100/one-img-22\n")
    assert frontend.storpool_names() == set()


@pytest.mark.parametrize(("image", "message"), [
    (image_xml(23, size=0), "SIZE must be a positive"),
    (image_xml(23, size=8, template={"DRIVER": "qcow2"}), "raw, not 'qcow2'"),
    (image_xml(23, size=8, fs="ext4;rm"), "invalid filesystem"),
])
def test_mkfs_refusals(frontend, image, message):
    result = frontend.run_ds("mkfs", ds_action(image), 23)
    assert result.returncode == 1 and message in result.error_lines[0]
    assert frontend.storpool_names() == set()


def test_mkfs_failing_mkfs_rolls_back(frontend):
    frontend.write_rc('MKFS="false"\n')
    result = frontend.run_ds("mkfs", ds_action(image_xml(24, size=8, fs="ext4")), 24)
    assert result.returncode == 1
    assert frontend.storpool_names() == set() and frontend.sp.attachments_list() == []


def test_rm_deletes_volume_and_snapshots_with_delayed_copy(frontend):
    frontend.sp.volume_create("one-img-30", size=MIB, template="one-ds-100")
    frontend.sp.attach("one-img-30", 3)
    with frontend.device("node1", "one-img-30").open("r+b") as dev:
        dev.write(b"data")
    frontend.sp.detach("one-img-30", [3])
    for n in (0, 1):
        frontend.sp.volume_snapshot("one-img-30", f"one-img-30-snap{n}")
    frontend.sp.volume_snapshot("one-img-30", "one-img-30-ONESNAP-1-1700000000")
    frontend.sp.attach("one-img-30", 2)  # still attached somewhere: rm detaches
    result = frontend.run_ds("rm", ds_action(image_xml(30, source=source(30))), 30)
    assert result.returncode == 0, result.stderr
    assert not frontend.sp.volume_exists("one-img-30")
    left = [s for s in frontend.sp.snapshots_list() if not s.get("deleted")]
    assert [s["autoName"] for s in left] == [True]  # only the 48h delayed-delete copy
    assert left[0]["targetDeleteDate"] > 0
    frontend.sandbox.advance_clock(48 * 3600 + 1)
    assert [s for s in frontend.sp.snapshots_list() if not s.get("deleted")] == []
    (event,) = frontend.events()
    assert sorted(event.payload["removed"]) == ["one-img-30", "one-img-30-ONESNAP-1-1700000000",
                                                "one-img-30-snap0", "one-img-30-snap1"]


def test_rm_of_a_missing_volume_is_done_already(frontend):
    result = frontend.run_ds("rm", ds_action(image_xml(31, source=source(31))), 31)
    assert result.returncode == 0, result.stderr


def test_rm_with_empty_delay_deletes_at_once(frontend):
    frontend.write_rc("DELAY_DELETE=\n")
    frontend.sp.volume_create("one-img-32", size=MIB)
    frontend.sp.attach("one-img-32", 3)
    with frontend.device("node1", "one-img-32").open("r+b") as dev:
        dev.write(b"data")
    assert frontend.run_ds("rm", ds_action(image_xml(32, source=source(32))), 32
                           ).returncode == 0
    assert frontend.storpool_names() == set()


def test_rm_keeps_a_tombstone_and_the_send_reaches_the_remote(frontend,
                                                               storpool_sandbox_factory):
    remote = storpool_sandbox_factory("backup-site", token="remote-token")
    frontend.sandbox.add_remote_location("backup-site", remote)
    frontend.sp.volume_create("one-img-33", size=MIB, tags={"virt": "one"})
    xml = ds_action(image_xml(33, source=source(33)),
                    datastore_xml(REMOTE_BACKUP_DELETE="backup-site:tag del=y"))
    result = frontend.run_ds("rm", xml, 33)
    assert result.returncode == 0, result.stderr
    (tombstone,) = [s for s in frontend.sp.snapshots_list() if "ONEDELETE" in s["name"]]
    assert tombstone["targetDeleteDate"] >= frontend.sandbox.cluster.now() + 47 * 3600
    assert remote.cluster.snapshots == {}  # the driver itself sends nothing
    log_path = frontend.env["ONESTORPOOL_EVENTLOG"]
    with EventLog(log_path, readonly=True) as log:
        (pending,) = pending_effects(log)
        assert pending.effect.details["location"] == "backup-site"
        assert tombstone["name"] in believed_objects(log)
    # Until the subscriber exists: the admin command sends it, once.
    import subprocess
    import sys

    for expected in ("done", "nothing to do"):
        sent = subprocess.run([sys.executable, "-m", "onestorpool.cli", "remote-send"],
                              capture_output=True, text=True, env=frontend.env)
        assert sent.returncode == 0, sent.stderr
        assert expected in sent.stdout
    (copy,) = remote.cluster.snapshots.values()
    assert copy["tags"]["del"] == "y" and copy["tags"]["tombstone"] == tombstone["name"]
    assert frontend.storpool_names() == {tombstone["name"]}  # carrier volume gone
    with EventLog(log_path, readonly=True) as log:
        assert pending_effects(log) == []


def test_clone_same_cluster(frontend):
    frontend.sp.volume_create("one-img-40", size=2 * MIB, template="one-ds-100")
    xml = ds_action(image_xml(41, path=source(40), size=4))
    result = frontend.run_ds("clone", xml, 41)
    assert (result.returncode, result.stdout) == (0, "one-ds-100/one-img-41 raw\n")
    clone = frontend.sp.volume("one-img-41")
    assert clone["size"] == 4 * MIB and clone["tags"]["virt"] == "one"
    again = frontend.run_ds("clone", xml, 41)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_image_snapshot_revert_keeps_data_safe(frontend):
    frontend.sp.volume_create("one-img-50", size=MIB, template="one-ds-100")
    frontend.sp.attach("one-img-50", 3)
    device = frontend.device("node1", "one-img-50")
    with device.open("r+b") as dev:
        dev.write(b"version1")
    frontend.sp.volume_snapshot("one-img-50", "one-img-50-snap0")
    with device.open("r+b") as dev:
        dev.write(b"version2")
    frontend.sp.detach("one-img-50", [3])
    xml = ds_action(image_xml(50, source=source(50), target_snapshot=0))
    result = frontend.run_ds("snap_revert", xml, 50)
    assert result.returncode == 0, result.stderr
    frontend.sp.attach("one-img-50", 3)
    assert device.read_bytes()[:8] == b"version1"
    frontend.sp.detach("one-img-50", [3])
    assert frontend.sp.volume("one-img-50")["templateName"] == "one-ds-100"
    # the old data is kept as a delayed-delete snapshot, not as a stray volume
    assert {v["name"] for v in frontend.sp.volumes_list()} == {"one-img-50"}
    missing = frontend.run_ds("snap_revert", ds_action(
        image_xml(50, source=source(50), target_snapshot=9)), 50)
    assert missing.returncode == 1 and "one-img-50-snap9" in missing.stderr
    assert {v["name"] for v in frontend.sp.volumes_list()} == {"one-img-50"}


def test_snap_delete_and_flatten(frontend):
    frontend.sp.volume_create("one-img-51", size=MIB)
    for n in range(3):
        frontend.sp.volume_snapshot("one-img-51", f"one-img-51-snap{n}")
    xml = ds_action(image_xml(51, source=source(51), target_snapshot=2))
    assert frontend.run_ds("snap_delete", xml, 51).returncode == 0
    assert not frontend.sp.snapshot_exists("one-img-51-snap2")
    xml = ds_action(image_xml(51, source=source(51), target_snapshot=0))
    result = frontend.run_ds("snap_flatten", xml, 51)
    assert result.returncode == 0, result.stderr
    assert not any(frontend.sp.snapshot_exists(f"one-img-51-snap{n}") for n in range(3))
    assert frontend.sp.volume_exists("one-img-51")


def test_monitor_reports_the_template(frontend):
    result = frontend.run_ds("monitor", ds_action(None), 100)
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=") for line in result.stdout.split())
    assert set(values) == {"USED_MB", "TOTAL_MB", "FREE_MB"}
    assert int(values["TOTAL_MB"]) == int(values["USED_MB"]) + int(values["FREE_MB"]) > 0
    missing = frontend.run_ds("monitor", ds_action(None, datastore_xml(101)), 101)
    assert missing.returncode == 1
    assert "one-ds-101 does not exist" in missing.stderr and "storpool template" in \
        missing.stderr


def test_export_to_a_file(frontend, tmp_path):
    frontend.write_rc(f"EXPORT_FILE_FORMAT=qcow2\nSTAGING_DIR={tmp_path}\n")
    frontend.sp.volume_create("one-img-60", size=2 * MIB)
    result = frontend.run_ds("export", ds_action(image_xml(60, source=source(60))), 60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<IMPORT_INFO>") and "<FORMAT><![CDATA[qcow2]]>" in \
        result.stdout
    exported = list((frontend.host_dir("localhost") / str(tmp_path).lstrip("/")).glob(
        "*.qcow2"))
    assert len(exported) == 1
    assert frontend.storpool_names() == {"one-img-60"}  # the export snapshot is gone


def test_two_instances_share_a_cluster_without_seeing_each_other(tmp_path, storpool_sandbox):
    first = make_frontend(tmp_path / "one", storpool_sandbox, prefix="one")
    second = make_frontend(tmp_path / "two", storpool_sandbox, prefix="two")
    first.sp.volume_template_create("one-ds-100")
    second.sp.volume_template_create("two-ds-100")
    for fe, px in ((first, "one"), (second, "two")):
        result = fe.run_ds("mkfs", ds_action(image_xml(7, size=1)), 7)
        assert result.stdout == f"{px}-ds-100/{px}-img-7\n"
    assert {v["name"] for v in first.sp.volumes_list()} == {"one-img-7", "two-img-7"}
    result = first.run_ds("rm", ds_action(image_xml(7, source=source(7))), 7)
    assert result.returncode == 0
    assert {v["name"] for v in first.sp.volumes_list()} == {"two-img-7"}
    # The other instance's volume is not touched even when asked by its name.
    bad = first.run_ds("rm", ds_action(image_xml(7, source=source(7, px="two"))), 7)
    assert bad.returncode == 1 and "not this instance's" in bad.stderr
    assert {v["name"] for v in first.sp.volumes_list()} == {"two-img-7"}


def test_clone_across_two_clusters(frontend, storpool_sandbox_factory, tmp_path):
    import threading
    from xmlrpc.server import SimpleXMLRPCServer

    other = storpool_sandbox_factory("cluster-b", token="token-b")
    other.add_client(1, frontend.host_dir("localhost"))
    other_sp = type(frontend.sp)(other.host, other.port, other.token)
    other_sp.volume_template_create("one-ds-200")
    frontend.sp.volume_create("one-img-70", size=2 * MIB, template="one-ds-100")
    frontend.sp.attach("one-img-70", 3)
    payload = bytes(range(256)) * 4096
    with frontend.device("node1", "one-img-70").open("r+b") as dev:
        dev.write(payload)
    frontend.sp.detach("one-img-70", [3])

    calls = []
    oned = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)

    def datastore_info(session, ds_id, decrypt=False):
        calls.append((session, ds_id))
        return [True, datastore_xml(ds_id), 0]

    oned.register_function(datastore_info, "one.datastore.info")
    threading.Thread(target=oned.serve_forever, daemon=True).start()
    auth = tmp_path / "one_auth"
    auth.write_text("oneadmin:secret\n")
    frontend.env.update(ONE_XMLRPC=f"http://127.0.0.1:{oned.server_address[1]}/RPC2",
                        ONE_AUTH=str(auth))
    target_ds = datastore_xml(200, SP_API_HTTP_HOST=other.host,
                              SP_API_HTTP_PORT=str(other.port), SP_AUTH_TOKEN=other.token)
    try:
        result = frontend.run_ds("clone", ds_action(
            image_xml(71, path=source(70), size=2), target_ds), 71)
    finally:
        oned.shutdown()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one-ds-200/one-img-71 raw\n"
    assert calls == [("oneadmin:secret", 100)]
    assert not frontend.sp.volume_exists("one-img-71")  # it went to the other cluster
    assert other_sp.volume("one-img-71")["templateName"] == "one-ds-200"
    other_sp.attach("one-img-71", 1, mode="ro")
    assert frontend.device("localhost", "one-img-71").read_bytes()[:len(payload)] == payload
    other_sp.detach("one-img-71", [1])
    assert frontend.sp.attachments_list() == [] and other_sp.attachments_list() == []
    assert token_free(frontend)


def token_free(frontend) -> bool:
    """No event carries a StorPool token."""
    from pathlib import Path

    data = Path(frontend.env["ONESTORPOOL_EVENTLOG"]).read_bytes()
    return b"token-b" not in data and frontend.sandbox.token.encode() not in data


def test_export_of_the_device_and_its_disposal(frontend):
    import re
    import subprocess
    import sys

    from tests.drivers.frontend import REMOTES

    frontend.sp.volume_create("one-img-61", size=MIB)
    result = frontend.run_ds("export", ds_action(image_xml(61, source=source(61))), 61)
    assert result.returncode == 0, result.stderr
    dispose = re.search(r"<DISPOSE_CMD><!\[CDATA\[(.*?)\]\]>", result.stdout)[1].split()
    assert dispose[0].endswith("datastore/storpool/export.delete")
    assert dispose[2].startswith("/dev/storpool/one-img-61-export-")
    snapshot = dispose[2].removeprefix("/dev/storpool/")
    assert frontend.sp.attachments_list()[0]["volume"] == snapshot
    done = subprocess.run([sys.executable, str(REMOTES / "datastore/storpool/export.delete"),
                           *dispose[1:]], capture_output=True, text=True, env=frontend.env)
    assert done.returncode == 0, done.stderr
    assert frontend.storpool_names() == {"one-img-61"}
    refused = subprocess.run([sys.executable, str(REMOTES / "datastore/storpool/export.delete"),
                              "localhost", "/dev/storpool/one-img-61"], capture_output=True,
                             text=True, env=frontend.env)
    assert refused.returncode == 1 and "not an export snapshot" in refused.stderr


VM_XML = """<VM><ID>9</ID><UID>5</UID><GID>1</GID><NAME>web</NAME><STATE>3</STATE>
<LCM_STATE>3</LCM_STATE><TEMPLATE>
<DISK><DISK_ID>0</DISK_ID><IMAGE_ID>5</IMAGE_ID><SOURCE>one-ds-100/one-img-5</SOURCE>
<CLONE>YES</CLONE><TYPE>BLOCK</TYPE><TM_MAD>storpool</TM_MAD></DISK>
<DISK><DISK_ID>1</DISK_ID><TYPE>fs</TYPE><FORMAT>raw</FORMAT><SIZE>10</SIZE></DISK>
<CONTEXT><DISK_ID>2</DISK_ID></CONTEXT>
<SNAPSHOT><SNAPSHOT_ID>0</SNAPSHOT_ID><HYPERVISOR_ID>ONESNAP-0-1700000000</HYPERVISOR_ID>
<NAME>before-upgrade</NAME></SNAPSHOT></TEMPLATE><USER_TEMPLATE/>
<HISTORY_RECORDS/></VM>"""


@pytest.fixture
def oned_with_vm(frontend, tmp_path):
    import threading
    from xmlrpc.server import SimpleXMLRPCServer

    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    server.register_function(
        lambda session, vm_id, *rest: [True, VM_XML, 0] if vm_id == 9
        else [False, f"[one.vm.info] Error getting virtual machine [{vm_id}].", 0x400],
        "one.vm.info")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "auth").write_text("oneadmin:x")
    frontend.env.update(ONE_XMLRPC=f"http://127.0.0.1:{server.server_address[1]}/RPC2",
                        ONE_AUTH=str(tmp_path / "auth"))
    yield frontend
    server.shutdown()


def test_import_from_a_vm_snapshot(oned_with_vm):
    fe = oned_with_vm
    fe.sp.volume_create("one-img-5-9-0", size=3 * MIB)
    fe.sp.volume_snapshot("one-img-5-9-0", "one-img-5-9-0-ONESNAP-0-1700000000")
    path = "VMSNAP:VM:9-DISK:0-VMSNAP:0"
    stat = fe.run_ds("stat", ds_action(image_xml(-1, path=path)), 0)
    assert (stat.returncode, stat.stdout) == (0, "3\n"), stat.stderr
    result = fe.run_ds("cp", ds_action(image_xml(80, path=path, size=3, uid=5)), 80)
    assert result.returncode == 0, result.stderr
    assert fe.sp.volume("one-img-80")["parentName"] == "one-img-5-9-0-ONESNAP-0-1700000000"
    # Another user may not copy somebody else's VM snapshot.
    other = fe.run_ds("cp", ds_action(image_xml(81, path=path, size=3, uid=6)), 81)
    assert other.returncode == 1 and "does not belong" in other.stderr
    missing = fe.run_ds("cp", ds_action(image_xml(82, path="VMSNAP:VM:9-DISK:0-VMSNAP:4",
                                                  size=3)), 82)
    assert missing.returncode == 1 and "no snapshot 4" in missing.stderr
    assert not fe.sp.volume_exists("one-img-81") and not fe.sp.volume_exists("one-img-82")


def test_unusable_event_log_stops_the_action_before_storage(frontend, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    frontend.env["ONESTORPOOL_EVENTLOG"] = str(blocker / "events.db")
    result = frontend.run_ds("mkfs", ds_action(image_xml(90, size=1)), 90)
    assert result.returncode == 1 and result.error_lines[0].startswith("ERROR: event log")
    assert frontend.storpool_names() == set()


@pytest.mark.parametrize("action", ["backup", "restore"])
def test_backup_actions_are_refused_clearly(frontend, action):
    result = frontend.run_ds(action, ds_action(image_xml(95, size=1)), 95)
    assert result.returncode == 1
    assert result.error_lines == [f"ERROR: {action}: operation not supported by the StorPool "
                                  "datastore (backups are taken by the TM prebackup/postbackup "
                                  "actions)"]
    (event,) = frontend.events()
    assert event.type == f"ds.{action}.failed"
