"""oned over XML-RPC: endpoint and credentials as OpenNebula's tools find them, the
lightweight stdlib path and pyone, against real loopback servers: oned's answers, refused
connections, silent servers and HTTP proxies in front of oned."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingMixIn
from xmlrpc.server import SimpleXMLRPCServer

import pytest

from onestorpool import oneapi
from onestorpool.errors import AddonError
from onestorpool.retry import RetryPolicy
from tests.one.goldens import golden

SESSION = "oneadmin:sandbox-pw"
BODIES = {"one.vm.info": (42, "vm.xml", "virtual machine"),
          "one.image.info": (19, "image.xml", "image"),
          "one.datastore.info": (101, "datastore.xml", "datastore"),
          "one.host.info": (4, "host.xml", "host")}


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


class FakeOned:
    """oned's XML-RPC envelope and error codes (reference §3.2) on 127.0.0.1."""

    def __init__(self, port: int = 0):
        self.calls: list[tuple] = []
        self.delay: dict[str, float] = {}
        self.server = _Server(("127.0.0.1", port), logRequests=False, allow_none=True)
        for method in BODIES:
            self.server.register_function(self._info(method), method)
        self.server.register_function(self._answer("one.system.version", "6.10.0"),
                                      "one.system.version")
        self.server.register_function(self._answer("one.image.allocate", 77),
                                      "one.image.allocate")
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/RPC2"

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call[0] == method)

    def _enter(self, method: str, session: str, args: tuple) -> list | None:
        self.calls.append((method, session, *args))
        time.sleep(self.delay.get(method, 0))
        if session != SESSION:
            return [False, f"[{method}] User couldn't be authenticated, aborting call.",
                    oneapi.AUTHENTICATION, -1]
        return None

    def _info(self, method: str):
        def info(session, object_id, decrypt=False):
            refused = self._enter(method, session, (object_id, decrypt))
            expected_id, name, what = BODIES[method]
            if refused:
                return refused
            if object_id != expected_id:
                return [False, f"[{method}] Error getting {what} [{object_id}].",
                        oneapi.NO_EXISTS, object_id]
            return [True, golden(name), 0]
        return info

    def _answer(self, method: str, value):
        def answer(session, *args):
            return self._enter(method, session, args) or [True, value, 0]
        return answer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def credentials(monkeypatch, tmp_path):
    auth = tmp_path / "one_auth"
    auth.write_text(SESSION + "\n")
    monkeypatch.setenv("ONE_AUTH", str(auth))
    return auth


@pytest.fixture
def oned(monkeypatch, credentials) -> Iterator[FakeOned]:
    fake = FakeOned()
    monkeypatch.setenv("ONE_XMLRPC", fake.url)
    yield fake
    fake.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def policy(attempts: int, sleeps: list[float] | None = None) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, deadline=30,
                       sleep=(sleeps.append if sleeps is not None else lambda _: None))


# -- endpoint and credentials -----------------------------------------------------------------


def test_endpoint_resolution(monkeypatch, tmp_path):
    home, oneadmin = tmp_path / "home", tmp_path / "oneadmin"
    monkeypatch.delenv("ONE_XMLRPC", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(oneapi, "ONEADMIN_HOME", str(oneadmin))
    assert oneapi.endpoint() == "http://localhost:2633/RPC2"
    (oneadmin / ".one").mkdir(parents=True)
    (oneadmin / ".one/one_endpoint").write_text("http://fe-oneadmin:2633/RPC2\n")
    assert oneapi.endpoint() == "http://fe-oneadmin:2633/RPC2"
    (home / ".one").mkdir(parents=True)
    (home / ".one/one_endpoint").write_text("  http://fe-home:2633/RPC2 \n")
    assert oneapi.endpoint() == "http://fe-home:2633/RPC2"
    monkeypatch.setenv("ONE_XMLRPC", "http://fe-env:2633/RPC2")
    assert oneapi.endpoint() == "http://fe-env:2633/RPC2"


def test_credentials_resolution(monkeypatch, tmp_path):
    home, oneadmin = tmp_path / "home", tmp_path / "oneadmin"
    monkeypatch.delenv("ONE_AUTH", raising=False)
    monkeypatch.delenv("HOME", raising=False)  # drivers may run without one
    monkeypatch.setattr(oneapi, "ONEADMIN_HOME", str(oneadmin))
    with pytest.raises(AddonError, match="no OpenNebula credentials"):
        oneapi.session()
    (oneadmin / ".one").mkdir(parents=True)
    (oneadmin / ".one/one_auth").write_text("oneadmin:from-oneadmin\n")
    assert oneapi.session() == "oneadmin:from-oneadmin"
    monkeypatch.setenv("HOME", str(home))
    (home / ".one").mkdir(parents=True)
    (home / ".one/one_auth").write_text("alice:from-home\nignored second line\n")
    assert oneapi.session() == "alice:from-home"
    # a missing ONE_AUTH file falls through, as in OpenNebula's tools
    monkeypatch.setenv("ONE_AUTH", str(tmp_path / "absent"))
    assert oneapi.session() == "alice:from-home"
    (tmp_path / "named").write_text("bob:from-env")
    monkeypatch.setenv("ONE_AUTH", str(tmp_path / "named"))
    assert oneapi.session() == "bob:from-env"
    (tmp_path / "named").write_text("no-colon\n")
    with pytest.raises(AddonError, match="named: expected user:password"):
        oneapi.session()


# -- the lightweight path ---------------------------------------------------------------------


def test_one_call_returns_the_raw_body(oned):
    assert oneapi.one_call("one.vm.info", 42) == golden("vm.xml")
    assert oned.calls == [("one.vm.info", SESSION, 42, False)]
    assert oneapi.one_call("one.system.version") == "6.10.0"


def test_info_helpers_parse_the_bodies(oned):
    assert oneapi.vm_info(42).disk(1).clone
    assert oneapi.image_info(19).snapshot_ids == (0, 1)
    assert oneapi.datastore_info(101).shared
    assert oneapi.host_info(4).storpool_client_id == 12
    # the datastore is read decrypted: its template may hold the StorPool token
    assert ("one.datastore.info", SESSION, 101, True) in oned.calls


def test_oned_errors_are_not_retried(oned, credentials):
    with pytest.raises(oneapi.OneError) as caught:
        oneapi.one_call("one.vm.info", 7, retry=policy(5))
    assert caught.value.code == oneapi.NO_EXISTS and oned.count("one.vm.info") == 1
    assert str(caught.value) == "oned one.vm.info: Error getting virtual machine [7]."
    credentials.write_text("oneadmin:wrong")
    with pytest.raises(oneapi.OneError) as caught:
        oneapi.one_call("one.vm.info", 42, retry=policy(5))
    assert caught.value.code == oneapi.AUTHENTICATION and oned.count("one.vm.info") == 2
    assert "wrong" not in str(caught.value)  # the session never shows


def test_a_refused_connection_is_retried_then_reported(monkeypatch, credentials):
    monkeypatch.setenv("ONE_XMLRPC", f"http://127.0.0.1:{free_port()}/RPC2")
    sleeps: list[float] = []
    with pytest.raises(oneapi.OneTransportError, match="cannot connect") as caught:
        oneapi.one_call("one.image.allocate", "NAME=x", 1, retry=policy(3, sleeps))
    assert caught.value.transient and len(sleeps) == 2  # 3 attempts, even for a mutation


def test_a_refused_connection_recovers_when_oned_comes_back(monkeypatch, credentials):
    port = free_port()
    monkeypatch.setenv("ONE_XMLRPC", f"http://127.0.0.1:{port}/RPC2")
    started: list[FakeOned] = []

    def sleep(_seconds: float) -> None:  # oned is back before the second attempt
        if not started:
            started.append(FakeOned(port))

    try:
        assert oneapi.one_call("one.image.allocate", "NAME=x", 1,
                               retry=RetryPolicy(attempts=3, sleep=sleep)) == 77
        assert started[0].count("one.image.allocate") == 1
    finally:
        for fake in started:
            fake.stop()


def test_a_mutation_that_got_no_answer_is_not_sent_again(oned):
    oned.delay["one.image.allocate"] = 1.0
    with pytest.raises(oneapi.OneTransportError, match="no answer") as caught:
        oneapi.one_call("one.image.allocate", "NAME=x", 1, retry=policy(3), timeout=0.2)
    assert not caught.value.transient and oned.count("one.image.allocate") == 1
    with pytest.raises(oneapi.OneTransportError):
        oneapi.one_call("one.image.allocate", "NAME=x", 1, retry=policy(2), timeout=0.2,
                        idempotent=True)  # the caller knows better
    assert oned.count("one.image.allocate") == 3


def test_a_read_that_got_no_answer_is_sent_again(oned):
    oned.delay["one.vm.info"] = 1.0
    started = time.monotonic()
    with pytest.raises(oneapi.OneTransportError, match="no answer"):
        oneapi.one_call("one.vm.info", 42, retry=policy(3), timeout=0.2)
    assert oned.count("one.vm.info") == 3 and time.monotonic() - started < 3


class _Proxy(BaseHTTPRequestHandler):
    """An HTTP proxy in front of oned answering with a fixed status."""

    status, body, requests = 503, b"busy", 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch, credentials) -> Iterator[type[_Proxy]]:
    handler = type("Proxy", (_Proxy,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("ONE_XMLRPC", f"http://127.0.0.1:{server.server_address[1]}/RPC2")
    yield handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "body", "method", "requests", "message"), [
    (503, b"busy", "one.vm.info", 3, "HTTP 503"),
    (503, b"busy", "one.image.allocate", 1, "HTTP 503"),
    (404, b"no such path", "one.vm.info", 1, "HTTP 404"),
    (200, b"<html>a login page</html>", "one.vm.info", 1, "not XML-RPC"),
])
def test_http_answers_that_are_not_oned(proxy, status, body, method, requests, message):
    proxy.status, proxy.body = status, body
    with pytest.raises(oneapi.OneTransportError, match=message):
        oneapi.one_call(method, 42, retry=policy(3))
    assert proxy.requests == requests


def test_credentials_in_the_endpoint_are_not_shown(monkeypatch, credentials):
    monkeypatch.setenv("ONE_XMLRPC", f"http://user:secret@127.0.0.1:{free_port()}/RPC2")
    with pytest.raises(oneapi.OneTransportError) as caught:
        oneapi.one_call("one.vm.info", 42, retry=policy(1))
    assert "secret" not in str(caught.value) and "//***@127.0.0.1" in str(caught.value)


def test_read_only_methods():
    assert all(oneapi.is_read_only(m) for m in (
        "one.vm.info", "one.vmpool.infoextended", "one.vmpool.infoset", "one.system.version",
        "one.system.config", "one.vm.monitoring", "one.hooklog.info"))
    assert not any(oneapi.is_read_only(m) for m in (
        "one.vm.update", "one.image.allocate", "one.image.delete", "one.vm.action",
        "one.hook.retry", "one.vm.disksnapshotcreate"))


# -- pyone ------------------------------------------------------------------------------------


def test_pyone_through_the_same_resolution(oned):
    srv = oneapi.server(policy(2))
    assert srv.system.version() == "6.10.0"
    vm = srv.vm.info(42)
    assert vm.ID == 42 and vm.HISTORY_RECORDS.HISTORY[-1].DS_ID == 101
    assert vm.TEMPLATE["DISK"][1]["SOURCE"] == "one-ds-100/one-img-17"
    assert oned.calls[0][:2] == ("one.system.version", SESSION)


def test_pyone_api_errors_are_pyones_and_not_retried(oned):
    import pyone

    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting image \[3\]"):
        oneapi.server(policy(5)).image.info(3)
    assert oned.count("one.image.info") == 1


def test_pyone_refused_connection_is_retried(monkeypatch, credentials):
    monkeypatch.setenv("ONE_XMLRPC", f"http://127.0.0.1:{free_port()}/RPC2")
    sleeps: list[float] = []
    with pytest.raises(oneapi.OneTransportError, match="cannot connect"):
        oneapi.server(policy(3, sleeps)).vm.info(42)
    assert len(sleeps) == 2


def test_pyone_calls_are_bounded_by_the_timeout(oned):
    oned.delay["one.vm.info"] = 2.0
    oned.delay["one.image.allocate"] = 2.0
    srv = oneapi.server(policy(2), timeout=0.2)
    started = time.monotonic()
    with pytest.raises(oneapi.OneTransportError, match="no answer"):
        srv.vm.info(42)
    with pytest.raises(oneapi.OneTransportError, match="no answer"):
        srv.image.allocate("NAME=x", 1)
    assert time.monotonic() - started < 1.5
    assert (oned.count("one.vm.info"), oned.count("one.image.allocate")) == (2, 1)
    assert socket.getdefaulttimeout() is None  # pyone's way would have set it globally


# -- what drivers load ------------------------------------------------------------------------


def test_drivers_paths_load_neither_pyone_nor_zmq_nor_tenacity(oned):
    code = ("import sys\n"
            "import onestorpool.one\n"
            "heavy = ('pyone', 'zmq', 'tenacity', 'requests', 'xmlrpc.client')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "from onestorpool import oneapi\n"
            "assert oneapi.vm_info(42).id == 42\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", "['xmlrpc.client']"]
