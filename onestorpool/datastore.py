"""``onestorpool datastore create``: a StorPool datastore and its StorPool template in one
step (the old add-on's Sunstone wizard patch, and the seed's "Configuring the Datastore").

It writes the datastore template the seed shows (``DS_MAD``/``TM_MAD`` storpool, ``TYPE``,
``DISK_TYPE=BLOCK`` for images, ``BRIDGE_LIST``), creates the datastore through oned's
XML-RPC, then the StorPool template ``<px>-ds-<ID>`` with the replication and placement
given. When the StorPool template cannot be created the datastore is deleted again, so a
failure leaves nothing half made.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from onestorpool.errors import InputError


def datastore_template(name: str, kind: str, bridge_list: str = "",
                       extra: list[tuple[str, str]] | None = None) -> str:
    """The datastore template, one ``KEY = "value"`` per line."""
    attributes: list[tuple[str, str]] = [("NAME", name)]
    if kind == "image":
        attributes += [("DS_MAD", "storpool"), ("TM_MAD", "storpool"), ("TYPE", "IMAGE_DS"),
                       ("DISK_TYPE", "BLOCK")]
    else:
        attributes += [("TM_MAD", "storpool"), ("TYPE", "SYSTEM_DS")]
    if bridge_list:
        attributes.append(("BRIDGE_LIST", bridge_list))
    attributes += extra or []
    for key, value in attributes:
        if '"' in value or "\n" in value:
            raise InputError(f"{key}: quotes and newlines are not allowed in values")
    return "".join(f'{key} = "{value}"\n' for key, value in attributes)


def storpool_policy(args: argparse.Namespace) -> dict[str, Any]:
    policy: dict[str, Any] = {"replication": args.replication}
    for key, value in (("placeAll", args.place_all), ("placeTail", args.place_tail),
                       ("placeHead", args.place_head)):
        if value:
            policy[key] = value
    return policy


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip().replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"{text!r}: KEY=VALUE expected")
    return key.strip().upper(), value.strip()


def _template(client: Any, name: str, policy: dict[str, Any], exists: type) -> bool:
    """Create the StorPool template (True), or give an existing one the policy (False): one
    left by an earlier datastore of the same ID (a re-created oned database) or a helper."""
    try:
        client.volume_template_create(name, **policy)
        return True
    except exists:
        client.volume_template_update(name, **policy)
        return False


def configure(parser: argparse.ArgumentParser) -> None:
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--image", dest="kind", action="store_const", const="image",
                      help="an IMAGE datastore (DS_MAD and TM_MAD storpool, DISK_TYPE block)")
    kind.add_argument("--system", dest="kind", action="store_const", const="system",
                      help="a SYSTEM datastore (TM_MAD storpool)")
    parser.add_argument("name", help="the datastore's name")
    parser.add_argument("--bridge-list", default="",
                        help="hosts that do image operations, space separated (BRIDGE_LIST); "
                             "empty: the front-end, which then needs storpool_block")
    parser.add_argument("--replication", type=int, default=3, choices=(1, 2, 3, 4, 5),
                        help="StorPool replication of the datastore's volumes (default 3)")
    parser.add_argument("--place-all", default="",
                        help="StorPool placement group of all copies (placeAll)")
    parser.add_argument("--place-tail", default="",
                        help="placement group of the last copy, the one reads go to (placeTail)")
    parser.add_argument("--place-head", default="",
                        help="placement group of the first copy (placeHead)")
    parser.add_argument("--cluster", type=int, default=-1,
                        help="OpenNebula cluster ID (default: oned's default cluster)")
    parser.add_argument("--attr", type=_attribute, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="another datastore attribute (SP_SYSTEM=shared, SP_QOSCLASS=..., "
                             "REMOTE_BACKUP_DELETE=...); repeatable")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the datastore template and the StorPool template; create "
                             "nothing")
    parser.add_argument("--json", action="store_true", help="the result as one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from onestorpool import config as config_module

    template = datastore_template(args.name, args.kind, args.bridge_list, args.attr)
    policy = storpool_policy(args)
    config = config_module.load()
    naming = config.naming()
    if args.dry_run:
        print(template, end="")
        print(f"StorPool template {naming.template(0).replace('-0', '-<ID>')}: "
              f"{json.dumps(policy, sort_keys=True)}")
        return 0

    from onestorpool import oneapi
    from onestorpool.storpool import AlreadyExists, StorPoolClient

    client = StorPoolClient.from_config(config)
    with client:
        client.volume_templates_list()  # the API answers with the token: before oned changes
        ds_id = int(oneapi.one_call("one.datastore.allocate", template, args.cluster))
        name = naming.template(ds_id)
        try:
            created = _template(client, name, policy, AlreadyExists)
        except Exception as exc:
            try:
                oneapi.one_call("one.datastore.delete", ds_id)
            except Exception as cleanup:
                raise InputError(f"StorPool template {name}: {exc}; datastore {ds_id} could "
                                 f"not be deleted again ({cleanup}): onedatastore delete "
                                 f"{ds_id}") from exc
            raise InputError(f"StorPool template {name}: {exc}; datastore {ds_id} deleted "
                             "again") from exc
    if args.json:
        print(json.dumps({"id": ds_id, "name": args.name, "type": args.kind,
                          "storpool_template": name, "template_created": created,
                          "policy": policy}))
    else:
        print(f"datastore {ds_id} {args.name!r} ({args.kind}) created, StorPool template "
              f"{name} {'created' if created else 'existed, updated'}: "
              f"{' '.join(f'{k} {v}' for k, v in policy.items())}")
    return 0
