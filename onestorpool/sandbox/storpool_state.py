"""The StorPool sandbox cluster's model: volumes, snapshots, templates, attachments, data.

Every volume and snapshot is a sparse file ``<data>/objects/<globalId>``; a snapshot or a
clone starts as a sparse copy of its source (point in time). Attaching to a client makes
``<client dir>/dev/storpool/<name>`` a symlink to that file. Snapshots are immutable: their
files get the immutable flag (``chattr +i``), so writes through a link fail even for root;
a volume attached read-only only is made immutable the same way. Where the filesystem has no
such flag, files are made read-only by mode, which stops everybody but root (the limitation
is reported by :attr:`Cluster.readonly_enforced`).

All operations raise :class:`SpError` with StorPool's error names; the HTTP layer in
:mod:`onestorpool.sandbox.storpool` turns them into the error envelope. State is saved
atomically to ``<data>/state.json`` after every change.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

VOLUME_RE = re.compile(r"^#?[A-Za-z0-9_\-.:]+$")
SNAPSHOT_RE = re.compile(r"^\*?[A-Za-z0-9_\-.:@]+$")
TEMPLATE_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
TAG_RE = re.compile(r"^[A-Za-z0-9_\-.:]+$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9_\-.:]*$")
POLICY_FIELDS = ("replication", "placeAll", "placeTail", "placeHead", "iops", "bw",
                 "reuseServer")
DEFAULT_PLACEMENT = "default"


class SpError(Exception):
    def __init__(self, name: str, descr: str, transient: bool = False, status: int = 200):
        super().__init__(f"{name}: {descr}")
        self.name, self.descr, self.transient, self.status = name, descr, transient, status

    def envelope(self) -> dict[str, Any]:
        return {"error": {"name": self.name, "descr": self.descr, "transient": self.transient}}


def not_found(kind: str, name: str) -> SpError:
    return SpError("objectDoesNotExist", f"{kind} {name} does not exist")


def invalid(descr: str) -> SpError:
    return SpError("invalidParam", descr)


# -- data files ---------------------------------------------------------------------------------


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy only the data extents of ``src`` (SEEK_DATA/SEEK_HOLE), keeping holes."""
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        os.truncate(fout.fileno(), size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no more data
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            while start < end:
                copied = os.copy_file_range(fin.fileno(), fout.fileno(), end - start, start,
                                            start)
                if copied <= 0:
                    break
                start += copied
            offset = end
        os.fsync(fout.fileno())


def allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


class Immutability:
    """Makes files unwritable for root too (``chattr +i``) when the filesystem allows it."""

    def __init__(self, probe_dir: Path):
        self.enforced = False
        chattr = shutil.which("chattr")
        if chattr is None:
            return
        probe = probe_dir / ".immutable-probe"
        probe.write_bytes(b"")
        try:
            self.enforced = self._chattr("+i", probe)
        finally:
            self._chattr("-i", probe)
            probe.unlink(missing_ok=True)

    @staticmethod
    def _chattr(flag: str, path: Path) -> bool:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True,
                              check=False).returncode == 0

    def set(self, path: Path, frozen: bool) -> None:
        if self.enforced:
            self._chattr("+i" if frozen else "-i", path)
        else:
            path.chmod(0o444 if frozen else 0o644)


# -- the cluster --------------------------------------------------------------------------------


class Cluster:
    """One emulated StorPool cluster. Methods are named after the API queries."""

    def __init__(self, data_dir: Path, *, name: str = "sandbox", location_id: str = "sbx",
                 capacity: int = 1 << 40, clients: dict[int, Path] | None = None,
                 client_count: int = 4):
        self.data_dir = Path(data_dir)
        self.objects_dir = self.data_dir / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.data_dir / "state.json"
        self.lock = threading.RLock()
        self.immutability = Immutability(self.objects_dir)
        self.name, self.location_id, self.capacity = name, location_id, capacity
        self.clock_offset = 0.0
        self.generation = 1
        self.counter = 0
        self.volumes: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.attachments: list[dict[str, Any]] = []
        self.clients: dict[int, str] = {}
        self.locations: dict[str, dict[str, Any]] = {}
        self.remote_snapshots: list[dict[str, Any]] = []  # backups received from others
        if self.state_file.exists():
            self._load()
        for client_id in range(1, client_count + 1):
            self.clients.setdefault(client_id, str(self.data_dir / "clients" / str(client_id)))
        for client_id, directory in (clients or {}).items():
            self.clients[int(client_id)] = str(directory)
        self._relink_all()
        self._reapply_immutability()
        self.save()

    def _reapply_immutability(self) -> None:
        """Flags are cleared when a sandbox stops (so its files can be removed); set them
        again on start."""
        for snapshot in self.snapshots.values():
            if self.object_path(snapshot).exists():
                self.immutability.set(self.object_path(snapshot), True)
        for volume in self.volumes.values():
            if self._is_frozen_ro(volume["name"]):
                self.immutability.set(self.object_path(volume), True)

    @property
    def readonly_enforced(self) -> bool:
        return self.immutability.enforced

    # -- persistence ----------------------------------------------------------------------

    _PERSISTED = ("name", "location_id", "capacity", "clock_offset", "generation", "counter",
                  "volumes", "snapshots", "templates", "attachments", "clients", "locations",
                  "remote_snapshots")

    def save(self) -> None:
        state = {key: getattr(self, key) for key in self._PERSISTED}
        state["clients"] = {str(k): v for k, v in self.clients.items()}
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(state, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_file)
        directory = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _load(self) -> None:
        state = json.loads(self.state_file.read_text())
        for key in self._PERSISTED:
            if key in state:
                setattr(self, key, state[key])
        self.clients = {int(k): v for k, v in state.get("clients", {}).items()}

    # -- helpers --------------------------------------------------------------------------

    def now(self) -> int:
        return int(time.time() + self.clock_offset)

    def advance_clock(self, seconds: float) -> None:
        with self.lock:
            self.clock_offset += seconds
            self.collect_garbage()
            self.save()

    def _bump(self) -> int:
        self.generation += 1
        return self.generation

    def _new_id(self) -> tuple[str, int]:
        self.counter += 1
        return f"{self.location_id}.b.{_base36(self.counter)}", self.counter

    def object_path(self, obj: dict[str, Any]) -> Path:
        return self.objects_dir / obj["globalId"]

    def client_dir(self, client_id: int) -> Path:
        return Path(self.clients[client_id])

    def ok(self, **extra: Any) -> dict[str, Any]:
        return {"ok": True, "generation": self._bump(),
                **{k: v for k, v in extra.items() if v is not None}}

    def _volume(self, name: str) -> dict[str, Any]:
        volume = self.volumes.get(name) or self._by_global_id(self.volumes, name)
        if volume is None:
            raise not_found("volume", name)
        return volume

    def _snapshot(self, name: str) -> dict[str, Any]:
        snapshot = self.snapshots.get(name) or self._by_global_id(self.snapshots, name)
        if snapshot is None or snapshot.get("deleted"):
            raise not_found("snapshot", name)
        return snapshot

    @staticmethod
    def _by_global_id(table: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
        if name.startswith("~"):
            for obj in table.values():
                if obj["globalId"] == name[1:]:
                    return obj
        return None

    def _template(self, name: str) -> dict[str, Any]:
        if name not in self.templates:
            raise not_found("template", name)
        return self.templates[name]

    def _exists(self, name: str) -> bool:
        return name in self.volumes or name in self.snapshots

    @staticmethod
    def _check_size(size: Any, what: str = "size") -> int:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 512:
            raise invalid(f"{what} must be a positive multiple of 512, got {size!r}")
        return size

    @staticmethod
    def _check_tags(tags: Any) -> dict[str, str]:
        if tags is None:
            return {}
        if not isinstance(tags, dict):
            raise invalid("tags must be an object")
        for key, value in tags.items():
            if not isinstance(key, str) or not TAG_RE.match(key) or len(key) >= 200:
                raise invalid(f"invalid tag name {key!r}")
            if not isinstance(value, str) or not TAG_VALUE_RE.match(value) or len(value) >= 200:
                raise invalid(f"invalid tag value {value!r}")
        return dict(tags)

    def _policy(self, body: dict[str, Any], template: dict[str, Any] | None) -> dict[str, Any]:
        policy = {"replication": 3, "placeAll": DEFAULT_PLACEMENT,
                  "placeTail": DEFAULT_PLACEMENT, "placeHead": DEFAULT_PLACEMENT,
                  "iops": "-", "bw": "-"}
        for source in (template or {}, body):
            for key in POLICY_FIELDS:
                if source.get(key) not in (None, "-") or (key in ("iops", "bw")
                                                          and source.get(key) == "-"):
                    policy[key] = source[key]
        replication = policy["replication"]
        if not isinstance(replication, int) or not 1 <= replication <= 3:
            raise invalid(f"replication must be 1..3, got {replication!r}")
        for key in ("placeAll", "placeTail", "placeHead"):
            if not isinstance(policy[key], str) or not TEMPLATE_RE.match(policy[key]):
                raise invalid(f"invalid placement group {policy[key]!r}")
        for key in ("iops", "bw"):
            value = policy[key]
            if value != "-" and (not isinstance(value, int) or value < 0):
                raise invalid(f"{key} must be a non-negative integer or '-'")
        return policy

    def _new_object(self, name: str, size: int, template: str, parent: str,
                    tags: dict[str, str], policy: dict[str, Any]) -> dict[str, Any]:
        global_id, visible = self._new_id()
        return {"name": name, "size": size, "templateName": template, "parentName": parent,
                "tags": tags, "globalId": global_id, "visibleVolumeId": visible,
                "creationTimestamp": self.now(), "objectsCount": max(1, size // (32 << 20)),
                **policy}

    # -- volumes --------------------------------------------------------------------------

    def volumes_list(self) -> list[dict[str, Any]]:
        return [self._summary(v) for v in self.volumes.values()]

    def volume(self, name: str) -> list[dict[str, Any]]:
        return [self._summary(self._volume(name))]

    def volume_describe(self, name: str) -> dict[str, Any]:
        volume = self._summary(self._volume(name))
        return {**volume, "targetDiskSets": [], "objects": []}

    def volume_create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        auto = name is None
        if auto:
            name = f"~{self.counter + 1}"
        elif not isinstance(name, str) or not VOLUME_RE.match(name) or len(name) >= 200:
            raise invalid(f"invalid volume name {name!r}")
        if name in ("list", "status"):
            raise invalid(f"{name} is a reserved name")
        if self._exists(name):
            raise SpError("objectExists", f"volume {name} already exists")
        template = None
        if body.get("template") is not None:
            template = self._template(body["template"])
        sources = [key for key in ("parent", "baseOn") if body.get(key) is not None]
        if len(sources) > 1:
            raise invalid("parent and baseOn are mutually exclusive")
        size = body.get("size")
        if size is not None:
            self._check_size(size)
        source_obj, parent_name = None, ""
        if sources == ["parent"]:
            source_obj = self._snapshot(body["parent"])
            parent_name = source_obj["name"]
        elif sources == ["baseOn"]:
            source_obj = self._volume(body["baseOn"])
            parent_name = source_obj.get("parentName", "")
        if source_obj is None and size is None:
            if template is None or template.get("size") in (None, "-"):
                raise invalid("size is required for a new empty volume")
            size = template["size"]
        size = max(size or 0, source_obj["size"] if source_obj else 0)
        policy = self._policy(body, template)
        tags = self._check_tags(body.get("tags"))
        template_name = template["name"] if template else (
            source_obj.get("templateName", "") if source_obj else "")
        volume = self._new_object(name, size, template_name, parent_name, tags, policy)
        path = self.object_path(volume)
        if source_obj is not None:
            sparse_copy(self.object_path(source_obj), path)
            self.immutability.set(path, False)
            path.chmod(0o644)
        else:
            path.touch()
        os.truncate(path, size)
        if auto:
            volume["name"] = name = f"~{volume['globalId']}"
        self.volumes[name] = volume
        extra = {"globalId": volume["globalId"]}
        if auto:
            extra["name"] = name
        return self.ok(**extra)

    def volume_update(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        volume = self._volume(name)
        if body.get("size") is not None or body.get("sizeAdd") is not None:
            new_size = body["size"] if body.get("size") is not None else (
                volume["size"] + self._check_size(body["sizeAdd"], "sizeAdd"))
            self._check_size(new_size)
            if new_size < volume["size"] and not body.get("shrinkOk"):
                raise invalid(f"shrinking {name} needs shrinkOk")
            path = self.object_path(volume)
            frozen = self._is_frozen_ro(volume["name"])
            if frozen:
                self.immutability.set(path, False)
            os.truncate(path, new_size)
            if frozen:
                self.immutability.set(path, True)
            volume["size"] = new_size
        if body.get("template") is not None:
            template = self._template(body["template"])
            volume["templateName"] = template["name"]
            volume.update(self._policy({}, template))
        for key in POLICY_FIELDS:
            if body.get(key) is not None:
                volume.update(self._policy({**volume, key: body[key]}, None))
        if body.get("tags") is not None:
            tags = self._check_tags(body["tags"])
            merged = {**volume["tags"], **tags}
            volume["tags"] = {k: v for k, v in merged.items() if v != ""}
        if body.get("rename") is not None:
            self._rename(self.volumes, volume, body["rename"], VOLUME_RE, snapshot=False)
        return self.ok()

    def _rename(self, table: dict[str, dict[str, Any]], obj: dict[str, Any], new: Any,
                pattern: re.Pattern[str], snapshot: bool) -> None:
        if not isinstance(new, str) or not pattern.match(new) or len(new) >= 200:
            raise invalid(f"invalid new name {new!r}")
        if new != obj["name"] and self._exists(new):
            raise SpError("objectExists", f"{new} already exists")
        old = obj["name"]
        del table[old]
        obj["name"] = new
        table[new] = obj
        for attachment in self.attachments:
            if attachment["volume"] == old and attachment["snapshot"] == snapshot:
                self._unlink(attachment)
                attachment["volume"] = new
                self._link(attachment)
        for other in [*self.volumes.values(), *self.snapshots.values()]:
            if snapshot and other.get("parentName") == old:
                other["parentName"] = new
            if not snapshot and other.get("onVolume") == old:
                other["onVolume"] = new

    def volume_delete(self, name: str) -> dict[str, Any]:
        volume = self._volume(name)
        clients = [a["client"] for a in self.attachments if a["volume"] == volume["name"]
                   and not a["snapshot"]]
        if clients:
            raise invalid(f"volume {volume['name']} is attached to client(s) {clients}")
        del self.volumes[volume["name"]]
        self._remove_file(volume)
        self.collect_garbage()
        return self.ok()

    def volume_revert(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        volume = self._volume(name)
        snapshot = self._snapshot(str(body.get("toSnapshot")))
        if self._is_attached(volume["name"], snapshot=False):
            raise invalid(f"volume {volume['name']} is attached")
        path = self.object_path(volume)
        path.unlink()
        sparse_copy(self.object_path(snapshot), path)
        self.immutability.set(path, False)
        path.chmod(0o644)
        volume["size"] = snapshot["size"]
        volume["parentName"] = snapshot["name"]
        return self.ok()

    def volume_freeze(self, name: str, body: dict[str, Any] | None) -> dict[str, Any]:
        volume = self._volume(name)
        if any(a["rights"] == "rw" for a in self.attachments
               if a["volume"] == volume["name"] and not a["snapshot"]):
            raise invalid(f"volume {volume['name']} is attached read-write")
        for attachment in [a for a in self.attachments if a["volume"] == volume["name"]]:
            attachment["snapshot"] = True
        del self.volumes[volume["name"]]
        snapshot = {**volume, "onVolume": "", "autoName": False, "bound": False,
                    "deleted": False, "transient": False, "recoveringFromRemote": False}
        self._schedule_delete(snapshot, body or {})
        self.snapshots[volume["name"]] = snapshot
        self.immutability.set(self.object_path(snapshot), True)
        return self.ok()

    def volume_list_snapshots(self, name: str) -> list[dict[str, Any]]:
        volume = self._volume(name)
        chain, parent = [], volume.get("parentName")
        while parent and parent in self.snapshots:
            chain.append(self._snapshot_summary(self.snapshots[parent]))
            parent = self.snapshots[parent].get("parentName")
        return chain

    # -- snapshots ------------------------------------------------------------------------

    def snapshots_list(self) -> list[dict[str, Any]]:
        return [self._snapshot_summary(s) for s in self.snapshots.values()]

    def snapshot(self, name: str) -> list[dict[str, Any]]:
        return [self._snapshot_summary(self._snapshot(name))]

    def snapshot_describe(self, name: str) -> dict[str, Any]:
        return {**self._snapshot_summary(self._snapshot(name)), "targetDiskSets": [],
                "objects": []}

    def volume_snapshot(self, volume_name: str, body: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._take_snapshot(self._volume(volume_name), body.get("name"),
                                       self._check_tags(body.get("tags")), body)
        return self.ok(autoName=snapshot["name"] if snapshot["autoName"] else None,
                       snapshotGlobalId=snapshot["globalId"],
                       snapshotVisibleVolumeId=snapshot["visibleVolumeId"])

    def _take_snapshot(self, volume: dict[str, Any], name: Any, tags: dict[str, str],
                       body: dict[str, Any]) -> dict[str, Any]:
        auto = name is None
        if not auto and (not isinstance(name, str) or not SNAPSHOT_RE.match(name)
                         or len(name) >= 200):
            raise invalid(f"invalid snapshot name {name!r}")
        if not auto and self._exists(name):
            raise SpError("objectExists", f"snapshot {name} already exists")
        policy = {k: volume[k] for k in ("replication", "placeAll", "placeTail", "placeHead",
                                         "iops", "bw")}
        snapshot = self._new_object(name or "", volume["size"], volume["templateName"],
                                    volume.get("parentName", ""), tags, policy)
        if auto:
            snapshot["name"] = f"*{snapshot['globalId']}"
        snapshot.update(onVolume=volume["name"], autoName=auto, bound=bool(body.get("bind")),
                        deleted=False, transient=False, recoveringFromRemote=False)
        self._schedule_delete(snapshot, body)
        path = self.object_path(snapshot)
        sparse_copy(self.object_path(volume), path)
        self.immutability.set(path, True)
        self.snapshots[snapshot["name"]] = snapshot
        volume["parentName"] = snapshot["name"]  # the volume now hangs off its snapshot
        return snapshot

    def _schedule_delete(self, snapshot: dict[str, Any], body: dict[str, Any]) -> None:
        if body.get("deleteAfter") is not None:
            after = body["deleteAfter"]
            if not isinstance(after, int) or after < 0:
                raise invalid("deleteAfter must be a number of seconds")
            snapshot["targetDeleteDate"] = self.now() + after
        elif body.get("targetDeleteDate") is not None:
            if not isinstance(body["targetDeleteDate"], int):
                raise invalid("targetDeleteDate must be a unix time")
            snapshot["targetDeleteDate"] = body["targetDeleteDate"] or None

    def snapshot_update(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot(name)
        if body.get("tags") is not None:
            merged = {**snapshot["tags"], **self._check_tags(body["tags"])}
            snapshot["tags"] = {k: v for k, v in merged.items() if v != ""}
        if body.get("template") is not None:
            snapshot["templateName"] = self._template(body["template"])["name"]
        if body.get("bind") is not None:
            snapshot["bound"] = bool(body["bind"])
        self._schedule_delete(snapshot, body)
        if body.get("rename") is not None:
            self._rename(self.snapshots, snapshot, body["rename"], SNAPSHOT_RE, snapshot=True)
        return self.ok()

    def snapshot_delete(self, name: str) -> dict[str, Any]:
        snapshot = self._snapshot(name)
        if self._is_attached(snapshot["name"], snapshot=True):
            raise invalid(f"snapshot {snapshot['name']} is attached")
        snapshot["deleted"] = True
        self.collect_garbage()
        return self.ok()

    def volumes_group_snapshot(self, body: dict[str, Any]) -> dict[str, Any]:
        items = body.get("volumes")
        if not isinstance(items, list) or not items:
            raise invalid("volumes must be a non-empty list")
        common = self._check_tags(body.get("tags"))
        volumes = [self._volume(str(item.get("volume"))) for item in items]
        names = [item.get("name") for item in items if item.get("name") is not None]
        if len(set(names)) != len(names) or any(self._exists(n) for n in names):
            raise SpError("objectExists", "a snapshot name is taken")
        result = []
        for item, volume in zip(items, volumes, strict=True):  # checked above: all or none
            tags = {**common, **self._check_tags(item.get("tags"))}
            snapshot = self._take_snapshot(volume, item.get("name"), tags, {})
            result.append({"volume": volume["name"], "volumeGlobalId": volume["globalId"],
                           "snapshot": snapshot["name"], "snapshotGlobalId":
                               snapshot["globalId"], "remoteId": snapshot["globalId"]})
        return self.ok(snapshots=result)

    def restore_sizes(self) -> None:
        """A write through a device link may truncate the backing file (``open(..., "w")``),
        which no block device allows: put every file back to its object's size."""
        for obj in [*self.volumes.values(), *self.snapshots.values()]:
            path = self.object_path(obj)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size != obj["size"] and obj["name"] in self.volumes:
                    os.truncate(path, obj["size"])

    def collect_garbage(self) -> None:
        """Expired snapshots go; deleted or bound ones go once nothing depends on them."""
        now = self.now()
        changed = True
        while changed:
            changed = False
            children = {o.get("parentName") for o in [*self.volumes.values(),
                                                       *self.snapshots.values()]}
            for name, snapshot in list(self.snapshots.items()):
                expired = snapshot.get("targetDeleteDate") and snapshot["targetDeleteDate"] <= now
                if expired and not self._is_attached(name, snapshot=True):
                    snapshot["deleted"] = True
                removable = snapshot.get("deleted") or snapshot.get("bound")
                if removable and name not in children and not self._is_attached(name, True):
                    del self.snapshots[name]
                    self._remove_file(snapshot)
                    changed = True

    # -- attachments ----------------------------------------------------------------------

    def attachments_list(self) -> list[dict[str, Any]]:
        return [{**a, "globalId": self._object_of(a)["globalId"]} for a in self.attachments]

    def _object_of(self, attachment: dict[str, Any]) -> dict[str, Any]:
        table = self.snapshots if attachment["snapshot"] else self.volumes
        return table[attachment["volume"]]

    def _is_attached(self, name: str, snapshot: bool) -> bool:
        return any(a["volume"] == name and a["snapshot"] == snapshot for a in self.attachments)

    def _is_frozen_ro(self, volume: str) -> bool:
        rights = [a["rights"] for a in self.attachments
                  if a["volume"] == volume and not a["snapshot"]]
        return bool(rights) and "rw" not in rights

    def _client(self, raw: Any) -> int:
        try:
            client = int(raw)  # the Bash add-on sends client ids as JSON strings
        except (TypeError, ValueError):
            raise invalid(f"invalid client id {raw!r}") from None
        if client not in self.clients:
            raise invalid(f"client {client} does not exist")
        return client

    def volumes_reassign(self, items: Any) -> dict[str, Any]:
        if not isinstance(items, list):
            raise invalid("reassign expects a list of items")
        plan = [self._plan_item(item) for item in items]  # validate all before changing any
        for apply in plan:
            apply()
        return self.ok()

    def _plan_item(self, item: Any) -> Any:
        if not isinstance(item, dict) or ("volume" in item) == ("snapshot" in item):
            raise invalid("each item names exactly one volume or snapshot")
        is_snapshot = "snapshot" in item
        obj = self._snapshot(item["snapshot"]) if is_snapshot else self._volume(item["volume"])
        name = obj["name"]
        force = bool(item.get("force"))
        detach = item.get("detach")
        if detach == "all":
            detach_ids = [a["client"] for a in self.attachments
                          if a["volume"] == name and a["snapshot"] == is_snapshot]
        else:
            detach_ids = [self._client(c) for c in (detach or [])]
        rw = [self._client(c) for c in item.get("rw") or []]
        ro = [self._client(c) for c in item.get("ro") or []]
        if is_snapshot and rw:
            raise invalid(f"snapshot {name} can only be attached read-only")
        current = {a["client"]: a["rights"] for a in self.attachments
                   if a["volume"] == name and a["snapshot"] == is_snapshot
                   and a["client"] not in detach_ids}
        wanted = {**current, **dict.fromkeys(ro, "ro"), **dict.fromkeys(rw, "rw")}
        writers = [c for c, r in wanted.items() if r == "rw"]
        if not force:
            if len(writers) > 1:
                others = [c for c in writers if c not in rw] or writers[1:]
                raise invalid(f"volume {name} is already attached read-write to client "
                              f"{others[0]} (use force to attach to several writers)")
            if writers and len(wanted) > 1:
                raise invalid(f"volume {name} cannot be attached read-write and read-only "
                              "at the same time")

        def apply() -> None:
            for attachment in [a for a in self.attachments if a["volume"] == name
                               and a["snapshot"] == is_snapshot
                               and a["client"] in detach_ids]:
                self._unlink(attachment)
                self.attachments.remove(attachment)
            for client, rights in wanted.items():
                existing = next((a for a in self.attachments if a["volume"] == name
                                 and a["snapshot"] == is_snapshot and a["client"] == client),
                                None)
                if existing is None:
                    existing = {"volume": name, "snapshot": is_snapshot, "client": client,
                                "rights": rights, "pos": len(self.attachments)}
                    self.attachments.append(existing)
                existing["rights"] = rights
                self._link(existing)
            if not is_snapshot:
                self.immutability.set(self.object_path(obj), self._is_frozen_ro(name))

        return apply

    def _device(self, attachment: dict[str, Any]) -> Path:
        return self.client_dir(attachment["client"]) / "dev" / "storpool" / attachment["volume"]

    def _link(self, attachment: dict[str, Any]) -> None:
        device = self._device(attachment)
        device.parent.mkdir(parents=True, exist_ok=True)
        target = self.object_path(self._object_of(attachment))
        if device.is_symlink() or device.exists():
            if os.readlink(device) == str(target):
                return
            device.unlink()
        device.symlink_to(target)
        by_id = device.parent.parent / "storpool-byid" / self._object_of(attachment)["globalId"]
        by_id.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            by_id.symlink_to(target)

    def _unlink(self, attachment: dict[str, Any]) -> None:
        device = self._device(attachment)
        if device.is_symlink():
            device.unlink()
        by_id = device.parent.parent / "storpool-byid" / self._object_of(attachment)["globalId"]
        if by_id.is_symlink():
            by_id.unlink()

    def _relink_all(self) -> None:
        for attachment in self.attachments:
            if attachment["client"] in self.clients:
                self._link(attachment)

    def _remove_file(self, obj: dict[str, Any]) -> None:
        path = self.object_path(obj)
        if path.exists():
            self.immutability.set(path, False)
            path.unlink()

    def release_immutable_files(self) -> None:
        """Clear every immutable flag (so a test's temporary directory can be removed)."""
        if self.immutability.enforced:
            for path in self.objects_dir.iterdir():
                self.immutability.set(path, False)

    def add_client(self, client_id: int, directory: Path) -> None:
        if not 1 <= client_id <= 4095:
            raise invalid(f"client id {client_id} out of range 1..4095")
        self.clients[client_id] = str(directory)
        self._relink_all()

    # -- templates ------------------------------------------------------------------------

    def volume_template_create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not TEMPLATE_RE.match(name) or len(name) >= 200:
            raise invalid(f"invalid template name {name!r}")
        if name in self.templates:
            raise SpError("objectExists", f"template {name} already exists")
        policy = self._policy(body, None)
        size = body.get("size", "-")
        if size != "-":
            self._check_size(size)
        self.templates[name] = {"name": name, "parentName": body.get("parent") or "",
                                "size": size, **policy}
        return self.ok()

    def volume_template_update(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        template = self._template(name)
        template.update(self._policy({**template, **body}, None))
        if body.get("propagate"):
            for volume in self.volumes.values():
                if volume["templateName"] == name:
                    volume.update(self._policy({}, template))
        if body.get("rename"):
            new = body["rename"]
            if not isinstance(new, str) or not TEMPLATE_RE.match(new) or new in self.templates:
                raise invalid(f"cannot rename template to {new!r}")
            self.templates[new] = self.templates.pop(name)
            template["name"] = new
            for obj in [*self.volumes.values(), *self.snapshots.values()]:
                if obj["templateName"] == name:
                    obj["templateName"] = new
        return self.ok()

    def volume_template_delete(self, name: str) -> dict[str, Any]:
        self._template(name)
        if any(o["templateName"] == name for o in [*self.volumes.values(),
                                                    *self.snapshots.values()]):
            raise invalid(f"template {name} is in use")
        del self.templates[name]
        return self.ok()

    def volume_templates_list(self) -> list[dict[str, Any]]:
        return [dict(t) for t in self.templates.values()]

    def volume_template_describe(self, name: str) -> dict[str, Any]:
        return dict(self._template(name))

    def _raw_used(self) -> int:
        return sum(allocated(self.object_path(o)) * int(o["replication"])
                   for o in [*self.volumes.values(), *self.snapshots.values()])

    def volume_templates_status(self) -> list[dict[str, Any]]:
        raw_free = max(0, self.capacity - self._raw_used())
        result = []
        for template in self.templates.values():
            replication = template["replication"] if isinstance(template["replication"],
                                                                int) else 3
            capacity, free = self.capacity // replication, raw_free // replication
            volumes = [v for v in self.volumes.values() if v["templateName"] == template["name"]]
            snaps = [s for s in self.snapshots.values()
                     if s["templateName"] == template["name"]]
            stored = sum(allocated(self.object_path(o)) for o in [*volumes, *snaps])
            estimate = {"capacity": capacity, "free": free,
                        "internal": {"u1": free, "u2": 0, "u3": 0}}
            result.append({
                "id": len(result) + 1, "name": template["name"],
                "placeAll": template["placeAll"], "placeTail": template["placeTail"],
                "placeHead": template["placeHead"], "replication": template["replication"],
                "volumesCount": len(volumes), "snapshotsCount": len(snaps),
                "removingSnapshotsCount": sum(1 for s in snaps if s.get("deleted")),
                "size": sum(v["size"] for v in volumes),
                "totalSize": sum(o["size"] for o in [*volumes, *snaps]),
                "onDiskSize": stored * replication, "storedSize": stored,
                "availablePlaceAll": raw_free, "availablePlaceTail": raw_free,
                "availablePlaceHead": raw_free, "capacityPlaceAll": self.capacity,
                "capacityPlaceTail": self.capacity, "capacityPlaceHead": self.capacity,
                "stored": {**estimate, "placeAll": estimate, "placeTail": estimate,
                           "placeHead": estimate},
            })
        return result

    def volumes_space(self) -> list[dict[str, Any]]:
        result = []
        for volume in self.volumes.values():
            stored = allocated(self.object_path(volume))
            used, parent = stored, volume.get("parentName")
            while parent and parent in self.snapshots:
                used += allocated(self.object_path(self.snapshots[parent]))
                parent = self.snapshots[parent].get("parentName")
            result.append({**self._summary(volume), "storedSize": stored, "spaceUsed": used})
        return result

    def snapshots_space(self) -> list[dict[str, Any]]:
        return [{**self._snapshot_summary(s), "storedSize": allocated(self.object_path(s)),
                 "spaceUsed": allocated(self.object_path(s))} for s in self.snapshots.values()]

    def volumes_status(self) -> dict[str, Any]:
        result = {}
        for obj in [*self.volumes.values(), *self.snapshots.values()]:
            stored = allocated(self.object_path(obj))
            result[obj["name"]] = {
                **self._summary(obj), "status": "up", "snapshot": obj["name"] in self.snapshots,
                "migrating": False, "decreasedRedundancy": False, "balancerBlocked": False,
                "storedSize": stored, "onDiskSize": stored * int(obj["replication"]),
                "syncingDataBytes": 0, "syncingMetaObjects": 0, "downBytes": 0,
                "downDrives": [], "missingDrives": [], "missingTargetDrives": [],
                "softEjectingDrives": [], "upSoonChainsCount": 0}
        return result

    # -- services, locations, backups ----------------------------------------------------------

    def services_list(self) -> dict[str, Any]:
        start = int(time.time())
        clients = {str(c): {"id": c, "status": "running", "nodeId": c, "version": "sandbox",
                            "startTime": start} for c in sorted(self.clients)}
        return {"clusterStatus": "running", "clients": clients, "servers": {}, "mgmt": {},
                "bridges": {}, "iscsiTargets": {}}

    def clients_config_dump(self) -> list[dict[str, Any]]:
        return [{"id": c, "generation": self.generation, "clientGeneration": self.generation,
                 "configStatus": "ok", "delay": 0} for c in sorted(self.clients)]

    def locations_list(self) -> dict[str, Any]:
        return {"locations": [{"id": loc["id"], "name": name, "sendBufferSize": 0,
                               "recvBufferSize": 0} for name, loc in self.locations.items()]}

    def clusters_list(self) -> dict[str, Any]:
        return {"clusters": [{"id": f"{self.location_id}.a", "location": self.location_id,
                              "name": self.name}]}

    def add_location(self, name: str, url: str, token: str, location_id: str) -> None:
        if not TEMPLATE_RE.match(name):
            raise invalid(f"invalid location name {name!r}")
        self.locations[name] = {"id": location_id, "url": url, "token": token}

    def backup_snapshot_payload(self, volume_name: str, location: str,
                                tags: dict[str, str]) -> tuple[dict[str, Any], Path]:
        """Take the local snapshot a backup sends; returns its metadata and data file."""
        if location not in self.locations:
            raise not_found("location", location)
        volume = self._volume(volume_name)
        snapshot = self._take_snapshot(volume, None, {**volume["tags"], **tags}, {})
        meta = {"name": volume["name"], "size": snapshot["size"], "tags": snapshot["tags"],
                "localSnapshot": snapshot["name"],
                "globalId": snapshot["globalId"],
                "visibleVolumeId": snapshot["visibleVolumeId"],
                "creationTimestamp": snapshot["creationTimestamp"],
                "templateName": snapshot["templateName"]}
        return meta, self.object_path(snapshot)

    def receive_backup(self, meta: dict[str, Any], data: Path, source_location: str) -> str:
        """Store a snapshot sent by another cluster; returns its global id here."""
        size = self._check_size(int(meta["size"]))
        tags = self._check_tags(meta.get("tags"))
        name = f"{meta['name']}@{meta['globalId']}"
        if not SNAPSHOT_RE.match(name):
            raise invalid(f"cannot store backup as {name!r}")
        policy = self._policy({}, None)
        snapshot = self._new_object(name, size, "", "", tags, policy)
        snapshot.update(onVolume="", autoName=False, bound=False, deleted=False,
                        transient=False, recoveringFromRemote=False, backup=True,
                        backupOfGlobalId=meta["globalId"],
                        backupOfVisibleVolumeId=int(meta.get("visibleVolumeId") or 0))
        os.replace(data, self.object_path(snapshot))
        os.truncate(self.object_path(snapshot), size)
        self.immutability.set(self.object_path(snapshot), True)
        self.snapshots[name] = snapshot
        self.remote_snapshots.append({"from": source_location, "name": name})
        self._bump()
        return snapshot["globalId"]

    # -- summaries ------------------------------------------------------------------------

    @staticmethod
    def _summary(obj: dict[str, Any]) -> dict[str, Any]:
        keys = ("name", "size", "replication", "placeAll", "placeTail", "placeHead",
                "templateName", "parentName", "globalId", "visibleVolumeId",
                "creationTimestamp", "objectsCount", "tags", "iops", "bw")
        return {k: obj[k] for k in keys if k in obj}

    def _snapshot_summary(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        summary = self._summary(snapshot)
        for key in ("onVolume", "autoName", "bound", "deleted", "transient",
                    "recoveringFromRemote", "backup", "backupOfGlobalId",
                    "backupOfVisibleVolumeId"):
            if key in snapshot:
                summary[key] = snapshot[key]
        if snapshot.get("targetDeleteDate"):
            summary["targetDeleteDate"] = snapshot["targetDeleteDate"]
        return summary


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if number == 0:
            return text
