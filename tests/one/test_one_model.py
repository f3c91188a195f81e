"""The OpenNebula XML model: typed fields, clear errors, hostile input refused, hook keys."""

from __future__ import annotations

import base64

import pytest

from onestorpool.drivers.vm_volumes import disk_volume
from onestorpool.errors import InputError
from onestorpool.naming import Naming
from onestorpool.one import (
    LcmState,
    VmState,
    parse_datastore,
    parse_ds_action,
    parse_hook_key,
    parse_hook_message,
    parse_host,
    parse_image,
    parse_vm,
)
from tests.drivers.frontend import datastore_xml, ds_action, image_xml

VM = """<VM><ID>42</ID><UID>0</UID><GID>0</GID><NAME>vm</NAME><STATE>3</STATE>
<LCM_STATE>69</LCM_STATE><TEMPLATE>
<DISK><DISK_ID>0</DISK_ID><IMAGE_ID>7</IMAGE_ID><SOURCE>one-ds-1/one-img-7</SOURCE>
<CLONE>NO</CLONE><PERSISTENT>YES</PERSISTENT><SAVE>YES</SAVE><TYPE>BLOCK</TYPE>
<SIZE>2048</SIZE><TM_MAD>storpool</TM_MAD><DATASTORE_ID>1</DATASTORE_ID></DISK>
<DISK><DISK_ID>1</DISK_ID><IMAGE_ID>8</IMAGE_ID><SOURCE>one-ds-1/one-img-8</SOURCE>
<CLONE>YES</CLONE><TYPE>BLOCK</TYPE><READONLY>NO</READONLY></DISK>
<DISK><DISK_ID>2</DISK_ID><TYPE>swap</TYPE><SIZE>512</SIZE></DISK>
<DISK><DISK_ID>3</DISK_ID><TYPE>fs</TYPE><FORMAT>raw</FORMAT></DISK>
<DISK><DISK_ID>4</DISK_ID><IMAGE_ID>9</IMAGE_ID><SOURCE>one-ds-1/one-img-9</SOURCE>
<CLONE>NO</CLONE><TYPE>CDROM</TYPE><READONLY>YES</READONLY></DISK>
<CONTEXT><DISK_ID>5</DISK_ID><NETWORK>YES</NETWORK></CONTEXT>
</TEMPLATE><USER_TEMPLATE><SP_QOSCLASS>gold</SP_QOSCLASS></USER_TEMPLATE>
<HISTORY_RECORDS><HISTORY><SEQ>0</SEQ><HOSTNAME>node1</HOSTNAME><HID>3</HID>
<DS_ID>0</DS_ID><TM_MAD>storpool</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS>
<SNAPSHOTS><DISK_ID>0</DISK_ID><SNAPSHOT><ID>0</ID></SNAPSHOT><SNAPSHOT><ID>1</ID>
</SNAPSHOT></SNAPSHOTS></VM>"""


def test_vm_fields_and_disk_volumes():
    vm = parse_vm(VM)
    assert (vm.id, vm.state, vm.lcm_state, vm.lcm_name) == (42, VmState.ACTIVE, 69, "BACKUP")
    assert LcmState.RESTORE == 71
    assert vm.disk(0).persistent and not vm.disk(0).clone and vm.disk(0).size_mb == 2048
    assert vm.disk(1).clone and vm.disk(2).is_volatile and vm.context_disk_id == 5
    assert vm.last_history.hostname == "node1" and vm.last_history.ds_id == 0
    assert vm.user_template["SP_QOSCLASS"] == "gold"
    assert vm.disk_snapshots == {0: (0, 1)}
    naming = Naming()
    assert [disk_volume(naming, vm, d) for d in range(6)] == [
        "one-img-7", "one-img-8-42-1", "one-sys-42-2-swap", "one-sys-42-3-raw",
        "one-img-9-42-4", "one-sys-42-5-iso"]
    with pytest.raises(InputError, match="no DISK with DISK_ID 9"):
        vm.disk(9)


def test_ds_action_both_encodings():
    xml = ds_action(image_xml(7, path="/x.img", size=10, template={"MD5": "ab"}),
                    datastore_xml(100, BRIDGE_LIST="a b"))
    for payload in (xml, base64.b64encode(xml.encode()).decode()):
        action = parse_ds_action(payload)
        assert action.datastore.id == 100 and action.datastore.template["BRIDGE_LIST"] == "a b"
        assert (action.image.id, action.image.path, action.image.size) == (7, "/x.img", 10)
        assert action.image.template["MD5"] == "ab" and action.image.target_snapshot is None


def test_other_bodies():
    assert parse_image(image_xml(3, target_snapshot=2)).target_snapshot == 2
    assert parse_datastore(datastore_xml(5)).cluster_ids == (0,)
    host = parse_host("<HOST><ID>3</ID><NAME>node1</NAME><STATE>2</STATE>"
                      "<TEMPLATE><SP_OURID>12</SP_OURID></TEMPLATE></HOST>")
    assert host.storpool_client_id == 12


@pytest.mark.parametrize(("xml", "message"), [
    ("<IMAGE><ID>x</ID></IMAGE>", "IMAGE/ID: expected an integer, got 'x'"),
    ("<IMAGE><NAME>a</NAME></IMAGE>", "IMAGE/ID: missing"),
    ("<IMAGE><ID>1</ID><SIZE>big</SIZE></IMAGE>", "IMAGE/SIZE: expected an integer"),
    ("<VM><ID>1</ID><STATE>99</STATE></VM>", "VM/STATE: unknown VM state 99"),
    ("<DATASTORE><ID>1</ID></DATASTORE>", "expected <IMAGE>, got <DATASTORE>"),
    ("<IMAGE><ID>1</ID>", "malformed XML"),
])
def test_missing_or_malformed_fields_are_named(xml, message):
    parser = parse_vm if xml.startswith("<VM") else parse_image
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        parser(xml)


@pytest.mark.parametrize("hostile", [
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx"><!ENTITY y "&x;&x;&x;">]>'
    "<IMAGE><ID>1</ID><NAME>&y;</NAME></IMAGE>",
    '<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><IMAGE><ID>&e;</ID></IMAGE>',
    '<!DOCTYPE IMAGE SYSTEM "http://127.0.0.1:9/x.dtd"><IMAGE><ID>1</ID></IMAGE>',
    "<IMAGE><ID>1</ID><NAME>" + "x" * (17 << 20) + "</NAME></IMAGE>",
])
def test_hostile_xml_is_refused(hostile):
    with pytest.raises(InputError) as caught:
        parse_image(hostile)
    assert "root:" not in str(caught.value)


def test_bad_base64_is_refused():
    with pytest.raises(InputError, match="not valid base64"):
        parse_ds_action("%%%not-base64%%%")


@pytest.mark.parametrize(("key", "expected"), [
    ("EVENT API one.vm.deploy 1", ("API", "", None, "", "", "one.vm.deploy", True)),
    ("EVENT API one.image.delete 0", ("API", "", None, "", "", "one.image.delete", False)),
    ("EVENT VM 42/ACTIVE/RUNNING ", ("STATE", "VM", 42, "ACTIVE", "RUNNING", "", None)),
    ("EVENT STATE VM/ACTIVE/RUNNING/42 ", ("STATE", "VM", 42, "ACTIVE", "RUNNING", "", None)),
    ("EVENT STATE IMAGE/READY//7 ", ("STATE", "IMAGE", 7, "READY", "", "", None)),
    ("EVENT IMAGE 7/READY/ ", ("STATE", "IMAGE", 7, "READY", "", "", None)),
    ("EVENT SERVICE 3 ", ("SERVICE", "SERVICE", 3, "", "", "", None)),
])
def test_hook_keys(key, expected):
    event = parse_hook_key(key)
    assert (event.kind, event.object, event.object_id, event.state, event.lcm_state,
            event.method, event.success) == expected


def test_hook_messages_state_and_malformed_api():
    state = base64.b64encode(b"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE>"
                             b"<HOOK_OBJECT>VM</HOOK_OBJECT><STATE>ACTIVE</STATE>"
                             b"<LCM_STATE>RUNNING</LCM_STATE><RESOURCE_ID>42</RESOURCE_ID>"
                             b"<VM><ID>42</ID><STATE>3</STATE></VM></HOOK_MESSAGE>")
    event = parse_hook_message(b"EVENT STATE VM/ACTIVE/RUNNING/42 ", state)
    assert event.object_id == 42 and event.body("VM").findtext("ID") == "42"
    # oned does not escape string parameters of API calls: "<" and "&" arrive raw.
    api = base64.b64encode(b"<HOOK_MESSAGE><HOOK_TYPE>API</HOOK_TYPE><CALL>one.vm.update"
                           b"</CALL><CALL_INFO><RESULT>1</RESULT><PARAMETERS><PARAMETER>"
                           b"<POSITION>2</POSITION><TYPE>IN</TYPE><VALUE>A=\"<b> & c\""
                           b"</VALUE></PARAMETER></PARAMETERS></CALL_INFO></HOOK_MESSAGE>")
    event = parse_hook_message("EVENT API one.vm.update 1", api)
    assert event.method == "one.vm.update" and event.message.findtext("CALL") == \
        "one.vm.update"
    with pytest.raises(InputError, match="unknown key"):
        parse_hook_key("SOMETHING ELSE")
