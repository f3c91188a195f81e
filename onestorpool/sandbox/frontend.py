"""A front-end in a directory: the StorPool sandbox, a configuration root, hosts as
directories registered as StorPool clients, the event log, and the real driver executables
run with oned's conventions; plus builders of oned's DS driver XML.

Used by the demo, the driver tests and the oned sandbox. ``make_frontend(root, sandbox)``
writes ``<root>/etc/storpool.conf`` (API endpoint, token, ``[host]`` sections with
``SP_OURID``), ``<root>/var/lib/one/remotes/addon-storpoolrc`` and ``<root>/hosts/<name>``,
and returns the environment a driver runs with (``ONESTORPOOL_ROOT``,
``ONESTORPOOL_SANDBOX_HOSTS``, ``ONESTORPOOL_EVENTLOG``).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from onestorpool.drivers.install import shipped_remotes
from onestorpool.eventlog import EventLog
from onestorpool.sandbox.hosts import env as sandbox_hosts_env
from onestorpool.sandbox.storpool import StorPoolSandbox
from onestorpool.storpool import StorPoolClient

REMOTES = shipped_remotes()
HOSTS = {"localhost": 1, "bridge1": 2, "node1": 3}


@dataclass
class DriverResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("ERROR:")]


@dataclass
class FrontEnd:
    root: Path
    sandbox: StorPoolSandbox
    sp: StorPoolClient
    env: dict[str, str] = field(default_factory=dict)

    def host_dir(self, name: str) -> Path:
        return self.root / "hosts" / name

    def device(self, host: str, name: str) -> Path:
        return self.host_dir(host) / "dev" / "storpool" / name

    def write_rc(self, text: str) -> None:
        (self.root / "var/lib/one/remotes/addon-storpoolrc").write_text(text)

    def run_ds(self, action: str, xml: str, object_id: int, *, convention: str = "stdin",
               ) -> DriverResult:
        """Run ``datastore/storpool/<action>`` with one of oned's calling conventions."""
        payload = base64.b64encode(xml.encode()).decode()
        script = str(REMOTES / "datastore" / "storpool" / action)
        if convention == "stdin":  # oned >= 6.8
            argv, stdin = [script, str(object_id)], payload
        elif convention == "dash":  # 6.4.7/6.6.3 with -i
            argv, stdin = [script, "-", str(object_id)], payload
        else:  # <= 6.6: base64 on the command line
            argv, stdin = [script, payload, str(object_id)], ""
        result = subprocess.run([sys.executable, *argv], input=stdin, capture_output=True,
                                text=True, env=self.env, timeout=120)
        return DriverResult(result.returncode, result.stdout, result.stderr)

    def events(self) -> list:
        path = Path(self.env["ONESTORPOOL_EVENTLOG"])
        if not path.exists():
            return []
        with EventLog(path, readonly=True) as log:
            return list(log.read())

    def storpool_names(self) -> set[str]:
        return ({v["name"] for v in self.sp.volumes_list()}
                | {s["name"] for s in self.sp.snapshots_list() if not s.get("deleted")})


def make_frontend(root: Path, sandbox: StorPoolSandbox, prefix: str = "one") -> FrontEnd:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    sections = "".join(f"[{name}]\nSP_OURID={cid}\n" for name, cid in HOSTS.items())
    (root / "etc/storpool.conf").write_text(
        f"SP_API_HTTP_HOST={sandbox.host}\nSP_API_HTTP_PORT={sandbox.port}\n"
        f"SP_AUTH_TOKEN={sandbox.token}\n{sections}")
    (root / "var/lib/one/remotes").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/one/remotes/addon-storpoolrc").write_text(f"ONE_PX={prefix}\n")
    for name, cid in HOSTS.items():
        (root / "hosts" / name).mkdir(parents=True, exist_ok=True)
        sandbox.add_client(cid, root / "hosts" / name)
    env = {**os.environ, "ONESTORPOOL_ROOT": str(root),
           **sandbox_hosts_env(root / "hosts"),
           "ONESTORPOOL_EVENTLOG": str(root / "events.db"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("ONE_LOCATION", None)
    return FrontEnd(root, sandbox, StorPoolClient(sandbox.host, sandbox.port, sandbox.token),
                    env)


def datastore_xml(ds_id: int = 100, **attributes: str) -> str:
    """A datastore body; its template has what oned stores at allocate (``SAFE_DIRS`` and
    ``RESTRICTED_DIRS`` defaults, src/datastore/Datastore.cc) with the machine's temporary
    directory made safe too: tests and the demo keep their images there."""
    attrs = {"DS_MAD": "storpool", "TM_MAD": "storpool", "DISK_TYPE": "BLOCK",
             "SAFE_DIRS": f"/var/tmp {tempfile.gettempdir()}", "RESTRICTED_DIRS": "/",
             **attributes}
    template = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in attrs.items())
    return (f"<DATASTORE><ID>{ds_id}</ID><UID>0</UID><GID>0</GID><NAME>sp</NAME>"
            f"<DS_MAD><![CDATA[storpool]]></DS_MAD><TM_MAD><![CDATA[storpool]]></TM_MAD>"
            f"<BASE_PATH><![CDATA[/var/lib/one//datastores/{ds_id}]]></BASE_PATH>"
            f"<TYPE>0</TYPE><DISK_TYPE>2</DISK_TYPE><STATE>0</STATE>"
            f"<CLUSTERS><ID>0</ID></CLUSTERS><TEMPLATE>{template}</TEMPLATE></DATASTORE>")


def image_xml(image_id: int, *, path: str = "", size: int | str = 0, source: str = "",
              fmt: str = "", fs: str = "", fstype: str = "", target_snapshot: int = -1,
              template: dict[str, str] | None = None, uid: int = 0) -> str:
    tmpl = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in (template or {}).items())
    return (f"<IMAGE><ID>{image_id}</ID><UID>{uid}</UID><GID>{uid}</GID>"
            f"<NAME>img{image_id}</NAME><TYPE>0</TYPE><DISK_TYPE>2</DISK_TYPE>"
            f"<PERSISTENT>0</PERSISTENT><SOURCE><![CDATA[{source}]]></SOURCE>"
            f"<PATH><![CDATA[{escape(path)}]]></PATH><FORMAT><![CDATA[{fmt}]]></FORMAT>"
            f"<FS><![CDATA[{fs}]]></FS><FSTYPE><![CDATA[{fstype}]]></FSTYPE>"
            f"<SIZE>{size}</SIZE><STATE>4</STATE><DATASTORE_ID>100</DATASTORE_ID>"
            f"<TARGET_SNAPSHOT>{target_snapshot}</TARGET_SNAPSHOT>"
            f"<TEMPLATE>{tmpl}</TEMPLATE><SNAPSHOTS></SNAPSHOTS></IMAGE>")


def ds_action(image: str | None = None, datastore: str | None = None, extra: str = "") -> str:
    return (f"<DS_DRIVER_ACTION_DATA>{image or ''}{datastore or datastore_xml()}{extra}"
            "</DS_DRIVER_ACTION_DATA>")
