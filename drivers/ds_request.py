"""From oned's DS driver action (base64 ``DS_DRIVER_ACTION_DATA``) to a :class:`DsContext`.

The XML is read with the hardened parser of :mod:`onestorpool.one`; this module only picks
what the datastore actions use and builds the configuration and client for the datastore's
StorPool cluster.
"""

from __future__ import annotations

from typing import Any

from onestorpool import config as config_module
from onestorpool import one
from onestorpool.drivers.datastore import DatastoreInfo, DsContext, ImageInfo
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
    return DsContext(action=action, object_id=object_id, datastore=datastore, image=image,
                     config=config, naming=config.naming(), sp=client)


def subjects(ctx: DsContext) -> dict[str, Any]:
    """The event's subject ids (indexed in the log)."""
    found: dict[str, Any] = {"datastore": ctx.datastore.id}
    if ctx.image is not None:
        found["image"] = ctx.image.id
    return found
