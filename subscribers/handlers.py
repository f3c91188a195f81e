"""Side-effect handlers, registered with the event log's replay registry.

``remote_backup``: the datastore ``rm`` action kept a tombstone snapshot of a deleted image
and asked for it to be sent to a remote StorPool location (``REMOTE_BACKUP_DELETE``). The
subscriber daemon runs this when it sees the request; until then, and whenever a send
failed, ``onestorpool log replay --execute`` (or ``onestorpool remote-send``) runs it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from onestorpool.errors import AddonError
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.replay import register_handler
from onestorpool.eventlog.store import EventLog
from onestorpool.storpool import NotFound, StorPoolClient


class EffectError(AddonError):
    """A side effect cannot be performed now (it stays pending)."""


def storpool_for(effect: dict[str, Any]) -> StorPoolClient:
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


def remote_backup(record: Record, log: EventLog) -> dict[str, Any]:
    effect = record.payload["effect"]
    tombstone, location = str(effect["snapshot"]), str(effect["location"])
    tags = {**effect.get("tags", {}), "tombstone": tombstone}
    with storpool_for(effect) as sp:
        for remote in sp.snapshots_remote_list():
            if remote.get("location") == location and remote.get("tags", {}).get(
                    "tombstone") == tombstone:
                return {"remote_id": remote["remoteId"], "location": location,
                        "note": "found on the remote already"}
        try:
            sp.snapshot(tombstone)
        except NotFound:
            raise EffectError(f"tombstone {tombstone} is gone (expired?); nothing to send"
                              ) from None
        # VolumeBackup sends a volume: a throw-away volume on top of the tombstone.
        carrier = f"{tombstone}-send"
        with contextlib.suppress(NotFound):
            sp.volume_delete(carrier)
        sp.volume_create(carrier, parent=tombstone, tags={"virt": "one", "carrier": "y"})
        try:
            reply = sp.volume_backup(carrier, location, tags=tags)
        finally:
            with contextlib.suppress(NotFound):
                sp.volume_delete(carrier)
        # The local snapshot the backup was taken from is of no further use here.
        if reply.get("autoName"):
            with contextlib.suppress(NotFound):
                sp.snapshot_delete(reply["autoName"])
    return {"remote_id": reply.get("remoteId"), "location": location, "snapshot": tombstone}


register_handler("remote_backup", remote_backup)
