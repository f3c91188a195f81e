"""Conformance of the oned sandbox with OpenNebula's own source, release by release. Each test
names the upstream file (``github:OpenNebula/one`` at a release tag) and line it follows.

Schemas: tests/fixtures/xsd/<version>/ hold ``share/doc/xsd`` of ``release-<version>.0``.
Where a release's schema and its code disagree, the code wins and the gap is listed in
``XSD_GAPS`` with the line of code that emits what the schema lacks.

The TM is the recording stand-in (``fake_remotes/tm/fake``) on purpose: these tests check
oned's own conduct per release (the argv and stdin it gives a TM, its states, bodies and
messages), not what a TM does; the StorPool TM's behaviour is tested with the real driver
(test_tm_lifecycle.py, test_tm_nvram.py, test_tm_monitor_markers.py)."""

from __future__ import annotations

import base64
import time

import pyone
import pytest
from lxml import etree

from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_hookbus import one_hm_keys
from onestorpool.sandbox.oned_objects import (
    Datastore,
    DiskSnapshots,
    History,
    Host,
    Image,
    ImageSnapshot,
    Version,
    Vm,
)
from tests.sandbox.release_xsd import assert_valid_for

pytest_plugins = ["tests.sandbox.conftest_oned"]

VERSIONS = ("5.10", "5.12", "6.0", "6.2", "6.4", "6.6", "6.8", "6.10", "7.0")
# (version, schema) -> elements the code emits and the schema does not declare
XSD_GAPS = {
    # VirtualMachine monitoring DISK_SIZE vectors (src/vm/VirtualMachineMonitorInfo.cc,
    # release-5.12.0): vm.xsd lists fixed MONITORING children until 6.2 adds a wildcard
    ("5.12", "vm.xsd"): ["MONITORING/DISK_SIZE"],
    ("6.0", "vm.xsd"): ["MONITORING/DISK_SIZE"],
    # TEMPLATE/SNAPSHOT (system snapshots, VirtualMachine::new_snapshot, release-6.2.0
    # src/vm/VirtualMachine.cc) is missing from release-6.2.0's vm.xsd TEMPLATE sequence
    ("6.2", "vm.xsd"): ["TEMPLATE/SNAPSHOT"],
}


def _objects() -> tuple[Datastore, Image, Host, Vm]:
    """A running VM with an image disk, a disk snapshot, a system snapshot, monitoring."""
    ds = Datastore(100, "sp", "storpool", "storpool", 0, 2, "/var/lib/one//datastores/100",
                   {"DISK_TYPE": "BLOCK"}, images=[0])
    image = Image(0, "os", 0, 2, False, 100, "sp", {"DEV_PREFIX": "sd"}, source="one/x",
                  format="raw", size=2, state=2, prev_state=1, vms=[0],
                  snapshots=[ImageSnapshot(0, "s", 1, active=True, size=2)], next_snapshot=1)
    host = Host(0, "node1", "kvm", "kvm", {"HYPERVISOR": "kvm"}, state=2, prev_state=2,
                vms=[0])
    vm = Vm(0, "web", {"VMID": "0", "CPU": "1", "MEMORY": "128", "VCPU": "1",
                       "TM_MAD_SYSTEM": "storpool",
                       "DISK": [{"DISK_ID": "0", "IMAGE_ID": "0", "SOURCE": "x"}],
                       "SNAPSHOT": [{"SNAPSHOT_ID": "0", "NAME": "s", "TIME": "1",
                                     "HYPERVISOR_ID": "snap-0", "ACTIVE": "YES",
                                     "SYSTEM_DISK_SIZE": "0"}],
                       "CONTEXT": [{"DISK_ID": "1", "TARGET": "hda"}]},
            {"ERROR": "x"}, state=3, lcm_state=3, prev_state=3, prev_lcm_state=3,
            deploy_id="uuid", history=[History(0, "node1", 0, 101, "storpool")],
            disk_snapshots={0: DiskSnapshots(0, [ImageSnapshot(0, "d", 1, active=True)], 1)},
            monitoring={"disks": {0: 2}, "timestamp": 5})
    return ds, image, host, vm


def _without(version: str, schema: str, xml: str) -> str:
    root = etree.fromstring(xml.encode())
    # before 7.0 an infoextended pool is checked VM by VM against vm.xsd
    gaps = XSD_GAPS.get((version, "vm.xsd" if schema == "vm_pool_extended.xsd" else schema),
                        [])
    for path in gaps:
        for element in root.findall(f".//{path}"):
            element.getparent().remove(element)
    return etree.tostring(root).decode()


@pytest.mark.parametrize("version", VERSIONS)
def test_bodies_follow_the_claimed_release(version):
    """Each body valid for its own release's schemas: MODTIME only from 7.0
    (release-7.0.0 src/image/Image.cc:420), PLAN_ID/ACTION_ID only from 7.0
    (release-7.0.0 src/vm/History.cc:311), SCHED_ACTIONS from 6.8 (release-6.8.0
    src/vm/VirtualMachine.cc:2420), BACKUPS from 6.6 (release-6.6.0
    src/vm/VirtualMachine.cc:2437), the short body's VCPU from 6.8 (release-6.8.0
    src/vm/VirtualMachine.cc:2582) and history VM_MAD from 6.4 (release-6.4.0
    src/vm/History.cc:407), FSTYPE before 6.0 (release-5.12.0 src/image/Image.cc:371),
    LAST_MON_TIME in 5.10 (release-5.10.0 src/host/Host.cc:651)."""
    v = Version(version)
    ds, image, host, vm = _objects()
    bodies = [("datastore.xsd", X.datastore_body(ds, v)),
              ("image.xsd", X.image_body(image, v)),
              ("host.xsd", X.host_body(host, v)),
              ("vm.xsd", X.vm_body(vm, version=v)),
              ("vm_pool.xsd", X.pool("VM_POOL", [X.vm_short_body(vm, v)])),
              ("vm_pool_extended.xsd", X.pool("VM_POOL", [X.vm_body(vm, False, v)])),
              ("raftstatus.xsd", X.RAFT_SOLO)]
    for schema, xml in bodies:
        assert_valid_for(version, schema, _without(version, schema, xml))
    assert ("<MODTIME>" in X.image_body(image, v)) == (v >= (7, 0))
    assert ("<PLAN_ID>" in X.vm_body(vm, version=v)) == (v >= (7, 0))
    assert ("<PREV_STATE>" in X.image_body(image, v)) == (v >= (6, 0))


@pytest.mark.parametrize("version", ["5.12", "6.6", "6.10", "7.0"])
def test_a_running_world_validates_and_pyone_reads_it(make_world, version):
    """The bodies of a sandbox claiming ``version``, after a real run, against that
    release's schemas; pyone parses every one of them."""
    w = make_world(one_version=version)
    image_ds, system_ds = w.datastores()
    image_id = w.srv.image.allocate('NAME="os"\nSIZE="2"', image_ds)
    assert w.oned.wait_image(image_id, {"READY", "ERROR"}) == "READY"
    host_id = w.oned.create_host("node1")
    vm_id = w.oned.instantiate(w.vm_template("web", f'IMAGE_ID="{image_id}"'), host_id,
                               system_ds)
    oned = w.oned
    for schema, body in (("datastore.xsd", oned.call("one.datastore.info", image_ds)),
                         ("image.xsd", oned.call("one.image.info", image_id)),
                         ("host.xsd", oned.call("one.host.info", host_id)),
                         ("vm.xsd", oned.call("one.vm.info", vm_id)),
                         ("vm_pool.xsd", oned.call("one.vmpool.info", -2, -1, -1, -1)),
                         ("vm_pool_extended.xsd",
                          oned.call("one.vmpool.infoextended", -2, -1, -1, -1))):
        w.validate(schema, body)
    assert w.srv.vm.info(vm_id).STATE == 3
    assert w.srv.image.info(image_id).STATE == 2
    assert vm_id == w.srv.vmpool.infoextended(-2, -1, -1, -1).VM[0].ID
    assert w.srv.hostpool.info().HOST[0].NAME == "node1"


def _states(sent, prefix):
    return [key.split(" ")[2].rsplit("/", 1)[0] for key, _ in sent
            if key.startswith(prefix)]


def _message(payload):
    return etree.fromstring(base64.b64decode(payload))


def test_state_event_sequences(world):
    """Which states are published, and PREV_STATE in them:

    * a host: INIT at allocate (release-6.10.5 src/host/HostPool.cc:152), MONITORED at
      its first monitoring (HostPool::update, has_changed_state);
    * an image: nothing at allocate (PoolSQL::allocate does not call ImagePool::update,
      release-6.10.5 src/image/ImagePool.cc:239), READY when cp/mkfs answers, USED at the
      first use by a VM;
    * a VM: PENDING at allocate with PREV_STATE = STATE (release-6.10.5
      src/vm/VirtualMachinePool.cc:158), then ACTIVE/LCM_INIT at deploy
      (src/dm/DispatchManagerActions.cc:63), PROLOG, BOOT, RUNNING; in every message the
      body's PREV_STATE is the state of the previous update (set after publishing)."""
    sent = world.oned.hooks.sent
    image_ds, system_ds = world.datastores()
    host_id = world.oned.create_host("node1")
    assert _states(sent, "EVENT STATE HOST/") == ["HOST/INIT/", "HOST/MONITORED/"]
    image_id = world.srv.image.allocate('NAME="os"\nSIZE="2"', image_ds)
    world.oned.wait_image(image_id, {"READY"})
    assert _states(sent, "EVENT STATE IMAGE/") == ["IMAGE/READY/"]
    vm_id = world.oned.instantiate(world.vm_template("web", f'IMAGE_ID="{image_id}"'),
                                   host_id, system_ds)
    assert _states(sent, "EVENT STATE IMAGE/") == ["IMAGE/READY/", "IMAGE/USED/"]
    assert _states(sent, "EVENT STATE VM/") == [
        "VM/PENDING/LCM_INIT", "VM/ACTIVE/LCM_INIT", "VM/ACTIVE/PROLOG", "VM/ACTIVE/BOOT",
        "VM/ACTIVE/RUNNING"]
    vm_messages = [_message(p) for k, p in sent if k.startswith("EVENT STATE VM/")]
    prev = [(m.findtext("VM/PREV_STATE"), m.findtext("VM/PREV_LCM_STATE"))
            for m in vm_messages]
    assert prev == [("1", "0"), ("1", "0"), ("3", "0"), ("3", "1"), ("3", "2")]
    body = etree.fromstring(world.oned.call("one.vm.info", vm_id).encode())
    assert (body.findtext("PREV_STATE"), body.findtext("PREV_LCM_STATE")) == ("3", "3")


def test_service_keys_are_read_back_from_the_message():
    """one_hm takes the first ``//SERVICE_ID`` of the whole message (release-6.10.5
    src/hm_mad/one_hm.rb:171,177): a VM of a service and also an image whose template has
    SERVICE_ID get the SERVICE key; 5.10's one_hm had no SERVICE key."""
    _ds, image, _host, vm = _objects()
    image.template["SERVICE_ID"] = "9"
    from onestorpool.sandbox.oned_hookbus import image_state_message, vm_state_message

    keys, _ = image_state_message(image, Version("6.10"))
    assert keys[-1] == "EVENT SERVICE 9 "
    vm.user_template["SERVICE_ID"] = "4"
    keys, message = vm_state_message(vm, Version("6.10"))
    assert keys == ["EVENT VM 0/ACTIVE/RUNNING ", "EVENT STATE VM/ACTIVE/RUNNING/0 ",
                    "EVENT SERVICE 4 "]
    assert one_hm_keys(message, Version("5.10")) == keys[:2]


# -- hooks ----------------------------------------------------------------------------------

RECORDER = """#!/bin/sh
# records its arguments, stdin and host; fails when asked to
{{ printf 'args=%s\\n' "$*"; printf 'stdin='; cat
   printf '\\nhost=%s\\n' "$ONESTORPOOL_SANDBOX_HOST"; }} >> {log}
echo out; echo err >&2
[ -e {fail} ] && exit 3
exit 0
"""


def _recorder(world, name="rec"):
    hooks = world.tmp / "remotes" / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    log, fail = world.tmp / f"{name}.log", world.tmp / f"{name}.fail"
    script = hooks / name
    script.write_text(RECORDER.format(log=log, fail=fail))
    script.chmod(0o755)
    return log, fail


def _wait_records(world, hook_id, count, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        log = etree.fromstring(world.oned.call("one.hooklog.info", -1, -1, hook_id, 0))
        records = log.findall("HOOK_EXECUTION_RECORD")
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_state_hook_runs_with_the_template_and_is_logged(world):
    """Registration as Hook::insert (release-6.10.5 src/hm/Hook.cc:222, TYPE leaves the
    template; ON rewritten, src/hm/HookStateVM.cc:91); execution as onehem
    (src/hem/onehem-server.rb:128, $TEMPLATE = base64 of the VM element; the event key
    without its id, :563); the record as HookLog::add with Ruby's encode64 output
    (src/mad/ruby/CommandManager.rb:109)."""
    log, _fail = _recorder(world)
    srv = world.srv
    hook_id = srv.hook.allocate('NAME="on-running"\nTYPE="state"\nRESOURCE="VM"\nON="RUNNING"\n'
                                'COMMAND="rec"\nARGUMENTS="$TEMPLATE extra"')
    hook = srv.hook.info(hook_id)
    assert hook.TYPE == "state"
    assert (hook.TEMPLATE["STATE"], hook.TEMPLATE["LCM_STATE"]) == ("ACTIVE", "RUNNING")
    assert "TYPE" not in hook.TEMPLATE and "ON" not in hook.TEMPLATE
    assert hook.TEMPLATE["REMOTE"] == "NO"
    _image_ds, system_ds = world.datastores()
    host_id = world.oned.create_host("node1")
    vm_id = world.oned.instantiate(world.vm_template("web"), host_id, system_ds)
    [record] = _wait_records(world, hook_id, 1)
    args = record.findtext("ARGUMENTS").split(" ")
    vm = etree.fromstring(base64.b64decode(args[0]))
    assert (vm.tag, vm.findtext("ID"), vm.findtext("LCM_STATE")) == ("VM", str(vm_id), "3")
    assert args[1] == "extra"
    result = record.find("EXECUTION_RESULT")
    assert result.findtext("CODE") == "0"
    assert result.findtext("STDOUT") == "b3V0Cg==\n"  # Base64.encode64("out\n")
    assert base64.b64decode(result.findtext("STDERR")) == b"err\n"
    assert result.findtext("COMMAND").endswith(f"/hooks/rec {' '.join(args)}")
    assert record.findtext("EXECUTION_ID") == "0" and record.find("REMOTE_HOST") is None
    assert f"args={args[0]} extra" in log.read_text()
    info = world.oned.call("one.hook.info", hook_id)
    world.validate("hook.xsd", info)
    world.validate("hook_pool.xsd", world.oned.call("one.hookpool.info", -2, -1, -1))


def test_api_hook_with_stdin_remote_hook_and_retry(world):
    """API hooks fire for both results with $API = CALL_INFO (onehem-server.rb:128);
    ARGUMENTS_STDIN passes them on stdin; a REMOTE hook runs on the event's host and its
    record keeps REMOTE_HOST; one.hook.retry reads the record back (release-6.10.5
    src/hm/HookLog.cc:251,259), one_hm publishes RETRY (src/hm_mad/one_hm.rb) and onehem
    runs it again, RETRY=yes in the new record (src/hem/onehem-server.rb:643,658)."""
    log, fail = _recorder(world)
    srv = world.srv
    api = srv.hook.allocate('NAME="img"\nTYPE="api"\nCALL="one.image.allocate"\n'
                            'COMMAND="rec"\nARGUMENTS="$API"\nARGUMENTS_STDIN="yes"')
    remote = srv.hook.allocate('NAME="remote"\nTYPE="state"\nRESOURCE="HOST"\n'
                               'STATE="MONITORED"\nCOMMAND="rec"\nREMOTE="YES"\n'
                               'ARGUMENTS="$TEMPLATE"')
    image_ds, _ = world.datastores()
    with pytest.raises(pyone.OneException):
        srv.image.allocate('NAME="bad"', image_ds)  # failed calls fire API hooks too
    [record] = _wait_records(world, api, 1)
    call_info = etree.fromstring(base64.b64decode(record.findtext("ARGUMENTS")))
    assert (call_info.tag, call_info.findtext("RESULT")) == ("CALL_INFO", "0")
    assert f"stdin={record.findtext('ARGUMENTS')}" in log.read_text()
    world.oned.create_host("node1")
    [record] = _wait_records(world, remote, 1)
    assert record.findtext("REMOTE_HOST") == "node1"
    assert "host=node1" in log.read_text()
    fail.write_text("")
    sent = len(world.oned.hooks.sent)
    assert srv.hook.retry(remote, 0) == remote
    retry = [(k, p) for k, p in world.oned.hooks.sent[sent:] if k == "RETRY"]
    assert len(retry) == 1 and retry[0][1].endswith(" ")
    message = etree.fromstring(base64.b64decode(retry[0][1].split(" ")[0]))
    assert message.findtext("HOOK_ID") == str(remote)
    assert message.findtext("REMOTE_HOST") == "node1"
    records = _wait_records(world, remote, 2)
    assert records[1].findtext("RETRY") == "yes"
    assert records[1].findtext("EXECUTION_RESULT/CODE") == "3"
    failures = etree.fromstring(world.oned.call("one.hooklog.info", -1, -1, remote, -1))
    assert [r.findtext("EXECUTION_ID") for r in failures] == ["1"]
    with pytest.raises(pyone.OneInternalException, match="Arguments not found"):
        srv.hook.retry(remote, 7)
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting hook \[99\]"):
        srv.hook.retry(99, 0)


def test_hook_registration_errors():
    """RequestManagerAllocate.cc:1391 (INTERNAL for a bad TYPE), Hook.cc:249 (COMMAND)."""
    from onestorpool.sandbox.oned_hookbus import HookBus
    from onestorpool.sandbox.oned_hooks import HookManager
    from onestorpool.sandbox.oned_objects import OneFailure

    bus = HookBus()
    try:
        hooks = HookManager(bus, Version("6.10"), __import__("pathlib").Path("/nonexistent"),
                            lambda host, path: __import__("pathlib").Path("/nonexistent"), {})
        cases = [('NAME="a"\nTYPE="x"\nCOMMAND="c"', 0x2000, "Invalid Hook type: x"),
                 ('NAME="a"\nTYPE="api"\nCALL="one.vm.deploy"', 0x4000,
                  "No COMMAND in template for Hook."),
                 ('NAME="a"\nTYPE="api"\nCALL="one.vm.info"\nCOMMAND="c"', 0x4000,
                  "API call does not exist or is not supported: one.vm.info"),
                 ('NAME="a"\nTYPE="state"\nRESOURCE="VM"\nON="NOPE"\nCOMMAND="c"', 0x4000,
                  "Unkown state condition: NOPE")]
        for text, code, message in cases:
            with pytest.raises(OneFailure) as failure:
                hooks.allocate(text)
            assert failure.value.code == code and message in failure.value.message
        hooks.allocate('NAME="a"\nTYPE="api"\nCALL="one.vm.deploy"\nCOMMAND="c"')
        with pytest.raises(OneFailure, match="NAME is already taken by Hook 0"):
            hooks.allocate('NAME="a"\nTYPE="api"\nCALL="one.vm.deploy"\nCOMMAND="c"')
        hooks.close()
    finally:
        bus.close()


# -- templates and the scheduler ------------------------------------------------------------

def test_template_instantiate(world):
    """VMTemplateInstantiate (release-6.10.5 src/rm/RequestManagerVMTemplate.cc:191):
    extra attributes replace the template's, TEMPLATE_ID/TEMPLATE_NAME set, the VM named
    <template>-<id> without a name; API events for the template calls."""
    srv = world.srv
    tmpl = srv.template.allocate('NAME="small"\nCPU="1"\nMEMORY="64"\nLABEL="a"')
    world.validate("vmtemplate.xsd", world.oned.call("one.template.info", tmpl))
    world.validate("vmtemplate_pool.xsd", world.oned.call("one.templatepool.info", -2, -1,
                                                          -1))
    vm_id = srv.template.instantiate(tmpl, "", False, 'MEMORY="96"', False)
    vm = srv.vm.info(vm_id)
    assert f"small-{vm_id}" == vm.NAME
    assert (vm.TEMPLATE["MEMORY"], vm.TEMPLATE["TEMPLATE_ID"]) == ("96", str(tmpl))
    assert vm.STATE == 1
    named = srv.template.instantiate(tmpl, "mine", True, "", False)
    assert (srv.vm.info(named).NAME, srv.vm.info(named).STATE) == ("mine", 2)
    with pytest.raises(pyone.OneNoExistsException,
                       match=r"\[one.template.instantiate\] Error getting VM template \[9\]"):
        srv.template.instantiate(9, "", False, "", False)
    keys = [k for k, _ in world.oned.hooks.sent if k.startswith("EVENT API one.template")]
    assert "EVENT API one.template.allocate 1" in keys
    assert "EVENT API one.template.instantiate 0" in keys
    assert not any(k.startswith("EVENT API one.template.info") for k in keys)


@pytest.mark.parametrize(("version", "api_event"), [("6.10", True), ("7.0", False)])
def test_scheduler_places_pending_and_resumed_vms(make_world, version, api_event):
    """mm_sched (up to 6.10) calls one.vm.deploy(vid, hid, false, dsid, "") over XML-RPC
    (release-6.10.5 src/scheduler/src/pool/VirtualMachinePoolXML.cc:179): an API event;
    7.0's plan manager deploys inside oned (release-7.0.2 src/schedm/PlanManager.cc:306):
    none. Striping (sched.conf:131): the host with the fewest VMs; a VM that fits nowhere
    waits; a resumed VM goes back to PENDING and is placed again on its system datastore."""
    w = make_world(one_version=version)
    _image_ds, system_ds = w.datastores()
    first, second = w.oned.create_host("node1"), w.oned.create_host("node2")
    a = w.srv.vm.allocate(w.vm_template("a"), False)
    b = w.srv.vm.allocate(w.vm_template("b"), False)
    big = w.srv.vm.allocate(w.vm_template("big").replace('CPU="1"', 'CPU="9"'), False)
    assert sorted(w.oned.schedule_once()) == [(a, first), (b, second)]
    for vm_id in (a, b):
        w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    assert w.srv.vm.info(big).STATE == 1  # 9 CPUs fit no 8-CPU host
    deploys = [k for k, _ in w.oned.hooks.sent if k.startswith("EVENT API one.vm.deploy")]
    assert len(deploys) == (2 if api_event else 0)
    w.srv.vm.action("stop", a)
    w.oned.wait_vm(a, "STOPPED")
    w.srv.vm.action("resume", a)
    assert w.srv.vm.info(a).STATE == 1
    assert w.oned.schedule_once() == [(a, first)]
    w.oned.wait_vm(a, "ACTIVE", "RUNNING")
    assert w.oned.vms[a].last.ds_id == system_ds


def test_image_capacity_check(world):
    """ImageAllocate (release-6.10.5 src/rm/RequestManagerAllocate.cc:514,626) with
    Datastore::get_avail_mb (src/datastore/Datastore.cc:1083): after stat, SIZE above
    FREE_MB (or LIMIT_MB - USED_MB) is refused with ACTION "Not enough space in datastore"
    unless DATASTORE_CAPACITY_CHECK=NO or the skip flag is given."""
    image_ds, _ = world.datastores()
    world.oned.monitor_datastore(image_ds)
    ds = world.oned.datastores[image_ds]
    assert ds.monitored and ds.free_mb > 0
    too_big = ds.free_mb + 1
    with pytest.raises(pyone.OneActionException,
                       match=r"\[one.image.allocate\] Not enough space in datastore"):
        world.srv.image.allocate(f'NAME="big"\nSIZE="{too_big}"', image_ds)
    world.srv.datastore.update(image_ds, f'LIMIT_MB="{ds.used_mb + 1}"', 1)
    with pytest.raises(pyone.OneActionException, match="Not enough space"):
        world.srv.image.allocate('NAME="two"\nSIZE="2"', image_ds)
    assert world.srv.image.allocate('NAME="one"\nSIZE="1"', image_ds) >= 0
    world.srv.datastore.update(image_ds, 'DATASTORE_CAPACITY_CHECK="NO"', 1)
    assert world.srv.image.allocate('NAME="two"\nSIZE="2"', image_ds) >= 0
    world.srv.datastore.update(image_ds, 'DATASTORE_CAPACITY_CHECK="YES"', 1)
    assert world.srv.image.allocate('NAME="three"\nSIZE="2"', image_ds, True) >= 0
    world.oned.wait_idle()


def test_xml_rpc_failures_as_oned(world):
    """Request::execute (release-6.10.5 src/rm/Request.cc:374,396,457): the session is
    read first, a failed authentication answers [false, msg, 0x100, -1] and publishes no
    API event; parameters are read by xmlrpc-c's paramList (src/cpp/param_list.cpp): a
    missing or mistyped one is a -501 fault (no API event), extra ones are ignored; an
    unknown method is xmlrpc-c's -506 "Method '...' not defined"; a malformed XML template
    is "Parse error: XML Template malformed." (src/template/Template.cc:125) with INTERNAL."""
    import xmlrpc.client

    raw = xmlrpc.client.ServerProxy(world.oned.endpoint)
    session = world.oned.session
    sent = len(world.oned.hooks.sent)
    assert raw.one.vm.deploy("oneadmin:wrong", 0, 0) == [
        False, "[one.vm.deploy] User couldn't be authenticated, aborting call.", 0x100, -1,
        -1]
    for call, message in ((lambda: raw.one.vm.deploy(session, 0), "Not enough parameters"),
                          (lambda: raw.one.vm.deploy(session, "0", 0),
                           "Parameter that is supposed to be integer is not"),
                          (lambda: raw.one.vm.allocate(session, "NAME=x", 1),
                           "Parameter that is supposed to be boolean is not"),
                          (lambda: raw.one.vm.info(), "Not enough parameters")):
        with pytest.raises(xmlrpc.client.Fault) as fault:
            call()
        assert (fault.value.faultCode, fault.value.faultString) == (-501, message)
    assert world.oned.hooks.sent[sent:] == []  # none of these reached the API hook
    assert raw.one.image.info(session, 7, False, "ignored", 1)[:3] == [
        False, "[one.image.info] Error getting image [7].", 0x400]
    with pytest.raises(xmlrpc.client.Fault) as fault:
        raw.one.vm.nosuchcall(session)
    assert (fault.value.faultCode, fault.value.faultString) == (
        -506, "Method 'one.vm.nosuchcall' not defined")
    assert raw.one.vm.allocate(session, "<TEMPLATE><NAME>x</TEMPLATE>", False)[:3] == [
        False, "[one.vm.allocate] Parse error: XML Template malformed.", 0x2000]


def test_default_objects(world):
    """What a fresh oned has: datastores 0 system (ssh), 1 default and 2 files (fs/ssh)
    (release-6.10.5 src/datastore/DatastorePool.cc:72-140), all in cluster 0 "default";
    a deploy without a system datastore takes the cluster's first one
    (src/rm/RequestManagerVirtualMachine.cc:214)."""
    pool = world.srv.datastorepool.info().DATASTORE
    assert [(d.ID, d.NAME, d.TYPE, d.DS_MAD, d.TM_MAD) for d in pool] == [
        (0, "system", 1, "-", "ssh"), (1, "default", 0, "fs", "ssh"),
        (2, "files", 2, "fs", "ssh")]
    world.validate("datastore_pool.xsd", world.oned.call("one.datastorepool.info"))
    host_id = world.oned.create_host("node1")
    cluster = world.srv.cluster.info(0)
    assert cluster.NAME == "default"
    assert ([host_id], [0, 1, 2]) == (cluster.HOSTS.ID, cluster.DATASTORES.ID)
    world.validate("cluster.xsd", world.oned.call("one.cluster.info", 0))
    world.validate("cluster_pool.xsd", world.oned.call("one.clusterpool.info"))
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting cluster \[3\]"):
        world.srv.cluster.info(3)
    vm_id = world.srv.vm.allocate(world.vm_template("v"), False)
    world.srv.vm.deploy(vm_id, host_id, False, -1)
    assert world.oned.vms[vm_id].history[0].ds_id == 0
    world.oned.wait_idle()


@pytest.mark.parametrize("version", VERSIONS)
def test_default_users_and_groups(version):
    """Users 0 oneadmin and 1 serveradmin, groups 0 oneadmin and 1 users (release-6.10.5
    src/um/UserPool.cc, src/group/GroupPool.cc), bodies as User/Group::to_xml_extended,
    valid for every release."""
    from onestorpool.sandbox.oned_users import UserPool

    users = UserPool("oneadmin:secret")
    for schema, xml in (("user.xsd", users.user_info(-1)),
                        ("user_pool.xsd", users.userpool_info()),
                        ("group.xsd", users.group_info(1)),
                        ("group_pool.xsd", users.grouppool_info())):
        assert_valid_for(version, schema, xml)
    assert etree.fromstring(users.user_info(-1).encode()).findtext("NAME") == "oneadmin"
    names = etree.fromstring(users.userpool_info().encode()).findall("USER/NAME")
    assert [n.text for n in names] == ["oneadmin", "serveradmin"]
    assert [g.text for g in etree.fromstring(users.grouppool_info().encode())
            .findall("GROUP/NAME")] == ["oneadmin", "users"]


def test_pyone_reads_users_and_groups(world):
    assert world.srv.user.info(-1).NAME == "oneadmin"
    assert [g.NAME for g in world.srv.grouppool.info().GROUP] == ["oneadmin", "users"]
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting user \[5\]"):
        world.srv.user.info(5)


@pytest.mark.parametrize(("version", "method", "registered"), [
    ("6.4", "one.vm.backup", False), ("6.6", "one.vm.backup", True),
    ("5.12", "one.vmpool.infoset", False), ("6.0", "one.vmpool.infoset", True),
    ("6.10", "one.cluster.optimize", False), ("7.0", "one.cluster.optimize", True)])
def test_methods_per_release(make_world, version, method, registered):
    """Each release's method registry (``addMethod`` in src/rm/RequestManager.cc at
    release-<version>.0, kept in oned_methods): a method the release lacks is xmlrpc-c's
    -506 fault; one it has that the sandbox does not emulate fails as an ACTION error;
    an API hook can only be registered on a method of the release
    (HookAPI::call_exist, release-6.10.5 src/hm/HookAPI.cc)."""
    import xmlrpc.client

    from onestorpool.sandbox.oned_methods import release_methods

    w = make_world(one_version=version)
    assert (method in release_methods(Version(version))) == registered
    raw = xmlrpc.client.ServerProxy(w.oned.endpoint)
    if registered:
        reply = w.oned.dispatch(method, (w.oned.session, 0))
        assert reply[:3] == [False, f"[{method}] not emulated by the oned sandbox", 0x800]
    else:
        with pytest.raises(xmlrpc.client.Fault, match=f"Method '{method}' not defined"):
            getattr(raw, method)(w.oned.session, 0)
    hook = f'NAME="h"\nTYPE="api"\nCALL="{method}"\nCOMMAND="true"'
    if registered:
        assert w.srv.hook.allocate(hook) == 0
    else:
        with pytest.raises(pyone.OneException, match="API call does not exist"):
            w.srv.hook.allocate(hook)


def test_delete_publishes_the_body_even_when_it_fails(world):
    """ImageDelete saves the body (FORCE_DELETE already set) for the API hook before the
    deletion is attempted (release-6.10.5 src/rm/RequestManagerDelete.cc:421,428), so a
    refused delete's API event still carries the IMAGE in EXTRA."""
    image_ds, _ = world.datastores()
    image_id = world.oned.create_image(image_ds, "used", size_mb=1)
    world.srv.vm.allocate(world.vm_template("v", f'IMAGE_ID="{image_id}"'), False)
    with pytest.raises(pyone.OneActionException, match="There are 1 VMs using it"):
        world.srv.image.delete(image_id, True)
    [(_, payload)] = [(k, p) for k, p in world.oned.hooks.sent
                      if k == "EVENT API one.image.delete 0"]
    extra = X.parse_recovering(base64.b64decode(payload).decode()).find(".//EXTRA/IMAGE")
    assert extra is not None and extra.findtext("ID") == str(image_id)
    assert extra.findtext("TEMPLATE/FORCE_DELETE") == "YES"


def test_which_calls_publish_api_events():
    """HookAPI::unsupported_calls: only one.hook.info and one.hookpool.info at
    release-5.10.0 (src/hm/HookAPI.cc:24), every info call from release-5.10.2 on (the
    sandbox's 5.10 is 5.10.0); calls that are not info (one.system.version,
    one.zone.raftstatus) publish in every release."""
    from onestorpool.sandbox.oned_hookbus import publishes_api_event

    assert publishes_api_event("one.vm.info", Version("5.10"))
    assert not publishes_api_event("one.hook.info", Version("5.10"))
    for version in VERSIONS[1:]:
        assert not publishes_api_event("one.vmpool.infoextended", Version(version))
        assert not publishes_api_event("one.hooklog.info", Version(version))
        assert publishes_api_event("one.system.version", Version(version))
        assert publishes_api_event("one.zone.raftstatus", Version(version))


def test_vm_on_an_image_still_being_copied_waits_in_cloning(world):
    """A VM may take a LOCKED image: acquire_image makes it LOCKED_USED (release-6.10.5
    src/image/ImageManagerActions.cc:88), the disk gets CLONING=YES (src/image/Image.cc:675)
    and the VM starts in CLONING (src/vm/VirtualMachine.cc:1152), published at allocate
    with PREV_STATE PENDING and again by the update of insert's lock check (:1256); when
    the copy ends Image::set_state_unlock (Image.cc:1031) makes the image USED and
    trigger_disk_lock_success (src/lcm/LifeCycleStates.cc:2213) gives the disk its SOURCE
    and the VM PENDING."""
    gate = world.tmp / "mkfs-may-finish"
    world.oned.driver_env["FAKE_DS_GATE"] = f"mkfs:{gate}"
    ds = world.srv.datastore.allocate('NAME="fk"\nDS_MAD="fake"\nTM_MAD="fake"', -1)
    try:
        image_id = world.srv.image.allocate('NAME="slow"\nSIZE="1"', ds)
        assert world.srv.image.info(image_id).STATE == 4  # LOCKED: mkfs still running
        sent = len(world.oned.hooks.sent)
        vm_id = world.srv.vm.allocate(world.vm_template("v", f'IMAGE_ID="{image_id}"'),
                                      False)
        vm = world.srv.vm.info(vm_id)
        disk = vm.TEMPLATE["DISK"]
        assert (vm.STATE, vm.PREV_STATE) == (10, 10)
        assert (disk["CLONING"], disk["IMAGE_STATE"], disk["SOURCE"]) == ("YES", "9", None)
        assert world.srv.image.info(image_id).STATE == 9  # LOCKED_USED
        vm_events = [(k, _message(p)) for k, p in world.oned.hooks.sent[sent:]
                     if k.startswith("EVENT STATE VM/")]
        assert [(k.split()[2], m.findtext("VM/PREV_STATE")) for k, m in vm_events] == [
            (f"VM/CLONING/LCM_INIT/{vm_id}", "1"), (f"VM/CLONING/LCM_INIT/{vm_id}", "1")]
    finally:
        gate.write_text("")
    world.oned.wait_vm(vm_id, "PENDING")
    disk = world.srv.vm.info(vm_id).TEMPLATE["DISK"]
    assert "CLONING" not in disk and disk["SOURCE"] == f"fake/img-{image_id}"
    assert world.srv.image.info(image_id).STATE == 2
    images = _states(world.oned.hooks.sent[sent:], "EVENT STATE IMAGE/")
    assert images == ["IMAGE/LOCKED_USED/", "IMAGE/USED/"]
    world.srv.vm.action("terminate", vm_id)
    world.oned.wait_vm(vm_id, "DONE")
    assert world.srv.image.info(image_id).STATE == 1


def test_arguments_stdin_only_for_yes(world):
    """onehem's Hook#as_stdin? (release-6.10.5 src/hem/onehem-server.rb:194) evaluates
    ``astdin.casecmp('yes') || astdin.casecmp('true')``: the first integer is truthy in
    Ruby, so only YES passes the arguments on stdin; TRUE leaves them on the command
    line."""
    logs = {}
    for name, value in (("yes", "YES"), ("true", "true")):
        logs[name], _fail = _recorder(world, f"rec-{name}")
        world.srv.hook.allocate(f'NAME="{name}"\nTYPE="api"\nCALL="one.image.allocate"\n'
                                f'COMMAND="rec-{name}"\nARGUMENTS="word"\n'
                                f'ARGUMENTS_STDIN="{value}"')
    image_ds, _ = world.datastores()
    with pytest.raises(pyone.OneException):
        world.srv.image.allocate('NAME="bad"', image_ds)
    _wait_records(world, 0, 1)
    _wait_records(world, 1, 1)
    assert logs["yes"].read_text().startswith("args=\nstdin=word\n")  # YES: on stdin
    assert logs["true"].read_text().startswith("args=word\nstdin=\n")  # true: argv


@pytest.mark.parametrize(("version", "api_event"), [("6.10", True), ("7.0", False)])
def test_resched_flag_and_rescheduling(make_world, version, api_event):
    """one.vm.action resched sets RESCHED on a RUNNING/UNKNOWN or POWEROFF VM
    (release-6.10.5 src/dm/DispatchManagerActions.cc:929), refused otherwise; the
    scheduler migrates such a VM to another host that fits (cold, sched.conf
    LIVE_RESCHEDS=0: one.vm.migrate over XML-RPC up to 6.10,
    src/scheduler/src/pool/VirtualMachinePoolXML.cc:166; inside oned from 7.0), and the
    migration clears the flag (trigger_migrate, src/lcm/LifeCycleActions.cc:271)."""
    w = make_world(one_version=version)
    _image_ds, system_ds = w.datastores()
    first, second = w.oned.create_host("node1"), w.oned.create_host("node2")
    vm_id = w.oned.instantiate(w.vm_template("r"), first, system_ds)
    pending = w.srv.vm.allocate(w.vm_template("p"), True)
    with pytest.raises(pyone.OneActionException,
                       match=f"Could not set rescheduling flag for VM {pending}, wrong "
                             "state HOLD"):
        w.srv.vm.action("resched", pending)
    w.srv.vm.action("resched", vm_id)
    assert w.srv.vm.info(vm_id).RESCHED == 1
    assert w.oned.schedule_once() == [(vm_id, second)]
    w.oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    w.oned.wait_idle()
    vm = w.srv.vm.info(vm_id)
    assert vm.RESCHED == 0
    assert second == vm.HISTORY_RECORDS.HISTORY[-1].HID
    migrations = [k for k, _ in w.oned.hooks.sent if k.startswith("EVENT API one.vm.migrate")]
    assert len(migrations) == (1 if api_event else 0)
    w.srv.vm.action("resched", vm_id)
    w.srv.vm.action("unresched", vm_id)
    assert w.srv.vm.info(vm_id).RESCHED == 0


def test_only_the_emulated_releases_are_offered(tmp_path):
    """Each release the sandbox claims has its bodies, methods and conventions here; any
    other is refused rather than answered with a neighbour's forms."""
    from onestorpool.sandbox.oned import OnedSandbox
    from onestorpool.sandbox.oned_methods import RELEASES

    assert RELEASES == VERSIONS
    with pytest.raises(ValueError, match=r"emulates 5\.10, 5\.12"):
        OnedSandbox(tmp_path, tmp_path / "remotes", one_version="7.2")


@pytest.mark.parametrize(("version", "resource", "known"), [
    ("5.12", "IMAGE", False), ("6.0", "IMAGE", True), ("6.2", "NET", False),
    ("6.4", "NET", True), ("5.10", "HOST", True)])
def test_state_hook_resources_per_release(version, resource, known):
    """Hook::set_hook (src/hm/Hook.cc) builds a state hook for the resources its release
    has a HookState class for: IMAGE from release-6.0.0 (HookStateImage.cc), NET from
    release-6.4.0 (HookStateVirtualNetwork.cc)."""
    from pathlib import Path

    from onestorpool.sandbox.oned_hookbus import HookBus
    from onestorpool.sandbox.oned_hooks import HookManager
    from onestorpool.sandbox.oned_objects import OneFailure

    bus = HookBus()
    hooks = HookManager(bus, Version(version), Path("/nonexistent"),
                        lambda host, path: Path("/nonexistent"), {})
    try:
        text = f'NAME="h"\nTYPE="state"\nRESOURCE="{resource}"\nSTATE="READY"\nCOMMAND="c"'
        if resource == "HOST":
            text = text.replace("READY", "MONITORED")
        if known:
            assert hooks.allocate(text)[0] == 0
        else:
            with pytest.raises(OneFailure, match=f"Invalid resource type: {resource}"):
                hooks.allocate(text)
    finally:
        hooks.close()
        bus.close()
