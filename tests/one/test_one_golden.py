"""The golden fixtures are what OpenNebula's schemas describe, except where oned's code and
the schemas disagree: those places are pinned down here, and the model follows the code."""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from onestorpool.one import parse_hook_message
from tests.one.goldens import b64, golden, golden_b64, schema_errors


@pytest.mark.parametrize(("name", "xsd"), [
    ("vm.xml", "vm.xsd"),
    ("image.xml", "image.xsd"),
    ("datastore.xml", "datastore.xsd"),
    ("host.xml", "host.xsd"),
    ("hook_state_image.xml", "hook_message_state.xsd"),
    ("hook_api_allocate.xml", "hook_message_api.xsd"),
    ("hook_api_delete_failure.xml", "hook_message_api.xsd"),
])
def test_golden_documents_follow_the_schemas(name, xsd):
    assert schema_errors(xsd, golden(name)) == []


@pytest.mark.parametrize(("name", "parts"), [
    ("ds_cp.xml", {"IMAGE": "image.xsd", "DATASTORE": "datastore.xsd"}),
    ("ds_mkfs.xml", {"IMAGE": "image.xsd", "DATASTORE": "datastore.xsd"}),
    ("ds_rm.xml", {"IMAGE": "image.xsd", "DATASTORE": "datastore.xsd"}),
    ("ds_monitor.xml", {"DATASTORE": "datastore.xsd"}),
    ("vmm_attach.xml", {"VM": "vm.xsd", "DATASTORE": "datastore.xsd"}),
    ("hook_state_vm.xml", {"VM": "vm.xsd"}),
    ("hook_state_host.xml", {"HOST": "host.xsd"}),
])
def test_bodies_inside_driver_actions_and_messages_follow_the_schemas(name, parts):
    # driver actions have no schema of their own: their bodies are oned's to_xml()
    root = etree.fromstring(golden(name).encode())
    for tag, xsd in parts.items():
        assert schema_errors(xsd, root.find(tag)) == [], tag


def test_the_malformed_api_golden_is_really_malformed():
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(golden("hook_api_update_malformed.xml").encode())


# -- where hook_message_*.xsd and oned's code disagree (reference §1.4, §1.6) -----------------


def test_host_state_message_has_remote_host_before_resource_id():
    errors = schema_errors("hook_message_state.xsd", golden("hook_state_host.xml"))
    assert any("REMOTE_HOST" in error for error in errors)
    event = parse_hook_message("EVENT STATE HOST/MONITORED//4 ", golden_b64("hook_state_host.xml"))
    assert (event.object_id, event.remote_host, event.host().name) == (4, "node2", "node2")


def test_vm_state_message_carries_service_id_the_schema_does_not_know():
    errors = schema_errors("hook_message_state.xsd", golden("hook_state_vm.xml"))
    assert any("SERVICE_ID" in error for error in errors)
    event = parse_hook_message("EVENT SERVICE 7 ", golden_b64("hook_state_vm.xml"))
    assert (event.kind, event.service_id, event.object, event.object_id) == ("SERVICE", 7, "VM", 42)


def test_network_object_is_net_in_the_code_and_vnet_in_the_schema():
    as_sent = "<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>NET</HOOK_OBJECT>" \
              "<STATE>READY</STATE><RESOURCE_ID>5</RESOURCE_ID><VNET><ID>5</ID></VNET>" \
              "</HOOK_MESSAGE>"
    assert any("NET" in e for e in schema_errors("hook_message_state.xsd", as_sent))
    as_schema = as_sent.replace("<HOOK_OBJECT>NET<", "<HOOK_OBJECT>VNET<")
    for payload in (as_sent, as_schema):
        event = parse_hook_message("EVENT STATE NET/READY//5 ", b64(payload))
        assert (event.object, event.object_id, event.body("VNET").findtext("ID")) == \
            ("NET", 5, "5")


def test_retry_message_carries_remote_host_the_schema_does_not_know():
    as_sent = golden("hook_retry.xml")
    assert any("REMOTE_HOST" in e for e in schema_errors("hook_message_retry.xsd", as_sent))
    without_host = as_sent.replace("<REMOTE_HOST>node2</REMOTE_HOST>", "")
    assert schema_errors("hook_message_retry.xsd", without_host) == []
    for payload in (as_sent, without_host):
        event = parse_hook_message("RETRY", base64.b64encode(payload.encode()) + b" ")
        assert (event.hook_id, event.arguments) == (4, "VM 42 $TEMPLATE")
