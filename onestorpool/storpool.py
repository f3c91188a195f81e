"""A small typed client of the StorPool HTTP JSON API.

Wire format (reference ``storpool-api.md`` §3): ``GET`` for reads and ``POST`` for writes on
``/ctrl/1.0/<Query>[/<name>]``, header ``Authorization: Storpool v1:<token>``, compact JSON
bodies with ``None`` values dropped, answers ``{"generation": N, "data": ...}`` or
``{"error": {"name", "descr", "transient"}}``. Errors map to exception classes by name.

Retries follow the one policy in :mod:`onestorpool.retry`: transient API errors (the cluster
says so) and connection failures before the request was sent. A write whose connection broke
after sending is *not* retried blindly; the caller reconciles (``objectExists`` on a create
retried by hand means it got through).

The connection is kept alive between calls when the server allows it; a real StorPool answers
``Connection: close`` and then every call opens a new one, as the official bindings do.
``http.client`` is imported on the first call, so importing this module stays cheap.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from onestorpool.errors import StorPoolError
from onestorpool.retry import RetryPolicy

API_PREFIX = "/ctrl/1.0/"
JSON = Any


class ApiError(StorPoolError):
    """The cluster answered with an error envelope (or an unusable reply)."""

    def __init__(self, name: str, descr: str, transient: bool = False, status: int = 200,
                 query: str = ""):
        self.name, self.descr, self.status, self.query = name, descr, status, query
        self.transient = transient
        super().__init__(f"StorPool {query}: {name}: {descr}" if query else f"{name}: {descr}")


class NotFound(ApiError):
    """``objectDoesNotExist``: deletes treat it as done."""


class AlreadyExists(ApiError):
    """``objectExists``: creates compare the existing object and accept a match."""


class InvalidParam(ApiError):
    """``invalidParam``: a bug or a configuration error; never retried."""


class Busy(ApiError):
    """``busy``, or ``invalidParam`` saying the device "is open at" a client."""


class TransportError(StorPoolError):
    """No usable answer: connection refused, reset, timed out, or not HTTP/JSON."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


_ERRORS_BY_NAME: dict[str, type[ApiError]] = {
    "objectDoesNotExist": NotFound,
    "objectExists": AlreadyExists,
    "invalidParam": InvalidParam,
    "busy": Busy,
}


def api_error(name: str, descr: str, transient: bool, status: int, query: str) -> ApiError:
    cls = _ERRORS_BY_NAME.get(name, ApiError)
    if name == "invalidParam" and "is open at" in descr:
        cls = Busy
    return cls(name, descr, transient, status, query)


def _drop_none(value: JSON) -> JSON:
    """The bindings strip ``None`` recursively; the server treats absent and null alike."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _path_arg(name: str) -> str:
    return quote(name, safe="~.:@#*-_")


_REFUSED = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}


def _exists(lookup: Any, name: str) -> bool:
    try:
        lookup(name)
    except NotFound:
        return False
    return True


class StorPoolClient:
    """One StorPool cluster. Methods name the HTTP query they make in their docstring."""

    def __init__(self, host: str, port: int, token: str, *, connect_timeout: float = 1.0,
                 timeout: float = 300.0, retry: RetryPolicy | None = None,
                 multicluster: bool = False):
        self.host, self.port = host, port
        self._token = token
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.retry = retry or RetryPolicy()
        self.multicluster = multicluster
        self._conn: Any = None
        self.last_generation: int | None = None

    @classmethod
    def from_config(cls, config: Any) -> StorPoolClient:
        """Client for a :class:`onestorpool.config.Config` (datastore overrides applied)."""
        endpoint = config.endpoint()
        retry = RetryPolicy(attempts=max(1, config["STORPOOL_RETRIES"]),
                            deadline=config["SP_API_RETRY_DEADLINE"])
        return cls(endpoint.host, endpoint.port, endpoint.token,
                   connect_timeout=config["SP_API_CONNECT_TIMEOUT"],
                   timeout=config["SP_API_TIMEOUT"], retry=retry)

    def __repr__(self) -> str:  # never the token
        return f"StorPoolClient(http://{self.host}:{self.port})"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> StorPoolClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------

    def _get(self, query: str, arg: str | None = None, mc: bool = False) -> JSON:
        return self._call("GET", query, arg, None, mc)

    def _post(self, query: str, arg: str | None = None, body: JSON = None,
              mc: bool = False) -> JSON:
        return self._call("POST", query, arg, body, mc)

    def _call(self, method: str, query: str, arg: str | None, body: JSON, mc: bool) -> JSON:
        path = API_PREFIX + ("MultiCluster/" if mc and self.multicluster else "") + query
        if arg is not None:
            path += "/" + _path_arg(arg)
        payload = None if body is None else json.dumps(_drop_none(body),
                                                       separators=(",", ":")).encode()
        return self.retry.call(lambda: self._once(method, path, query, payload),
                               f"StorPool {query}")

    def _connection(self) -> Any:
        if self._conn is None:
            import http.client  # deferred: ~30 ms that drivers pay only when they call

            self._conn = http.client.HTTPConnection(self.host, self.port,
                                                    timeout=self.connect_timeout)
        return self._conn

    def _once(self, method: str, path: str, query: str, payload: bytes | None) -> JSON:
        import http.client
        import socket

        conn = self._connection()
        fresh = conn.sock is None
        sent = False
        try:
            if fresh:
                conn.connect()
                # no Nagle: a request is one write, the reply must not wait for our ACK
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock.settimeout(self.timeout)
            headers = {"Authorization": f"Storpool v1:{self._token}"}
            if payload is not None:
                headers["Content-Length"] = str(len(payload))
            conn.request(method, path, body=payload, headers=headers)
            sent = True
            response = conn.getresponse()
            status, raw = response.status, response.read()
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if not fresh and isinstance(exc, (http.client.RemoteDisconnected,
                                              ConnectionResetError, BrokenPipeError)):
                # A kept-alive connection the server had closed: safe to redo once at once.
                return self._once(method, path, query, payload)
            raise self._transport_error(exc, method, query, sent) from None
        return self._decode(status, raw, query)

    def _transport_error(self, exc: BaseException, method: str, query: str,
                         sent: bool) -> TransportError:
        code = getattr(exc, "errno", None)
        refused = code in _REFUSED or isinstance(exc, ConnectionRefusedError)
        timed_out = isinstance(exc, TimeoutError)
        # Reads can always be repeated; a write only when it surely did not reach the server.
        transient = method == "GET" or refused or not sent
        kind = "refused" if refused else "timed out" if timed_out else (str(exc) or type(
            exc).__name__)
        return TransportError(
            f"StorPool API http://{self.host}:{self.port} {query}: {kind}", transient)

    def _decode(self, status: int, raw: bytes, query: str) -> JSON:
        try:
            reply = json.loads(raw)
        except ValueError:
            snippet = raw[:80].decode("utf-8", "replace").strip()
            raise TransportError(f"StorPool {query}: HTTP {status}, not JSON: {snippet!r}",
                                 transient=status in (502, 503, 504)) from None
        if not isinstance(reply, dict):
            raise ApiError("badReply", f"expected a JSON object, got {type(reply).__name__}",
                           status=status, query=query)
        error = reply.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ApiError("badReply", f"malformed error: {error!r:.80}", status=status,
                               query=query)
            raise api_error(str(error.get("name", "unknown")), str(error.get("descr", "")),
                            bool(error.get("transient", False)), status, query)
        if status != 200 or "data" not in reply:
            raise ApiError("badReply", f"HTTP {status} without data", status=status,
                           query=query)
        generation = reply.get("generation")
        if isinstance(generation, int):
            self.last_generation = generation
        return reply["data"]

    # -- volumes --------------------------------------------------------------------------

    def volumes_list(self) -> list[dict[str, Any]]:
        """GET VolumesList"""
        return self._get("VolumesList", mc=True)

    def _one(self, query: str, name: str) -> dict[str, Any]:
        data = self._get(query, name, mc=True)  # a list of one summary
        return data[0] if isinstance(data, list) else data

    def volume(self, name: str) -> dict[str, Any]:
        """GET Volume/{name}: the summary of one volume (raises NotFound)."""
        return self._one("Volume", name)

    def volume_exists(self, name: str) -> bool:
        return _exists(self.volume, name)

    def volume_describe(self, name: str) -> dict[str, Any]:
        """GET VolumeDescribe/{name}"""
        return self._get("VolumeDescribe", name, mc=True)

    def volume_info(self, name: str) -> dict[str, Any]:
        """GET VolumeGetInfo/{name}"""
        return self._get("VolumeGetInfo", name, mc=True)

    def volume_create(self, name: str | None = None, *, size: int | None = None,
                      template: str | None = None, parent: str | None = None,
                      base_on: str | None = None, tags: Mapping[str, str] | None = None,
                      **policy: Any) -> dict[str, Any]:
        """POST VolumeCreate. ``policy``: replication, placeAll/Tail/Head, iops, bw."""
        body = {"name": name, "size": size, "template": template, "parent": parent,
                "baseOn": base_on, "tags": dict(tags) if tags else None, **policy}
        return self._post("VolumeCreate", body=body, mc=True)

    def volume_update(self, name: str, *, size: int | None = None,
                      size_add: int | None = None, shrink_ok: bool | None = None,
                      rename: str | None = None, template: str | None = None,
                      tags: Mapping[str, str] | None = None, **policy: Any) -> dict[str, Any]:
        """POST VolumeUpdate/{name}. An empty tag value removes the tag."""
        body = {"size": size, "sizeAdd": size_add, "shrinkOk": shrink_ok, "rename": rename,
                "template": template, "tags": dict(tags) if tags is not None else None,
                **policy}
        return self._post("VolumeUpdate", name, body, mc=True)

    def volume_delete(self, name: str) -> dict[str, Any]:
        """POST VolumeDelete/{name} (fails while attached)."""
        return self._post("VolumeDelete", name, mc=True)

    def volume_revert(self, name: str, to_snapshot: str) -> dict[str, Any]:
        """POST VolumeRevert/{name}: discard the volume's data for the snapshot's."""
        return self._post("VolumeRevert", name, {"toSnapshot": to_snapshot}, mc=True)

    def volume_freeze(self, name: str, delete_after: int | None = None) -> dict[str, Any]:
        """POST VolumeFreeze/{name}: turn the volume into a snapshot."""
        body = {"deleteAfter": delete_after} if delete_after else None
        return self._post("VolumeFreeze", name, body, mc=True)

    def volume_snapshot(self, volume: str, name: str | None = None, *,
                        tags: Mapping[str, str] | None = None, bind: bool | None = None,
                        delete_after: int | None = None) -> dict[str, Any]:
        """POST VolumeSnapshot/{volume}: a named or anonymous snapshot."""
        body = {"name": name, "tags": dict(tags) if tags else None, "bind": bind,
                "deleteAfter": delete_after}
        return self._post("VolumeSnapshot", volume, body, mc=True)

    def volume_list_snapshots(self, name: str) -> list[dict[str, Any]]:
        """GET VolumeListSnapshots/{name}"""
        return self._get("VolumeListSnapshots", name)

    def volumes_space(self) -> list[dict[str, Any]]:
        """GET VolumesSpace: storedSize and spaceUsed per volume."""
        return self._get("VolumesSpace", mc=True)

    def volumes_status(self) -> dict[str, Any]:
        """GET VolumesGetStatus"""
        return self._get("VolumesGetStatus", mc=True)

    # -- snapshots ------------------------------------------------------------------------

    def snapshots_list(self) -> list[dict[str, Any]]:
        """GET SnapshotsList"""
        return self._get("SnapshotsList", mc=True)

    def snapshot(self, name: str) -> dict[str, Any]:
        """GET Snapshot/{name} (raises NotFound)."""
        return self._one("Snapshot", name)

    def snapshot_exists(self, name: str) -> bool:
        return _exists(self.snapshot, name)

    def snapshot_update(self, name: str, *, rename: str | None = None,
                        tags: Mapping[str, str] | None = None,
                        delete_after: int | None = None, **fields: Any) -> dict[str, Any]:
        """POST SnapshotUpdate/{name}"""
        body = {"rename": rename, "tags": dict(tags) if tags is not None else None,
                "deleteAfter": delete_after, **fields}
        return self._post("SnapshotUpdate", name, body)

    def snapshot_delete(self, name: str) -> dict[str, Any]:
        """POST SnapshotDelete/{name}"""
        return self._post("SnapshotDelete", name, mc=True)

    def volumes_group_snapshot(self, volumes: Sequence[Mapping[str, Any]],
                               tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST VolumesGroupSnapshot: one crash-consistent snapshot of several volumes.

        ``volumes`` items are ``{"volume": v, "name": snapshot, "tags": {...}}``.
        """
        body = {"volumes": [dict(v) for v in volumes], "tags": dict(tags) if tags else None}
        return self._post("VolumesGroupSnapshot", body=body, mc=True)

    def snapshots_space(self) -> list[dict[str, Any]]:
        """GET SnapshotsSpace"""
        return self._get("SnapshotsSpace", mc=True)

    # -- attachments ----------------------------------------------------------------------

    def attachments_list(self) -> list[dict[str, Any]]:
        """GET AttachmentsList"""
        return self._get("AttachmentsList", mc=True)

    def volumes_reassign(self, items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """POST VolumesReassign: returns before the clients apply the change."""
        return self._post("VolumesReassign", body=[dict(i) for i in items], mc=True)

    def volumes_reassign_wait(self, items: Iterable[Mapping[str, Any]],
                              attach_timeout: int | None = None) -> dict[str, Any]:
        """POST VolumesReassignWait: returns once the clients caught up.

        Items: ``{"volume"|"snapshot": name, "rw"|"ro": [client ids], "detach": [ids] |
        "all", "force": bool}``.
        """
        body = {"reassign": [dict(i) for i in items], "attachTimeout": attach_timeout}
        return self._post("VolumesReassignWait", body=body, mc=True)

    def attach(self, name: str, client: int, *, mode: str = "rw", snapshot: bool = False,
               timeout: int | None = None, force: bool = False) -> dict[str, Any]:
        """Attach one volume or snapshot to one client (``VolumesReassignWait``)."""
        if mode not in ("rw", "ro"):
            raise ValueError(f"attach mode must be rw or ro, got {mode!r}")
        item = {"snapshot" if snapshot else "volume": name, mode: [client], "force": force}
        return self.volumes_reassign_wait([item], attach_timeout=timeout)

    def detach(self, name: str, clients: Sequence[int] | None = None, *,
               snapshot: bool = False, force: bool = False) -> dict[str, Any]:
        """Detach from the given clients, or from all (``VolumesReassignWait``)."""
        item = {"snapshot" if snapshot else "volume": name,
                "detach": "all" if clients is None else list(clients), "force": force}
        return self.volumes_reassign_wait([item])

    # -- templates, services, space -------------------------------------------------------

    def volume_templates_list(self) -> list[dict[str, Any]]:
        """GET VolumeTemplatesList"""
        return self._get("VolumeTemplatesList")

    def volume_template_describe(self, name: str) -> dict[str, Any]:
        """GET VolumeTemplateDescribe/{name}"""
        return self._get("VolumeTemplateDescribe", name)

    def volume_template_create(self, name: str, **policy: Any) -> dict[str, Any]:
        """POST VolumeTemplateCreate"""
        return self._post("VolumeTemplateCreate", body={"name": name, **policy})

    def volume_template_update(self, name: str, **policy: Any) -> dict[str, Any]:
        """POST VolumeTemplateUpdate/{name}"""
        return self._post("VolumeTemplateUpdate", name, policy)

    def volume_template_delete(self, name: str) -> dict[str, Any]:
        """POST VolumeTemplateDelete/{name}"""
        return self._post("VolumeTemplateDelete", name)

    def volume_templates_status(self) -> list[dict[str, Any]]:
        """GET VolumeTemplatesStatus: capacity and free space per template."""
        return self._get("VolumeTemplatesStatus")

    def services_list(self) -> dict[str, Any]:
        """GET ServicesList"""
        return self._get("ServicesList")

    def clients_config_dump(self) -> list[dict[str, Any]]:
        """GET ClientsConfigDump"""
        return self._get("ClientsConfigDump")

    # -- remote locations and backups -----------------------------------------------------

    def locations_list(self) -> list[dict[str, Any]]:
        """GET LocationsList"""
        return self._get("LocationsList")["locations"]

    def clusters_list(self) -> list[dict[str, Any]]:
        """GET ClustersList"""
        return self._get("ClustersList")["clusters"]

    def volume_backup(self, volume: str, location: str,
                      tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST VolumeBackup: send a snapshot of the volume to a remote location."""
        body = {"volume": volume, "location": location, "tags": dict(tags) if tags else None}
        return self._post("VolumeBackup", body=body, mc=True)

    def volumes_group_backup(self, volumes: Sequence[str], location: str,
                             tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST VolumesGroupBackup"""
        body = {"volumes": list(volumes), "location": location,
                "tags": dict(tags) if tags else None}
        return self._post("VolumesGroupBackup", body=body, mc=True)

    def snapshots_remote_list(self) -> list[dict[str, Any]]:
        """GET SnapshotsRemoteList"""
        return self._get("SnapshotsRemoteList")["snapshots"]
