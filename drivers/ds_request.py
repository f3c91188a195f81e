"""From oned's DS driver action (base64 ``DS_DRIVER_ACTION_DATA``) to a :class:`DsContext`.

The XML is read with the hardened parser of :mod:`onestorpool.one`; this module only picks
what the datastore actions use and builds the configuration and client for the datastore's
StorPool cluster.
"""

from __future__ import annotations

from typing import Any

from onestorpool import config as config_module
from onestorpool import one
from onestorpool.drivers.datastore import DatastoreInfo, DsContext, ImageInfo, SourceCluster
from onestorpool.errors import InputError
from onestorpool.storpool import StorPoolClient


def parse(payload: str) -> tuple[DatastoreInfo, ImageInfo | None, dict[str, str]]:
    action = one.parse_ds_action(payload)
    ds = action.datastore
    datastore = DatastoreInfo(id=ds.id, attributes=dict(ds.template), tm_mad=ds.tm_mad,
                              ds_mad=ds.ds_mad)
    image = None
    if action.image is not None:
        img = action.image
        template = img.template
        image = ImageInfo(
            id=img.id, source=img.source or "", path=img.path or "", size_mb=img.size or 0,
            format=img.format or "", fs=img.fs or "", fstype=img.fstype or "",
            driver=template.get("DRIVER", ""), md5=template.get("MD5", ""),
            sha1=template.get("SHA1", ""), qos=template.get("SP_QOSCLASS", ""),
            target_snapshot=img.target_snapshot, uid=img.uid, gid=img.gid)
    extra = {}
    if action.source_bridge_list:
        extra["SOURCE_BRIDGE_LIST"] = action.source_bridge_list
    return datastore, image, extra


def build_context(action: str, payload: str, object_id: int) -> DsContext:
    datastore, image, _extra = parse(payload)
    if datastore.ds_mad not in ("storpool", "") and action != "monitor":
        raise InputError(f"datastore {datastore.id} has DS_MAD={datastore.ds_mad}, "
                         "not storpool")
    base = config_module.load()
    config = base.for_datastore(datastore.attributes, f"datastore {datastore.id}")
    client = StorPoolClient.from_config(config)
    ctx = DsContext(action=action, object_id=object_id, datastore=datastore, image=image,
                    config=config, naming=config.naming(), sp=client)
    if action == "clone" and image is not None:
        ctx.source_cluster = source_cluster(ctx, base, image.path)
    return ctx


def source_cluster(ctx: DsContext, base: config_module.Config,
                   source: str) -> SourceCluster | None:
    """For a clone: the source image's cluster when it is not the target's (``None``).

    The source datastore is named by its template in the SOURCE (``one-ds-<N>/...``); its
    attributes (API endpoint, ``SP_CLONE_GW``, bridges) come from oned.
    """
    template = source.rsplit("/", 1)[0] if "/" in source else ""
    parsed = ctx.naming.parse(template) if template else None
    if parsed is None or parsed.kind != "template" or parsed.ds_id == ctx.datastore.id:
        return None
    from onestorpool import hosts, oneapi

    source_ds = oneapi.datastore_info(parsed.ds_id)
    if source_ds.tm_mad != "storpool":
        raise InputError(f"clone: source datastore {source_ds.id} has TM_MAD="
                         f"{source_ds.tm_mad}, not storpool")
    source_config = base.for_datastore(source_ds.template, f"datastore {source_ds.id}")
    if source_config.endpoint() == ctx.config.endpoint():
        return None  # two datastores, one cluster: a plain baseOn clone
    gateway = (source_config["SP_CLONE_GW"] or next(iter(source_config["BRIDGE_LIST"]), "")
               or None)
    host = hosts.get(gateway) if gateway else hosts.frontend()
    return SourceCluster(StorPoolClient.from_config(source_config), host,
                         hosts.client_id(host, source_config))


def subjects(ctx: DsContext) -> dict[str, Any]:
    """The event's subject ids (indexed in the log)."""
    found: dict[str, Any] = {"datastore": ctx.datastore.id}
    if ctx.image is not None and ctx.image.id >= 0:  # stat's image has no id
        found["image"] = ctx.image.id
    return found
