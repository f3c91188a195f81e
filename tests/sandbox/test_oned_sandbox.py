"""The oned sandbox: pyone against its XML-RPC, XSD-valid bodies, the hook bus on a real SUB
socket, image lifecycle through the real datastore driver, VM lifecycle through recording
TM scripts, failures as oned reports them, and ``sandbox up/down``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyone
import pytest
import zmq
from lxml import etree

from onestorpool.one import parse_hook_message
from onestorpool.sandbox.frontend import REMOTES, make_frontend
from onestorpool.sandbox.oned import OnedSandbox

XSD_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "xsd"
NS = "http://opennebula.org/XMLSchema"
FAKE_TM = Path(__file__).parent / "fake_remotes" / "tm"


@pytest.fixture
def world(tmp_path, storpool_sandbox):
    """A front-end configuration, the StorPool sandbox and the oned sandbox, with the real
    datastore driver and recording TM scripts."""
    frontend = make_frontend(tmp_path / "fe", storpool_sandbox)
    remotes = tmp_path / "remotes"
    remotes.mkdir()
    (remotes / "datastore").symlink_to(REMOTES / "datastore")
    (remotes / "tm").symlink_to(FAKE_TM)
    env = {k: v for k, v in frontend.env.items() if k.startswith("ONESTORPOOL_")}
    env["FAKE_TM_LOG"] = str(tmp_path / "tm.log")
    oned = OnedSandbox(tmp_path / "oned", remotes=remotes, driver_env=env,
                       storpool_admin=(storpool_sandbox.url, storpool_sandbox.token)).start()
    yield frontend, oned, tmp_path
    oned.stop()


@pytest.fixture
def subscriber(world):
    _, oned, _ = world
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(oned.hooks.endpoint)
    # PUB/SUB's slow joiner: publish probes until one arrives, then drain them, so the
    # test sees every event from here on, however slow the machine is.
    deadline = time.monotonic() + 10
    while not socket.poll(50):
        assert time.monotonic() < deadline, "the SUB socket never got a message"
        oned.hooks.publish(["PROBE "], "probe")
    while socket.poll(100):
        socket.recv_multipart()

    def received(timeout: float = 0.5) -> list[tuple[str, str]]:
        frames = []
        while socket.poll(int(timeout * 1000)):
            key, payload = socket.recv_multipart()
            frames.append((key.decode(), payload.decode()))
        return frames

    yield received
    socket.close()


def xsd(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD_DIR / name)))


def in_namespace(xml: str) -> etree._Element:
    """oned's XML has no namespace; the schemas have one (fixtures README)."""
    root = etree.fromstring(xml.encode())
    for element in root.iter():
        if isinstance(element.tag, str) and not element.tag.startswith("{"):
            element.tag = f"{{{NS}}}{element.tag}"
    return root


def make_datastores(srv) -> tuple[int, int]:
    # Real datastore driver; the recording TM scripts stand in for the TM driver.
    image_ds = srv.datastore.allocate(
        'NAME="storpool"\nDS_MAD="storpool"\nTM_MAD="fake"\nDISK_TYPE="BLOCK"', -1)
    system_ds = srv.datastore.allocate('NAME="system"\nTYPE="SYSTEM_DS"\nTM_MAD="fake"', -1)
    return image_ds, system_ds


def client(oned) -> pyone.OneServer:
    return pyone.OneServer(oned.endpoint, session=oned.session)


def test_image_lifecycle_through_the_real_driver(world, subscriber):
    frontend, oned, tmp_path = world
    srv = client(oned)
    image_ds, _ = make_datastores(srv)
    frontend.sp.volume_template_create(f"one-ds-{image_ds}")
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "5M"], check=True,
                   capture_output=True)
    image_id = srv.image.allocate(f'NAME="alpine"\nPATH="{disk}"', image_ds)
    assert oned.wait_image(image_id, {"READY", "ERROR"}) == "READY"
    image = srv.image.info(image_id)
    assert (image.SOURCE, image.FORMAT, image.SIZE) == ("one-ds-100/one-img-0", "raw", 5)
    assert frontend.sp.volume("one-img-0")["size"] == 5 << 20
    oned.wait_idle()  # the datastore is monitored after the import, as oned does
    actions = [(e["action"], e["argv"]) for e in oned.driver_log]
    assert actions[:2] == [("stat", ["0"]), ("cp", [str(image_id)])]  # 6.10: XML on stdin
    assert ("monitor", [str(image_ds)]) in actions
    assert srv.datastore.info(image_ds).TOTAL_MB > 0

    clone_id = srv.image.clone(image_id, "copy", -1)
    assert oned.wait_image(clone_id, {"READY", "ERROR"}) == "READY"
    assert frontend.sp.volume_exists("one-img-1")
    srv.image.delete(clone_id)
    oned.wait_image(clone_id, {"GONE"})
    assert not frontend.sp.volume_exists("one-img-1")

    keys = [key for key, _ in subscriber()]
    assert f"EVENT STATE IMAGE/LOCKED//{image_id} " in keys
    assert f"EVENT IMAGE {image_id}/READY/ " in keys
    assert f"EVENT STATE IMAGE/DELETE//{clone_id} " in keys
    assert "EVENT API one.image.allocate 1" in keys
    assert not any("info" in key for key in keys)  # info calls publish nothing


def test_failing_driver_puts_the_image_in_error(world):
    _, oned, _ = world
    srv = client(oned)
    image_ds, _ = make_datastores(srv)
    image_id = srv.image.allocate('NAME="broken"\nPATH="/nonexistent.img"\nSIZE="4"',
                                  image_ds)
    assert oned.wait_image(image_id, {"READY", "ERROR"}) == "ERROR"
    error = srv.image.info(image_id).TEMPLATE["ERROR"]
    assert error.startswith("Error copying image in the datastore:")
    assert "cannot read /nonexistent.img" in error


def test_vm_lifecycle_runs_tm_actions_as_oned_does(world, subscriber):
    frontend, oned, tmp_path = world
    srv = client(oned)
    image_ds, system_ds = make_datastores(srv)
    frontend.sp.volume_template_create(f"one-ds-{image_ds}")
    image_id = srv.image.allocate('NAME="data"\nSIZE="2"\nTYPE="DATABLOCK"', image_ds)
    assert oned.wait_image(image_id, {"READY", "ERROR"}) == "READY"
    host_id = srv.host.allocate("node1", "kvm", "kvm", -1)
    assert srv.host.info(host_id).TEMPLATE["SP_OURID"] == "11"
    assert (tmp_path / "fe/hosts/node1").is_dir()
    vm_id = srv.vm.allocate(f'NAME="web"\nDISK=[IMAGE_ID="{image_id}"]\n'
                            'DISK=[TYPE="swap",SIZE="64"]\nCONTEXT=[NETWORK="YES"]', False)
    srv.vm.deploy(vm_id, host_id, False, system_ds)
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert srv.image.info(image_id).STATE == 2  # USED
    vm = srv.vm.info(vm_id)
    assert vm.HISTORY_RECORDS.HISTORY[0].HOSTNAME == "node1"
    srv.vm.action("poweroff", vm_id)
    oned.wait_vm(vm_id, "POWEROFF")
    srv.vm.action("resume", vm_id)
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    srv.vm.action("terminate", vm_id)
    oned.wait_vm(vm_id, "DONE")
    assert srv.image.info(image_id).STATE == 1
    calls = [json.loads(line) for line in (tmp_path / "tm.log").read_text().splitlines()]
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    assert calls == [
        {"action": "clone", "argv": ["localhost:one-ds-100/one-img-0",
                                     f"node1:{vm_dir}/disk.0", str(vm_id), str(image_ds)]},
        {"action": "mkswap", "argv": ["64", f"node1:{vm_dir}/disk.1", str(vm_id),
                                      str(system_ds)]},
        {"action": "context", "argv": [str(tmp_path / f"oned/vms/{vm_id}/context.sh"),
                                       f"node1:{vm_dir}/disk.2", str(vm_id), str(system_ds)]},
        {"action": "delete", "argv": [f"node1:{vm_dir}/disk.0", str(vm_id), str(image_ds)]},
        {"action": "delete", "argv": [f"node1:{vm_dir}/disk.1", str(vm_id), str(system_ds)]},
        {"action": "delete", "argv": [f"node1:{vm_dir}", str(vm_id), str(system_ds)]},
    ]
    states = [key.split()[2] for key, _ in subscriber() if key.startswith("EVENT STATE VM/")]
    assert states == [f"VM/{s}/{vm_id}" for s in (
        "PENDING/LCM_INIT", "ACTIVE/PROLOG", "ACTIVE/BOOT", "ACTIVE/RUNNING",
        "ACTIVE/SHUTDOWN_POWEROFF", "POWEROFF/LCM_INIT", "ACTIVE/BOOT_POWEROFF",
        "ACTIVE/RUNNING", "ACTIVE/SHUTDOWN", "ACTIVE/EPILOG", "DONE/LCM_INIT")]


def test_failing_tm_action_is_a_prolog_failure(world):
    _, oned, _ = world
    srv = client(oned)
    _, system_ds = make_datastores(srv)
    oned.driver_env["FAKE_TM_FAIL"] = "mkimage"
    host_id = srv.host.allocate("node2", "kvm", "kvm", -1)
    vm_id = srv.vm.allocate('NAME="v"\nDISK=[TYPE="fs",SIZE="10",FORMAT="raw"]', False)
    srv.vm.deploy(vm_id, host_id, False, system_ds)
    oned.wait_vm(vm_id, "ACTIVE", "PROLOG_FAILURE")
    error = srv.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    assert error == "Error executing image transfer script: mkimage failed on purpose"


def test_hook_messages_decode_and_follow_the_code(world, subscriber):
    _, oned, _ = world
    srv = client(oned)
    make_datastores(srv)
    vm_id = srv.vm.allocate('NAME="x<&y"\nDISK=[TYPE="fs",SIZE="1"]', True)
    frames = subscriber()
    keys = [k for k, _ in frames]
    assert f"EVENT VM {vm_id}/HOLD/LCM_INIT " in keys
    assert f"EVENT STATE VM/HOLD/LCM_INIT/{vm_id} " in keys
    for key, payload in frames:
        assert "\n" not in payload and base64.b64decode(payload, validate=True)
        event = parse_hook_message(key, payload)
        if key.startswith("EVENT STATE VM/"):
            message = event.message
            order = [child.tag for child in message][:6]
            assert order == ["HOOK_TYPE", "HOOK_OBJECT", "STATE", "LCM_STATE", "RESOURCE_ID",
                             "REMOTE_HOST"]
            assert message.find("VM/ID").text == str(vm_id)
        if key == "EVENT API one.vm.allocate 1":
            # the template goes in unescaped, as oned does: recovered, not rejected
            params = event.message.findall(".//PARAMETER")
            assert params[0].findtext("VALUE") == "****"
            assert params[0].findtext("TYPE") == "IN"
            raw = base64.b64decode(payload)
            assert b'NAME="x<&y"' in raw


def test_bodies_are_what_pyone_and_the_xsds_accept(world):
    frontend, oned, _ = world
    srv = client(oned)
    image_ds, _system_ds = make_datastores(srv)
    frontend.sp.volume_template_create(f"one-ds-{image_ds}")
    image_id = srv.image.allocate('NAME="d"\nSIZE="1"', image_ds)
    oned.wait_image(image_id, {"READY"})
    host_id = srv.host.allocate("node3", "kvm", "kvm", -1)
    vm_id = srv.vm.allocate(f'NAME="v"\nDISK=[IMAGE_ID="{image_id}"]', False)
    for pool, single in ((srv.datastorepool.info(), srv.datastore.info(image_ds)),
                         (srv.imagepool.info(-2, -1, -1), srv.image.info(image_id)),
                         (srv.hostpool.info(), srv.host.info(host_id)),
                         (srv.vmpool.infoextended(-2, -1, -1, -1), srv.vm.info(vm_id))):
        assert pool is not None and single.ID >= 0
    for name, body in (("datastore.xsd", oned.datastore_info(image_ds)),
                       ("image.xsd", oned.image_info(image_id)),
                       ("host.xsd", oned.host_info(host_id)),
                       ("vm.xsd", oned.vm_info(vm_id))):
        schema = xsd(name)
        assert schema.validate(in_namespace(body)), schema.error_log.last_error


def test_errors_and_authentication(world):
    _, oned, _ = world
    with pytest.raises(pyone.OneNoExistsException):
        client(oned).vm.info(999)
    with pytest.raises(pyone.OneAuthenticationException):
        pyone.OneServer(oned.endpoint, session="oneadmin:wrong").vm.info(0)
    with pytest.raises(pyone.OneActionException, match="not available"):
        client(oned).vm.backup(0, 100, False)


def test_old_versions_pass_the_action_on_the_command_line(tmp_path, storpool_sandbox):
    frontend = make_frontend(tmp_path / "fe", storpool_sandbox)
    env = {k: v for k, v in frontend.env.items() if k.startswith("ONESTORPOOL_")}
    oned = OnedSandbox(tmp_path / "oned", one_version="5.12", driver_env=env).start()
    try:
        srv = client(oned)
        image_ds = srv.datastore.allocate('NAME="sp"\nDS_MAD="storpool"\nTM_MAD="storpool"',
                                          -1)
        frontend.sp.volume_template_create(f"one-ds-{image_ds}")
        image_id = srv.image.allocate('NAME="d"\nSIZE="1"', image_ds)
        assert oned.wait_image(image_id, {"READY", "ERROR"}) == "READY"
        mkfs = next(e for e in oned.driver_log if e["action"] == "mkfs")
        assert mkfs["stdin"] is None and len(mkfs["argv"]) == 2
        assert base64.b64decode(mkfs["argv"][0]).startswith(b"<DS_DRIVER_ACTION_DATA>")
    finally:
        oned.stop()


def test_sandbox_up_and_down(tmp_path):
    directory = tmp_path / "sb"
    cli = [sys.executable, "-m", "onestorpool.cli", "sandbox"]
    started = subprocess.run([*cli, "up", "--dir", str(directory)], capture_output=True,
                             text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        assert "oned XML-RPC" in started.stdout and "StorPool API" in started.stdout
        env = dict(line.removeprefix("export ").split("=", 1)
                   for line in (directory / "sandbox.env").read_text().splitlines())
        srv = pyone.OneServer(env["ONE_XMLRPC"], session="oneadmin:sandbox")
        ds = srv.datastore.allocate('NAME="sp"\nDS_MAD="storpool"\nTM_MAD="storpool"', -1)
        assert ds == 100
        assert "6.10" in srv.system.version()
        config_env = {**os.environ, "ONESTORPOOL_ROOT": env["ONESTORPOOL_ROOT"]}
        shown = subprocess.run([sys.executable, "-m", "onestorpool.cli", "config"],
                               capture_output=True, text=True, env=config_env)
        assert shown.returncode == 0 and "StorPool API: http://127.0.0.1:" in shown.stdout
    finally:
        stopped = subprocess.run([*cli, "down", "--dir", str(directory)],
                                 capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (directory / "sandbox.pids").exists()


def tm_calls(tmp_path: Path) -> list[dict]:
    log = tmp_path / "tm.log"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.write_text("")
    return calls


@pytest.fixture
def running_vm(world):
    frontend, oned, tmp_path = world
    srv = client(oned)
    image_ds, system_ds = make_datastores(srv)
    frontend.sp.volume_template_create(f"one-ds-{image_ds}")
    image_id = srv.image.allocate('NAME="os"\nSIZE="2"\nPERSISTENT="YES"', image_ds)
    assert oned.wait_image(image_id, {"READY", "ERROR"}) == "READY"
    hosts = [srv.host.allocate(f"kvm{n}", "kvm", "kvm", -1) for n in (1, 2)]
    vm_id = srv.vm.allocate(f'NAME="db"\nDISK=[IMAGE_ID="{image_id}"]', False)
    srv.vm.deploy(vm_id, hosts[0], False, system_ds)
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    tm_calls(tmp_path)
    return srv, oned, tmp_path, vm_id, hosts, image_ds, system_ds


def test_stop_undeploy_suspend_and_resume(running_vm):
    srv, oned, tmp_path, vm_id, _hosts, image_ds, system_ds = running_vm
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    srv.vm.action("stop", vm_id)
    oned.wait_vm(vm_id, "STOPPED")
    assert tm_calls(tmp_path) == [
        {"action": "mv", "argv": [f"kvm1:{vm_dir}/disk.0", f"localhost:{vm_dir}/disk.0",
                                  str(vm_id), str(image_ds)]},
        {"action": "mv", "argv": [f"kvm1:{vm_dir}", f"localhost:{vm_dir}", str(vm_id),
                                  str(system_ds)]}]
    srv.vm.action("resume", vm_id)
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert [c["argv"][:2] for c in tm_calls(tmp_path)] == [
        [f"localhost:{vm_dir}/disk.0", f"kvm1:{vm_dir}/disk.0"],
        [f"localhost:{vm_dir}", f"kvm1:{vm_dir}"]]
    srv.vm.action("undeploy", vm_id)
    oned.wait_vm(vm_id, "UNDEPLOYED")
    srv.vm.action("resume", vm_id)
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    srv.vm.action("suspend", vm_id)
    oned.wait_vm(vm_id, "SUSPENDED")
    srv.vm.action("resume", vm_id)
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    with pytest.raises(pyone.OneActionException):
        srv.vm.action("suspend", vm_id) or srv.vm.action("suspend", vm_id)


def test_cold_and_live_migration(running_vm):
    srv, oned, tmp_path, vm_id, hosts, _image_ds, system_ds = running_vm
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    srv.vm.migrate(vm_id, hosts[1], False, False, -1, 0)
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert [c["argv"][:2] for c in tm_calls(tmp_path)] == [
        [f"kvm1:{vm_dir}/disk.0", f"kvm2:{vm_dir}/disk.0"], [f"kvm1:{vm_dir}", f"kvm2:{vm_dir}"]]
    assert srv.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "kvm2"
    srv.vm.migrate(vm_id, hosts[0], True, False, -1, 0)
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    oned.wait_idle()
    calls = tm_calls(tmp_path)
    assert [c["action"] for c in calls] == ["premigrate", "postmigrate"]
    assert calls[0]["argv"] == ["kvm2", "kvm1", vm_dir, str(vm_id), str(system_ds)]
    assert base64.b64decode(calls[0]["stdin"]).startswith(b"<VM><ID>")
    assert srv.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "kvm1"


def test_disk_operations(running_vm):
    srv, oned, tmp_path, vm_id, _hosts, image_ds, system_ds = running_vm
    vm_dir = f"/var/lib/one//datastores/{system_ds}/{vm_id}"
    srv.vm.attach(vm_id, 'DISK=[TYPE="fs",SIZE="20",FORMAT="raw"]')
    oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    oned.wait_idle()
    assert tm_calls(tmp_path) == [{"action": "mkimage", "argv": [
        "20", "raw", f"kvm1:{vm_dir}/disk.1", str(vm_id), str(system_ds)]}]
    snap = srv.vm.disksnapshotcreate(vm_id, 0, "before")
    oned.wait_idle()
    assert tm_calls(tmp_path) == [{"action": "snap_create_live", "argv": [
        f"kvm1:{vm_dir}/disk.0", str(snap), str(vm_id), str(image_ds)]}]
    srv.vm.diskresize(vm_id, 0, "4096")
    oned.wait_idle()
    assert tm_calls(tmp_path)[0]["argv"] == [f"kvm1:{vm_dir}/disk.0", "4096", str(vm_id),
                                             str(image_ds)]
    with pytest.raises(pyone.OneActionException):  # revert needs the VM powered off
        srv.vm.disksnapshotrevert(vm_id, 0, snap)
    srv.vm.action("poweroff", vm_id)
    oned.wait_vm(vm_id, "POWEROFF")
    srv.vm.disksnapshotrevert(vm_id, 0, snap)
    oned.wait_idle()
    srv.vm.disksnapshotdelete(vm_id, 0, snap)
    oned.wait_idle()
    assert [c["action"] for c in tm_calls(tmp_path)] == ["snap_revert", "snap_delete"]
    new_image = srv.vm.disksaveas(vm_id, 0, "copy", "", -1)
    assert oned.wait_image(new_image, {"READY", "ERROR"}) == "READY"
    oned.wait_idle()
    (cpds,) = tm_calls(tmp_path)
    assert cpds["action"] == "cpds" and cpds["argv"] == [
        f"kvm1:{vm_dir}/disk.0", f"one-ds-{image_ds}/one-img-{new_image}", "-1", str(vm_id),
        str(image_ds)]
    assert f"one-ds-{image_ds}/one-img-{new_image}" == srv.image.info(new_image).SOURCE
    srv.vm.detach(vm_id, 1)
    oned.wait_vm(vm_id, "POWEROFF")
    oned.wait_idle()
    assert tm_calls(tmp_path) == [{"action": "delete", "argv": [
        f"kvm1:{vm_dir}/disk.1", str(vm_id), str(system_ds)]}]


def test_vm_snapshot_and_recover_delete_recreate(running_vm):
    srv, oned, tmp_path, vm_id, _hosts, _image_ds, system_ds = running_vm
    snap = srv.vm.snapshotcreate(vm_id, "s1")
    oned.wait_idle()
    assert srv.vm.info(vm_id).TEMPLATE["SNAPSHOT"][0]["SNAPSHOT_ID"] == str(snap)
    second = srv.vm.snapshotcreate(vm_id, "s2")
    oned.wait_idle()
    srv.vm.snapshotrevert(vm_id, snap)
    oned.wait_idle()
    srv.vm.snapshotdelete(vm_id, second)
    oned.wait_idle()
    (left,) = srv.vm.info(vm_id).TEMPLATE["SNAPSHOT"]  # pyone always makes SNAPSHOT a list
    assert (left["SNAPSHOT_ID"], left["ACTIVE"]) == (str(snap), "YES")
    srv.vm.recover(vm_id, 4)
    oned.wait_vm(vm_id, "PENDING")
    actions = [(c["action"], c["argv"][0]) for c in tm_calls(tmp_path)]
    # persistent disk (SAVE=YES) is kept; only the VM directory goes
    assert actions == [("delete", f"kvm1:/var/lib/one//datastores/{system_ds}/{vm_id}")]


def test_scenario_api(world):
    frontend, oned, _tmp_path = world
    image_ds = oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="fake",
                                     DISK_TYPE="BLOCK")
    system_ds = oned.create_datastore("sys", "SYSTEM_DS", TM_MAD="fake")
    frontend.sp.volume_template_create(f"one-ds-{image_ds}")
    image_id = oned.create_image(image_ds, "blank", size_mb=3)
    assert frontend.sp.volume(f"one-img-{image_id}")["size"] == 3 << 20
    host_id = oned.create_host("node9")
    vm_id = oned.instantiate(f'NAME="x"\nDISK=[IMAGE_ID="{image_id}"]', host_id, system_ds)
    assert oned.vms[vm_id]["history"][-1]["hostname"] == "node9"
    with pytest.raises(RuntimeError, match=r"Cannot get size from STAT: .*missing\.img"):
        oned.create_image(image_ds, "broken", path="/missing.img")


@pytest.mark.parametrize("one_version", ["5.10", "6.10"])
def test_vm_disk_monitoring_printed_or_pushed(tmp_path, storpool_sandbox, one_version):
    frontend = make_frontend(tmp_path / "fe", storpool_sandbox)
    env = {k: v for k, v in frontend.env.items() if k.startswith("ONESTORPOOL_")}
    remotes = tmp_path / "remotes"
    remotes.mkdir()
    (remotes / "tm").symlink_to(FAKE_TM)
    env["FAKE_TM_LOG"] = str(tmp_path / "tm.log")
    oned = OnedSandbox(tmp_path / "oned", remotes=remotes, driver_env=env,
                       one_version=one_version).start()
    try:
        system_ds = oned.create_datastore("sys", "SYSTEM_DS", TM_MAD="fake", SHARED="YES")
        host_id = oned.create_host("kvm1")
        vm_id = oned.instantiate('NAME="m"\nDISK=[TYPE="fs",SIZE="10"]', host_id, system_ds)
        oned.driver_env["FAKE_MONITOR_VM"] = str(vm_id)
        result = oned.monitor_system_datastore(system_ds)
        assert result["exit"] == 0
        pushed = one_version != "5.10"
        assert ("VM=[" in result["stdout"]) is not pushed
        assert ("MONITOR_PORT" in oned.driver_env) is pushed
        oned._wait(lambda: oned.vms[vm_id].get("monitoring") or None, "monitoring", 10)
        vm = client(oned).vm.info(vm_id)
        assert {d.ID: d.SIZE for d in vm.MONITORING.DISK_SIZE} == {0: 7, 1: 3}
        assert oned.datastores[system_ds]["total_mb"] == 100
        assert xsd("vm.xsd").validate(in_namespace(oned.vm_info(vm_id)))
    finally:
        oned.stop()


def test_retry_messages(world, subscriber):
    _, oned, _ = world
    oned.hooks.publish_retry(4, "VM 42 $TEMPLATE", remote_host="kvm1")
    ((key, payload),) = subscriber()
    assert key == "RETRY" and payload.endswith(" ")  # one_hm appends one blank
    event = parse_hook_message(key, payload)
    assert event.kind == "RETRY" and event.message.findtext("HOOK_ID") == "4"
    assert base64.b64decode(event.message.findtext("ARGUMENTS")) == b"VM 42 $TEMPLATE"
    assert event.message.findtext("REMOTE_HOST") == "kvm1"
