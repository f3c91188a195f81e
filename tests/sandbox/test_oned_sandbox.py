"""The oned sandbox's XML-RPC and hook bus: pyone and the XSDs accept every body, errors
and authentication as oned answers them, the hook bus on a real SUB socket with one_hm's
framing and keys, API messages as HookAPI writes them (raw parameters included), and the
rules that change between releases.

The TM is the recording stand-in (``fake_remotes/tm/fake``) on purpose: these tests check
oned's own conduct per release (the argv and stdin it gives a TM, its states, bodies and
messages), not what a TM does; the StorPool TM's behaviour is tested with the real driver
(test_tm_lifecycle.py, test_tm_nvram.py, test_tm_monitor_markers.py)."""

from __future__ import annotations

import base64
import time
import xmlrpc.client

import pyone
import pytest
from lxml import etree

from onestorpool.one import parse_hook_message
from onestorpool.sandbox.oned_drivers import error_info
from onestorpool.sandbox.oned_hookbus import publishes_api_event
from onestorpool.sandbox.oned_objects import Version

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: world, make_world, subscriber


def running_vm(w) -> tuple[int, int, int, int]:
    """image DS, system DS, image (real driver) and a VM running on node1."""
    image_ds, system_ds = w.datastores()
    image_id = w.srv.image.allocate('NAME="os"\nSIZE="2"', image_ds)
    assert w.oned.wait_image(image_id, {"READY", "ERROR"}) == "READY"
    host_id = w.oned.create_host("node1")
    vm_id = w.oned.instantiate(w.vm_template("web", f'IMAGE_ID="{image_id}"',
                                           'TYPE="swap",SIZE="8"', context=True),
                               host_id, system_ds)
    return image_ds, system_ds, image_id, vm_id


def test_pyone_parses_every_body(world):
    image_ds, system_ds, image_id, vm_id = running_vm(world)
    srv = world.srv
    assert srv.datastore.info(image_ds).DS_MAD == "storpool"
    # oned's own system, default and files datastores (0-2), then the test's
    assert {d.ID for d in srv.datastorepool.info().DATASTORE} == {0, 1, 2, image_ds,
                                                                  system_ds}
    image = srv.image.info(image_id)
    source = image.SOURCE
    assert source == f"one-ds-{image_ds}/one-img-0"
    assert (image.FORMAT, image.STATE) == ("raw", 2)  # USED by the VM
    assert [i.ID for i in srv.imagepool.info(-2, -1, -1).IMAGE] == [image_id]
    host = srv.hostpool.info().HOST[0]
    assert (host.NAME, host.STATE, host.TEMPLATE["SP_OURID"]) == ("node1", 2, "3")
    assert [vm_id] == srv.host.info(host.ID).VMS.ID
    vm = srv.vm.info(vm_id)
    disks = vm.TEMPLATE["DISK"]
    assert [d["TARGET"] for d in disks] == ["sda", "sdb"]
    assert vm.TEMPLATE["CONTEXT"]["DISK_ID"] == "2"
    assert system_ds == vm.HISTORY_RECORDS.HISTORY[0].DS_ID
    short = srv.vmpool.info(-2, -1, -1, -1).VM[0]
    assert short.TEMPLATE["DISK"][0]["IMAGE_ID"] == str(image_id)
    assert "SOURCE" not in short.TEMPLATE["DISK"][0]  # the short body, as oned's
    extended = srv.vmpool.infoextended(-2, -1, -1, -1).VM[0]
    assert extended.TEMPLATE["DISK"][0]["SOURCE"] == image.SOURCE
    assert srv.zone.raftstatus().STATE == 3
    assert srv.system.version() == "6.10.0"
    config = srv.system.config()
    assert "storpool" in [c.NAME for c in config.TM_MAD_CONF]


def test_bodies_validate_against_opennebula_xsds(world):
    image_ds, system_ds, image_id, vm_id = running_vm(world)
    oned = world.oned
    world.srv.vm.snapshotcreate(vm_id, "system")  # TEMPLATE/SNAPSHOT
    oned.wait_idle()  # HOTPLUG_SNAPSHOT until the hypervisor answers
    world.srv.vm.disksnapshotcreate(vm_id, 0, "disk")  # the top-level SNAPSHOTS
    oned.wait_idle()
    assert oned.vms[vm_id].disk_snapshots and oned.vms[vm_id].template["SNAPSHOT"]
    pending = oned.call("one.vm.allocate", world.vm_template("later"), False)
    for schema, body in (
            ("datastore.xsd", oned.call("one.datastore.info", image_ds)),
            ("datastore.xsd", oned.call("one.datastore.info", system_ds)),
            ("datastore_pool.xsd", oned.call("one.datastorepool.info")),
            ("image.xsd", oned.call("one.image.info", image_id)),
            ("image_pool.xsd", oned.call("one.imagepool.info")),
            ("host.xsd", oned.call("one.host.info", 0)),
            ("host_pool.xsd", oned.call("one.hostpool.info")),
            ("vm.xsd", oned.call("one.vm.info", vm_id)),
            ("vm_pool.xsd", oned.call("one.vmpool.info", -2, -1, -1, -1)),
            ("vm_pool_extended.xsd", oned.call("one.vmpool.infoextended", -2, vm_id, vm_id, -1)),
            ("raftstatus.xsd", oned.zone_raftstatus()),
            ("opennebula_configuration.xsd", oned.system_config())):
        world.validate(schema, body)
    # vm.xsd requires TM_MAD_SYSTEM, which oned adds at the first deploy: a PENDING VM's
    # body does not have it, with oned as with the sandbox.
    assert "TM_MAD_SYSTEM" not in oned.call("one.vm.info", pending)


def test_errors_and_authentication(world):
    srv = world.srv
    with pytest.raises(pyone.OneNoExistsException,
                       match=r"\[one.vm.info\] Error getting virtual machine \[999\]"):
        srv.vm.info(999)
    with pytest.raises(pyone.OneAuthenticationException, match="couldn't be authenticated"):
        pyone.OneServer(world.oned.endpoint, session="oneadmin:wrong").vm.info(0)
    with pytest.raises(pyone.OneActionException, match="not emulated"):
        srv.vm.backup(0, 100, False)
    raw = xmlrpc.client.ServerProxy(world.oned.endpoint)
    # oned's failure reply: [false, message, code, object id, i8 replication index]
    assert raw.one.image.info(world.oned.session, 7) == [
        False, "[one.image.info] Error getting image [7].", 0x400, 7, -1]
    with pytest.raises(xmlrpc.client.Fault, match="not defined"):
        raw.one.vm.nosuchcall(world.oned.session)
    with pytest.raises(pyone.OneException, match="DS_MAD named"):
        srv.datastore.allocate('NAME="x"\nDS_MAD="nope"\nTM_MAD="fake"', -1)
    with pytest.raises(pyone.OneException, match='missing the "DISK_TYPE" attribute'):
        srv.datastore.allocate('NAME="x"\nDS_MAD="storpool"\nTM_MAD="storpool"', -1)
    with pytest.raises(pyone.OneException, match="MEMORY attribute must be a positive"):
        srv.vm.allocate('NAME="x"\nCPU="1"', False)
    with pytest.raises(pyone.OneException, match="Invalid NAME, char '<' is not allowed"):
        srv.vm.allocate('NAME="a<b"\nCPU="1"\nMEMORY="1"', False)


def test_hook_bus_framing_and_keys(world, subscriber):
    image_ds, _system_ds = world.datastores()
    image_id = world.srv.image.allocate('NAME="d"\nSIZE="1"', image_ds)
    world.oned.wait_image(image_id, {"READY"})
    host_id = world.oned.create_host("node1")
    world.oned.wait_idle()
    frames = subscriber.frames()
    keys = [key for key, _ in frames]
    for key, payload in frames:
        assert "\n" not in payload and base64.b64decode(payload, validate=True)
        event = parse_hook_message(key, payload)
        assert event.message.findtext("HOOK_TYPE") in ("API", "STATE")
    # one_hm: STATE keys end with a blank, the LCM part empty for non-VM objects
    assert f"EVENT IMAGE {image_id}/READY/ " in keys
    assert f"EVENT STATE IMAGE/READY//{image_id} " in keys
    assert f"EVENT HOST {host_id}/MONITORED/ " in keys
    assert f"EVENT STATE HOST/MONITORED//{host_id} " in keys
    assert "EVENT API one.image.allocate 1" in keys
    # an image is LOCKED from birth and oned publishes only state *changes*
    assert not any("/LOCKED/" in key for key in keys)
    assert not any(".info" in key for key in keys)  # read-only calls are silent
    # both keys of a state event carry the very same payload
    payloads = dict(frames)
    assert payloads[f"EVENT IMAGE {image_id}/READY/ "] == \
        payloads[f"EVENT STATE IMAGE/READY//{image_id} "]
    host_message = parse_hook_message(f"EVENT HOST {host_id}/MONITORED/ ",
                                      payloads[f"EVENT HOST {host_id}/MONITORED/ "]).message
    # HookStateHost: REMOTE_HOST before RESOURCE_ID (the XSD says otherwise)
    assert [c.tag for c in host_message][:5] == ["HOOK_TYPE", "HOOK_OBJECT", "STATE",
                                                 "REMOTE_HOST", "RESOURCE_ID"]


def test_vm_state_messages(world, subscriber):
    world.datastores()
    subscriber.frames()
    vm_id = world.srv.vm.allocate(world.vm_template("svc", extra='SERVICE_ID="7"\n'), True)
    frames = subscriber.frames()
    keys = [key for key, _ in frames]
    assert keys[:3] == [f"EVENT VM {vm_id}/HOLD/LCM_INIT ",
                        f"EVENT STATE VM/HOLD/LCM_INIT/{vm_id} ", "EVENT SERVICE 7 "]
    message = parse_hook_message(*frames[0]).message
    assert [c.tag for c in message][:7] == ["HOOK_TYPE", "HOOK_OBJECT", "STATE", "LCM_STATE",
                                            "RESOURCE_ID", "SERVICE_ID", "REMOTE_HOST"]
    assert message.find("REMOTE_HOST").text is None  # no history yet: <REMOTE_HOST/>
    assert message.findtext("VM/STATE") == "2"  # numeric inside the body
    assert message.findtext("VM/USER_TEMPLATE/SERVICE_ID") == "7"


def test_api_messages_as_hookapi_writes_them(world, subscriber):
    world.datastores()
    subscriber.frames()
    template = world.vm_template("x") + 'DESCRIPTION="a<b & c"\n'
    vm_id = world.srv.vm.allocate(template, False)
    with pytest.raises(pyone.OneNoExistsException):
        world.srv.vm.action("poweroff", 55)
    assert world.srv.system.version() == "6.10.0"
    frames = dict(subscriber.frames())
    raw = base64.b64decode(frames["EVENT API one.vm.allocate 1"]).decode()
    # strings go in unescaped, as oned does: this message is not well-formed XML
    assert 'DESCRIPTION="a<b & c"' in raw
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(raw.encode())
    message = parse_hook_message("EVENT API one.vm.allocate 1",
                                 frames["EVENT API one.vm.allocate 1"]).message
    params = [(p.findtext("POSITION"), p.findtext("TYPE"), p.findtext("VALUE"))
              for p in message.iter("PARAMETER")]
    assert params[0] == ("1", "IN", "****")
    assert params[2] == ("3", "IN", "0")  # the hold flag, a boolean printed as 0/1
    assert params[-3:] == [("1", "OUT", "true"), ("2", "OUT", str(vm_id)), ("3", "OUT", "0")]
    assert f"<EXTRA><VM><ID>{vm_id}</ID>" in raw
    failed = base64.b64decode(frames["EVENT API one.vm.action 0"]).decode()
    message = etree.fromstring(failed.encode())
    outs = [p.findtext("VALUE") for p in message.iter("PARAMETER")
            if p.findtext("TYPE") == "OUT"]
    assert outs == ["false", "[one.vm.action] Error getting virtual machine [55].", "1024",
                    "55"]
    world.validate("hook_message_api.xsd", failed)
    # one.system.version is not in HookAPI's read-only list: published, value raw
    version = etree.fromstring(base64.b64decode(frames["EVENT API one.system.version 1"]))
    assert [p.findtext("VALUE") for p in version.iter("PARAMETER")][-2] == "6.10.0"
    # pyone's own binding of the API hook message parses it
    parsed = pyone.bindings.parseString(failed.encode(), silence=True)
    assert parsed.CALL == "one.vm.action"


def test_what_is_published_changes_with_the_release():
    assert publishes_api_event("one.vm.info", Version("5.10"))  # 5.10 published them all
    assert not publishes_api_event("one.vm.info", Version("5.12"))
    assert not publishes_api_event("one.vmpool.infoextended", Version("7.0"))
    assert publishes_api_event("one.zone.raftstatus", Version("6.10"))
    assert not publishes_api_event("one.hook.info", Version("5.10"))


def test_old_releases_have_no_image_events_nor_service_keys(make_world):
    w = make_world(one_version="5.10")
    sub = w.subscribe()
    try:
        ds = w.srv.datastore.allocate('NAME="f"\nDS_MAD="fake"\nTM_MAD="fake"', -1)
        image_id = w.srv.image.allocate('NAME="d"\nSIZE="1"', ds)
        w.oned.wait_image(image_id, {"READY"})
        w.srv.vm.allocate(w.vm_template("s", extra='SERVICE_ID="3"\n'), True)
        w.srv.vm.info(0)
        keys = [key for key, _ in sub.frames()]
    finally:
        sub.close()
    assert not any("IMAGE" in key for key in keys)  # image hooks came with 6.0
    assert not any("SERVICE" in key for key in keys)  # SERVICE_ID came with 5.12
    assert "EVENT API one.vm.info 1" in keys  # 5.10 published read-only calls too


def test_retry_messages(world, subscriber):
    world.oned.hooks.publish_retry(4, "VM 42 $TEMPLATE", remote_host="kvm1")
    ((key, payload),) = subscriber.frames()
    assert key == "RETRY" and payload.endswith(" ")  # one_hm appends one blank
    event = parse_hook_message(key, payload)
    assert event.kind == "RETRY" and event.message.findtext("HOOK_ID") == "4"
    assert base64.b64decode(event.message.findtext("ARGUMENTS")) == b"VM 42 $TEMPLATE"
    assert event.message.findtext("REMOTE_HOST") == "kvm1"


@pytest.mark.parametrize(("version", "expected"), [
    ("5.12", "the marked message"),
    ("6.0", "the marked message"),
    ("6.10", "INFO: cp: copying ERROR: cp: it broke plain words ERROR MESSAGE --8<------ "
             "the marked message ERROR MESSAGE ------>8--"),
    ("7.0", "plain wordsERROR MESSAGE --8<------the marked messageERROR MESSAGE ------>8--"),
])
def test_failure_text_follows_the_release(version, expected):
    stderr = ("INFO: cp: copying\nERROR: cp: it broke\nplain words\n"
              "ERROR MESSAGE --8<------\nthe marked message\nERROR MESSAGE ------>8--\n")
    assert error_info(stderr, Version(version)) == expected


def test_nothing_left_is_a_dash():
    assert error_info("ERROR: only a log line\n", Version("7.0")) == "-"
    assert error_info("", Version("6.10")) == "-"
    assert error_info("just text\n", Version("5.12")) == "-"


def test_front_end_files_and_driver_environment(world):
    oned = world.oned
    home = oned.fe_path("/var/lib/one")
    assert (home / ".one/one_auth").read_text().strip() == oned.session
    assert (home / ".one/one_endpoint").read_text().strip() == oned.endpoint
    assert oned.driver_env["HOME"] == str(home)
    assert oned.driver_env["ONESTORPOOL_SANDBOX_HOSTS"] == str(world.frontend.root / "hosts")
    assert "ONE_XMLRPC" not in oned.driver_env  # oned does not set it: ~/.one is used
    assert oned.credentials == ("oneadmin", "sandbox")
    assert oned.hook_endpoint.startswith("tcp://127.0.0.1:")


def test_periodic_datastore_monitoring(make_world):
    w = make_world(monitor_interval=0.2)
    ds = w.srv.datastore.allocate('NAME="f"\nDS_MAD="fake"\nTM_MAD="fake"', -1)
    deadline = time.monotonic() + 10
    while w.srv.datastore.info(ds).TOTAL_MB != 100:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert w.srv.datastore.info(ds).FREE_MB == 99
