"""The lean readers for large answers: a VM pool read VM by VM (the system datastore
monitor reads thousands) and XML-RPC answers read by lxml instead of xmlrpc.client."""

from __future__ import annotations

import gzip
import xmlrpc.client

import pytest

from onestorpool.errors import InputError
from onestorpool.one import iter_vm_pool
from onestorpool.oneapi import _gunzip, parse_xmlrpc_response

POOL = ("<VM_POOL><VM><ID>7</ID><TEMPLATE><DISK><DISK_ID>0</DISK_ID><IMAGE_ID>3</IMAGE_ID>"
        "<SOURCE>one-ds-1/one-img-3</SOURCE><CLONE>YES</CLONE><TYPE>BLOCK</TYPE></DISK>"
        "<DISK><DISK_ID>1</DISK_ID><TYPE>fs</TYPE><FORMAT>raw</FORMAT></DISK>"
        "<CONTEXT><DISK_ID>2</DISK_ID></CONTEXT></TEMPLATE>"
        "<SNAPSHOTS><DISK_ID>0</DISK_ID><SNAPSHOT><ID>4</ID></SNAPSHOT></SNAPSHOTS>"
        "<HISTORY_RECORDS><HISTORY><DS_ID>0</DS_ID></HISTORY><HISTORY><DS_ID>100</DS_ID>"
        "</HISTORY></HISTORY_RECORDS></VM><VM><ID>8</ID><TEMPLATE/></VM></VM_POOL>")


def test_a_pool_reads_vm_by_vm():
    first, second = iter_vm_pool(POOL)
    assert (first.id, first.system_ds, first.context_disk_id) == (7, 100, 2)
    assert first.disk(0).snapshot_ids == (4,) and first.disk(0).clone
    assert first.disk(1).get("FORMAT") == "raw" and first.disk(1).image_id is None
    assert (second.id, second.system_ds, second.disks) == (8, None, ())


@pytest.mark.parametrize(("payload", "message"), [
    ('<!DOCTYPE x [<!ENTITY a "b">]><VM_POOL/>', "DOCTYPE"),
    ("<VM_POOL><VM><ID>x</ID></VM></VM_POOL>", "expected an integer"),
    ("<VM_POOL><VM><ID>1</ID>", "malformed XML"),
    ("<VM_POOL><VM></VM></VM_POOL>", "VM/ID: missing"),
])
def test_a_bad_pool_is_one_clear_error(payload, message):
    with pytest.raises(InputError, match=message):
        list(iter_vm_pool(payload))


def test_xmlrpc_answers_as_xmlrpc_client_reads_them():
    body = xmlrpc.client.dumps(([True, "<VM_POOL/>" * 3, 0, {"a": 1.5}, None],),
                               methodresponse=True, allow_none=True).encode()
    assert parse_xmlrpc_response(body) == ([True, "<VM_POOL/>" * 3, 0, {"a": 1.5}, None],)
    fault = xmlrpc.client.dumps(xmlrpc.client.Fault(-506, "no such method")).encode()
    with pytest.raises(xmlrpc.client.Fault, match="no such method"):
        parse_xmlrpc_response(fault)
    with pytest.raises(xmlrpc.client.ResponseError, match="DOCTYPE"):
        parse_xmlrpc_response(b'<!DOCTYPE x [<!ENTITY a "b">]><methodResponse/>')


def test_a_gzip_bomb_is_refused(monkeypatch):
    monkeypatch.setattr("onestorpool.oneapi.MAX_RESPONSE_BYTES", 1 << 20)
    with pytest.raises(xmlrpc.client.ResponseError, match="larger than"):
        _gunzip(gzip.compress(b"\0" * (4 << 20)))
    assert _gunzip(gzip.compress(b"abc")) == b"abc"
