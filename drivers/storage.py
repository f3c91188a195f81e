"""Idempotent StorPool operations shared by the datastore and TM drivers.

Rules (STYLE lesson 4): a create that finds the object already there compares it and accepts
a match; a delete detaches everywhere first and treats "does not exist" as done; attachments
go through ``VolumesReassignWait`` with a timeout. Every volume the add-on creates carries the
owner tags reconciliation relies on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from onestorpool.errors import AddonError, InputError
from onestorpool.hosts import Host
from onestorpool.storpool import AlreadyExists, ApiError, Busy, NotFound, StorPoolClient

MIB = 1024 * 1024


class StorageError(AddonError):
    """A storage step cannot be done as asked (conflicting object, wrong size, ...)."""


def mib(size_bytes: int) -> int:
    """Bytes → MiB, rounded up (oned sizes are whole MiB)."""
    return -(-size_bytes // MIB)


def round_up(size_bytes: int, unit: int = 512) -> int:
    return -(-size_bytes // unit) * unit


@dataclass(frozen=True)
class Tags:
    """The tag policy of one OpenNebula instance (``LOC_TAG``/``VM_TAG`` and values)."""

    loc_tag: str
    loc_value: str
    vm_tag: str = "nvm"

    @classmethod
    def from_config(cls, config: Any) -> Tags:
        return cls(config["LOC_TAG"], config.loc_tag_value, config["VM_TAG"])

    def base(self, qos: str = "") -> dict[str, str]:
        tags = {"virt": "one", self.loc_tag: self.loc_value}
        if qos:
            tags["qc"] = qos
        return tags

    def for_vm(self, vm_id: int, disk_id: int | None, disk_type: str,
               qos: str = "") -> dict[str, str]:
        tags = self.base(qos)
        if self.vm_tag:
            tags[self.vm_tag] = str(vm_id)
        tags["type"] = disk_type
        if disk_id is not None:
            tags["diskid"] = str(disk_id)
        return tags


def qos_class(*candidates: str) -> str:
    """The first non-empty QoS class (callers pass them in precedence order)."""
    return next((c for c in candidates if c), "")


def create_volume(sp: StorPoolClient, name: str, *, size: int | None = None,
                  template: str | None = None, parent: str | None = None,
                  base_on: str | None = None, tags: Mapping[str, str] | None = None) -> bool:
    """Create a volume; ``True`` if created, ``False`` if an identical one was already there.

    A retried create can find its own earlier attempt: that is accepted when size, template
    and parent match; anything else is a conflict the caller must not paper over.
    """
    try:
        sp.volume_create(name, size=size, template=template, parent=parent, base_on=base_on,
                         tags=tags)
        return True
    except NotFound as exc:
        if template and "template" in str(exc).lower():
            # the admin's step of setting up a datastore (one template per datastore)
            raise StorageError(
                f"StorPool template {template} does not exist: create it with 'storpool "
                f"template {template} replication 3 placeAll <group> placeTail <group>' "
                "before using the datastore") from None
        raise
    except AlreadyExists:
        existing = sp.volume(name)
        if size is not None and existing.get("size") != size:
            raise StorageError(f"volume {name} already exists with size "
                               f"{existing.get('size')} (wanted {size})") from None
        if template and existing.get("templateName") not in (template, None):
            raise StorageError(f"volume {name} already exists with template "
                               f"{existing.get('templateName')!r}") from None
        if tags and any(existing.get("tags", {}).get(k) != v for k, v in tags.items()):
            raise StorageError(f"volume {name} already exists and is not ours "
                               f"(tags {existing.get('tags')})") from None
        return False


def delete_volume(sp: StorPoolClient, name: str, *, delay: int = 0) -> str | None:
    """Detach everywhere and delete ``name``; with ``delay`` seconds keep an anonymous
    snapshot that StorPool deletes by itself (``DELAY_DELETE``), unless the volume holds no
    data. Returns the kept snapshot's name, or ``None``. A missing volume is done already.
    """
    try:
        volume = sp.volume(name)
    except NotFound:
        return None
    detach_all(sp, name)
    kept = None
    if delay > 0 and _holds_data(sp, volume):
        reply = sp.volume_snapshot(name, delete_after=delay, tags={"del": "y"})
        kept = reply.get("autoName") or reply.get("snapshotGlobalId")
    with contextlib.suppress(NotFound):
        sp.volume_delete(name)
    return kept


def _holds_data(sp: StorPoolClient, volume: Mapping[str, Any]) -> bool:
    """A volume cloned from a parent holds data even if it wrote nothing itself."""
    if volume.get("parentName"):
        return True
    for entry in sp.volumes_space():
        if entry.get("name") == volume.get("name"):
            return int(entry.get("storedSize") or 0) > 0
    return True  # not listed: be safe and keep it


def retire_volume(sp: StorPoolClient, naming: Any, tags: Tags, volume: str, *, delay: int,
                  remote: tuple[str, str] | None) -> dict[str, Any]:
    """Delete a volume that held a user's data, as ``rm`` and the TM's ``delete`` do: with
    ``REMOTE_BACKUP_DELETE`` (``remote`` = location and extra arguments) a named tombstone
    snapshot is kept for the subscriber to ship (a ``remote_backup`` effect), else the
    ``DELAY_DELETE`` snapshot. Returns the event's fields."""
    fields: dict[str, Any] = {}
    if remote is not None:
        location, extra = remote
        tombstone = naming.tombstone(volume, int(time.time()))
        keep = max(delay, 48 * 3600)
        sp.volume_snapshot(volume, tombstone, delete_after=keep,
                           tags={**tags.base(), "tombstone": "y"})
        fields.update(tombstone=tombstone, keep_seconds=keep, created=[tombstone],
                      effect={"type": "remote_backup", "key": f"remote_backup:{tombstone}",
                              "snapshot": tombstone, "location": location,
                              "tags": parse_extra_tags(extra)})
        delay = 0  # the tombstone already keeps the data
    fields.update(deleted=True, delayed_snapshot=delete_volume(sp, volume, delay=delay))
    return fields


def parse_extra_tags(extra: str) -> dict[str, str]:
    """``REMOTE_BACKUP_DELETE`` extra args: ``tag k=v [k=v...]`` as the CLI took them."""
    import re

    words = extra.split()
    if words and words[0] == "tag":
        words = words[1:]
    tags = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_\-.:]+", key):
            raise InputError(f"REMOTE_BACKUP_DELETE: expected tag k=v, got {word!r}")
        tags[key] = value
    return tags


def delete_snapshot(sp: StorPoolClient, name: str) -> bool:
    """Delete a snapshot; ``False`` when it was already gone. One call in the usual case
    (as the Bash add-on makes); a snapshot StorPool refuses to delete while it is attached
    (a backup's, an export's) is detached and deleted again."""
    try:
        sp.snapshot_delete(name)
    except NotFound:
        return False
    except ApiError:
        try:
            sp.detach(name, snapshot=True, force=False)
            sp.snapshot_delete(name)
        except NotFound:
            return False
    return True


def snapshots_with_prefix(sp: StorPoolClient, prefix: str) -> list[dict[str, Any]]:
    return [s for s in sp.snapshots_list()
            if str(s.get("name", "")).startswith(prefix) and not s.get("deleted")]


def detach_all(sp: StorPoolClient, name: str, *, snapshot: bool = False) -> None:
    """Detach a volume or snapshot from every client; ``busy`` is retried a few times."""
    for attempt in range(10):
        try:
            sp.detach(name, snapshot=snapshot, force=False)
            return
        except NotFound:
            return
        except Busy:  # still open on a client: os-brick waits 10 x 0.2 s too
            if attempt == 9:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def attached(sp: StorPoolClient, name: str, host: Host, client: int, *, mode: str = "rw",
             snapshot: bool = False, timeout: int = 20) -> Iterator[str]:
    """Attach to ``host`` for the duration of the block; yields the device path there."""
    sp.attach(name, client, mode=mode, snapshot=snapshot, timeout=timeout)
    try:
        yield host.wait_for_device(name, timeout=max(timeout, 5))
    finally:
        with contextlib.suppress(NotFound):
            sp.detach(name, [client], snapshot=snapshot, force=False)


def random_suffix(length: int) -> str:
    """Random ``[a-z0-9]`` with a letter first: an all-digit suffix would read as a clone
    name (docs/naming.md)."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return secrets.choice(string.ascii_lowercase) + "".join(
        secrets.choice(alphabet) for _ in range(length - 1))


def revert_volume(sp: StorPoolClient, volume: str, snapshot: str, *, delay: int,
                  tags: Mapping[str, str] | None = None) -> str | None:
    """Give ``volume`` the data of ``snapshot`` (one of its own) in place, with StorPool's
    ``VolumeRevert``, after keeping its current data as a ``delay``-second snapshot.
    Each step is atomic on the cluster: interrupted anywhere, the volume holds either its
    old data or the snapshot's, never nothing (the Bash add-on renamed the volume aside
    first). The volume keeps its name, template and size (grown back if the snapshot is
    smaller). Returns the name of the kept snapshot, if any."""
    current = sp.volume(volume)
    sp.snapshot(snapshot)  # NotFound before anything changes
    detach_all(sp, volume)
    kept = None
    if delay > 0 and _holds_data(sp, current):
        reply = sp.volume_snapshot(volume, delete_after=delay, tags={"del": "y"})
        kept = reply.get("autoName") or reply.get("snapshotGlobalId")
    sp.volume_revert(volume, snapshot)
    size = int(current.get("size") or 0)
    if size > int(sp.volume(volume).get("size") or 0):
        sp.volume_update(volume, size=size)
    if tags:
        sp.volume_update(volume, tags={**current.get("tags", {}), **tags})
    return kept


class Rollback:
    """Undo steps registered as an action creates things, run in reverse if it fails.

    ``with Rollback() as undo: ...; undo.push(fn, ...)``; on success nothing is undone.
    Undo failures are collected into the message instead of hiding the original error.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = []
        self.failures: list[str] = []

    def push(self, what: str, func: Any, *args: Any, **kwargs: Any) -> None:
        self._steps.append((what, func, args, kwargs))

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        for what, func, args, kwargs in reversed(self._steps):
            try:
                func(*args, **kwargs)
            except Exception as undo_error:  # keep undoing; report below
                self.failures.append(f"{what}: {undo_error}")
        if self.failures and isinstance(exc, AddonError):
            exc.args = (f"{exc} (rollback incomplete: {'; '.join(self.failures)})",)
