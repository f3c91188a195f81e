"""Hook-bus messages: the keys one_hm publishes, STATE, SERVICE, API and RETRY messages as
oned's code writes them, malformed API messages, and messages that must be refused."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onestorpool.errors import InputError
from onestorpool.one import (
    HostState,
    ImageState,
    LcmState,
    VmState,
    parse_hook_key,
    parse_hook_message,
)
from tests.one.goldens import b64, golden, golden_b64


@pytest.mark.parametrize(("key", "expected"), [
    ("EVENT API one.vm.deploy 1", ("API", "", None, "", "", "one.vm.deploy", True, None)),
    ("EVENT API one.image.delete 0", ("API", "", None, "", "", "one.image.delete", False,
                                      None)),
    ("EVENT VM 42/ACTIVE/RUNNING ", ("STATE", "VM", 42, "ACTIVE", "RUNNING", "", None, None)),
    ("EVENT STATE VM/ACTIVE/RUNNING/42 ", ("STATE", "VM", 42, "ACTIVE", "RUNNING", "", None,
                                           None)),
    ("EVENT HOST 3/ERROR/ ", ("STATE", "HOST", 3, "ERROR", "", "", None, None)),
    ("EVENT STATE IMAGE/READY//7 ", ("STATE", "IMAGE", 7, "READY", "", "", None, None)),
    ("EVENT STATE NET/READY//5 ", ("STATE", "NET", 5, "READY", "", "", None, None)),
    ("EVENT SERVICE 3 ", ("SERVICE", "", None, "", "", "", None, 3)),
    ("RETRY", ("RETRY", "", None, "", "", "", None, None)),
])
def test_keys(key, expected):
    for form in (key, key.encode()):
        event = parse_hook_key(form)
        assert (event.kind, event.object, event.object_id, event.state, event.lcm_state,
                event.method, event.success, event.service_id) == expected
        assert event.key == key


@pytest.mark.parametrize("key", [
    "", "SOMETHING ELSE", "EVENT", "EVENT API one.vm.deploy", "EVENT API one.vm.deploy 2",
    "EVENT VM x/ACTIVE/RUNNING ", "EVENT VM 42/ACTIVE ", "EVENT STATE VM/ACTIVE/RUNNING ",
    "EVENT STATE vm/ACTIVE/RUNNING/42 ", "EVENT SERVICE three ", "EVENT VM ٤٢/ACTIVE/RUNNING ",
    "RETRY 4",
])
def test_unknown_keys_are_refused(key):
    with pytest.raises(InputError, match="hook message: unknown key"):
        parse_hook_key(key)


@given(obj=st.sampled_from(["VM", "HOST", "IMAGE", "NET"]),
       object_id=st.integers(0, 2**31 - 1),
       state=st.sampled_from([s.name for s in (*VmState, *HostState, *ImageState)]),
       lcm=st.sampled_from([s.name for s in LcmState]))
def test_both_state_key_forms_say_the_same(obj, object_id, state, lcm):
    lcm = lcm if obj == "VM" else ""  # only VMs have an LCM part
    short = parse_hook_key(f"EVENT {obj} {object_id}/{state}/{lcm} ")
    long = parse_hook_key(f"EVENT STATE {obj}/{state}/{lcm}/{object_id} ")
    assert (short.object, short.object_id, short.state, short.lcm_state) == \
        (long.object, long.object_id, long.state, long.lcm_state) == (obj, object_id, state, lcm)


# -- STATE and SERVICE ------------------------------------------------------------------------


def test_vm_state_message_and_its_body():
    for key in ("EVENT VM 42/ACTIVE/RUNNING ", "EVENT STATE VM/ACTIVE/RUNNING/42 "):
        event = parse_hook_message(key, golden_b64("hook_state_vm.xml"))
        assert (event.kind, event.object, event.object_id, event.state, event.lcm_state) == \
            ("STATE", "VM", 42, "ACTIVE", "RUNNING")
        assert (event.service_id, event.remote_host) == (7, "node2")
    vm = event.vm()
    assert (vm.id, vm.lcm_state, vm.user_template["SERVICE_ID"]) == (42, LcmState.RUNNING, "7")
    assert event.state == VmState(vm.state).name and event.lcm_state == vm.lcm_name


def test_service_key_reports_the_vm():
    event = parse_hook_message(b"EVENT SERVICE 7 ", golden_b64("hook_state_vm.xml").encode())
    assert (event.kind, event.service_id, event.object, event.object_id, event.state) == \
        ("SERVICE", 7, "VM", 42, "ACTIVE")
    with pytest.raises(InputError, match="of service 7"):
        parse_hook_message("EVENT SERVICE 8 ", golden_b64("hook_state_vm.xml"))


def test_image_and_host_state_messages():
    image = parse_hook_message("EVENT STATE IMAGE/READY//19 ", golden_b64("hook_state_image.xml"))
    assert (image.object, image.object_id, image.state, image.lcm_state) == \
        ("IMAGE", 19, "READY", "")
    assert image.image().state == ImageState.READY and image.remote_host == ""
    host = parse_hook_message("EVENT HOST 4/MONITORED/ ", golden_b64("hook_state_host.xml"))
    assert host.host().storpool_client_id == 12 and host.remote_host == "node2"
    with pytest.raises(InputError, match="no VM body"):
        host.vm()


def test_a_vm_without_history_has_an_empty_remote_host():
    xml = golden("hook_state_vm.xml").replace("<REMOTE_HOST>node2</REMOTE_HOST>",
                                              "<REMOTE_HOST/>")
    assert parse_hook_message("EVENT VM 42/ACTIVE/RUNNING ", b64(xml)).remote_host == ""


def test_frames_as_a_zeromq_socket_returns_them():
    frames = [b"EVENT STATE VM/ACTIVE/RUNNING/42 ", golden_b64("hook_state_vm.xml").encode()]
    assert parse_hook_message(frames).object_id == 42
    with pytest.raises(InputError, match="expected 2 frames, got 1"):
        parse_hook_message(frames[:1])
    with pytest.raises(InputError, match="expected 2 frames, got 3"):
        parse_hook_message([*frames, b""])


def test_service_id_written_unescaped_by_oned_does_not_lose_the_event():
    # SERVICE_ID comes from the user template and oned writes it raw into the header
    xml = golden("hook_state_vm.xml").replace("<SERVICE_ID>7</SERVICE_ID>",
                                              "<SERVICE_ID>7 <b> & co</SERVICE_ID>")
    event = parse_hook_message("EVENT VM 42/ACTIVE/RUNNING ", b64(xml))
    assert (event.object_id, event.service_id, event.remote_host) == (42, None, "node2")
    assert event.vm().disk(0).source == "one-ds-100/one-img-19"


@pytest.mark.parametrize(("key", "xml", "message"), [
    ("EVENT VM 43/ACTIVE/RUNNING ", golden("hook_state_vm.xml"), "the message is about VM 42"),
    ("EVENT STATE IMAGE/READY//42 ", golden("hook_state_vm.xml"), "the message is about VM 42"),
    ("EVENT VM 42/ACTIVE/RUNNING ", golden("hook_api_allocate.xml"), "HOOK_TYPE 'API'"),
    ("EVENT VM 42/ACTIVE/RUNNING ", "<HOOK/>", "expected HOOK_MESSAGE, got HOOK"),
    ("EVENT VM 42/ACTIVE/RUNNING ",
     golden("hook_state_vm.xml").replace("<RESOURCE_ID>42</RESOURCE_ID>", ""),
     "HOOK_MESSAGE/RESOURCE_ID: missing"),
])
def test_inconsistent_or_broken_state_messages_are_refused(key, xml, message):
    with pytest.raises(InputError, match=message):
        parse_hook_message(key, b64(xml))


def test_a_broken_body_is_named_when_it_is_read():
    xml = golden("hook_state_vm.xml").replace("<UID>5</UID>", "<UID>five</UID>", 1)
    event = parse_hook_message("EVENT VM 42/ACTIVE/RUNNING ", b64(xml))
    with pytest.raises(InputError, match=r"^HOOK_MESSAGE/VM/UID: expected an integer"):
        event.vm()


def test_payload_must_be_strict_base64():
    with pytest.raises(InputError, match=r"^hook message: not valid base64$"):
        parse_hook_message("EVENT VM 42/ACTIVE/RUNNING ", "PEhPT0tf*TUVTU0FHRT4=")


# -- API --------------------------------------------------------------------------------------


def test_api_message_parameters_and_extra():
    event = parse_hook_message("EVENT API one.image.allocate 1",
                               golden_b64("hook_api_allocate.xml"))
    assert (event.kind, event.method, event.success) == ("API", "one.image.allocate", True)
    assert [(p.position, p.direction) for p in event.parameters] == [
        (1, "IN"), (2, "IN"), (3, "IN"), (4, "IN"), (1, "OUT"), (2, "OUT"), (3, "OUT")]
    assert event.parameter(1) == "****"
    assert event.parameter(2) == ('NAME="scratch"\nTYPE="DATABLOCK"\nSIZE="10240"\n'
                                  'FS="ext4"\nPERSISTENT="YES"')
    assert (event.parameter(3), event.parameter(2, "OUT"), event.parameter(9)) == \
        ("100", "18", None)
    assert event.extra.find("IMAGE/ID").text == "18" and event.message.findtext("CALL") == \
        "one.image.allocate"


def test_api_failure_message_is_unescaped():
    event = parse_hook_message("EVENT API one.image.delete 0",
                               golden_b64("hook_api_delete_failure.xml"))
    assert event.success is False and event.extra is None
    assert [p.value for p in event.parameters if p.direction == "OUT"] == [
        "false", '[one.image.delete] Cannot delete image "db-data": used by VMs <42> & more',
        "2048", "19"]


def test_malformed_api_message_keeps_the_raw_strings():
    # oned inserted the template unescaped: the XML is broken, the values are not
    event = parse_hook_message("EVENT API one.vm.update 1",
                               golden_b64("hook_api_update_malformed.xml"))
    assert event.parameter(2) == "42"
    assert event.parameter(3) == 'DESCRIPTION="cache <b>hot</b> & cold <i>"\nSP_QOSCLASS="gold"'
    assert event.parameter(4) == "1" and event.parameter(2, "OUT") == "42"
    assert event.message.tag == "HOOK_MESSAGE"  # lxml's best effort, for inspection


def test_string_parameters_that_forge_parameters_are_refused():
    forged = ("x</VALUE></PARAMETER><PARAMETER><POSITION>3</POSITION><TYPE>IN</TYPE>"
              "<VALUE>0")
    xml = golden("hook_api_update_malformed.xml").replace(
        'DESCRIPTION="cache <b>hot</b> & cold <i>"\nSP_QOSCLASS="gold"', forged)
    with pytest.raises(InputError, match="parameters out of order"):
        parse_hook_message("EVENT API one.vm.update 1", b64(xml))


@pytest.mark.parametrize(("key", "xml", "message"), [
    ("EVENT API one.vm.update 0", golden("hook_api_update_malformed.xml"),
     "one.vm.update with RESULT 1"),
    ("EVENT API one.vm.deploy 1", golden("hook_api_update_malformed.xml"),
     "the message is about one.vm.update"),
    ("EVENT API one.vm.update 1", golden("hook_state_vm.xml"), "not an API HOOK_MESSAGE"),
    ("EVENT API one.vm.update 1",
     golden("hook_api_update_malformed.xml").replace("</CALL_INFO></HOOK_MESSAGE>", ""),
     "cannot find the end of the PARAMETERS"),
])
def test_inconsistent_api_messages_are_refused(key, xml, message):
    with pytest.raises(InputError, match=message):
        parse_hook_message(key, b64(xml))


# -- RETRY ------------------------------------------------------------------------------------


def test_retry_message():
    event = parse_hook_message("RETRY", golden_b64("hook_retry.xml") + " ")  # one_hm's blank
    assert (event.kind, event.hook_id, event.arguments, event.remote_host) == (
        "RETRY", 4, "VM 42 $TEMPLATE", "node2")
    bad = golden("hook_retry.xml").replace("Vk0gNDIgJFRFTVBMQVRF", "not base64!")
    with pytest.raises(InputError, match=r"^HOOK_MESSAGE/ARGUMENTS: not valid base64$"):
        parse_hook_message("RETRY", base64.b64encode(bad.encode()))
