"""What a test of an installed add-on runs with that installation's own Python: a StorPool
datastore and a qcow2 image imported through ``onestorpool sandbox up``'s oned."""

from __future__ import annotations

import textwrap
from pathlib import Path


def import_script(images: Path) -> str:
    """A ``python -c`` program: creates the datastore (SAFE_DIRS ``images``), registers
    ``images/disk.qcow2``, waits, and prints ``{"state", "source", "error", "file"}`` as JSON
    (``file``: where ``onestorpool.config`` was imported from)."""
    return textwrap.dedent(f"""
        import json, os, time, pyone
        from onestorpool import config
        srv = pyone.OneServer(os.environ["ONE_XMLRPC"], session="oneadmin:sandbox")
        ds = srv.datastore.allocate('NAME="sp"\\nDS_MAD="storpool"\\nTM_MAD="storpool"\\n'
                                    'DISK_TYPE="BLOCK"\\nSAFE_DIRS="{images}"', -1)
        image = srv.image.allocate('NAME="a"\\nPATH="{images / 'disk.qcow2'}"', ds)
        for _ in range(600):
            info = srv.image.info(image)
            if info.STATE in (1, 5):
                break
            time.sleep(0.1)
        print(json.dumps({{"state": info.STATE, "source": info.SOURCE,
                          "error": info.TEMPLATE.get("ERROR"), "file": config.__file__}}))
    """)
