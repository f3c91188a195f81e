"""The default cluster of the oned sandbox: every oned has cluster 0 ``default`` holding its
hosts, datastores and networks (``src/cluster/ClusterPool.cc``: DEFAULT_CLUSTER_ID 0); the
sandbox has no other cluster. ``one.cluster.info`` and ``one.clusterpool.info`` answer with
``Cluster::to_xml`` (ID NAME HOSTS DATASTORES VNETS TEMPLATE, 5.10 ... 7.0)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_objects import NO_EXISTS, Datastore, Host, OneFailure

DEFAULT_CLUSTER_ID = 0
# DatastorePool's bootstrap (release-6.10.5 src/datastore/DatastorePool.cc:72-140): the
# system, default and files datastores, ids 0-2; user datastores start at 100.
DEFAULT_DATASTORES = (
    (0, {"NAME": "system", "TYPE": "SYSTEM_DS", "TM_MAD": "ssh"}),
    (1, {"NAME": "default", "TYPE": "IMAGE_DS", "DS_MAD": "fs", "TM_MAD": "ssh"}),
    (2, {"NAME": "files", "TYPE": "FILE_DS", "DS_MAD": "fs", "TM_MAD": "ssh"}),
)


class ClusterPool:
    """Cluster 0 over the sandbox's hosts and datastores."""

    def __init__(self, lock: threading.RLock, hosts: dict[int, Host],
                 datastores: dict[int, Datastore]):
        self.lock, self.hosts, self.datastores = lock, hosts, datastores

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {"one.cluster.info": self.info, "one.clusterpool.info": self.pool_info}

    def _body(self) -> str:
        hosts = "".join(f"<ID>{i}</ID>" for i in sorted(self.hosts))
        datastores = "".join(f"<ID>{i}</ID>" for i in sorted(self.datastores))
        return (f"<CLUSTER><ID>{DEFAULT_CLUSTER_ID}</ID><NAME>default</NAME>"
                f"<HOSTS>{hosts}</HOSTS><DATASTORES>{datastores}</DATASTORES><VNETS/>"
                f"{X.template_xml({'RESERVED_CPU': '', 'RESERVED_MEM': ''})}</CLUSTER>")

    def info(self, cluster_id: int, decrypt: bool = False) -> str:
        if cluster_id != DEFAULT_CLUSTER_ID:
            raise OneFailure(NO_EXISTS, f"[one.cluster.info] Error getting cluster "
                                        f"[{cluster_id}].", cluster_id)
        with self.lock:
            return self._body()

    def pool_info(self) -> str:
        with self.lock:
            return X.pool("CLUSTER_POOL", [self._body()])
