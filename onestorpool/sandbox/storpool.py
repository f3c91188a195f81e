"""The StorPool sandbox cluster: an HTTP server speaking StorPool's JSON API.

Both this project's client (:mod:`onestorpool.storpool`) and the official ``storpool``
bindings (``storpool.spapi.Api(host, port, auth=token)``) work against it: same paths
(``/ctrl/1.0/<Query>[/<name>]``, ``MultiCluster/`` accepted), GET for reads and POST for
writes, ``Authorization: Storpool v1:<token>``, replies ``{"generation": N, "data": ...}`` or
``{"error": {"name", "descr", "transient"}}``. The model and its semantics (data files, device
links, read-only enforcement, delayed deletion, space accounting) are described in
:mod:`onestorpool.sandbox.storpool_state`, request validation in
:mod:`~onestorpool.sandbox.storpool_checks`, the backing files in
:mod:`~onestorpool.sandbox.storpool_data`.

Python API (tests and the demo; keep it stable)::

    from onestorpool.sandbox.storpool import StorPoolSandbox

    with StorPoolSandbox(data_dir, token="t") as sp:  # port=0: a free port; serves in a thread
        sp.host, sp.port, sp.url, sp.token
        sp.client_dir(1)               # host directory of client 1 (default <data>/clients/1)
        sp.device(1, "one-img-5")      # <client dir>/dev/storpool/one-img-5 (when attached)
        sp.add_client(7, path)         # a new client id, or move one to another directory
        sp.now(); sp.advance_clock(3600)   # the clock deleteAfter/targetDeleteDate follow
        sp.inject_faults(transient=2)  # the next 2 API calls fail with a transient error
        sp.inject_faults(drop=1)       # the next call's connection is dropped, unanswered
        sp.inject_faults(drop_after=1) # the next call is applied, then dropped unanswered
        sp.inject_faults(latency=0.2, queries={"VolumeCreate"})  # only for those queries
        sp.clear_faults()
        sp.add_remote_location("site-b", other_sandbox)  # or a URL plus token=...
        sp.cluster                     # the model (storpool_state.Cluster), for assertions

Constructor: ``StorPoolSandbox(data_dir, token, port=0, *, host="127.0.0.1", clients=None,
client_count=4, name="sandbox", capacity=None, allow_shared_rw=False, keep_alive=True)``.
``clients`` maps extra client ids to host directories; ``capacity`` is raw bytes (default
1 TiB, or what the data directory remembers); ``allow_shared_rw`` lets a volume be attached
read-write to several clients without ``force``; ``keep_alive=False`` answers HTTP/1.0 with
``Connection: close`` like a real cluster. Starting on an existing data directory resumes its
state (objects, attachments and device links, templates, clients, locations, clock).
:meth:`StorPoolSandbox.stop` clears the immutable flags so the directory can be removed.

Admin HTTP API, for drivers and daemons under test running in other processes. Not part of
StorPool's API, under ``/sandbox/`` (never ``/ctrl/1.0``), same token, JSON bodies, replies in
the same envelopes:

* ``GET /sandbox/info`` → ``{name, locationId, url, clients: {id: dir}, readonlyEnforced,
  now, faults}``;
* ``POST /sandbox/faults {transient?, drop?, dropAfter?, latency?, queries?: [names],
  error?: name}`` replaces the fault plan (``{}`` clears it);
* ``POST /sandbox/clock {advance: seconds}`` → ``{now}``;
* ``POST /sandbox/clients {id, dir?}`` registers a client (default dir
  ``<data>/clients/<id>``);
* ``POST /sandbox/locations {name, url, token, id?}`` registers another sandbox as a remote
  location (``id``: its location id, see its ``/sandbox/info``);
* between sandboxes (backups and copies): ``POST /sandbox/receive``,
  ``GET /sandbox/exports?location=ID`` and ``GET /sandbox/fetch/<globalId>?location=ID``.
  Their data bodies are framed as ``X-Sandbox-Meta-Length: N`` header, N bytes of JSON
  metadata (with the list of data extents), then the extents' bytes.

Command line (``onestorpool sandbox storpool``): ``--port N --data DIR --token T
[--host H] [--name NAME] [--clients N] [--client ID=DIR ...] [--capacity SIZE]
[--allow-shared-rw] [--http10]``, or ``--data DIR --release`` to clear the immutable flags of
a sandbox that was killed. It prints one line ``StorPool sandbox NAME on URL ...`` once it
answers, and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hmac
import http.client
import json
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from onestorpool.sandbox import storpool_data as data
from onestorpool.sandbox.storpool_checks import (
    SpError,
    check_int,
    check_object,
    check_tags,
    invalid,
    location_id_for,
)
from onestorpool.sandbox.storpool_state import Cluster

log = logging.getLogger(__name__)

API = "/ctrl/1.0/"
ADMIN = "/sandbox/"
MAX_JSON_BODY = 16 << 20
REMOTE_TIMEOUT = 300.0
VOLUME_OR_GLOBAL_ID = re.compile(r"^#?[A-Za-z0-9_\-.:]+$|^~[a-z0-9]+\.[a-z0-9]+\.[a-z0-9]+$")

Handler = Callable[[str | None, Any], Any]


class Faults:
    """The fault plan: make the next calls fail, drop their connection, or slow them down.

    ``transient``: that many calls answer an error with ``transient: true`` (name
    ``error``, HTTP 503). ``drop``: that many calls get their connection closed without an
    answer, before anything is done. ``drop_after``: that many calls are applied, then their
    connection is closed without an answer (a write that went through but whose reply was
    lost). ``latency``: seconds added to every call while set. ``queries``: only calls to
    these query names count (default: all). Faults apply to ``/ctrl/1.0`` calls only.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.set()

    def set(self, transient: int = 0, latency: float = 0.0, drop: int = 0,
            drop_after: int = 0, queries: Iterable[str] | None = None,
            error: str = "busy") -> None:
        values = {"transient": transient, "drop": drop, "drop_after": drop_after}
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0
               for v in values.values()):
            raise ValueError(f"fault counts must be non-negative integers: {values}")
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            raise ValueError(f"latency must be a non-negative number of seconds: {latency!r}")
        if isinstance(queries, str):
            queries = [queries]
        with self.lock:
            self.transient, self.drop, self.drop_after = transient, drop, drop_after
            self.latency = float(latency)
            self.queries = frozenset(queries) if queries else None
            self.error = str(error)

    def applies(self, query: str) -> bool:
        return self.queries is None or query in self.queries

    def take(self, query: str) -> str | None:
        """The fault for this call, if any, counting it down."""
        with self.lock:
            if not self.applies(query):
                return None
            for kind in ("drop", "transient", "drop_after"):
                if getattr(self, kind) > 0:
                    setattr(self, kind, getattr(self, kind) - 1)
                    return kind
        return None

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {"transient": self.transient, "drop": self.drop,
                    "dropAfter": self.drop_after, "latency": self.latency,
                    "queries": sorted(self.queries) if self.queries else None,
                    "error": self.error}


class StorPoolSandbox:
    """A sandbox cluster served over HTTP (see the module docstring)."""

    def __init__(self, data_dir: Path, token: str, port: int = 0, *, host: str = "127.0.0.1",
                 clients: dict[int, Path] | None = None, client_count: int = 4,
                 name: str = "sandbox", capacity: int | None = None,
                 allow_shared_rw: bool = False, keep_alive: bool = True):
        if not token:
            raise ValueError("the sandbox needs an API token")
        self.cluster = Cluster(Path(data_dir), name=name, capacity=capacity, clients=clients,
                               client_count=client_count, allow_shared_rw=allow_shared_rw)
        self.token = token
        self.faults = Faults()
        self.api_calls: list[str] = []  # query names of the /ctrl/1.0 calls, in order
        self.keep_alive = keep_alive
        self._routes = _routes(self.cluster)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        try:
            self.server = ThreadingHTTPServer((host, port), _handler_class(self))
        except BaseException:  # e.g. the port is taken: leave the data directory removable
            self.cluster.files.release_immutable_files()
            raise
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]

    def __repr__(self) -> str:  # never the token
        return f"StorPoolSandbox({self.cluster.name!r}, {self.url})"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def data_dir(self) -> Path:
        """The (absolute) data directory: ``state.json``, ``objects/``, ``clients/``."""
        return self.cluster.data_dir

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> StorPoolSandbox:
        """Serve in a background thread; returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.server.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name=f"storpool-sandbox-{self.name}", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``self.server.shutdown()``."""
        self.server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving, close open connections, and clear the immutable flags (so the data
        directory can be removed; they come back on the next start). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server.server_close()
        with self._connections_lock:  # kept-alive connections must not outlive the server
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self.cluster.files.close()

    def __enter__(self) -> StorPoolSandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- Python admin API -------------------------------------------------------------------

    def client_dir(self, client_id: int) -> Path:
        """The host directory of a client; its devices are ``dev/storpool/<name>`` in it."""
        return self.cluster.client_dir(client_id)

    def device(self, client_id: int, name: str) -> Path:
        """Where the volume or snapshot ``name`` appears on a client once attached."""
        return self.client_dir(client_id) / "dev" / "storpool" / name

    def add_client(self, client_id: int, directory: Path | None = None) -> None:
        """Register a client (default directory ``<data>/clients/<id>``) or move one."""
        self.cluster.files.add_client(client_id, Path(directory) if directory is not None
                                else self.data_dir / "clients" / str(client_id))

    def now(self) -> int:
        """The sandbox clock (unix time)."""
        return self.cluster.now()

    def advance_clock(self, seconds: float) -> int:
        """Move the sandbox clock forward; expired snapshots go away. Returns the new time."""
        return self.cluster.advance_clock(seconds)

    def inject_faults(self, transient: int = 0, latency: float = 0.0, drop: int = 0, *,
                      drop_after: int = 0, queries: Iterable[str] | None = None,
                      error: str = "busy") -> None:
        """Replace the fault plan (see :class:`Faults`); no arguments clears it."""
        self.faults.set(transient=transient, latency=latency, drop=drop,
                        drop_after=drop_after, queries=queries, error=error)

    def clear_faults(self) -> None:
        self.faults.set()

    def add_remote_location(self, name: str, other: StorPoolSandbox | str,
                            token: str | None = None, location_id: str | None = None) -> None:
        """Register another sandbox cluster as the remote location ``name``: the object, or
        its URL with its ``token`` (and ``location_id``, default derived from ``name``)."""
        if isinstance(other, StorPoolSandbox):
            url, token, location_id = other.url, other.token, other.cluster.location_id
        elif token is None:
            raise ValueError("a remote location given by URL needs its token")
        else:
            url, location_id = other, location_id or location_id_for(name)
        self.cluster.remote_api.add_location(name, url, token, location_id)

    # -- the StorPool API -------------------------------------------------------------------

    def handle_api(self, method: str, query: str, arg: str | None, body: Any) -> Any:
        """Answer one API call: the reply's ``data``, or :class:`SpError`."""
        network = _NETWORK_CALLS.get((method, query))
        if network is not None:
            return getattr(self, network)(query, body)
        handler = self._routes.get((method, query))
        if handler is None:
            other = "POST" if method == "GET" else "GET"
            if (other, query) in self._routes or (other, query) in _NETWORK_CALLS:
                raise SpError("invalidParam", f"{query} must be called with {other}",
                              status=405)
            raise SpError("invalidParam", f"unknown API call {query}", status=404)
        with self.cluster.transaction():
            return handler(arg, body)

    def _backup(self, query: str, body: Any) -> dict[str, Any]:
        """``VolumeBackup``/``VolumesGroupBackup``: snapshot the volumes (one instant, locally,
        as ``bind`` snapshots), then send the snapshots to the location's sandbox."""
        single = query == "VolumeBackup"
        body = check_object(body, query, {"volume", "location", "tags"} if single
                            else {"volumes", "location", "tags"})
        volumes = [body.get("volume")] if single else body.get("volumes")
        if not isinstance(volumes, list) or not volumes:
            raise invalid("volumes must be a non-empty list of volume names")
        tags = check_tags(body.get("tags"))
        with contextlib.ExitStack() as files:
            with self.cluster.transaction():
                transfers = self.cluster.remote_api.prepare_backups(volumes, body.get("location"),
                                                                    tags)
                # Opened under the lock: a concurrent delete cannot pull a file away.
                readers = [files.enter_context(data.ExtentReader(t["path"], t["meta"]["size"]))
                           for t in transfers]
            sent = [(t["meta"], self._send(t, reader))
                    for t, reader in zip(transfers, readers, strict=True)]
        with self.cluster.transaction():
            ok = self.cluster.ok()
        if single:
            meta, remote_id = sent[0]
            return {**ok, "remoteId": remote_id, "globalId": meta["snapshotGlobalId"],
                    "autoName": meta["snapshot"]}
        return {**ok, "backups": {meta["volume"]: {"remoteId": remote_id,
                                                   "snapshotGlobalId": meta["snapshotGlobalId"]}
                                  for meta, remote_id in sent}}

    @staticmethod
    def _send(transfer: dict[str, Any], reader: data.ExtentReader) -> str:
        reply = _remote_call(transfer["location"], "POST", f"{ADMIN}receive",
                             meta={**transfer["meta"], "extents": reader.extents},
                             stream=(reader.length, iter(reader)))
        return str(reply["remoteId"])

    def _remote_list(self, query: str, body: Any) -> dict[str, Any]:
        """``SnapshotsRemoteList``: what every location keeps for us (backups, exports)."""
        with self.cluster.lock:
            locations = dict(self.cluster.locations)
            ours = self.cluster.location_id
        snapshots = []
        for name, location in locations.items():
            entries = _remote_call(location, "GET", f"{ADMIN}exports?location={ours}")
            with self.cluster.lock:
                copies = self.cluster.remote_api.local_copies()
                by_id = {s["globalId"]: s["name"] for s in self.cluster.snapshots.values()
                         if not s["deleted"]}
            for entry in entries:
                local = copies.get((name, entry["globalId"])) or by_id.get(entry.get(
                    "backupOf") or "")
                snapshots.append({
                    "name": entry["name"] if VOLUME_OR_GLOBAL_ID.match(entry["name"])
                    else entry["onVolume"],
                    "location": name, "creationTimestamp": entry["creationTimestamp"],
                    "size": entry["size"], "remoteId": entry["globalId"],
                    "onVolume": entry["onVolume"], "tags": entry["tags"],
                    **({"localSnapshot": local} if local else {})})
        return {"snapshots": snapshots}

    def _from_remote(self, query: str, body: Any) -> dict[str, Any]:
        """``SnapshotFromRemote``/``VolumeFromRemote``: copy a snapshot a location keeps for
        us (a backup we sent, or one it exported to us) into a local snapshot (and volume)."""
        volume = query == "VolumeFromRemote"
        with self.cluster.transaction():
            body = self.cluster.remote_api.check_from_remote(body, volume)
            location = dict(self.cluster.remote_api.location(body["remoteLocation"]))
            ours = self.cluster.location_id
        staged = self.cluster.objects_dir / f".pull-{secrets.token_hex(8)}"
        try:
            meta = _remote_fetch(location, f"{ADMIN}fetch/{body['remoteId']}?location={ours}",
                                 staged)
            with self.cluster.transaction():
                return self.cluster.remote_api.import_remote(body, meta, staged, volume)
        finally:
            staged.unlink(missing_ok=True)

    # -- the admin API ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        with self.cluster.lock:
            return {"name": self.cluster.name, "locationId": self.cluster.location_id,
                    "url": self.url,
                    "clients": {str(k): v for k, v in sorted(self.cluster.clients.items())},
                    "readonlyEnforced": self.cluster.readonly_enforced,
                    "now": self.cluster.now(), "faults": self.faults.describe()}

    def handle_admin(self, method: str, action: str, params: dict[str, str], body: Any) -> Any:
        if (method, action) == ("GET", "info"):
            return self.info()
        if (method, action) == ("GET", "exports"):
            with self.cluster.lock:
                return self.cluster.remote_api.exported_to(params.get("location", ""))
        body = check_object(body, f"/sandbox/{action}")
        if (method, action) == ("POST", "faults"):
            unknown = set(body) - {"transient", "drop", "dropAfter", "latency", "queries",
                                   "error"}
            if unknown:
                raise invalid(f"unknown fault(s) {', '.join(sorted(unknown))}")
            try:
                self.inject_faults(transient=body.get("transient", 0),
                                   latency=body.get("latency", 0.0), drop=body.get("drop", 0),
                                   drop_after=body.get("dropAfter", 0),
                                   queries=body.get("queries"),
                                   error=body.get("error", "busy"))
            except ValueError as exc:
                raise invalid(str(exc)) from None
            return {"ok": True, "faults": self.faults.describe()}
        if (method, action) == ("POST", "clock"):
            advance = body.get("advance", 0)
            if isinstance(advance, bool) or not isinstance(advance, int | float) or advance < 0:
                raise invalid("advance must be a non-negative number of seconds")
            return {"ok": True, "now": self.advance_clock(advance)}
        if (method, action) == ("POST", "clients"):
            directory = body.get("dir")
            if directory is not None and not isinstance(directory, str):
                raise invalid("dir must be a path")
            self.add_client(body.get("id"), Path(directory) if directory else None)
            return {"ok": True}
        if (method, action) == ("POST", "locations"):
            name, url, token = body.get("name"), body.get("url"), body.get("token")
            if not all(isinstance(v, str) and v for v in (name, url, token)):
                raise invalid("a location needs name, url and token")
            self.add_remote_location(name, url, token=token,
                                     location_id=body.get("id") or location_id_for(name))
            return {"ok": True}
        raise SpError("invalidParam", f"unknown sandbox action {method} {action}",
                      status=404)

    def receive(self, meta: dict[str, Any], stream: BinaryIO, length: int) -> dict[str, Any]:
        """Store a snapshot another sandbox sends (``POST /sandbox/receive``)."""
        extents = _extents(meta.get("extents"), length)
        size = check_int(meta.get("size"), "size", 512)
        staged = self.cluster.objects_dir / f".recv-{secrets.token_hex(8)}"
        try:
            data.write_extents(stream, staged, size, extents)
            with self.cluster.transaction():
                return {"remoteId": self.cluster.remote_api.receive_backup(meta, staged)}
        finally:
            staged.unlink(missing_ok=True)

    def fetch(self, global_id: str, location_id: str
              ) -> tuple[dict[str, Any], data.ExtentReader]:
        """The metadata and data of a snapshot exported to ``location_id``. The file is
        opened under the lock, so a concurrent delete cannot pull it away half-read."""
        with self.cluster.lock:
            entry = self.cluster.remote_api.export_for(global_id, location_id)
            snapshot = self.cluster.snapshots[entry["name"]]
            return entry, data.ExtentReader(self.cluster.object_path(snapshot), entry["size"])


_NETWORK_CALLS = {("POST", "VolumeBackup"): "_backup", ("POST", "VolumesGroupBackup"): "_backup",
                  ("GET", "SnapshotsRemoteList"): "_remote_list",
                  ("POST", "SnapshotFromRemote"): "_from_remote",
                  ("POST", "VolumeFromRemote"): "_from_remote"}


def _routes(cluster: Cluster) -> dict[tuple[str, str], Handler]:
    """(method, query) -> handler(arg, body) for every call answered from the model."""
    c = cluster
    vol, snap, att, tmpl, remote = (c.vol_api, c.snap_api, c.attach_api, c.tmpl_api,
                                    c.remote_api)

    def named(call: Callable[..., Any], *, body: bool = False) -> Handler:
        def handler(arg: str | None, payload: Any) -> Any:
            if not arg:
                raise invalid("this call needs a name in its path")
            return call(arg, payload) if body else call(arg)
        return handler

    def plain(call: Callable[[], Any]) -> Handler:
        return lambda arg, payload: call()

    def reassign_wait(arg: str | None, payload: Any) -> Any:
        payload = check_object(payload, "VolumesReassignWait", {"reassign", "attachTimeout"})
        if payload.get("attachTimeout") is not None:
            check_int(payload["attachTimeout"], "attachTimeout", 0)
        # Sandbox clients apply a change at once, so there is never anything to wait for.
        return att.volumes_reassign(payload.get("reassign"))

    return {
        ("GET", "VolumesList"): plain(vol.volumes_list),
        ("GET", "Volume"): named(vol.volume),
        ("GET", "VolumeDescribe"): named(vol.volume_describe),
        ("GET", "VolumeGetInfo"): named(vol.volume_info),
        ("GET", "VolumeListSnapshots"): named(vol.volume_list_snapshots),
        ("GET", "VolumesSpace"): plain(tmpl.volumes_space),
        ("GET", "VolumesGetStatus"): plain(tmpl.volumes_status),
        ("GET", "VolumesGetStatusQuick"): plain(lambda: tmpl.volumes_status(quick=True)),
        ("POST", "VolumeCreate"): lambda arg, payload: vol.volume_create(payload),
        ("POST", "VolumeUpdate"): named(vol.volume_update, body=True),
        ("POST", "VolumeDelete"): named(vol.volume_delete),
        ("POST", "VolumeRevert"): named(vol.volume_revert, body=True),
        ("POST", "VolumeFreeze"): named(vol.volume_freeze, body=True),
        ("POST", "VolumeSnapshot"): named(snap.volume_snapshot, body=True),
        ("GET", "SnapshotsList"): plain(snap.snapshots_list),
        ("GET", "Snapshot"): named(snap.snapshot),
        ("GET", "SnapshotDescribe"): named(snap.snapshot_describe),
        ("GET", "SnapshotGetInfo"): named(snap.snapshot_info),
        ("GET", "SnapshotsSpace"): plain(tmpl.snapshots_space),
        ("POST", "SnapshotUpdate"): named(snap.snapshot_update, body=True),
        ("POST", "SnapshotDelete"): named(snap.snapshot_delete),
        ("POST", "SnapshotDeleteById"): named(snap.snapshot_delete_by_id),
        ("POST", "VolumesGroupSnapshot"): lambda arg, payload: snap.volumes_group_snapshot(
            payload),
        ("POST", "SnapshotExport"): lambda arg, payload: remote.snapshot_export(payload),
        ("POST", "SnapshotUnexport"): lambda arg, payload: remote.snapshot_unexport(payload),
        ("GET", "AttachmentsList"): plain(att.attachments_list),
        ("POST", "VolumesReassign"): lambda arg, payload: att.volumes_reassign(payload),
        ("POST", "VolumesReassignWait"): reassign_wait,
        ("GET", "VolumeTemplatesList"): plain(tmpl.volume_templates_list),
        ("GET", "VolumeTemplateDescribe"): named(tmpl.volume_template_describe),
        ("GET", "VolumeTemplatesStatus"): plain(tmpl.volume_templates_status),
        ("POST", "VolumeTemplateCreate"): lambda arg, payload: tmpl.volume_template_create(
            payload),
        ("POST", "VolumeTemplateUpdate"): named(tmpl.volume_template_update, body=True),
        ("POST", "VolumeTemplateDelete"): named(tmpl.volume_template_delete),
        ("GET", "ServicesList"): plain(tmpl.services_list),
        ("GET", "ClientsConfigDump"): plain(tmpl.clients_config_dump),
        ("GET", "ClientConfigWait"): named(tmpl.client_config_wait),
        ("GET", "LocationsList"): plain(remote.locations_list),
        ("GET", "ClustersList"): plain(remote.clusters_list),
    }


def _split_api_path(path: str) -> tuple[str, str | None]:
    """``/ctrl/1.0/[MultiCluster/[AllClusters/]]Query[/arg]`` -> (query, arg)."""
    rest = path[len(API):]
    if rest.startswith("RemoteCommand/"):
        raise invalid("RemoteCommand (multicluster forwarding) is not emulated by the sandbox")
    rest = rest.removeprefix("MultiCluster/").removeprefix("AllClusters/")
    query, _, arg = rest.partition("/")
    return query, unquote(arg) if arg else None


def _extents(raw: Any, length: int) -> list[tuple[int, int]]:
    if not isinstance(raw, list):
        raise invalid("extents must be a list of [offset, length]")
    extents = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(v, int) and v >= 0 for v in item)):
            raise invalid(f"bad extent {item!r}")
        extents.append((item[0], item[1]))
    if sum(n for _, n in extents) != length:
        raise invalid("the extents do not add up to the data sent")
    return extents


# -- talking to another sandbox ----------------------------------------------------------------


def _connection(location: dict[str, Any]) -> http.client.HTTPConnection:
    parts = urlsplit(location["url"])
    if parts.scheme != "http" or not parts.hostname:
        raise invalid(f"location URL {location['url']!r} is not http://host:port")
    return http.client.HTTPConnection(parts.hostname, parts.port or 80,
                                      timeout=REMOTE_TIMEOUT)


def _remote_error(location: dict[str, Any], exc: BaseException) -> SpError:
    return SpError("remoteError", f"remote location {location['url']} unreachable: "
                   f"{exc or type(exc).__name__}", transient=True)


def _framed(meta: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(meta, separators=(",", ":")).encode()
    return header, {"X-Sandbox-Meta-Length": str(len(header))}


def _read_reply(location: dict[str, Any], response: http.client.HTTPResponse) -> Any:
    raw = response.read()
    try:
        reply = json.loads(raw)
    except ValueError:
        raise SpError("remoteError", f"remote location {location['url']} answered HTTP "
                      f"{response.status} without JSON", transient=True) from None
    if "error" in reply:
        error = reply["error"]
        raise SpError(str(error.get("name")), f"remote location: {error.get('descr')}",
                      bool(error.get("transient")))
    return reply["data"]


def _remote_call(location: dict[str, Any], method: str, path: str,
                 meta: dict[str, Any] | None = None,
                 stream: tuple[int, Iterator[bytes]] | None = None) -> Any:
    """One admin call to another sandbox; ``meta`` and ``stream`` make a framed body."""
    headers = {"Authorization": f"Storpool v1:{location['token']}"}
    body: Any = None
    if meta is not None:
        header, extra = _framed(meta)
        length, chunks = stream or (0, iter(()))
        headers.update(extra, **{"Content-Length": str(len(header) + length),
                                 "Content-Type": "application/octet-stream"})
        body = _chain(header, chunks)
    conn = _connection(location)
    try:
        conn.request(method, path, body=body, headers=headers)
        return _read_reply(location, conn.getresponse())
    except (OSError, http.client.HTTPException) as exc:
        raise _remote_error(location, exc) from None
    finally:
        conn.close()


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _remote_fetch(location: dict[str, Any], path: str, staged: Path) -> dict[str, Any]:
    """Copy a snapshot from another sandbox into ``staged``; returns its metadata."""
    conn = _connection(location)
    try:
        conn.request("GET", path, headers={"Authorization": f"Storpool v1:{location['token']}"})
        response = conn.getresponse()
        meta_length = response.getheader("X-Sandbox-Meta-Length")
        if response.status != 200 or meta_length is None:
            _read_reply(location, response)  # raises the remote's error
            raise SpError("remoteError", "remote location sent no snapshot", transient=True)
        meta = json.loads(response.read(int(meta_length)))
        extents = [tuple(e) for e in meta["extents"]]
        data.write_extents(response, staged, int(meta["size"]), extents)
        return meta
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _remote_error(location, exc) from None
    finally:
        conn.close()


# -- HTTP ----------------------------------------------------------------------------------------


def _handler_class(sandbox: StorPoolSandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # A real cluster answers HTTP/1.0 with Connection: close; our client keeps connections
        # alive when it may, which HTTP/1.1 allows.
        protocol_version = "HTTP/1.1" if sandbox.keep_alive else "HTTP/1.0"
        server_version = "StorPoolSandbox/1"

        def setup(self) -> None:
            super().setup()
            # headers and body leave in two writes: without this, Nagle's algorithm holds
            # the body until the client's delayed ACK (~40 ms a call on a kept-alive link)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sandbox._track(self.connection, True)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                sandbox._track(self.connection, False)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            path, _, query_string = self.path.partition("?")
            params = {k: v[-1] for k, v in parse_qs(query_string).items()}
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length < 0:
                    raise ValueError
            except ValueError:
                self._error(SpError("invalidParam", "bad Content-Length", status=400), True)
                return
            expected = f"Storpool v1:{sandbox.token}"
            if not hmac.compare_digest(self.headers.get("Authorization", "").encode(),
                                       expected.encode()):
                self._discard(length)
                self._error(SpError("invalidCredentials", "invalid or missing API token",
                                    status=401))
                return
            if path == f"{ADMIN}receive" and method == "POST":
                self._answer(lambda: self._receive(length))
                return
            if length > MAX_JSON_BODY:
                self._error(SpError("invalidParam", "request body too large", status=413),
                            True)
                return
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else (json.loads(params["json"])
                                                    if "json" in params else None)
            except ValueError as exc:
                self._error(SpError("jsonError", f"the request is not valid JSON: {exc}",
                                    status=400))
                return
            if path.startswith(f"{ADMIN}fetch/") and method == "GET":
                self._fetch(path.removeprefix(f"{ADMIN}fetch/"), params.get("location", ""))
            elif path.startswith(ADMIN):
                self._answer(lambda: sandbox.handle_admin(method, path.removeprefix(ADMIN),
                                                          params, body))
            elif path.startswith(API):
                self._api(method, path, body)
            else:
                self._error(SpError("invalidParam", f"no such path {path}", status=404))

        def _api(self, method: str, path: str, body: Any) -> None:
            try:
                query, arg = _split_api_path(path)
            except SpError as exc:
                self._error(exc)
                return
            sandbox.api_calls.append(query)
            faults = sandbox.faults
            if faults.latency and faults.applies(query):
                time.sleep(faults.latency)
            fault = faults.take(query)
            if fault == "drop":
                self._drop()
                return
            if fault == "transient":
                self._error(SpError(faults.error, f"injected transient fault in {query}",
                                    transient=True, status=503))
                return
            if fault == "drop_after":
                with contextlib.suppress(Exception):  # applied or not, nobody hears of it
                    sandbox.handle_api(method, query, arg, body)
                self._drop()
                return
            self._answer(lambda: sandbox.handle_api(method, query, arg, body))

        def _receive(self, length: int) -> Any:
            meta_length = int(self.headers.get("X-Sandbox-Meta-Length") or -1)
            if not 0 < meta_length <= min(length, MAX_JSON_BODY):
                self.close_connection = True
                raise SpError("invalidParam", "missing X-Sandbox-Meta-Length", status=400)
            try:
                meta = json.loads(self.rfile.read(meta_length))
            except ValueError:
                self.close_connection = True
                raise SpError("jsonError", "bad metadata", status=400) from None
            try:
                return sandbox.receive(check_object(meta, "metadata"), self.rfile,
                                       length - meta_length)
            except BaseException:
                self.close_connection = True  # the rest of the body may be unread
                raise

        def _fetch(self, global_id: str, location_id: str) -> None:
            try:
                entry, reader = sandbox.fetch(unquote(global_id), location_id)
            except SpError as exc:
                self._error(exc)
                return
            with reader:
                header, extra = _framed({**entry, "extents": reader.extents})
                self.send_response(200)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(header) + reader.length))
                self._connection_header()
                self.end_headers()
                self.wfile.write(header)
                for chunk in reader:
                    self.wfile.write(chunk)

        def _answer(self, call: Callable[[], Any]) -> None:
            try:
                result = call()
            except SpError as exc:
                self._error(exc)
                return
            except Exception as exc:  # a sandbox bug: say so in StorPool's envelope
                log.exception("sandbox %s: %s %s failed", sandbox.name, self.command,
                              self.path)
                self._error(SpError("internalError", f"{type(exc).__name__}: {exc}",
                                    status=500))
                return
            self._reply(200, {"generation": sandbox.cluster.generation, "data": result})

        def _error(self, error: SpError, close: bool = False) -> None:
            if close:
                self.close_connection = True
            self._reply(error.status, error.envelope())

        def _discard(self, length: int) -> None:
            if length > MAX_JSON_BODY:
                self.close_connection = True
            elif length:
                self.rfile.read(length)

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _connection_header(self) -> None:
            if not sandbox.keep_alive or self.close_connection:
                self.send_header("Connection", "close")
                self.close_connection = True

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self._connection_header()
            self.end_headers()
            self.wfile.write(body)

    return Handler


# -- command line ------------------------------------------------------------------------------

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """``1099511627776``, ``512G``, ``1T`` (binary units) -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGTP]?)(?:i?B)?\s*", text.upper())
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="onestorpool sandbox storpool",
                                     description="Run a StorPool API sandbox cluster.")
    parser.add_argument("--port", type=int, default=8081, help="TCP port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--data", type=Path, required=True,
                        help="directory for the state and the volumes' data")
    parser.add_argument("--token", default=None,
                        help="API token (default: $ONESTORPOOL_SANDBOX_TOKEN, else generated)")
    parser.add_argument("--name", default="sandbox", help="cluster and location name")
    parser.add_argument("--clients", type=int, default=4, metavar="N",
                        help="clients 1..N exist with directories under DATA/clients")
    parser.add_argument("--client", action="append", default=[], metavar="ID=DIR",
                        help="host directory of a client id (repeatable)")
    parser.add_argument("--capacity", type=parse_size, default=None,
                        help="raw capacity, e.g. 1T (default: as saved, else 1 TiB)")
    parser.add_argument("--allow-shared-rw", action="store_true",
                        help="allow read-write attachment to several clients without force")
    parser.add_argument("--http10", action="store_true",
                        help="answer HTTP/1.0 with Connection: close, as a real cluster")
    parser.add_argument("--release", action="store_true",
                        help="clear the immutable flags under --data and exit")
    args = parser.parse_args(argv)
    if args.release:
        data.release_immutable_files(args.data)
        return 0
    clients: dict[int, Path] = {}
    for spec in args.client:
        key, sep, directory = spec.partition("=")
        if not sep or not key.strip().isdigit() or not directory:
            parser.error(f"--client expects ID=DIR, got {spec!r}")
        clients[int(key)] = Path(directory)
    token = args.token or os.environ.get("ONESTORPOOL_SANDBOX_TOKEN") or secrets.token_hex(16)
    try:
        sandbox = StorPoolSandbox(args.data, token, port=args.port, host=args.host,
                                  clients=clients, client_count=args.clients, name=args.name,
                                  capacity=args.capacity,
                                  allow_shared_rw=args.allow_shared_rw,
                                  keep_alive=not args.http10)
    except OSError as exc:
        taken = exc.errno == errno.EADDRINUSE
        reason = f"{args.host}:{args.port} is already in use (--port)" if taken else str(exc)
        parser.exit(1, f"ERROR: cannot start the StorPool sandbox: {reason}\n")
    except (RuntimeError, ValueError, SpError) as exc:
        parser.exit(1, f"ERROR: cannot start the StorPool sandbox: {exc}\n")

    def stop(*_: object) -> None:  # shutdown() waits for serve_forever: not from its thread
        threading.Thread(target=sandbox.server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"StorPool sandbox {sandbox.name} on {sandbox.url} (data {args.data}, location id "
          f"{sandbox.cluster.location_id})", flush=True)
    if not args.token and not os.environ.get("ONESTORPOOL_SANDBOX_TOKEN"):
        print(f"token: {token}", flush=True)
    try:
        sandbox.serve_forever()
    finally:
        sandbox.stop()
    return 0
