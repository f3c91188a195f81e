"""The StorPool sandbox cluster's model: volumes, snapshots, templates, attachments, clients.

:class:`Cluster` holds one emulated cluster's state (tables, persistence, transactions,
clock, lookups); its parts answer the queries: :class:`VolumeApi` (``cluster.vol_api``),
:class:`SnapshotApi`, :class:`AttachmentApi`, :class:`DeviceFiles`, :class:`TemplateApi`,
:class:`RemoteApi`. Their public methods are named after the API
queries they answer (``volume_create`` for ``VolumeCreate``) and return exactly the ``data``
part of StorPool's reply, in the shapes the official bindings' ``sptypes`` parse without
falling back to partial objects. They validate requests as a real cluster does
(:mod:`.storpool_checks`) and raise :class:`SpError` with StorPool's error names
(``objectDoesNotExist``, ``objectExists``, ``invalidParam``, ``busy``); the HTTP layer in
:mod:`onestorpool.sandbox.storpool` turns that into the error envelope. Callers hold
:meth:`Cluster.transaction` around every call (the HTTP layer does).

Semantics worth knowing (each mirrors StorPool unless marked *sandbox*):

* Data. Every volume and snapshot is a sparse file ``<data>/objects/<globalId>``
  (:mod:`.storpool_data`). A snapshot, and a volume created from a ``parent`` snapshot or
  ``baseOn`` another volume, starts as a point-in-time copy of its source. Snapshots are
  always read-only (immutable files).
* Names. Volumes and snapshots share one namespace; names follow the bindings' regexes
  (< 200 characters, ``list``/``status`` reserved). Objects are also reachable as
  ``~<globalId>``. A volume created without a name is called ``~<globalId>``, an anonymous
  snapshot ``*<globalId>`` (*sandbox* spellings).
* Chains. Snapshotting a volume makes the snapshot the volume's ``parentName``; the snapshot's
  own parent is the volume's previous parent. A deleted snapshot that still has children stays
  listed with ``deleted: true`` (its name stays taken) and goes away with its last child; a
  ``bind`` snapshot does the same without being deleted. ``targetDeleteDate``/``deleteAfter``
  are evaluated against the sandbox clock (:meth:`Cluster.advance_clock`).
* Attachments. Attaching to client N links ``<client dir>/dev/storpool/<name>`` (and
  ``dev/storpool-byid/<globalId>``) to the object's file; detaching removes the links.
  Unknown client ids are refused. A volume attached read-write to a second client, or
  read-write and read-only at once, is refused unless the item says ``force: true`` (or the
  cluster was made with ``allow_shared_rw``, as live migration on a real cluster needs). A
  volume attached read-only everywhere is immutable, so writes through any link fail. A
  detach without ``force`` of a volume or snapshot that some process still has open answers
  ``busy`` "... is open at client N", as StorPool does for an open device (the sandbox can
  only tell this when the detach leaves the object attached nowhere).
* Writes through a device link go straight to the backing file; a write that truncates it
  (``open(dev, "w")``, ``dd`` without ``conv=notrunc``) is undone before the next API call by
  restoring the object's size, since no block device can be truncated (*sandbox*).
* Space. ``VolumeTemplatesStatus`` reports a configured raw capacity (default 1 TiB) minus the
  allocated bytes (``st_blocks``) of every object times its replication, divided by the
  template's replication. Clones are full sparse copies here, so shared data is counted once
  per object (*sandbox*: a real cluster shares it).
* Remote locations are other sandbox clusters. ``VolumeBackup`` takes a local ``bind``
  snapshot and sends its data ranges to the location, where it becomes a snapshot with
  ``backup: true`` named ``<volume>@<source snapshot globalId>``; ``SnapshotsRemoteList``
  shows what locations keep for us (our backups, snapshots exported to us), and
  ``SnapshotFromRemote``/``VolumeFromRemote`` copy one back. Transfers are synchronous, so
  ``recoveringFromRemote`` is always false (*sandbox*).
* Every call is a transaction: a request that fails leaves the model as it was. The state is
  saved atomically to ``<data>/state.json`` (temporary file, fsync, rename) after every change;
  starting on the same directory resumes it, device links and flags included.

Not emulated: placement groups as objects (any valid name is accepted), disks and
per-disk info, iSCSI, KVS, multicluster forwarding (``RemoteCommand``), ``VolumeRebase``,
clients going down (every client is always running, so ``attachTimeout`` never expires).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onestorpool.sandbox import storpool_data as data
from onestorpool.sandbox.storpool_checks import (
    GLOBAL_ID_RE,
    LOCATION_ID_RE,
    LOCATION_LIMIT,
    NAME_LIMIT,
    POLICY_KEYS,
    SNAPSHOT_RE,
    SNAPSHOT_REASSIGN_KEYS,
    SNAPSHOT_UPDATE_KEYS,
    TEMPLATE_CREATE_KEYS,
    TEMPLATE_RE,
    TEMPLATE_UPDATE_KEYS,
    VOLUME_CREATE_KEYS,
    VOLUME_FREEZE_KEYS,
    VOLUME_RE,
    VOLUME_REASSIGN_KEYS,
    VOLUME_SNAPSHOT_KEYS,
    VOLUME_UPDATE_KEYS,
    SpError,
    base36,
    check_bool,
    check_client,
    check_int,
    check_name,
    check_object,
    check_policy,
    check_size,
    check_tags,
    exists,
    invalid,
    location_id_for,
    not_found,
)

__all__ = ["AttachmentApi", "Cluster", "DeviceFiles", "RemoteApi", "SnapshotApi", "SpError",
           "TemplateApi", "VolumeApi", "invalid", "location_id_for"]

log = logging.getLogger(__name__)

MAX_ATTACHMENT_POS = 1023
DEFAULT_REPLICATION = 3
DEFAULT_PLACEMENT = "default"
OBJECT_SIZE = 32 << 20  # StorPool splits volumes into 32 MiB objects
SUBCLUSTER_ID = "b"  # the middle part of every global id this sandbox hands out
STATE_VERSION = 1

SUMMARY_KEYS = ("name", "size", "replication", "placeAll", "placeTail", "placeHead",
                "templateName", "parentName", "globalId", "visibleVolumeId",
                "creationTimestamp", "objectsCount", "tags", "iops", "bw", "reuseServer")
SNAPSHOT_KEYS = ("onVolume", "autoName", "bound", "deleted", "transient",
                 "recoveringFromRemote", "targetDeleteDate", "backup", "backupOfGlobalId",
                 "backupOfVisibleVolumeId")


# -- the cluster -----------------------------------------------------------------------------


class Cluster:
    """One emulated StorPool cluster (see the module docstring).

    ``capacity`` is the raw capacity in bytes (``None``: as saved, or 1 TiB). ``clients``
    maps client ids to host directories; clients ``1..client_count`` exist by default with
    directories ``<data>/clients/<id>``. The state in ``<data>/state.json`` is loaded when
    present: volumes, snapshots, templates, attachments, clients, locations and the clock.
    """

    _PERSISTED = ("location_id", "capacity", "clock_offset", "generation", "counter",
                  "volumes", "snapshots", "templates", "attachments", "clients", "locations")

    def __init__(self, data_dir: Path, *, name: str = "sandbox",
                 location_id: str | None = None, capacity: int | None = None,
                 clients: dict[int, Path] | None = None, client_count: int = 4,
                 allow_shared_rw: bool = False):
        # the parts, composed around this state (they only store it here)
        self.vol_api = VolumeApi(self)
        self.snap_api = SnapshotApi(self)
        self.attach_api = AttachmentApi(self)
        self.files = DeviceFiles(self)
        self.tmpl_api = TemplateApi(self)
        self.remote_api = RemoteApi(self)
        # Absolute: device links point at object files from other directories.
        self.data_dir = Path(data_dir).absolute()
        self.objects_dir = self.data_dir / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.data_dir / "state.json"
        self.lock = threading.RLock()
        self.immutability = data.Immutability(self.objects_dir)
        try:  # a bad option is the caller's error, not an API error
            self.name = check_name(name, "cluster name", VOLUME_RE, LOCATION_LIMIT, ("list",))
            wanted_capacity = None if capacity is None else check_int(capacity, "capacity", 1)
            extra_clients = {check_client(k): str(Path(v).absolute())
                             for k, v in (clients or {}).items()}
        except SpError as exc:
            raise ValueError(exc.descr) from None
        self.location_id = location_id or location_id_for(name)
        self.capacity = 1 << 40
        self.allow_shared_rw = allow_shared_rw
        self.closed = False
        self.started = int(time.time())
        self.clock_offset = 0.0
        self.generation = 1
        self.counter = 0
        self.volumes: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.attachments: list[dict[str, Any]] = []
        self.clients: dict[int, str] = {}
        self.locations: dict[str, dict[str, Any]] = {}
        loaded = self.state_file.exists()
        if loaded:
            self._load()
        if wanted_capacity is not None:
            self.capacity = wanted_capacity
        for client_id in range(1, client_count + 1):
            self.clients.setdefault(client_id, str(self.data_dir / "clients" / str(client_id)))
        self.clients.update(extra_clients)
        with self.lock:
            self.files.sync_files(remove_orphans=loaded)
            self.save()

    @property
    def readonly_enforced(self) -> bool:
        """Whether read-only objects are unwritable for root too (the immutable flag)."""
        return self.immutability.enforced

    # -- persistence and transactions ------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in self._PERSISTED}
        state["clients"] = {str(k): v for k, v in self.clients.items()}
        return state

    def _apply_state(self, state: dict[str, Any]) -> None:
        for key in self._PERSISTED:
            if key in state:
                setattr(self, key, state[key])
        self.clients = {int(k): v for k, v in state.get("clients", {}).items()}

    def save(self) -> None:
        """Write the state atomically: a crash leaves the old or the new file, never half."""
        state = {"version": STATE_VERSION, "name": self.name, **self._state()}
        tmp = self.data_dir / ".state.json.tmp"
        with open(tmp, "w") as handle:
            json.dump(state, handle, sort_keys=True, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_file)
        directory = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself must survive a crash
        finally:
            os.close(directory)

    def _load(self) -> None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot read the sandbox state {self.state_file}: {exc}; "
                               "move it away to start an empty cluster") from exc
        if state.get("version", STATE_VERSION) != STATE_VERSION:
            raise RuntimeError(f"{self.state_file}: unsupported state version "
                               f"{state.get('version')!r}")
        self._apply_state(state)
        # Fill fields that states written by earlier sandbox versions may lack.
        for obj in self._objects():
            obj.setdefault("tags", {})
            obj.setdefault("parentName", "")
            obj.setdefault("templateName", "")
        for snapshot in self.snapshots.values():
            for key, default in (("autoName", False), ("bound", False), ("deleted", False),
                                 ("transient", False), ("recoveringFromRemote", False),
                                 ("targetDeleteDate", 0)):
                snapshot.setdefault(key, default)
            if not snapshot.get("onVolume"):
                snapshot["onVolume"] = snapshot["name"].lstrip("*").split("@")[0]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run one request: all or nothing, saved when something changed.

        On an exception the model is put back as it was and the files are brought in line
        with it (new files removed, links and flags re-applied); handlers therefore validate
        first and remove data last.
        """
        with self.lock:
            if self.closed:
                raise SpError("busy", f"sandbox cluster {self.name} is stopped", transient=True)
            before = copy.deepcopy(self._state())
            generation = self.generation
            try:
                self.files.restore_sizes()
                self.snap_api.collect_garbage()
                yield
                self.snap_api.collect_garbage()  # what the call released (children, attachments)
            except BaseException:
                self._apply_state(before)
                self.files.sync_files(remove_orphans=True)
                raise
            if self.generation != generation:
                self.save()

    # -- clock, ids, lookups ---------------------------------------------------------------

    def now(self) -> int:
        """The sandbox clock: wall time plus what :meth:`advance_clock` added."""
        return int(time.time() + self.clock_offset)

    def advance_clock(self, seconds: float) -> int:
        """Move the clock forward; snapshots whose delete date passed go away now."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self.transaction():
            self.clock_offset += seconds
            self._bump()  # persist the new offset even when nothing expired
        return self.now()

    def _bump(self) -> int:
        self.generation += 1
        return self.generation

    def ok(self, **extra: Any) -> dict[str, Any]:
        """The reply of a successful write (``ApiOk`` plus the call's own fields)."""
        return {"ok": True, "generation": self._bump(),
                **{k: v for k, v in extra.items() if v is not None}}

    def _new_id(self) -> tuple[str, int]:
        self.counter += 1
        return f"{self.location_id}.{SUBCLUSTER_ID}.{base36(self.counter)}", self.counter

    def object_path(self, obj: dict[str, Any]) -> Path:
        """The backing file of a volume or snapshot record."""
        return self.objects_dir / obj["globalId"]

    def client_dir(self, client_id: int) -> Path:
        """The host directory of a client (its devices are under ``dev/storpool/``)."""
        try:
            return Path(self.clients[client_id])
        except KeyError:
            raise KeyError(f"client {client_id} does not exist in sandbox {self.name}"
                           ) from None

    def _find(self, table: dict[str, dict[str, Any]], name: Any) -> dict[str, Any] | None:
        if not isinstance(name, str):
            return None
        if name in table:
            return table[name]
        if name.startswith("~"):
            return next((o for o in table.values() if o["globalId"] == name[1:]), None)
        return None

    def _volume(self, name: Any) -> dict[str, Any]:
        volume = self._find(self.volumes, name)
        if volume is None:
            raise not_found("volume", name)
        return volume

    def _snapshot(self, name: Any) -> dict[str, Any]:
        snapshot = self._find(self.snapshots, name)
        if snapshot is None or snapshot["deleted"]:
            raise not_found("snapshot", name)
        return snapshot

    def _template(self, name: Any) -> dict[str, Any]:
        if not isinstance(name, str) or name not in self.templates:
            raise not_found("template", name)
        return self.templates[name]

    def _taken(self, name: str) -> bool:
        return name in self.volumes or name in self.snapshots

    def _objects(self) -> list[dict[str, Any]]:
        return [*self.volumes.values(), *self.snapshots.values()]

    def _children(self) -> set[str]:
        return {o["parentName"] for o in self._objects() if o["parentName"]}

    # -- records and summaries ---------------------------------------------------------------

    def _new_object(self, name: str, size: int, template: str, parent: str,
                    tags: dict[str, str], policy: dict[str, Any]) -> dict[str, Any]:
        global_id, visible = self._new_id()
        return {"name": name, "size": size, "templateName": template, "parentName": parent,
                "tags": tags, "globalId": global_id, "visibleVolumeId": visible,
                "creationTimestamp": self.now(),
                "objectsCount": max(1, -(-size // OBJECT_SIZE)), **policy}

    def _new_snapshot(self, name: str | None, source: dict[str, Any], tags: dict[str, str],
                      on_volume: str, parent: str) -> dict[str, Any]:
        policy = {k: source[k] for k in POLICY_KEYS if k in source}
        snapshot = self._new_object(name or "", source["size"], source["templateName"],
                                    parent, tags, policy)
        if name is None:
            snapshot["name"] = f"*{snapshot['globalId']}"
        snapshot.update(onVolume=on_volume, autoName=name is None, bound=False, deleted=False,
                        transient=False, recoveringFromRemote=False, targetDeleteDate=0)
        return snapshot

    @staticmethod
    def summary(obj: dict[str, Any]) -> dict[str, Any]:
        """The ``VolumeSummary``/``SnapshotSummary`` of a record (no private fields)."""
        result = {k: obj[k] for k in SUMMARY_KEYS if k in obj}
        for key in SNAPSHOT_KEYS:
            if key in obj and (key != "targetDeleteDate" or obj[key]):
                result[key] = obj[key]
        result["tags"] = dict(obj["tags"])
        return result

    def _stored(self, obj: dict[str, Any]) -> int:
        # Never more than the size: a block device holds no more than its size of data.
        return min(data.allocated(self.object_path(obj)), obj["size"])
    # -- snapshots -------------------------------------------------------------------------

    # -- device links and files ------------------------------------------------------------

    # -- space and status ------------------------------------------------------------------

    # -- locations, exports and backups ----------------------------------------------------


class VolumeApi:
    """Volume queries: list, describe, create, update (resize, rename, tags), delete,
    revert, freeze."""

    def __init__(self, core: Cluster):
        self.core = core

    def volumes_list(self) -> list[dict[str, Any]]:
        return [self.core.summary(v) for v in self.core.volumes.values()]

    def volume(self, name: str) -> list[dict[str, Any]]:
        return [self.core.summary(self.core._volume(name))]

    def volume_describe(self, name: str) -> dict[str, Any]:
        return {**self.core.summary(self.core._volume(name)), "targetDiskSets": [], "objects": []}

    def volume_info(self, name: str) -> dict[str, Any]:
        return {**self.core.summary(self.core._volume(name)), **_no_disks()}

    def volume_list_snapshots(self, name: str) -> list[dict[str, Any]]:
        """The volume's parent snapshots, nearest first."""
        chain, parent = [], self.core._volume(name)["parentName"]
        while parent in self.core.snapshots:
            chain.append(self.core.summary(self.core.snapshots[parent]))
            parent = self.core.snapshots[parent]["parentName"]
        return chain

    def volume_create(self, body: Any) -> dict[str, Any]:
        body = check_object(body, "VolumeCreate", VOLUME_CREATE_KEYS)
        name = body.get("name")
        if name is not None:
            check_name(name, "volume name")
            if self.core._taken(name):
                raise exists("volume", name)
        template = self.core._template(body["template"]) if body.get("template") is not None \
            else None
        if body.get("parent") is not None and body.get("baseOn") is not None:
            raise invalid("parent and baseOn are mutually exclusive")
        source: dict[str, Any] | None = None
        parent_name = ""
        if body.get("parent") is not None:
            source = self.core._snapshot(body["parent"])
            parent_name = source["name"]
        elif body.get("baseOn") is not None:
            source = self.core._volume(body["baseOn"])
            parent_name = source["parentName"]
        elif template is not None and template["parentName"]:
            source = self.core._snapshot(template["parentName"])  # the template's base snapshot
            parent_name = source["name"]
        size = check_size(body["size"]) if body.get("size") is not None else None
        if size is None:
            if source is not None:
                size = source["size"]
            elif template is not None and template["size"] != "-":
                size = template["size"]
            else:
                raise invalid("size is required for a new empty volume (no template size)")
        elif source is not None and size < source["size"]:
            raise invalid(f"size {size} is smaller than the {source['size']} bytes of "
                          f"{source['name']}; create it, then shrink it with shrinkOk")
        policy = self.resolve_policy(body, template, source)
        tags = check_tags(body.get("tags"))
        template_name = template["name"] if template else (source or {}).get("templateName",
                                                                             "")
        volume = self.core._new_object(name or "", size, template_name, parent_name, tags, policy)
        if name is None:
            volume["name"] = name = f"~{volume['globalId']}"
        path = self.core.object_path(volume)
        if source is None:
            data.create_sparse(path, size)
        else:
            data.sparse_copy(self.core.object_path(source), path, size)
        self.core.volumes[name] = volume
        return self.core.ok(name=name if body.get("name") is None else None,
                       globalId=volume["globalId"])

    def resolve_policy(self, body: dict[str, Any], template: dict[str, Any] | None,
                        source: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults, then the source object's, then the template's, then the request's."""
        policy: dict[str, Any] = {"replication": DEFAULT_REPLICATION,
                                  "placeAll": DEFAULT_PLACEMENT, "placeTail": DEFAULT_PLACEMENT,
                                  "placeHead": DEFAULT_PLACEMENT, "iops": "-", "bw": "-"}
        for layer in (source or {}, template or {}):
            policy.update({k: layer[k] for k in POLICY_KEYS
                           if k in layer and not (k == "replication" and layer[k] == "-")})
        policy.update(check_policy(body))
        return policy

    def volume_update(self, name: str, body: Any) -> dict[str, Any]:
        volume = self.core._volume(name)
        body = check_object(body, "VolumeUpdate", VOLUME_UPDATE_KEYS)
        if body.get("size") is not None and body.get("sizeAdd") is not None:
            raise invalid("size and sizeAdd are mutually exclusive")
        new_size = volume["size"]
        if body.get("size") is not None:
            new_size = check_size(body["size"])
        elif body.get("sizeAdd") is not None:
            new_size = volume["size"] + check_size(body["sizeAdd"], "sizeAdd")
        shrink_ok = check_bool(body["shrinkOk"], "shrinkOk") if body.get(
            "shrinkOk") is not None else False
        if new_size < volume["size"] and not shrink_ok:
            raise invalid(f"shrinking volume {volume['name']} from {volume['size']} to "
                          f"{new_size} bytes needs shrinkOk")
        template = self.core._template(body["template"]) if body.get("template") is not None \
            else None
        policy = check_policy(body)
        tags = check_tags(body.get("tags"))
        new_name = volume["name"]
        if body.get("rename") is not None:
            new_name = check_name(body["rename"], "volume name")
            if new_name != volume["name"] and self.core._taken(new_name):
                raise exists("volume", new_name)
        # Validated: apply.
        if new_size != volume["size"]:
            self._resize(volume, new_size)
        if template is not None:
            volume["templateName"] = template["name"]
            volume.update({k: template[k] for k in POLICY_KEYS if k in template
                           and not (k == "replication" and template[k] == "-")})
        volume.update(policy)
        if body.get("tags") is not None:
            volume["tags"] = {k: v for k, v in {**volume["tags"], **tags}.items() if v != ""}
        if new_name != volume["name"]:
            self.rename(volume, new_name, snapshot=False)
        return self.core.ok()

    def _resize(self, volume: dict[str, Any], size: int) -> None:
        path = self.core.object_path(volume)
        frozen = self.core.attach_api.read_only(volume["name"])
        if frozen:
            self.core.immutability.set(path, False)
        os.truncate(path, size)
        if frozen:
            self.core.immutability.set(path, True)
        volume["size"] = size
        volume["objectsCount"] = max(1, -(-size // OBJECT_SIZE))

    def rename(self, obj: dict[str, Any], new: str, snapshot: bool) -> None:
        table = self.core.snapshots if snapshot else self.core.volumes
        old = obj["name"]
        attached = [a for a in self.core.attachments
                    if a["volume"] == old and a["snapshot"] == snapshot]
        for attachment in attached:
            self.core.files.unlink(attachment)
        del table[old]
        obj["name"] = new
        table[new] = obj
        for attachment in attached:
            attachment["volume"] = new
            self.core.files.link(attachment)
        for other in [*self.core._objects(), *self.core.templates.values()]:
            if snapshot and other["parentName"] == old:
                other["parentName"] = new
            if not snapshot and other.get("onVolume") == old:
                other["onVolume"] = new

    def volume_delete(self, name: str) -> dict[str, Any]:
        volume = self.core._volume(name)
        clients = self.core.attach_api.clients_of(volume["name"], snapshot=False)
        if clients:
            raise invalid(f"volume {volume['name']} is attached to client(s) "
                          f"{', '.join(map(str, clients))}; detach it first")
        del self.core.volumes[volume["name"]]
        self.core.files.remove_file(volume)
        return self.core.ok()

    def volume_revert(self, name: str, body: Any) -> dict[str, Any]:
        volume = self.core._volume(name)
        body = check_object(body, "VolumeRevert", {"toSnapshot"})
        if body.get("toSnapshot") is None:
            raise invalid("toSnapshot is required")
        snapshot = self.core._snapshot(body["toSnapshot"])
        chain = {s["name"] for s in self.volume_list_snapshots(volume["name"])}
        if snapshot["name"] not in chain and snapshot.get("onVolume") != volume["name"]:
            raise invalid(f"snapshot {snapshot['name']} is not a snapshot of volume "
                          f"{volume['name']}")
        clients = self.core.attach_api.clients_of(volume["name"], snapshot=False)
        if clients:
            raise invalid(f"volume {volume['name']} is attached to client(s) "
                          f"{', '.join(map(str, clients))}; detach it before reverting")
        path = self.core.object_path(volume)
        staged = path.with_name(f".revert-{volume['globalId']}")
        staged.unlink(missing_ok=True)
        try:
            data.sparse_copy(self.core.object_path(snapshot), staged)
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
        volume["size"] = snapshot["size"]
        volume["objectsCount"] = snapshot["objectsCount"]
        volume["parentName"] = snapshot["name"]
        return self.core.ok()

    def volume_freeze(self, name: str, body: Any) -> dict[str, Any]:
        volume = self.core._volume(name)
        body = check_object(body, "VolumeFreeze", VOLUME_FREEZE_KEYS)
        attached = self.core.attach_api.attachments_of(volume["name"], False)
        if any(a["rights"] == "rw" for a in attached):
            raise invalid(f"volume {volume['name']} is attached read-write; detach it or "
                          "attach it read-only before freezing")
        delete_date = self.core.snap_api.delete_date(body, None)
        del self.core.volumes[volume["name"]]
        snapshot = {**volume, "onVolume": volume["name"], "autoName": False, "bound": False,
                    "deleted": False, "transient": False, "recoveringFromRemote": False,
                    "targetDeleteDate": delete_date or 0}
        self.core.snapshots[snapshot["name"]] = snapshot
        for attachment in self.core.attach_api.attachments_of(volume["name"], False):
            attachment["snapshot"] = True
        self.core.immutability.set(self.core.object_path(snapshot), True)
        return self.core.ok()


class SnapshotApi:
    """Snapshot queries, group snapshots, delete dates and the garbage collection of
    deleted snapshots."""

    def __init__(self, core: Cluster):
        self.core = core

    def snapshots_list(self) -> list[dict[str, Any]]:
        return [self.core.summary(s) for s in self.core.snapshots.values()]

    def snapshot(self, name: str) -> list[dict[str, Any]]:
        return [self.core.summary(self.core._snapshot(name))]

    def snapshot_describe(self, name: str) -> dict[str, Any]:
        return {**self.core.summary(self.core._snapshot(name)), "targetDiskSets": [], "objects": []}

    def snapshot_info(self, name: str) -> dict[str, Any]:
        return {**self.core.summary(self.core._snapshot(name)), **_no_disks()}

    def volume_snapshot(self, volume_name: str, body: Any) -> dict[str, Any]:
        volume = self.core._volume(volume_name)
        body = check_object(body, "VolumeSnapshot", VOLUME_SNAPSHOT_KEYS)
        name = body.get("name")
        if name is not None:
            check_name(name, "snapshot name", SNAPSHOT_RE)
            if self.core._taken(name):
                raise exists("snapshot", name)
        tags = check_tags(body.get("tags"))
        bind = check_bool(body["bind"], "bind") if body.get("bind") is not None else False
        delete_date = self.delete_date(body, None)
        snapshot = self.take_snapshot(volume, name, tags)
        snapshot["bound"] = bind
        snapshot["targetDeleteDate"] = delete_date or 0
        return self.core.ok(autoName=snapshot["name"] if snapshot["autoName"] else None,
                       snapshotGlobalId=snapshot["globalId"],
                       snapshotVisibleVolumeId=snapshot["visibleVolumeId"])

    def take_snapshot(self, volume: dict[str, Any], name: str | None,
                       tags: dict[str, str]) -> dict[str, Any]:
        """A point-in-time copy of ``volume`` that becomes the volume's parent."""
        snapshot = self.core._new_snapshot(name, volume, tags, volume["name"],
                                      volume["parentName"])
        path = self.core.object_path(snapshot)
        data.sparse_copy(self.core.object_path(volume), path)
        self.core.immutability.set(path, True)
        self.core.snapshots[snapshot["name"]] = snapshot
        volume["parentName"] = snapshot["name"]
        return snapshot

    def delete_date(self, body: dict[str, Any], current: int | None) -> int | None:
        """``deleteAfter`` (seconds from now) or ``targetDeleteDate`` (unix time); 0 clears.
        Returns the new date, 0 for none, or ``current`` when neither is given."""
        if body.get("deleteAfter") is not None:
            after = check_int(body["deleteAfter"], "deleteAfter", 0)
            return self.core.now() + after if after else 0
        if body.get("targetDeleteDate") is not None:
            date = check_int(body["targetDeleteDate"], "targetDeleteDate", 0)
            if date and date < self.core.now():
                raise invalid(f"targetDeleteDate {date} is in the past (now {self.core.now()})")
            return date
        return current

    def snapshot_update(self, name: str, body: Any) -> dict[str, Any]:
        snapshot = self.core._snapshot(name)
        body = check_object(body, "SnapshotUpdate", SNAPSHOT_UPDATE_KEYS)
        tags = check_tags(body.get("tags"))
        template = self.core._template(body["template"]) if body.get("template") is not None \
            else None
        policy = check_policy(body)
        bind = check_bool(body["bind"], "bind") if body.get("bind") is not None else None
        delete_date = self.delete_date(body, snapshot["targetDeleteDate"])
        new_name = snapshot["name"]
        if body.get("rename") is not None:
            new_name = check_name(body["rename"], "snapshot name", SNAPSHOT_RE)
            if new_name != snapshot["name"] and self.core._taken(new_name):
                raise exists("snapshot", new_name)
        if body.get("tags") is not None:
            snapshot["tags"] = {k: v for k, v in {**snapshot["tags"], **tags}.items()
                                if v != ""}
        if template is not None:
            snapshot["templateName"] = template["name"]
            snapshot.update({k: template[k] for k in POLICY_KEYS if k in template
                             and not (k == "replication" and template[k] == "-")})
        snapshot.update(policy)
        if bind is not None:
            snapshot["bound"] = bind
        snapshot["targetDeleteDate"] = delete_date or 0
        if new_name != snapshot["name"]:
            self.core.vol_api.rename(snapshot, new_name, snapshot=True)
        return self.core.ok()

    def snapshot_delete(self, name: str) -> dict[str, Any]:
        snapshot = self.core._snapshot(name)
        clients = self.core.attach_api.clients_of(snapshot["name"], snapshot=True)
        if clients:
            raise invalid(f"snapshot {snapshot['name']} is attached to client(s) "
                          f"{', '.join(map(str, clients))}; detach it first")
        snapshot["deleted"] = True
        self.collect_garbage()
        return self.core.ok()

    def snapshot_delete_by_id(self, global_id: str) -> dict[str, Any]:
        return self.snapshot_delete(f"~{global_id}")

    def volumes_group_snapshot(self, body: Any) -> dict[str, Any]:
        body = check_object(body, "VolumesGroupSnapshot", {"volumes", "tags"})
        items = body.get("volumes")
        if not isinstance(items, list) or not items:
            raise invalid("volumes must be a non-empty list")
        common = check_tags(body.get("tags"))
        plan = []
        names: set[str] = set()
        for item in items:
            item = check_object(item, "VolumesGroupSnapshot volume",
                                {"volume", "name", "tags"})
            volume = self.core._volume(item.get("volume"))
            name = item.get("name")
            if name is not None:
                check_name(name, "snapshot name", SNAPSHOT_RE)
                if self.core._taken(name) or name in names:
                    raise exists("snapshot", name)
                names.add(name)
            if any(volume is other for other, _, _ in plan):
                raise invalid(f"volume {volume['name']} is listed twice")
            plan.append((volume, name, {**common, **check_tags(item.get("tags"))}))
        result = []
        for volume, name, tags in plan:  # all validated: the group is taken at one instant
            snapshot = self.take_snapshot(volume, name, tags)
            result.append({"volume": volume["name"], "volumeGlobalId": volume["globalId"],
                           "snapshot": snapshot["name"],
                           "snapshotGlobalId": snapshot["globalId"],
                           "remoteId": snapshot["globalId"]})
        return self.core.ok(snapshots=result)

    def collect_garbage(self) -> None:
        """Snapshots past their delete date are deleted; deleted or bound snapshots go away
        once nothing hangs off them and they are attached nowhere."""
        now = self.core.now()
        changed = True
        while changed:
            changed = False
            children = self.core._children()
            for name, snapshot in list(self.core.snapshots.items()):
                attached = self.core.attach_api.is_attached(name, snapshot=True)
                due = snapshot["targetDeleteDate"] and snapshot["targetDeleteDate"] <= now
                if due and not snapshot["deleted"] and not attached:
                    snapshot["deleted"] = True
                    self.core._bump()
                if (snapshot["deleted"] or snapshot["bound"]) and name not in children \
                        and not attached:
                    del self.core.snapshots[name]
                    self.core.files.remove_file(snapshot)
                    self.core._bump()
                    changed = True


class AttachmentApi:
    """Attachments: ``AttachmentsList`` and ``VolumesReassign`` (planned, checked, applied)."""

    def __init__(self, core: Cluster):
        self.core = core

    def attachments_list(self) -> list[dict[str, Any]]:
        return [{**a, "globalId": self.object_of(a)["globalId"]} for a in self.core.attachments]

    def object_of(self, attachment: dict[str, Any]) -> dict[str, Any]:
        table = self.core.snapshots if attachment["snapshot"] else self.core.volumes
        return table[attachment["volume"]]

    def attachments_of(self, name: str, snapshot: bool) -> list[dict[str, Any]]:
        return [a for a in self.core.attachments
                if a["volume"] == name and a["snapshot"] == snapshot]

    def clients_of(self, name: str, snapshot: bool) -> list[int]:
        return sorted(a["client"] for a in self.attachments_of(name, snapshot))

    def is_attached(self, name: str, snapshot: bool) -> bool:
        return bool(self.attachments_of(name, snapshot))

    def read_only(self, volume: str) -> bool:
        """A volume attached somewhere, and read-only everywhere, is made immutable."""
        rights = [a["rights"] for a in self.attachments_of(volume, False)]
        return bool(rights) and "rw" not in rights

    def known_client(self, raw: Any) -> int:
        client = check_client(raw)
        if client not in self.core.clients:
            raise invalid(f"client {client} does not exist (known clients: "
                          f"{', '.join(map(str, sorted(self.core.clients)))})")
        return client

    def _client_list(self, value: Any, what: str) -> list[int]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise invalid(f"{what} must be a list of client ids")
        return [self.known_client(c) for c in value]

    def volumes_reassign(self, items: Any) -> dict[str, Any]:
        """``VolumesReassign`` and ``VolumesReassignWait`` (clients apply changes at once).

        Items apply in order, each detach before its attach; the whole request is validated
        before anything changes.
        """
        if not isinstance(items, list):
            raise invalid("the reassign list must be a JSON array of items")
        # Work on a copy of the attachment table: {(name, snapshot): {client: rights}}.
        table: dict[tuple[str, bool], dict[int, str]] = {}
        for attachment in self.core.attachments:
            key = (attachment["volume"], attachment["snapshot"])
            table.setdefault(key, {})[attachment["client"]] = attachment["rights"]
        before = copy.deepcopy(table)
        unforced_detach: set[tuple[str, bool]] = set()
        for raw in items:
            key, wanted, detached, force = self._plan(raw, table)
            table[key] = wanted
            if detached and not force:
                unforced_detach.add(key)
        for key in sorted(unforced_detach):  # a device still in use cannot be taken away
            name, snapshot = key
            removed = sorted(set(before.get(key, {})) - set(table.get(key, {})))
            if removed and not table.get(key):
                obj = (self.core.snapshots if snapshot else self.core.volumes)[name]
                if data.open_by_any_process(self.core.object_path(obj)):
                    kind = "snapshot" if snapshot else "volume"
                    raise SpError("busy", f"{kind} {name} is open at client {removed[0]}")
        self._apply_attachments(before, table)
        return self.core.ok()

    def _plan(self, raw: Any, table: dict[tuple[str, bool], dict[int, str]]
              ) -> tuple[tuple[str, bool], dict[int, str], bool, bool]:
        if not isinstance(raw, dict) or ("volume" in raw) == ("snapshot" in raw):
            raise invalid("each reassign item names exactly one volume or snapshot")
        snapshot = "snapshot" in raw
        if snapshot and raw.get("rw"):
            raise invalid(f"snapshot {raw['snapshot']} can only be attached read-only")
        item = check_object(raw, "reassign item",
                            SNAPSHOT_REASSIGN_KEYS if snapshot else VOLUME_REASSIGN_KEYS)
        core = self.core
        obj = core._snapshot(item["snapshot"]) if snapshot else core._volume(item["volume"])
        name = obj["name"]
        force = check_bool(item["force"], "force") if item.get("force") is not None else False
        current = dict(table.get((name, snapshot), {}))
        detach = item.get("detach")
        detach_ids = list(current) if detach == "all" else self._client_list(detach, "detach")
        rw = self._client_list(item.get("rw"), "rw")
        ro = self._client_list(item.get("ro"), "ro")
        if set(rw) & set(ro):
            raise invalid(f"{name}: a client cannot be both rw and ro")
        wanted = {c: r for c, r in current.items() if c not in detach_ids}
        wanted.update(dict.fromkeys(ro, "ro"))
        wanted.update(dict.fromkeys(rw, "rw"))
        if (rw or ro) and not force:
            writers = sorted(c for c, r in wanted.items() if r == "rw")
            readers = sorted(c for c, r in wanted.items() if r == "ro")
            if len(writers) > 1 and not self.core.allow_shared_rw:
                holders = [c for c in writers if current.get(c) == "rw"] or writers
                raise invalid(f"volume {name} is already attached read-write to client "
                              f"{holders[0]}; attaching it read-write to another client needs "
                              "force")
            if writers and readers:
                raise invalid(f"volume {name} cannot be attached read-write (client "
                              f"{writers[0]}) and read-only (client {readers[0]}) at the same "
                              "time without force")
        detached = any(c in current for c in detach_ids)
        return (name, snapshot), wanted, detached, force

    def _apply_attachments(self, before: dict[tuple[str, bool], dict[int, str]],
                           after: dict[tuple[str, bool], dict[int, str]]) -> None:
        for key in sorted(set(before) | set(after)):
            name, snapshot = key
            old, new = before.get(key, {}), after.get(key, {})
            if old == new:
                continue
            for attachment in self.attachments_of(name, snapshot):
                if attachment["client"] not in new:
                    self.core.files.unlink(attachment)
                    self.core.attachments.remove(attachment)
            for client, rights in sorted(new.items()):
                attachment = next((a for a in self.attachments_of(name, snapshot)
                                   if a["client"] == client), None)
                if attachment is None:
                    attachment = {"volume": name, "snapshot": snapshot, "client": client,
                                  "rights": rights, "pos": self._free_pos(client)}
                    self.core.attachments.append(attachment)
                attachment["rights"] = rights
                self.core.files.link(attachment)
            if not snapshot:
                self.core.immutability.set(self.core.object_path(self.core.volumes[name]),
                                      self.read_only(name))

    def _free_pos(self, client: int) -> int:
        used = {a["pos"] for a in self.core.attachments if a["client"] == client}
        pos = next((p for p in range(MAX_ATTACHMENT_POS + 1) if p not in used), None)
        if pos is None:
            raise invalid(f"client {client} has no free attachment position")
        return pos


class DeviceFiles:
    """Device links and object files on disk: links per client, sizes restored, files and
    links synced with the model, immutable flags, clients."""

    def __init__(self, core: Cluster):
        self.core = core

    def _device(self, client: int, name: str) -> Path:
        return self.core.client_dir(client) / "dev" / "storpool" / name

    def _by_id(self, client: int, global_id: str) -> Path:
        return self.core.client_dir(client) / "dev" / "storpool-byid" / global_id

    def link(self, attachment: dict[str, Any]) -> None:
        obj = self.core.attach_api.object_of(attachment)
        target = str(self.core.object_path(obj))
        for link in (self._device(attachment["client"], attachment["volume"]),
                     self._by_id(attachment["client"], obj["globalId"])):
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                if os.readlink(link) == target:
                    continue
                link.unlink()
            elif link.exists():
                raise invalid(f"{link} exists and is not a device link")
            link.symlink_to(target)

    def unlink(self, attachment: dict[str, Any]) -> None:
        obj = self.core.attach_api.object_of(attachment)
        target = str(self.core.object_path(obj))
        for link in (self._device(attachment["client"], attachment["volume"]),
                     self._by_id(attachment["client"], obj["globalId"])):
            # Only our own link: another sandbox may serve the same host directory.
            if link.is_symlink() and os.readlink(link) == target:
                link.unlink()

    def remove_file(self, obj: dict[str, Any]) -> None:
        path = self.core.object_path(obj)
        if path.exists():
            self.core.immutability.thaw(path)
            path.unlink()

    def restore_sizes(self) -> None:
        """Put back the size of any backing file a write through a link truncated or grew."""
        for obj in self.core._objects():
            path = self.core.object_path(obj)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size != obj["size"]:
                    frozen = (obj["name"] in self.core.snapshots
                              or self.core.attach_api.read_only(obj["name"]))
                    self.core.immutability.thaw(path)
                    os.truncate(path, obj["size"])
                    if frozen:
                        self.core.immutability.set(path, True)

    def sync_files(self, remove_orphans: bool) -> None:
        """Bring the files in line with the model: a backing file for every object (a lost
        one comes back empty), no unknown ones, right sizes, flags, and exactly the device
        links of the current attachments in every client's directory."""
        known = {o["globalId"] for o in self.core._objects()}
        if remove_orphans:
            for path in self.core.objects_dir.iterdir():
                if path.name not in known and not path.name.startswith("."):
                    self.core.immutability.thaw(path)
                    path.unlink(missing_ok=True)
        for obj in self.core._objects():
            path = self.core.object_path(obj)
            if not path.exists():
                log.warning("sandbox %s: the data of %s is missing; it comes back empty",
                            self.core.name, obj["name"])
                data.create_sparse(path, obj["size"])
        self.restore_sizes()
        for obj in self.core._objects():
            frozen = (obj["name"] in self.core.snapshots
                      or self.core.attach_api.read_only(obj["name"]))
            self.core.immutability.set(self.core.object_path(obj), frozen)
        self._sync_links()

    def _sync_links(self) -> None:
        wanted: dict[Path, str] = {}
        for attachment in self.core.attachments:
            if attachment["client"] not in self.core.clients:
                continue
            obj = self.core.attach_api.object_of(attachment)
            target = str(self.core.object_path(obj))
            wanted[self._device(attachment["client"], attachment["volume"])] = target
            wanted[self._by_id(attachment["client"], obj["globalId"])] = target
        ours = str(self.core.objects_dir) + os.sep
        for directory in {Path(d) for d in self.core.clients.values()}:
            for sub in ("storpool", "storpool-byid"):
                folder = directory / "dev" / sub
                if not folder.is_dir():
                    continue
                for link in folder.iterdir():
                    if link.is_symlink() and os.readlink(link).startswith(ours) \
                            and link not in wanted:
                        link.unlink()
        for attachment in self.core.attachments:
            if attachment["client"] in self.core.clients:
                self.link(attachment)

    def release_immutable_files(self) -> None:
        """Clear every immutable flag, so the data directory can be removed."""
        data.release_immutable_files(self.core.data_dir)

    def close(self) -> None:
        """Refuse further calls (a request still in flight when its server stops must not
        set flags again) and clear the immutable flags. A new :class:`Cluster` on the same
        directory picks everything up again."""
        with self.core.lock:
            self.core.closed = True
            self.release_immutable_files()

    def add_client(self, client_id: int, directory: Path) -> None:
        """Register (or move) a client's host directory; its device links follow."""
        client = check_client(client_id)
        directory = Path(directory).absolute()
        with self.core.transaction():
            old = self.core.clients.get(client)
            if old is not None and old != str(directory):
                for attachment in self.core.attachments:
                    if attachment["client"] == client:
                        self.unlink(attachment)
            self.core.clients[client] = str(directory)
            for attachment in self.core.attachments:
                if attachment["client"] == client:
                    self.link(attachment)
            self.core._bump()


class TemplateApi:
    """Volume templates, space and status, services and client configuration."""

    def __init__(self, core: Cluster):
        self.core = core

    def volume_templates_list(self) -> list[dict[str, Any]]:
        return [dict(t) for t in self.core.templates.values()]

    def volume_template_describe(self, name: str) -> dict[str, Any]:
        return dict(self.core._template(name))

    def _template_size(self, value: Any) -> int | str:
        return "-" if value is None or value == "-" else check_size(value)

    def volume_template_create(self, body: Any) -> dict[str, Any]:
        body = check_object(body, "VolumeTemplateCreate", TEMPLATE_CREATE_KEYS)
        name = check_name(body.get("name"), "template name", TEMPLATE_RE, reserved=("list",))
        if name in self.core.templates:
            raise exists("template", name)
        policy = check_policy(body)
        parent = self.core._snapshot(body["parent"])["name"] if body.get("parent") else ""
        template = {"name": name, "parentName": parent,
                    "placeAll": DEFAULT_PLACEMENT, "placeTail": DEFAULT_PLACEMENT,
                    "placeHead": DEFAULT_PLACEMENT, "replication": "-",
                    "size": self._template_size(body.get("size")), "iops": "-", "bw": "-",
                    **policy}
        check_tags(body.get("tags"))
        self.core.templates[name] = template
        return self.core.ok()

    def volume_template_update(self, name: str, body: Any) -> dict[str, Any]:
        template = self.core._template(name)
        body = check_object(body, "VolumeTemplateUpdate", TEMPLATE_UPDATE_KEYS)
        policy = check_policy(body)
        size = self._template_size(body["size"]) if body.get("size") is not None else None
        parent = self.core._snapshot(body["parent"])["name"] if body.get("parent") else None
        propagate = check_bool(body["propagate"], "propagate") if body.get(
            "propagate") is not None else False
        new_name = name
        if body.get("rename") is not None:
            new_name = check_name(body["rename"], "template name", TEMPLATE_RE,
                                  reserved=("list",))
            if new_name != name and new_name in self.core.templates:
                raise exists("template", new_name)
        template.update(policy)
        if size is not None:
            template["size"] = size
        if parent is not None:
            template["parentName"] = parent
        if propagate and policy:
            for obj in self.core._objects():
                if obj["templateName"] == name:
                    obj.update({k: v for k, v in policy.items()
                                if not (k == "replication" and v == "-")})
        if new_name != name:
            self.core.templates[new_name] = self.core.templates.pop(name)
            template["name"] = new_name
            for obj in self.core._objects():
                if obj["templateName"] == name:
                    obj["templateName"] = new_name
        return self.core.ok()

    def volume_template_delete(self, name: str) -> dict[str, Any]:
        self.core._template(name)
        users = [o["name"] for o in self.core._objects() if o["templateName"] == name]
        if users:
            raise invalid(f"template {name} is in use by {len(users)} volume(s) and "
                          f"snapshot(s), e.g. {users[0]}")
        del self.core.templates[name]
        return self.core.ok()

    def _raw_used(self) -> int:
        return sum(data.allocated(self.core.object_path(o)) * int(o["replication"])
                   for o in self.core._objects())

    def volume_templates_status(self) -> list[dict[str, Any]]:
        raw_free = max(0, self.core.capacity - self._raw_used())
        children = self.core._children()
        result = []
        for template in self.core.templates.values():
            replication = template["replication"]
            copies = replication if isinstance(replication, int) else DEFAULT_REPLICATION
            volumes = [v for v in self.core.volumes.values()
                       if v["templateName"] == template["name"]]
            snaps = [s for s in self.core.snapshots.values()
                     if s["templateName"] == template["name"]]
            stored = sum(self.core._stored(o) for o in [*volumes, *snaps])
            on_disk = sum(self.core._stored(o) * int(o["replication"]) for o in [*volumes, *snaps])
            volumes_size = sum(v["size"] for v in volumes)
            estimate = {"capacity": self.core.capacity // copies, "free": raw_free // copies,
                        "internal": {"u1": raw_free // copies, "u2": 0, "u3": 0}}
            result.append({
                "id": len(result) + 1, "name": template["name"],
                "placeAll": template["placeAll"], "placeTail": template["placeTail"],
                "placeHead": template["placeHead"], "replication": replication,
                "volumesCount": len(volumes), "snapshotsCount": len(snaps),
                "removingSnapshotsCount": sum(1 for s in snaps if s["deleted"]),
                "size": volumes_size, "totalSize": volumes_size * copies,
                "volumesSize": volumes_size,
                "snapshotsWithoutChildrenSize": sum(s["size"] for s in snaps
                                                    if s["name"] not in children),
                "snapshotsWithChildrenSize": sum(s["size"] for s in snaps
                                                 if s["name"] in children),
                "onDiskSize": on_disk, "storedSize": stored,
                "availablePlaceAll": raw_free, "availablePlaceTail": raw_free,
                "availablePlaceHead": raw_free, "capacityPlaceAll": self.core.capacity,
                "capacityPlaceTail": self.core.capacity, "capacityPlaceHead": self.core.capacity,
                "stored": {**estimate, "placeAll": dict(estimate),
                           "placeTail": dict(estimate), "placeHead": dict(estimate)},
            })
        return result

    def volumes_space(self) -> list[dict[str, Any]]:
        # A sandbox volume's file holds its parents' data too, so both numbers are the same.
        return [{**self.core.summary(v), "storedSize": self.core._stored(v),
                 "spaceUsed": self.core._stored(v)}
                for v in self.core.volumes.values()]

    def snapshots_space(self) -> list[dict[str, Any]]:
        children = self.core._children()
        return [{**self.core.summary(s), "storedSize": self.core._stored(s),
                 "spaceUsed": 0 if s["name"] in children else self.core._stored(s)}
                for s in self.core.snapshots.values()]

    def volumes_status(self, quick: bool = False) -> dict[str, Any]:
        result = {}
        for obj in self.core._objects():
            entry = {**self.core.summary(obj), "status": "up",
                     "snapshot": obj["name"] in self.core.snapshots, "migrating": False,
                     "decreasedRedundancy": False, "balancerBlocked": False,
                     "syncingDataBytes": 0, "syncingMetaObjects": 0, "downBytes": 0,
                     "upSoonChainsCount": 0, "downDrives": [], "missingDrives": [],
                     "missingTargetDrives": [], "softEjectingDrives": []}
            if not quick:
                entry["storedSize"] = self.core._stored(obj)
                entry["onDiskSize"] = self.core._stored(obj) * int(obj["replication"])
            result[obj["name"]] = entry
        return result

    def services_list(self) -> dict[str, Any]:
        def service(service_id: int, **extra: Any) -> dict[str, Any]:
            node = {"nodeId": service_id} if service_id <= 63 else {}
            return {"id": service_id, "status": "running", "version": "sandbox",
                    "startTime": self.core.started, **node, **extra}

        return {"clusterStatus": "running",
                "clients": {str(c): service(c) for c in sorted(self.core.clients)},
                "servers": {str(s): service(s, missingDisks=[], pendingDisks=[])
                            for s in (1, 2, 3)},
                "mgmt": {"1": service(1, prio=0, active=True)},
                "bridges": {}, "iscsiTargets": {}}

    def clients_config_dump(self) -> list[dict[str, Any]]:
        generation = self.core.generation
        return [{"id": c, "generation": generation, "clientGeneration": generation,
                 "configStatus": "ok", "delay": 0} for c in sorted(self.core.clients)]

    def client_config_wait(self, client: str) -> list[dict[str, Any]]:
        client_id = self.core.attach_api.known_client(client)
        return [c for c in self.clients_config_dump() if c["id"] == client_id]


class RemoteApi:
    """Remote locations: backups sent and received, exports, copies from a remote."""

    def __init__(self, core: Cluster):
        self.core = core

    def add_location(self, name: str, url: str, token: str, location_id: str) -> None:
        """Register another sandbox cluster as the remote location ``name``."""
        check_name(name, "location name", VOLUME_RE, LOCATION_LIMIT, ("list",))
        if not isinstance(location_id, str) or not LOCATION_ID_RE.match(location_id):
            raise invalid(f"invalid location id {location_id!r}: must match [a-z0-9]+")
        if location_id == self.core.location_id:
            raise invalid(f"location {name} has this cluster's own id {location_id}")
        with self.core.transaction():
            self.core.locations[name] = {"id": location_id, "url": url.rstrip("/"), "token": token}
            self.core._bump()

    def locations_list(self) -> dict[str, Any]:
        return {"locations": [{"id": loc["id"], "name": name, "sendBufferSize": 0,
                               "recvBufferSize": 0} for name, loc in self.core.locations.items()]}

    def clusters_list(self) -> dict[str, Any]:
        # This cluster first, then the one cluster of every registered location.
        return {"clusters": [{"id": SUBCLUSTER_ID, "location": name, "name": name}
                             for name in [self.core.name, *self.core.locations]]}

    def location(self, name: Any) -> dict[str, Any]:
        if not isinstance(name, str) or name not in self.core.locations:
            raise not_found("location", name)
        return self.core.locations[name]

    def location_name(self, location_id: str) -> str | None:
        return next((n for n, loc in self.core.locations.items() if loc["id"] == location_id),
                    None)

    def prepare_backups(self, volumes: list[Any], location: Any,
                        tags: dict[str, str]) -> list[dict[str, Any]]:
        """Take the local snapshots a backup sends, all at one instant (call in a
        transaction). They are ``bind`` snapshots: they live as long as their volume.
        Returns one transfer description per volume."""
        target = self.location(location)
        plan = [self.core._volume(v) for v in volumes]
        if len({v["name"] for v in plan}) != len(plan):
            raise invalid("a volume is listed twice")
        transfers = []
        for volume in plan:
            snapshot = self.core.snap_api.take_snapshot(volume, None, {**volume["tags"], **tags})
            snapshot["bound"] = True
            transfers.append({
                "location": target, "path": self.core.object_path(snapshot),
                "meta": {"volume": volume["name"], "size": snapshot["size"],
                         "tags": snapshot["tags"], "snapshot": snapshot["name"],
                         "snapshotGlobalId": snapshot["globalId"],
                         "volumeGlobalId": volume["globalId"],
                         "volumeVisibleId": volume["visibleVolumeId"],
                         "creationTimestamp": snapshot["creationTimestamp"],
                         "source": self.core.location_id}})
        self.core._bump()
        return transfers

    def receive_backup(self, meta: dict[str, Any], staged: Path) -> str:
        """Keep a snapshot another cluster sent (its data already in ``staged``); returns
        its global id here. Receiving the same snapshot again returns the first copy."""
        source, source_id = str(meta["source"]), str(meta["snapshotGlobalId"])
        for snapshot in self.core.snapshots.values():
            if snapshot.get("_source") == source and snapshot.get("_sourceId") == source_id:
                staged.unlink(missing_ok=True)
                return snapshot["globalId"]
        size = check_size(meta["size"])
        volume = str(meta["volume"])
        tags = check_tags(meta.get("tags"))
        name: str | None = f"{volume}@{source_id}"
        if not SNAPSHOT_RE.match(name) or len(name) >= NAME_LIMIT or self.core._taken(name):
            name = None  # e.g. an anonymous volume's backup: an anonymous snapshot
        base = {"size": size, "templateName": "", "replication": DEFAULT_REPLICATION,
                "placeAll": DEFAULT_PLACEMENT, "placeTail": DEFAULT_PLACEMENT,
                "placeHead": DEFAULT_PLACEMENT, "iops": "-", "bw": "-"}
        snapshot = self.core._new_snapshot(name, base, tags, volume, "")
        snapshot.update(backup=True, backupOfGlobalId=str(meta["volumeGlobalId"]),
                        backupOfVisibleVolumeId=int(meta["volumeVisibleId"]),
                        _source=source, _sourceId=source_id, _exports=[source])
        path = self.core.object_path(snapshot)
        os.replace(staged, path)
        self.core.immutability.set(path, True)
        self.core.snapshots[snapshot["name"]] = snapshot
        self.core._bump()
        return snapshot["globalId"]

    def exported_to(self, location_id: str) -> list[dict[str, Any]]:
        """The snapshots another location may list and copy: its backups kept here and the
        snapshots exported to it (``SnapshotExport``)."""
        return [{"name": s["name"], "globalId": s["globalId"], "size": s["size"],
                 "creationTimestamp": s["creationTimestamp"], "onVolume": s["onVolume"],
                 "tags": dict(s["tags"]), "backupOf": s.get("_sourceId")}
                for s in self.core.snapshots.values()
                if not s["deleted"] and location_id in s.get("_exports", [])]

    def export_for(self, global_id: str, location_id: str) -> dict[str, Any]:
        """A snapshot the location may copy, by global id."""
        for entry in self.exported_to(location_id):
            if entry["globalId"] == global_id:
                return entry
        raise not_found("remote snapshot", global_id)

    def snapshot_export(self, body: Any) -> dict[str, Any]:
        body = check_object(body, "SnapshotExport", {"snapshot", "location"})
        snapshot = self.core._snapshot(body.get("snapshot"))
        location_id = self.location(body.get("location"))["id"]
        exports = snapshot.setdefault("_exports", [])
        if location_id not in exports:
            exports.append(location_id)
        return self.core.ok()

    def snapshot_unexport(self, body: Any) -> dict[str, Any]:
        body = check_object(body, "SnapshotUnexport", {"snapshot", "location", "all", "force"})
        snapshot = self.core._snapshot(body.get("snapshot"))
        if body.get("all"):
            snapshot["_exports"] = []
        else:
            location_id = self.location(body.get("location"))["id"]
            snapshot["_exports"] = [x for x in snapshot.get("_exports", [])
                                    if x != location_id]
        return self.core.ok()

    def local_copies(self) -> dict[tuple[str, str], str]:
        """``(location name, remote global id) -> local snapshot name`` of pulled copies."""
        copies: dict[tuple[str, str], str] = {}
        # Named copies win over the anonymous ones under VolumeFromRemote volumes.
        for snapshot in sorted(self.core.snapshots.values(), key=lambda s: not s["autoName"]):
            if snapshot.get("_remoteId") and not snapshot["deleted"]:
                copies[(snapshot["_remoteLocation"], snapshot["_remoteId"])] = snapshot["name"]
        return copies

    def check_from_remote(self, body: Any, volume: bool) -> dict[str, Any]:
        """Validate ``SnapshotFromRemote``/``VolumeFromRemote`` before any data moves."""
        what = "VolumeFromRemote" if volume else "SnapshotFromRemote"
        body = check_object(body, what, {*POLICY_KEYS, "remoteLocation", "remoteId", "name",
                                         "template", "export", "tags"})
        self.location(body.get("remoteLocation"))
        if not isinstance(body.get("remoteId"), str) or not GLOBAL_ID_RE.match(
                body["remoteId"]):
            raise invalid(f"invalid remoteId {body.get('remoteId')!r}")
        name = body.get("name")
        if volume and name is None:
            raise invalid("VolumeFromRemote needs a name")
        if name is not None:
            check_name(name, "volume name" if volume else "snapshot name",
                       VOLUME_RE if volume else SNAPSHOT_RE)
            if self.core._taken(name):
                raise exists("volume" if volume else "snapshot", name)
        if body.get("template") is not None:
            self.core._template(body["template"])
        check_policy(body)
        check_tags(body.get("tags"))
        return body

    def import_remote(self, body: dict[str, Any], remote: dict[str, Any], staged: Path,
                      volume: bool) -> dict[str, Any]:
        """Keep a snapshot copied from a remote location (data in ``staged``); with
        ``volume``, also a volume named ``body["name"]`` on top of it."""
        self.check_from_remote(body, volume)  # again: things may have changed meanwhile
        template = self.core._template(body["template"]) if body.get("template") else None
        base = {"size": check_size(remote["size"]), "templateName": "",
                **self.core.vol_api.resolve_policy(body, template, None)}
        if template is not None:
            base["templateName"] = template["name"]
        tags = {**check_tags(remote.get("tags")), **check_tags(body.get("tags"))}
        snapshot = self.core._new_snapshot(None if volume else body.get("name"), base, tags,
                                      str(remote.get("onVolume") or remote["name"]), "")
        snapshot.update(_remoteLocation=body["remoteLocation"], _remoteId=body["remoteId"],
                        bound=volume)
        path = self.core.object_path(snapshot)
        os.replace(staged, path)
        self.core.immutability.set(path, True)
        self.core.snapshots[snapshot["name"]] = snapshot
        if body.get("export"):
            snapshot["_exports"] = [self.location(body["remoteLocation"])["id"]]
        if not volume:
            return self.core.ok()
        clone = self.core._new_object(body["name"], snapshot["size"], snapshot["templateName"],
                                 snapshot["name"], dict(tags),
                                 {k: snapshot[k] for k in POLICY_KEYS if k in snapshot})
        data.sparse_copy(path, self.core.object_path(clone))
        self.core.volumes[clone["name"]] = clone
        return self.core.ok()


def _no_disks() -> dict[str, Any]:
    """The per-disk part of ``VolumeGetInfo``: the sandbox has no disks to report."""
    return {"disksCount": 0, "objectsPerDisk": {}, "objectsPerChain": [],
            "objectsPerDiskSet": []}
