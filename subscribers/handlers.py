"""Side-effect handlers (registered by :mod:`onestorpool.subscribers.composition`).

``remote_backup``: the datastore ``rm`` action kept a tombstone snapshot of a deleted image
and asked for it to be sent to a remote StorPool location (``REMOTE_BACKUP_DELETE``). The
subscriber daemon runs this when it sees the request; until then, and whenever a send
failed, ``onestorpool log replay --execute`` (or ``onestorpool remote-send``) runs it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from onestorpool.errors import AddonError
from onestorpool.eventlog.events import decode
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import EventLog, lock_beside_log
from onestorpool.storpool import NotFound, StorPoolClient
from onestorpool.subscribers import notify


class EffectError(AddonError):
    """A side effect cannot be performed now (it stays pending)."""


def storpool_for(effect: Mapping[str, Any]) -> StorPoolClient:
    """The client of the cluster the effect's objects live on.

    Requests record the API host and port (never the token); the token is the configured
    one for that endpoint.
    """
    from onestorpool import config

    cfg = config.load()
    endpoint = cfg.endpoint()
    host, port = effect.get("api_host", endpoint.host), effect.get("api_port", endpoint.port)
    if (host, port) != (endpoint.host, endpoint.port):
        cfg = cfg.for_datastore({"SP_API_HTTP_HOST": str(host), "SP_API_HTTP_PORT": str(port)})
    return StorPoolClient.from_config(cfg)


CONFIRM_TIMEOUT = 600.0  # seconds a sent backup may take to show on the remote


def _on_remote(sp: StorPoolClient, location: str, tombstone: str,
               remote_id: str | None = None) -> dict[str, Any] | None:
    """The remote copy of ``tombstone`` the location lists (by its id, else by the
    ``tombstone`` tag every copy we send carries), or None."""
    for remote in sp.snapshots_remote_list():
        if remote.get("location") != location:
            continue
        if remote_id is not None and remote.get("remoteId") == remote_id:
            return remote
        if remote.get("tags", {}).get("tombstone") == tombstone:
            return remote
    return None


def _drop_helpers(sp: StorPoolClient, carrier: str, sent_from: str | None) -> None:
    """The carrier volume and the anonymous snapshot VolumeBackup sent from (``*...``);
    never a named snapshot (the tombstone stays until it expires)."""
    with contextlib.suppress(NotFound):
        sp.volume_delete(carrier)
    if sent_from and str(sent_from).startswith("*"):
        with contextlib.suppress(NotFound):
            sp.snapshot_delete(str(sent_from))


def sending_lock(log: EventLog) -> contextlib.AbstractContextManager[None]:
    """One sender at a time: the check for a copy on the remote and the send it decides are
    one step, so two runners never both send."""
    return lock_beside_log(log.path, "send")


def remote_backup(record: Record, log: EventLog, *, confirm_timeout: float | None = None,
                  sleep: Any = time.sleep) -> dict[str, Any]:
    """Ship the tombstone ``record`` asks for, once: a copy already on the remote (sent by
    an earlier run that died before recording it) is the outcome. Nothing local is
    deleted before the remote lists the copy; the tombstone itself then expires on its own
    (``deleteAfter`` set by the driver)."""
    request = decode(record).effect
    if request is None:
        raise EffectError(f"record #{record.seq}: not a well-formed effect request")
    effect = request.details
    tombstone, location = str(effect["snapshot"]), str(effect["location"])
    tags = {**effect.get("tags", {}), "tombstone": tombstone}
    timeout = CONFIRM_TIMEOUT if confirm_timeout is None else confirm_timeout
    with sending_lock(log), storpool_for(effect) as sp:
        carrier = f"{tombstone}-send"
        found = _on_remote(sp, location, tombstone)
        if found is not None:  # an earlier run sent it and died: finish its clean-up
            _drop_helpers(sp, carrier, found.get("localSnapshot"))
            return {"remote_id": found.get("remoteId"), "location": location,
                    "snapshot": tombstone, "note": "found on the remote already"}
        try:
            sp.snapshot(tombstone)
        except NotFound:
            raise EffectError(f"tombstone {tombstone} is gone (expired?); nothing to send"
                              ) from None
        # VolumeBackup sends a volume: a throw-away volume on top of the tombstone.
        with contextlib.suppress(NotFound):
            sp.volume_delete(carrier)
        sp.volume_create(carrier, parent=tombstone, tags={"virt": "one", "carrier": "y"})
        reply = sp.volume_backup(carrier, location, tags=tags)
        remote_id = reply.get("remoteId")
        deadline = time.monotonic() + timeout
        while (found := _on_remote(sp, location, tombstone, remote_id)) is None:
            if time.monotonic() >= deadline:
                # the carrier and the snapshot being sent stay: the transfer may go on;
                # the next run finds the copy (by its tag) or sends again
                raise EffectError(f"{tombstone}: the backup sent to {location} "
                                  f"({remote_id}) is not listed there after {timeout:.0f}s")
            notify.alive()
            sleep(min(5.0, max(0.1, timeout / 100)))
        # Confirmed: only now the local helpers go.
        _drop_helpers(sp, carrier, reply.get("autoName"))
    return {"remote_id": found.get("remoteId") or remote_id, "location": location,
            "snapshot": tombstone}

