"""The StorPool client's transport: envelopes, error classes, retries, keep-alive, secrecy.

A scripted loopback HTTP server answers with exactly the bytes each case needs, so the edge
cases a real cluster or a proxy in front of it can produce are all reachable.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from onestorpool.retry import RetryPolicy
from onestorpool.storpool import (
    AlreadyExists,
    ApiError,
    Busy,
    InvalidParam,
    NotFound,
    StorPoolClient,
    TransportError,
)

TOKEN = "s3cr3t-token-value"
Reply = tuple[int, bytes] | None  # None: drop the connection without answering


class ScriptedServer:
    def __init__(self, keep_alive: bool = False):
        self.requests: list[dict] = []
        self.script: list[Callable[[dict], Reply]] = []
        self.connections = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = {"method": self.command, "path": self.path,
                           "auth": self.headers.get("Authorization"),
                           "body": json.loads(body) if body else None}
                server.requests.append(request)
                step = server.script.pop(0) if server.script else ok({})
                reply = step(request)
                if reply is None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, payload = reply
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                if server.close_after_reply:  # an idle timeout the client is not told about
                    self.close_connection = True

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        self.close_after_reply = False

    def client(self, **kwargs) -> StorPoolClient:
        kwargs.setdefault("retry", RetryPolicy(attempts=4, sleep=lambda _: None))
        return StorPoolClient("127.0.0.1", self.port, TOKEN, **kwargs)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(data) -> Callable[[dict], Reply]:
    return lambda _: (200, json.dumps({"generation": 7, "data": data}).encode())


def error(name: str, descr: str = "", transient: bool = False,
          status: int = 200) -> Callable[[dict], Reply]:
    body = {"error": {"name": name, "descr": descr, "transient": transient}}
    return lambda _: (status, json.dumps(body).encode())


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()


def test_request_shape(server):
    server.script = [ok({"ok": True, "generation": 8})]
    client = server.client()
    client.volume_create("one-img-1", size=1 << 20, template="one-ds-1", tags={"virt": "one"})
    request = server.requests[0]
    assert request["method"] == "POST"
    assert request["path"] == "/ctrl/1.0/VolumeCreate"
    assert request["auth"] == f"Storpool v1:{TOKEN}"
    # None values are dropped, as the official bindings do.
    assert request["body"] == {"name": "one-img-1", "size": 1 << 20, "template": "one-ds-1",
                               "tags": {"virt": "one"}}
    assert client.last_generation == 7


def test_names_are_path_arguments(server):
    server.script = [ok([{"name": "one-img-1"}]), ok({"ok": True})]
    client = server.client()
    assert client.volume("one-img-1")["name"] == "one-img-1"
    client.volumes_reassign_wait([{"volume": "v", "detach": "all", "force": False}], 20)
    assert server.requests[0]["path"] == "/ctrl/1.0/Volume/one-img-1"
    assert server.requests[1]["body"] == {
        "reassign": [{"volume": "v", "detach": "all", "force": False}], "attachTimeout": 20}


@pytest.mark.parametrize(("name", "descr", "cls"), [
    ("objectDoesNotExist", "no such volume", NotFound),
    ("objectExists", "volume exists", AlreadyExists),
    ("invalidParam", "bad size", InvalidParam),
    ("invalidParam", "volume is open at client 3", Busy),
    ("busy", "try later", Busy),
    ("somethingNew", "x", ApiError),
])
def test_error_names_map_to_classes(server, name, descr, cls):
    server.script = [error(name, descr)]
    with pytest.raises(cls) as caught:
        server.client().volume_delete("v")
    assert type(caught.value) is cls
    assert caught.value.name == name and descr in str(caught.value)
    assert len(server.requests) == 1  # not transient: never retried


def test_error_envelope_with_http_error_status(server):
    server.script = [error("authError", "bad token", status=401)]
    with pytest.raises(ApiError, match="authError") as caught:
        server.client().volumes_list()
    assert caught.value.status == 401


def test_transient_errors_are_retried_then_succeed(server):
    server.script = [error("busy", "later", transient=True)] * 2 + [ok([])]
    sleeps: list[float] = []
    client = server.client(retry=RetryPolicy(attempts=5, sleep=sleeps.append))
    assert client.volumes_list() == []
    assert len(server.requests) == 3
    assert len(sleeps) == 2 and all(0 <= s <= 5 for s in sleeps)


def test_retries_are_bounded(server):
    server.script = [error("busy", "later", transient=True)] * 10
    client = server.client(retry=RetryPolicy(attempts=3, sleep=lambda _: None))
    with pytest.raises(Busy):
        client.volumes_list()
    assert len(server.requests) == 3


def test_non_json_reply_is_a_transport_error(server):
    server.script = [lambda _: (502, b"<html>Bad Gateway</html>")] * 4
    with pytest.raises(TransportError, match="HTTP 502, not JSON"):
        server.client().volumes_list()
    assert len(server.requests) == 4  # a 502 from a proxy is worth retrying


def test_http_error_without_envelope(server):
    server.script = [lambda _: (500, b"{}")]
    with pytest.raises(ApiError, match="HTTP 500 without data"):
        server.client().volumes_list()


def test_dropped_connection_read_is_retried(server):
    server.script = [lambda _: None, ok([{"name": "a"}])]
    assert server.client().volumes_list() == [{"name": "a"}]


def test_dropped_connection_write_is_not_retried_blindly(server):
    """The server may have applied the write: the caller reconciles instead."""
    server.script = [lambda _: None, ok({"ok": True})]
    with pytest.raises(TransportError) as caught:
        server.client().volume_create("v", size=512)
    assert not caught.value.transient
    assert len(server.requests) == 1


def test_connection_refused_is_transient_and_bounded():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    attempts: list[float] = []
    client = StorPoolClient("127.0.0.1", port, TOKEN,
                            retry=RetryPolicy(attempts=3, sleep=attempts.append))
    with pytest.raises(TransportError, match="refused") as caught:
        client.volume_create("v", size=512)
    assert caught.value.transient and len(attempts) == 2


def test_token_never_in_errors_or_repr(server):
    server.script = [error("invalidParam", "nope")]
    client = server.client()
    assert TOKEN not in repr(client)
    with pytest.raises(ApiError) as caught:
        client.volume_delete("v")
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value.__dict__)


def test_keep_alive_reuses_one_connection_and_recovers_when_closed():
    server = ScriptedServer(keep_alive=True)
    try:
        client = server.client(retry=RetryPolicy(attempts=1))  # recovery is not a retry
        for _ in range(5):
            client.volumes_list()
        assert server.connections == 1
        server.close_after_reply = True
        client.volumes_list()  # the server silently drops the connection after this reply
        server.close_after_reply = False
        client.volume_create("v", size=512)  # a write on the stale socket: redone once
        assert server.connections == 2
        assert [r["path"] for r in server.requests].count("/ctrl/1.0/VolumeCreate") == 1
    finally:
        server.close()


def test_http_1_0_server_gets_a_new_connection_per_call(server):
    client = server.client()
    for _ in range(3):
        client.volumes_list()
    assert server.connections == 3


def test_no_nagle_on_either_side_of_a_kept_alive_connection(storpool_sandbox):
    """Headers and body in separate writes met Nagle's algorithm and delayed ACKs: ~44 ms a
    call on a kept-alive connection (issue 8 §6; bench/import_bench.py records the latency)."""
    import socket

    from onestorpool.storpool import StorPoolClient

    with StorPoolClient(storpool_sandbox.host, storpool_sandbox.port,
                        storpool_sandbox.token) as client:
        client.volumes_list()
        assert client._conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        served = list(storpool_sandbox._connections)
        assert served and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                              for s in served)
