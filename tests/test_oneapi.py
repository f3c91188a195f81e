"""oned access: endpoint and credentials as OpenNebula tools find them, the lightweight
driver path and pyone, both against a real local XML-RPC server."""

from __future__ import annotations

import socket
import threading
from xmlrpc.server import SimpleXMLRPCServer

import pytest

from onestorpool import oneapi
from onestorpool.errors import AddonError
from onestorpool.retry import RetryPolicy

DATASTORE = ("<DATASTORE><ID>100</ID><NAME>sp</NAME><DS_MAD>storpool</DS_MAD>"
             "<TM_MAD>storpool</TM_MAD><BASE_PATH>/var/lib/one//datastores/100</BASE_PATH>"
             "<TYPE>0</TYPE><STATE>0</STATE><CLUSTERS><ID>0</ID></CLUSTERS>"
             "<TEMPLATE><SP_API_HTTP_HOST><![CDATA[10.0.0.5]]></SP_API_HTTP_HOST>"
             "</TEMPLATE></DATASTORE>")


@pytest.fixture
def oned(monkeypatch, tmp_path):
    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    calls = []

    def datastore_info(session, ds_id, decrypt=False):
        calls.append(("one.datastore.info", session, ds_id))
        if ds_id != 100:
            return [False, f"[one.datastore.info] Error getting datastore [{ds_id}].", 0x400,
                    ds_id]
        return [True, DATASTORE, 0]

    server.register_function(datastore_info, "one.datastore.info")
    server.register_function(lambda session: [True, "6.10.0", 0], "one.system.version")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    auth = tmp_path / "auth"
    auth.write_text("oneadmin:pw\n")
    monkeypatch.setenv("ONE_XMLRPC", f"http://127.0.0.1:{server.server_address[1]}/RPC2")
    monkeypatch.setenv("ONE_AUTH", str(auth))
    yield calls
    server.shutdown()
    server.server_close()


def test_endpoint_and_session_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("ONE_XMLRPC", raising=False)
    monkeypatch.delenv("ONE_AUTH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(oneapi, "ONEADMIN_HOME", str(tmp_path / "nowhere"))
    assert oneapi.endpoint() == "http://localhost:2633/RPC2"
    with pytest.raises(AddonError, match="no OpenNebula credentials"):
        oneapi.session()
    (tmp_path / ".one").mkdir()
    (tmp_path / ".one/one_endpoint").write_text("http://fe:2633/RPC2\n")
    (tmp_path / ".one/one_auth").write_text("oneadmin:secret\n")
    assert oneapi.endpoint() == "http://fe:2633/RPC2"
    assert oneapi.session() == "oneadmin:secret"
    monkeypatch.setenv("ONE_XMLRPC", "http://other:2633/RPC2")
    assert oneapi.endpoint() == "http://other:2633/RPC2"
    (tmp_path / "bad").write_text("no-colon")
    monkeypatch.setenv("ONE_AUTH", str(tmp_path / "bad"))
    with pytest.raises(AddonError, match="user:password"):
        oneapi.session()


def test_lightweight_call(oned):
    datastore = oneapi.datastore_info(100)
    assert datastore.id == 100 and datastore.template["SP_API_HTTP_HOST"] == "10.0.0.5"
    assert oned == [("one.datastore.info", "oneadmin:pw", 100)]


def test_api_errors_are_not_retried(oned):
    with pytest.raises(oneapi.OneError, match="Error getting datastore") as caught:
        oneapi.one_call("one.datastore.info", 7, True,
                        retry=RetryPolicy(attempts=5, sleep=lambda _: None))
    assert caught.value.code == 0x400 and len(oned) == 1


def test_refused_connection_is_retried_then_reported(monkeypatch, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("ONE_XMLRPC", f"http://127.0.0.1:{port}/RPC2")
    (tmp_path / "auth").write_text("a:b")
    monkeypatch.setenv("ONE_AUTH", str(tmp_path / "auth"))
    sleeps: list[float] = []
    with pytest.raises(oneapi.OneTransportError):
        oneapi.one_call("one.system.version", retry=RetryPolicy(attempts=3,
                                                                sleep=sleeps.append))
    assert len(sleeps) == 2


def test_pyone_through_the_same_resolution(oned):
    srv = oneapi.server(RetryPolicy(attempts=2, sleep=lambda _: None))
    assert srv.system.version() == "6.10.0"
    datastore = srv.datastore.info(100)
    assert datastore.ID == 100 and datastore.TEMPLATE["SP_API_HTTP_HOST"] == "10.0.0.5"


def test_drivers_do_not_import_pyone_or_zmq():
    import subprocess
    import sys

    code = ("import sys, onestorpool.drivers.runtime, onestorpool.drivers.datastore, "
            "onestorpool.drivers.ds_request, onestorpool.eventlog; "
            "print(sorted(m for m in ('pyone', 'zmq', 'tenacity') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
