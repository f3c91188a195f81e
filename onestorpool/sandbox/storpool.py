"""The StorPool sandbox cluster: an HTTP server speaking StorPool's JSON API.

Both this project's client and the official ``storpool`` bindings (``storpool.spapi.Api``)
work against it. The model lives in :mod:`onestorpool.sandbox.storpool_state`.

Python API (tests and the demo)::

    with StorPoolSandbox(data_dir, token="t", port=0) as sp:   # serves in a thread
        sp.host, sp.port, sp.token
        sp.client_dir(1)            # host dir of client 1: <dir>/dev/storpool/<name>
        sp.add_client(7, path)      # map client 7 to another host directory
        sp.advance_clock(3600)      # expire deleteAfter snapshots
        sp.inject_faults(transient=2, latency=0.1, drop=1)
        sp.add_remote_location("other", other_sandbox)

Command line: ``onestorpool sandbox storpool --port N --data DIR --token T
[--client ID=DIR ...] [--clients N] [--capacity BYTES] [--name NAME]``.

Admin HTTP API (not part of StorPool's, under ``/sandbox/``, same token), for tests whose
drivers run in other processes: ``POST /sandbox/faults {transient, latency, drop}``,
``POST /sandbox/clock {advance}``, ``POST /sandbox/clients {id, dir}``,
``POST /sandbox/locations {name, url, token, id}``, ``POST /sandbox/receive`` (a backup sent
by another sandbox: header ``X-Sandbox-Meta`` JSON, body the data), ``GET /sandbox/info``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from onestorpool.sandbox.storpool_state import Cluster, SpError, invalid

API = "/ctrl/1.0/"
MAX_BODY = 16 << 20


class Faults:
    """Make the next calls fail: ``transient`` error replies, ``drop``ped connections, and
    ``latency`` seconds added to every call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transient = 0
        self.drop = 0
        self.latency = 0.0

    def set(self, transient: int = 0, drop: int = 0, latency: float = 0.0) -> None:
        with self.lock:
            self.transient, self.drop, self.latency = int(transient), int(drop), float(latency)

    def take(self) -> str | None:
        with self.lock:
            if self.drop > 0:
                self.drop -= 1
                return "drop"
            if self.transient > 0:
                self.transient -= 1
                return "transient"
        return None


def _route_table(cluster: Cluster) -> dict[tuple[str, str], Any]:
    c = cluster
    return {
        ("GET", "VolumesList"): lambda arg, body: c.volumes_list(),
        ("GET", "Volume"): lambda arg, body: c.volume(arg),
        ("GET", "VolumeDescribe"): lambda arg, body: c.volume_describe(arg),
        ("GET", "VolumeGetInfo"): lambda arg, body: c.volume_describe(arg),
        ("GET", "VolumeListSnapshots"): lambda arg, body: c.volume_list_snapshots(arg),
        ("POST", "VolumeCreate"): lambda arg, body: c.volume_create(_object(body)),
        ("POST", "VolumeUpdate"): lambda arg, body: c.volume_update(arg, _object(body)),
        ("POST", "VolumeDelete"): lambda arg, body: c.volume_delete(arg),
        ("POST", "VolumeRevert"): lambda arg, body: c.volume_revert(arg, _object(body)),
        ("POST", "VolumeFreeze"): lambda arg, body: c.volume_freeze(arg, body or {}),
        ("POST", "VolumeSnapshot"): lambda arg, body: c.volume_snapshot(arg, body or {}),
        ("GET", "SnapshotsList"): lambda arg, body: c.snapshots_list(),
        ("GET", "Snapshot"): lambda arg, body: c.snapshot(arg),
        ("GET", "SnapshotDescribe"): lambda arg, body: c.snapshot_describe(arg),
        ("POST", "SnapshotUpdate"): lambda arg, body: c.snapshot_update(arg, _object(body)),
        ("POST", "SnapshotDelete"): lambda arg, body: c.snapshot_delete(arg),
        ("POST", "VolumesGroupSnapshot"): lambda arg, body: c.volumes_group_snapshot(
            _object(body)),
        ("GET", "AttachmentsList"): lambda arg, body: c.attachments_list(),
        ("POST", "VolumesReassign"): lambda arg, body: c.volumes_reassign(body),
        ("POST", "VolumesReassignWait"): lambda arg, body: c.volumes_reassign(
            _object(body).get("reassign")),
        ("GET", "VolumeTemplatesList"): lambda arg, body: c.volume_templates_list(),
        ("GET", "VolumeTemplateDescribe"): lambda arg, body: c.volume_template_describe(arg),
        ("POST", "VolumeTemplateCreate"): lambda arg, body: c.volume_template_create(
            _object(body)),
        ("POST", "VolumeTemplateUpdate"): lambda arg, body: c.volume_template_update(
            arg, _object(body)),
        ("POST", "VolumeTemplateDelete"): lambda arg, body: c.volume_template_delete(arg),
        ("GET", "VolumeTemplatesStatus"): lambda arg, body: c.volume_templates_status(),
        ("GET", "VolumesSpace"): lambda arg, body: c.volumes_space(),
        ("GET", "SnapshotsSpace"): lambda arg, body: c.snapshots_space(),
        ("GET", "VolumesGetStatus"): lambda arg, body: c.volumes_status(),
        ("GET", "ServicesList"): lambda arg, body: c.services_list(),
        ("GET", "ClientsConfigDump"): lambda arg, body: c.clients_config_dump(),
        ("GET", "LocationsList"): lambda arg, body: c.locations_list(),
        ("GET", "ClustersList"): lambda arg, body: c.clusters_list(),
    }


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("expected a JSON object")
    return body


class StorPoolSandbox:
    """A sandbox cluster served over HTTP (see the module docstring)."""

    def __init__(self, data_dir: Path, token: str, port: int = 0, host: str = "127.0.0.1",
                 clients: dict[int, Path] | None = None, client_count: int = 4,
                 name: str = "sandbox", capacity: int = 1 << 40):
        self.cluster = Cluster(Path(data_dir), name=name, capacity=capacity, clients=clients,
                               client_count=client_count,
                               location_id=_location_id(name))
        self.token = token
        self.faults = Faults()
        self.routes = _route_table(self.cluster)
        self.server = ThreadingHTTPServer((host, port), _make_handler(self))
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StorPoolSandbox:
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread = None
        self.server.server_close()
        self.cluster.release_immutable_files()

    def __enter__(self) -> StorPoolSandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- Python admin API -----------------------------------------------------------------

    def client_dir(self, client_id: int) -> Path:
        return self.cluster.client_dir(client_id)

    def add_client(self, client_id: int, directory: Path) -> None:
        with self.cluster.lock:
            self.cluster.add_client(client_id, Path(directory))
            self.cluster.save()

    def advance_clock(self, seconds: float) -> None:
        self.cluster.advance_clock(seconds)

    def inject_faults(self, transient: int = 0, latency: float = 0.0, drop: int = 0) -> None:
        self.faults.set(transient=transient, drop=drop, latency=latency)

    def add_remote_location(self, name: str, other: StorPoolSandbox | str,
                            token: str | None = None) -> None:
        url, other_token, location_id = (
            (other.url, other.token, other.cluster.location_id)
            if isinstance(other, StorPoolSandbox) else (other, token or "", _location_id(name)))
        with self.cluster.lock:
            self.cluster.add_location(name, url, other_token, location_id)
            self.cluster.save()

    # -- request handling ------------------------------------------------------------------

    def handle_api(self, method: str, path: str, body: Any) -> Any:
        rest = path[len(API):]
        for prefix in ("MultiCluster/AllClusters/", "MultiCluster/"):
            rest = rest.removeprefix(prefix)
        query, _, arg = rest.partition("/")
        if (method, query) in (("POST", "VolumeBackup"), ("POST", "VolumesGroupBackup")):
            return self._backup(query, _object(body))
        if (method, query) == ("GET", "SnapshotsRemoteList"):
            return self._remote_list()
        handler = self.routes.get((method, query))
        if handler is None:
            raise SpError("invalidParam", f"unknown query {method} {query}", status=404)
        with self.cluster.lock:
            self.cluster.restore_sizes()
            self.cluster.collect_garbage()
            result = handler(unquote(arg) if arg else None, body)
            if method == "POST":
                self.cluster.save()
            return result

    def _backup(self, query: str, body: dict[str, Any]) -> dict[str, Any]:
        location = str(body.get("location"))
        tags = self.cluster._check_tags(body.get("tags"))
        volumes = [body.get("volume")] if query == "VolumeBackup" else body.get("volumes")
        if not isinstance(volumes, list) or not volumes:
            raise invalid("no volumes to back up")
        sent = {}
        for volume in volumes:
            with self.cluster.lock:
                meta, data = self.cluster.backup_snapshot_payload(str(volume), location, tags)
                remote = self.cluster.locations[location]
                self.cluster.save()
            remote_id = _send_backup(remote, meta, data, self.cluster.name)
            sent[str(volume)] = {"remoteId": remote_id, "snapshotGlobalId": meta["globalId"],
                                 "autoName": meta["localSnapshot"]}
        with self.cluster.lock:
            ok = self.cluster.ok()
        if query == "VolumeBackup":
            single = next(iter(sent.values()))
            return {**ok, "remoteId": single["remoteId"],
                    "globalId": single["snapshotGlobalId"], "autoName": single["autoName"]}
        return {**ok, "backups": {volume: {"remoteId": item["remoteId"],
                                           "snapshotGlobalId": item["snapshotGlobalId"]}
                                  for volume, item in sent.items()}}

    def _remote_list(self) -> dict[str, Any]:
        snapshots = []
        for name, location in self.cluster.locations.items():
            request = urllib.request.Request(f"{location['url']}{API}SnapshotsList",
                                             headers=_auth(location["token"]))
            with urllib.request.urlopen(request, timeout=30) as response:
                remote = json.load(response)["data"]
            for snap in remote:
                if snap.get("backup"):
                    snapshots.append({"name": snap["name"], "location": name,
                                      "creationTimestamp": snap["creationTimestamp"],
                                      "size": snap["size"], "remoteId": snap["globalId"],
                                      "tags": snap.get("tags", {})})
        return {"snapshots": snapshots}

    def handle_admin(self, method: str, path: str, body: Any, raw: bytes,
                     headers: Any) -> Any:
        action = path.removeprefix("/sandbox/")
        if (method, action) == ("GET", "info"):
            return {"name": self.cluster.name, "locationId": self.cluster.location_id,
                    "clients": {str(k): v for k, v in self.cluster.clients.items()},
                    "readonlyEnforced": self.cluster.readonly_enforced,
                    "now": self.cluster.now()}
        if (method, action) == ("POST", "receive"):
            return self._receive(raw, headers)
        body = _object(body or {})
        if (method, action) == ("POST", "faults"):
            self.inject_faults(transient=body.get("transient", 0),
                               latency=body.get("latency", 0.0), drop=body.get("drop", 0))
        elif (method, action) == ("POST", "clock"):
            self.advance_clock(float(body.get("advance", 0)))
        elif (method, action) == ("POST", "clients"):
            self.add_client(int(body["id"]), Path(str(body["dir"])))
        elif (method, action) == ("POST", "locations"):
            with self.cluster.lock:
                self.cluster.add_location(str(body["name"]), str(body["url"]),
                                          str(body.get("token", "")),
                                          str(body.get("id") or _location_id(body["name"])))
                self.cluster.save()
        else:
            raise SpError("invalidParam", f"unknown sandbox action {method} {action}",
                          status=404)
        return {"ok": True}

    def _receive(self, raw: bytes, headers: Any) -> dict[str, Any]:
        meta = json.loads(headers.get("X-Sandbox-Meta", "{}"))
        handle, name = tempfile.mkstemp(dir=self.cluster.objects_dir, prefix=".recv-")
        with os.fdopen(handle, "wb") as out:
            out.write(raw)
        with self.cluster.lock:
            remote_id = self.cluster.receive_backup(meta, Path(name),
                                                    headers.get("X-Sandbox-From", ""))
            self.cluster.save()
        return {"remoteId": remote_id}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Storpool v1:{token}"}


def _send_backup(remote: dict[str, Any], meta: dict[str, Any], data: Path,
                 source_name: str) -> str:
    request = urllib.request.Request(
        f"{remote['url']}/sandbox/receive", data=data.read_bytes(), method="POST",
        headers={**_auth(remote["token"]), "X-Sandbox-Meta": json.dumps(meta),
                 "X-Sandbox-From": source_name, "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.load(response)["data"]["remoteId"]
    except OSError as exc:
        raise SpError("remoteError", f"cannot send the backup: {exc}", transient=True) from None


def _location_id(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())[:8] or "sbx"


def _make_handler(sandbox: StorPoolSandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for our client; bindings close anyway
        server_version = "StorPoolSandbox/1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY and not self.path.startswith("/sandbox/receive"):
                self._reply(413, SpError("invalidParam", "request too large").envelope())
                return
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Authorization") != f"Storpool v1:{sandbox.token}":
                error = SpError("invalidCredentials", "invalid or missing API token")
                self._reply(401, error.envelope())
                return
            try:
                body = json.loads(raw) if raw and not self.path.startswith(
                    "/sandbox/receive") else None
            except ValueError:
                self._reply(400, SpError("jsonError", "the request is not valid JSON")
                            .envelope())
                return
            if self.path.startswith("/sandbox/"):
                self._answer(lambda: sandbox.handle_admin(method, self.path, body, raw,
                                                          self.headers))
                return
            if not self.path.startswith(API):
                self._reply(404, SpError("invalidParam", f"no such path {self.path}")
                            .envelope())
                return
            if sandbox.faults.latency:
                time.sleep(sandbox.faults.latency)
            fault = sandbox.faults.take()
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "transient":
                self._reply(503, SpError("busy", "injected transient fault", transient=True)
                            .envelope())
                return
            self._answer(lambda: sandbox.handle_api(method, self.path.split("?")[0], body))

        def _answer(self, call: Any) -> None:
            try:
                data = call()
            except SpError as exc:
                self._reply(exc.status, exc.envelope())
                return
            except (KeyError, TypeError, ValueError) as exc:
                self._reply(200, SpError("invalidParam", f"bad request: {exc}").envelope())
                return
            self._reply(200, {"generation": sandbox.cluster.generation, "data": data})

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="onestorpool sandbox storpool",
                                     description="Run a StorPool API sandbox cluster.")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data", type=Path, required=True, help="state and volume data")
    parser.add_argument("--token", default=None, help="API token (default: generated)")
    parser.add_argument("--name", default="sandbox", help="cluster/location name")
    parser.add_argument("--clients", type=int, default=4, help="default clients 1..N")
    parser.add_argument("--client", action="append", default=[], metavar="ID=DIR",
                        help="map a client id to a host directory (repeatable)")
    parser.add_argument("--capacity", type=int, default=1 << 40, help="raw bytes")
    args = parser.parse_args(argv)
    clients = {}
    for spec in args.client:
        key, sep, directory = spec.partition("=")
        if not sep or not key.isdigit():
            parser.error(f"--client expects ID=DIR, got {spec!r}")
        clients[int(key)] = Path(directory)
    token = args.token or secrets.token_hex(16)
    sandbox = StorPoolSandbox(args.data, token, port=args.port, host=args.host,
                              clients=clients, client_count=args.clients, name=args.name,
                              capacity=args.capacity)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(
        target=sandbox.server.shutdown, daemon=True).start())
    print(f"StorPool sandbox {args.name} on {sandbox.url} (data {args.data})", flush=True)
    if not args.token:
        print(f"token: {token}", flush=True)
    try:
        sandbox.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.server.server_close()
        sandbox.cluster.release_immutable_files()
    return 0
