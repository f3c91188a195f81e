"""The oned sandbox: XML-RPC like oned, the hook bus like one_hm, and a lifecycle engine that
runs the real driver executables with oned's conventions.

Python API (tests, the demo, ``sandbox up``)::

    oned = OnedSandbox(directory, remotes=REMOTES, one_version="6.10",
                       driver_env={...}, storpool_admin=(url, token)).start()
    oned.endpoint, oned.session, oned.hook_endpoint, oned.driver_log
    ds = oned.call("one.datastore.allocate", 'NAME="sp"\\nDS_MAD="storpool"...', -1)
    oned.wait_image(image_id, {"READY"}); oned.wait_vm(vm_id, "ACTIVE", "RUNNING")
    oned.stop()

Implemented: datastores, hosts (directories, registered as StorPool sandbox clients),
images (allocate from PATH or SIZE, delete, clone, snapshot delete/revert/flatten, update)
with the real datastore driver; VMs: allocate, deploy (TM clone/ln/mkimage/mkswap/context),
poweroff/resume, terminate(-hard) (TM mvds/delete), update, and in
:mod:`onestorpool.sandbox.oned_vmops` stop/suspend/undeploy/resume, cold and live
migration, disk attach/detach/resize/save-as/snapshots, VM snapshots and recover,
with the matching state events. Operations are asynchronous as in oned: the call returns,
a worker runs the drivers. Shared system datastores are monitored with
``monitor_system_datastore``: VM disk usage printed by the TM ``monitor`` (5.10) or pushed
to the sandbox's onemonitord UDP port (5.12+, ``MONITOR_ADDRESS``/``MONITOR_PORT`` in the
drivers' environment) lands in the VM's MONITORING. Not yet: backups, restore and hook
retries (oned's ACTION error).

Driver conventions by ``one_version``: ``5.12`` and ``6.6`` pass the base64 DS action on
the command line (``<action> <b64> <id>``), ``6.8`` and later on stdin (``<action> <id>``);
TM actions always get ``host:path`` arguments and no stdin.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from onestorpool.one import LCM_STATE_NAMES, ImageState, VmState
from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_vmops import VmOperations

# oned's error codes (include/Request.h)
AUTHENTICATION, AUTHORIZATION, NO_EXISTS, ACTION, XML_RPC_API, INTERNAL = (
    0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000)
STDIN_SINCE = (6, 8)  # DS driver action on stdin from 6.8 on
PUSHED_MONITORING_SINCE = (5, 12)  # VM disk usage sent to onemonitord, not printed
IMAGE_STATE_FOR_HOOK = {"USED_PERS": "USED", "LOCKED_USED_PERS": "LOCKED_USED"}


class OneFailure(Exception):
    def __init__(self, code: int, message: str, object_id: int = -1):
        super().__init__(message)
        self.code, self.message, self.object_id = code, message, object_id


class HookBus:
    """one_hm's PUB socket: two frames per event, key then base64 ``HOOK_MESSAGE``."""

    def __init__(self, endpoint: str | None):
        import zmq

        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if endpoint:
            self.socket.bind(endpoint)
            self.endpoint = endpoint
        else:
            port = self.socket.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"
        self.lock = threading.Lock()
        self.sent: list[tuple[str, str]] = []

    def publish(self, keys: list[str], message: str, suffix: str = "") -> None:
        payload = base64.b64encode(message.encode()).decode() + suffix
        with self.lock:
            for key in keys:
                self.socket.send_multipart([key.encode(), payload.encode()])
                self.sent.append((key, payload))

    def publish_retry(self, hook_id: int, arguments: str, remote_host: str = "") -> None:
        """What ``onehook retry`` makes one_hm send: key ``RETRY``, the base64 message and
        one blank (``HookManager::format_message``)."""
        host = f"<REMOTE_HOST>{remote_host}</REMOTE_HOST>" if remote_host else ""
        encoded = base64.b64encode(arguments.encode()).decode()
        self.publish(["RETRY"], f"<HOOK_MESSAGE><ARGUMENTS>{encoded}</ARGUMENTS>"
                                f"<HOOK_ID>{hook_id}</HOOK_ID>{host}</HOOK_MESSAGE>", " ")

    def close(self) -> None:
        self.socket.close()


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


class OnedSandbox(VmOperations):
    def __init__(self, directory: Path, *, remotes: Path | None = None,
                 one_version: str = "6.10", driver_env: dict[str, str] | None = None,
                 storpool_admin: tuple[str, str] | None = None, port: int = 0,
                 hook_endpoint: str | None = None, session: str = "oneadmin:sandbox"):
        from onestorpool.sandbox.frontend import REMOTES

        self.directory = Path(directory)
        self.remotes = Path(remotes or REMOTES)
        self.version = tuple(int(p) for p in one_version.split(".")[:2])
        self.one_version = one_version
        self.session = session
        self.storpool_admin = storpool_admin
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.ids = {kind: itertools.count(start) for kind, start in
                    (("datastore", 100), ("image", 0), ("host", 0), ("vm", 0))}
        self.datastores: dict[int, dict[str, Any]] = {}
        self.images: dict[int, dict[str, Any]] = {}
        self.hosts: dict[int, dict[str, Any]] = {}
        self.vms: dict[int, dict[str, Any]] = {}
        self.driver_log: list[dict[str, Any]] = []
        self.next_client_id = 11
        self.hooks = HookBus(hook_endpoint)
        self.server = _Server(("127.0.0.1", port), requestHandler=SimpleXMLRPCRequestHandler,
                              logRequests=False, allow_none=True)
        # Every call goes through one dispatcher: authentication, errors, API hook events.
        self.server._dispatch = self._dispatch  # type: ignore[method-assign]
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/RPC2"
        # Hosts are directories; a configuration made for the drivers may already say where.
        self.hosts_root = Path((driver_env or {}).get("ONESTORPOOL_SANDBOX_HOSTS")
                               or self.directory / "hosts")
        self.hosts_root.mkdir(parents=True, exist_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.auth_file = self.directory / "one_auth"
        self.auth_file.write_text(session + "\n")
        self.auth_file.chmod(0o600)
        self.driver_env = {**os.environ, **(driver_env or {}),
                           "ONE_XMLRPC": self.endpoint, "ONE_AUTH": str(self.auth_file),
                           "ONE_LOCATION": "", "ONESTORPOOL_SANDBOX_HOSTS":
                               str(self.hosts_root)}
        self.driver_env.pop("ONE_LOCATION")
        # The drivers' "#!/usr/bin/env python3" must find the interpreter that has this
        # package, as the packaged install's does on a real front-end.
        self.driver_env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
        self.work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.monitord: socket.socket | None = None
        if self.version >= PUSHED_MONITORING_SINCE:
            # onemonitord's UDP port: drivers push VM disk usage there (send_to_monitor)
            self.monitord = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.monitord.bind(("127.0.0.1", 0))
            self.driver_env["MONITOR_ADDRESS"] = "127.0.0.1"
            self.driver_env["MONITOR_PORT"] = str(self.monitord.getsockname()[1])

    # -- process --------------------------------------------------------------------------

    def start(self) -> OnedSandbox:
        targets: list[Callable[[], None]] = [self.server.serve_forever, self._worker]
        if self.monitord is not None:
            targets.append(self._receive_monitoring)
        for target in targets:
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self.work.put(None)
        self.server.shutdown()
        self.server.server_close()
        self.hooks.close()
        if self.monitord is not None:
            self.monitord.close()

    # -- VM disk monitoring -----------------------------------------------------------------

    def monitor_system_datastore(self, ds_id: int) -> dict[str, Any]:
        """What oned does for a shared system datastore: ``tm/<TM_MAD>/monitor <id>`` with
        the DS action on stdin; capacity on stdout, VM disk usage printed (5.10) or pushed
        to onemonitord over UDP (5.12+)."""
        ds = self._datastore(ds_id)
        xml = (f"<DS_DRIVER_ACTION_DATA>{X.datastore_body(ds)}"
               "<DATASTORE_LOCATION>/var/lib/one/datastores</DATASTORE_LOCATION>"
               "<MONITOR_VM_DISKS>1</MONITOR_VM_DISKS></DS_DRIVER_ACTION_DATA>")
        script = self.remotes / "tm" / ds["tm_mad"] / "monitor"
        result = self._run(["tm", ds["tm_mad"], "monitor"], script, [str(ds_id)],
                           base64.b64encode(xml.encode()).decode(), ds_id)
        if result["exit"] == 0:
            for line in result["stdout"].splitlines():
                key, _, value = line.partition("=")
                if key in ("TOTAL_MB", "FREE_MB", "USED_MB"):
                    ds[key.lower()] = int(float(value))
                elif key.strip() == "VM" and self.version < PUSHED_MONITORING_SINCE:
                    self._store_vm_monitoring(value)
        return result

    def _receive_monitoring(self) -> None:
        assert self.monitord is not None
        while True:
            try:
                data = self.monitord.recv(1 << 20)
            except OSError:
                return  # closed by stop()
            words = data.decode(errors="replace").split()
            if len(words) == 5 and words[:2] == ["MONITOR_VM", "SUCCESS"]:
                import zlib

                try:
                    payload = zlib.decompress(base64.b64decode(words[4])).decode()
                except (ValueError, zlib.error):
                    continue
                for line in payload.splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() == "VM":
                        self._store_vm_monitoring(value)

    def _store_vm_monitoring(self, vector: str) -> None:
        """``[ID=<vm>, POLL="..."]`` (5.10) or ``[ID=<vm>, MONITOR="<base64>"]``."""
        fields = X.parse_template(f"VM={vector.strip()}").get("VM", [{}])[0]
        if not fields.get("ID", "").isdigit():
            return
        text = fields.get("POLL", "")
        if "MONITOR" in fields:
            text = base64.b64decode(fields["MONITOR"]).decode(errors="replace")
        disks = {int(d["ID"]): int(float(d["SIZE"]))
                 for d in X.parse_template(text).get("DISK_SIZE", [])
                 if d.get("ID", "").isdigit() and d.get("SIZE")}
        with self.lock:
            vm = self.vms.get(int(fields["ID"]))
            if vm is not None:
                vm["monitoring"] = {"disks": disks, "timestamp": int(time.time())}
                self.changed.notify_all()

    def _worker(self) -> None:
        while (job := self.work.get()) is not None:
            try:
                job()
            except Exception as exc:  # a bug in the emulator must not stop the lifecycle
                self._log_driver({"kind": "internal", "action": "error", "error": repr(exc)})

    # -- XML-RPC plumbing -----------------------------------------------------------------

    METHODS = {
        "one.system.version": "system_version", "one.system.config": "system_config",
        "one.zone.raftstatus": "zone_raftstatus",
        "one.datastore.allocate": "datastore_allocate", "one.datastore.info":
            "datastore_info", "one.datastorepool.info": "datastorepool_info",
        "one.datastore.update": "datastore_update",
        "one.host.allocate": "host_allocate", "one.host.info": "host_info",
        "one.hostpool.info": "hostpool_info",
        "one.image.allocate": "image_allocate", "one.image.info": "image_info",
        "one.imagepool.info": "imagepool_info", "one.image.delete": "image_delete",
        "one.image.clone": "image_clone", "one.image.update": "image_update",
        "one.image.snapshotdelete": "image_snapshot_delete",
        "one.image.snapshotrevert": "image_snapshot_revert",
        "one.image.snapshotflatten": "image_snapshot_flatten",
        "one.vm.allocate": "vm_allocate", "one.vm.info": "vm_info",
        "one.vmpool.info": "vmpool_info", "one.vmpool.infoextended": "vmpool_info",
        "one.vm.deploy": "vm_deploy", "one.vm.action": "vm_action",
        "one.vm.update": "vm_update", "one.vm.migrate": "vm_migrate",
        "one.vm.attach": "vm_attach", "one.vm.detach": "vm_detach",
        "one.vm.disksaveas": "vm_disk_saveas",
        "one.vm.disksnapshotcreate": "vm_disk_snapshot_create",
        "one.vm.disksnapshotrevert": "vm_disk_snapshot_revert",
        "one.vm.disksnapshotdelete": "vm_disk_snapshot_delete",
        "one.vm.diskresize": "vm_disk_resize", "one.vm.snapshotcreate": "vm_snapshot_create",
        "one.vm.recover": "vm_recover", "one.vm.snapshotrevert": "vm_snapshot_revert",
        "one.vm.snapshotdelete": "vm_snapshot_delete",
    }
    NOT_YET = ("one.vm.backup", "one.vm.restore", "one.hook.retry")

    def _dispatch(self, method: str, params: tuple[Any, ...]) -> list[Any]:
        return self._dispatch_call(method, *params)

    def _dispatch_call(self, method: str, *params: Any) -> list[Any]:
        info = method.endswith(("info", "infoextended", ".version", ".config", "raftstatus"))
        extra = ""
        try:
            if not params or params[0] != self.session:
                raise OneFailure(AUTHENTICATION, f"[{method}] User couldn't be authenticated,"
                                                 " aborting call.")
            if method in self.NOT_YET:
                raise OneFailure(ACTION, f"[{method}] not available in the oned sandbox yet")
            name = self.METHODS.get(method)
            if name is None:
                raise OneFailure(XML_RPC_API, f"[{method}] unknown method")
            with self.lock:
                value = getattr(self, name)(*params[1:])
            if isinstance(value, tuple):
                value, extra = value
            reply = [True, value, 0]
        except OneFailure as failure:
            reply = [False, failure.message, failure.code, failure.object_id]
        except (TypeError, ValueError) as exc:
            reply = [False, f"[{method}] {exc}", XML_RPC_API, -1]
        if not info:
            self.hooks.publish([f"EVENT API {method} {int(reply[0])}"],
                               X.api_message(method, list(params[1:]), reply, extra))
        return reply

    # -- system ---------------------------------------------------------------------------

    def system_version(self) -> str:
        return {(5, 12): "5.12.0", (6, 6): "6.6.0", (6, 10): "6.10.0", (7, 0): "7.0.0"}.get(
            self.version, self.one_version)

    def system_config(self) -> str:
        return "<OPENNEBULA_CONFIGURATION><HOSTNAME>localhost</HOSTNAME>" \
               "</OPENNEBULA_CONFIGURATION>"

    def zone_raftstatus(self) -> str:
        return ("<RAFT><SERVER_ID>-1</SERVER_ID><STATE>3</STATE><TERM>0</TERM>"
                "<VOTEDFOR>-1</VOTEDFOR><COMMIT>0</COMMIT><LOG_INDEX>0</LOG_INDEX>"
                "<LOG_TERM>0</LOG_TERM><FEDLOG_INDEX>-1</FEDLOG_INDEX></RAFT>")

    # -- datastores -----------------------------------------------------------------------

    def datastore_allocate(self, template_text: str, cluster_id: int = -1) -> tuple[int, str]:
        template = X.parse_template(template_text)
        name = template.get("NAME") or ""
        if not name:
            raise OneFailure(0x4000, "[one.datastore.allocate] No NAME in template.")
        ds_type = {"IMAGE_DS": 0, "SYSTEM_DS": 1, "FILE_DS": 2, "BACKUP_DS": 3}.get(
            template.get("TYPE", "IMAGE_DS").upper())
        if ds_type is None:
            raise OneFailure(0x4000, f"[one.datastore.allocate] bad TYPE {template['TYPE']}")
        ds_id = next(self.ids["datastore"])
        ds = {"id": ds_id, "name": name, "ds_mad": template.get("DS_MAD", "-"),
              "tm_mad": template.get("TM_MAD", ""), "type": ds_type,
              "base_path": f"/var/lib/one//datastores/{ds_id}",
              "disk_type": 2 if template.get("DISK_TYPE", "").upper() == "BLOCK" else 0,
              "total_mb": 0, "free_mb": 0, "used_mb": 0, "images": [], "template": template}
        self.datastores[ds_id] = ds
        return ds_id, X.datastore_body(ds)

    def _datastore(self, ds_id: int) -> dict[str, Any]:
        if ds_id not in self.datastores:
            raise OneFailure(NO_EXISTS, f"[one.datastore.info] Error getting datastore "
                                        f"[{ds_id}].", ds_id)
        return self.datastores[ds_id]

    def datastore_info(self, ds_id: int, decrypt: bool = False) -> str:
        return X.datastore_body(self._datastore(ds_id))

    def datastorepool_info(self) -> str:
        return X.pool("DATASTORE_POOL", [X.datastore_body(d) for d in self.datastores.values()])

    def datastore_update(self, ds_id: int, text: str, merge: int = 0) -> int:
        ds = self._datastore(ds_id)
        update = X.parse_template(text)
        ds["template"] = {**ds["template"], **update} if merge else update
        return ds_id

    def monitor_datastore(self, ds_id: int) -> None:
        """What oned does every MONITORING_INTERVAL_DATASTORE and after image changes."""
        ds = self.datastores[ds_id]
        if ds["type"] != 0:
            return
        xml = f"<DS_DRIVER_ACTION_DATA>{X.datastore_body(ds)}</DS_DRIVER_ACTION_DATA>"
        result = self._run_ds(ds, "monitor", xml, ds_id)
        if result["exit"] == 0:
            values = dict(line.split("=", 1) for line in result["stdout"].split() if "=" in
                          line)
            with self.lock:
                for key in ("TOTAL_MB", "FREE_MB", "USED_MB"):
                    ds[key.lower()] = int(float(values.get(key, 0)))

    # -- hosts ----------------------------------------------------------------------------

    def host_allocate(self, name: str, im_mad: str, vm_mad: str,
                      cluster_id: int = -1) -> tuple[int, str]:
        if any(h["name"] == name for h in self.hosts.values()):
            raise OneFailure(0x4000, "[one.host.allocate] NAME is already taken by HOST")
        host_id = next(self.ids["host"])
        directory = self.hosts_root / name
        directory.mkdir(parents=True, exist_ok=True)
        client_id = self.next_client_id
        self.next_client_id += 1
        if self.storpool_admin is not None:
            _post(self.storpool_admin, "/sandbox/clients", {"id": client_id,
                                                             "dir": str(directory)})
        host = {"id": host_id, "name": name, "im_mad": im_mad, "vm_mad": vm_mad, "state": 0,
                "vms": [], "template": {"SP_OURID": str(client_id)}}
        self.hosts[host_id] = host
        self._add_storpool_conf_section(name, client_id)
        self._host_state(host, 2)  # INIT → MONITORED after the first probe
        return host_id, X.host_body(host)

    def _add_storpool_conf_section(self, name: str, client_id: int) -> None:
        root = self.driver_env.get("ONESTORPOOL_ROOT")
        if root:
            conf = Path(root) / "etc" / "storpool.conf"
            if conf.exists() and f"[{name}]" not in conf.read_text():
                with conf.open("a") as handle:
                    handle.write(f"[{name}]\nSP_OURID={client_id}\n")

    def _host(self, host_id: int) -> dict[str, Any]:
        if host_id not in self.hosts:
            raise OneFailure(NO_EXISTS, f"[one.host.info] Error getting host [{host_id}].",
                             host_id)
        return self.hosts[host_id]

    def host_info(self, host_id: int, decrypt: bool = False) -> str:
        return X.host_body(self._host(host_id))

    def hostpool_info(self) -> str:
        return X.pool("HOST_POOL", [X.host_body(h) for h in self.hosts.values()])

    def _host_state(self, host: dict[str, Any], state: int) -> None:
        host["state"] = state
        name = {0: "INIT", 2: "MONITORED", 3: "ERROR", 4: "DISABLED", 8: "OFFLINE"}[state]
        message = (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>HOST</HOOK_OBJECT>"
                   f"<STATE>{name}</STATE><REMOTE_HOST>{host['name']}</REMOTE_HOST>"
                   f"<RESOURCE_ID>{host['id']}</RESOURCE_ID>{X.host_body(host)}"
                   "</HOOK_MESSAGE>")
        self.hooks.publish([f"EVENT HOST {host['id']}/{name}/ ",
                            f"EVENT STATE HOST/{name}//{host['id']} "], message)

    # -- images ---------------------------------------------------------------------------

    def image_allocate(self, template_text: str, ds_id: int, skip_capacity: bool = False,
                       *, _queue: bool = True) -> tuple[int, str]:
        template = X.parse_template(template_text)
        ds = self._datastore(ds_id)
        if ds["type"] != 0:
            raise OneFailure(0x4000, "[one.image.allocate] Datastore is not an image DS")
        name = template.pop("NAME", "")
        if not name:
            raise OneFailure(0x4000, "[one.image.allocate] No NAME in template.")
        path = template.pop("PATH", "")
        size = template.pop("SIZE", "")
        if not path and not size:
            raise OneFailure(0x4000, "[one.image.allocate] Either PATH or SIZE is required.")
        image_type = {"OS": 0, "CDROM": 1, "DATABLOCK": 2}.get(
            template.pop("TYPE", "OS" if path else "DATABLOCK").upper(), 0)
        image_id = next(self.ids["image"])
        image = {"id": image_id, "uid": 0, "gid": 0, "name": name, "type": image_type,
                 "persistent": template.pop("PERSISTENT", "NO").upper() == "YES",
                 "regtime": int(time.time()), "source": "", "path": path,
                 "format": template.pop("FORMAT", ""), "fs": template.pop("FS", ""),
                 "size": int(size or 0), "state": ImageState.LOCKED, "prev_state": 0,
                 "target_snapshot": -1, "ds_id": ds_id, "ds_name": ds["name"], "vms": [],
                 "template": template, "snapshots": [], "next_snapshot": 0}
        self.images[image_id] = image
        ds["images"].append(image_id)
        self._image_event(image)
        if _queue:  # a save-as image is filled by the VM operation itself
            self.work.put(lambda: self._import_image(image))
        return image_id, X.image_body(image)

    def _import_image(self, image: dict[str, Any]) -> None:
        ds = self.datastores[image["ds_id"]]
        if image["path"] and not image["size"]:
            stat_xml = (f"<DS_DRIVER_ACTION_DATA><IMAGE><PATH>{X.cdata(image['path'])}</PATH>"
                        f"<SIZE>0</SIZE></IMAGE>{X.datastore_body(ds)}</DS_DRIVER_ACTION_DATA>")
            stat = self._run_ds(ds, "stat", stat_xml, 0)
            if stat["exit"] != 0 or not stat["stdout"].strip().isdigit():
                self._image_failed(image, "Cannot get size from STAT: " + stat["error"])
                return
            image["size"] = int(stat["stdout"].strip())
        action = "cp" if image["path"] else "mkfs"
        result = self._run_ds(ds, action, self._ds_action_xml(image), image["id"])
        with self.lock:
            if result["exit"] != 0:
                self._image_failed(image, f"Error copying image in the datastore: "
                                          f"{result['error']}")
                return
            words = result["stdout"].strip().split()
            if action == "cp":
                if self.version >= (6, 0) and len(words) < 2:
                    self._image_failed(image, "FORMAT was not returned")
                    return
                image["source"], image["format"] = words[0], words[1] if len(words) > 1 else ""
            else:
                image["source"] = result["stdout"].strip()  # the whole line
                image["format"] = image["format"] or "raw"
            self._set_image_state(image, ImageState.READY)
        self.monitor_datastore(ds["id"])

    def _image_failed(self, image: dict[str, Any], message: str) -> None:
        with self.lock:
            image["template"]["ERROR"] = message
            self._set_image_state(image, ImageState.ERROR)

    def _set_image_state(self, image: dict[str, Any], state: int) -> None:
        with self.lock:
            image["prev_state"], image["state"] = image["state"], state
            self._image_event(image)
            self.changed.notify_all()

    def _image_event(self, image: dict[str, Any]) -> None:
        name = ImageState(image["state"]).name
        name = IMAGE_STATE_FOR_HOOK.get(name, name)
        message = (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>IMAGE"
                   f"</HOOK_OBJECT><STATE>{name}</STATE><RESOURCE_ID>{image['id']}"
                   f"</RESOURCE_ID>{X.image_body(image)}</HOOK_MESSAGE>")
        self.hooks.publish([f"EVENT IMAGE {image['id']}/{name}/ ",
                            f"EVENT STATE IMAGE/{name}//{image['id']} "], message)

    def _ds_action_xml(self, image: dict[str, Any]) -> str:
        ds = self.datastores[image["ds_id"]]
        return (f"<DS_DRIVER_ACTION_DATA>{X.image_body(image)}{X.datastore_body(ds)}"
                "</DS_DRIVER_ACTION_DATA>")

    def _image(self, image_id: int) -> dict[str, Any]:
        if image_id not in self.images:
            raise OneFailure(NO_EXISTS, f"[one.image.info] Error getting image [{image_id}].",
                             image_id)
        return self.images[image_id]

    def image_info(self, image_id: int, decrypt: bool = False) -> str:
        return X.image_body(self._image(image_id))

    def imagepool_info(self, *filters: Any) -> str:
        return X.pool("IMAGE_POOL", [X.image_body(i) for i in self.images.values()])

    def image_update(self, image_id: int, text: str, merge: int = 0) -> int:
        image = self._image(image_id)
        update = X.parse_template(text)
        image["template"] = {**image["template"], **update} if merge else update
        return image_id

    def image_delete(self, image_id: int, force: bool = False) -> tuple[int, str]:
        image = self._image(image_id)
        if image["vms"] and not force:
            raise OneFailure(ACTION, f"[one.image.delete] Cannot delete image {image_id}: it "
                                     "is used by VMs", image_id)
        body = X.image_body(image)
        self._set_image_state(image, ImageState.DELETE)

        def remove() -> None:
            ds = self.datastores[image["ds_id"]]
            result = self._run_ds(ds, "rm", self._ds_action_xml(image), image_id)
            with self.lock:
                if result["exit"] != 0 and not force:
                    self._image_failed(image, f"Error deleting image: {result['error']}")
                    return
                del self.images[image_id]
                ds["images"].remove(image_id)
                self.changed.notify_all()
            self.monitor_datastore(ds["id"])

        self.work.put(remove)
        return image_id, body

    def image_clone(self, image_id: int, name: str, ds_id: int = -1) -> tuple[int, str]:
        source = self._image(image_id)
        if source["state"] != ImageState.READY:
            raise OneFailure(ACTION, f"[one.image.clone] Image {image_id} is not READY")
        target_ds = self._datastore(source["ds_id"] if ds_id < 0 else ds_id)
        clone_id = next(self.ids["image"])
        clone = {**source, "id": clone_id, "name": name, "source": "",
                 "path": source["source"], "state": ImageState.LOCKED, "vms": [],
                 "ds_id": target_ds["id"], "ds_name": target_ds["name"], "snapshots": [],
                 "template": dict(source["template"]), "regtime": int(time.time())}
        self.images[clone_id] = clone
        target_ds["images"].append(clone_id)
        self._image_event(clone)
        self._set_image_state(source, ImageState.CLONE)

        def run() -> None:
            result = self._run_ds(target_ds, "clone", self._ds_action_xml(clone), clone_id)
            with self.lock:
                self._set_image_state(source, ImageState.READY)
                if result["exit"] != 0:
                    self._image_failed(clone, f"Error cloning image: {result['error']}")
                    return
                words = result["stdout"].split()
                clone["source"] = words[0] if words else ""
                clone["format"] = words[1] if len(words) > 1 else source["format"]
                self._set_image_state(clone, ImageState.READY)

        self.work.put(run)
        return clone_id, X.image_body(clone)

    def _image_snapshot_op(self, action: str, image_id: int, snap_id: int) -> int:
        image = self._image(image_id)
        if not any(s["id"] == snap_id for s in image["snapshots"]):
            raise OneFailure(ACTION, f"[one.image.{action.replace('_', '')}] Snapshot "
                                     f"{snap_id} does not exist", image_id)
        image["target_snapshot"] = snap_id
        self._set_image_state(image, ImageState.LOCKED)

        def run() -> None:
            ds = self.datastores[image["ds_id"]]
            result = self._run_ds(ds, action, self._ds_action_xml(image), image_id)
            with self.lock:
                image["target_snapshot"] = -1
                if result["exit"] != 0:
                    image["template"]["ERROR"] = result["error"]
                elif action == "snap_delete":
                    image["snapshots"] = [s for s in image["snapshots"] if s["id"] != snap_id]
                elif action == "snap_flatten":
                    image["snapshots"] = []
                else:
                    for snapshot in image["snapshots"]:
                        snapshot["active"] = snapshot["id"] == snap_id
                self._set_image_state(image, ImageState.READY)

        self.work.put(run)
        return image_id

    def image_snapshot_delete(self, image_id: int, snap_id: int) -> int:
        return self._image_snapshot_op("snap_delete", image_id, snap_id)

    def image_snapshot_revert(self, image_id: int, snap_id: int) -> int:
        return self._image_snapshot_op("snap_revert", image_id, snap_id)

    def image_snapshot_flatten(self, image_id: int, snap_id: int) -> int:
        return self._image_snapshot_op("snap_flatten", image_id, snap_id)

    def add_image_snapshot(self, image_id: int, name: str = "") -> int:
        """Scenario helper: register an image snapshot (oned makes them from VM disk
        snapshots of persistent images, which the sandbox does not emulate yet)."""
        with self.lock:
            image = self._image(image_id)
            snap_id = image["next_snapshot"]
            image["next_snapshot"] += 1
            image["snapshots"].append({"id": snap_id, "name": name or f"snap{snap_id}",
                                       "date": int(time.time()), "active": False})
            return snap_id

    # -- VMs ------------------------------------------------------------------------------

    def vm_allocate(self, template_text: str, hold: bool = False) -> tuple[int, str]:
        template = X.parse_template(template_text)
        vm_id = next(self.ids["vm"])
        disks = []
        for disk_id, disk in enumerate(template.get("DISK", [])):
            disks.append(self._resolve_disk(vm_id, disk_id, dict(disk)))
        if "CONTEXT" in template:
            template["CONTEXT"][0]["DISK_ID"] = str(len(disks))
        template["DISK"] = disks
        template.setdefault("NAME", f"vm-{vm_id}")
        vm = {"id": vm_id, "uid": 0, "gid": 0, "name": template["NAME"],
              "state": VmState.HOLD if hold else VmState.PENDING, "lcm_state": 0,
              "prev_state": 0, "prev_lcm_state": 0, "stime": int(time.time()), "etime": 0,
              "deploy_id": "", "template": template, "user_template": {}, "history": [],
              "disk_snapshots": {}, "error": ""}
        self.vms[vm_id] = vm
        self._vm_event(vm)
        return vm_id, X.vm_body(vm)

    def _resolve_disk(self, vm_id: int, disk_id: int, disk: dict[str, str]) -> dict[str, str]:
        disk["DISK_ID"] = str(disk_id)
        if "IMAGE_ID" in disk:
            image = self._image(int(disk["IMAGE_ID"]))
            if image["state"] not in (ImageState.READY, ImageState.USED):
                raise OneFailure(ACTION, f"[one.vm.allocate] Image {image['id']} is not READY")
            ds = self.datastores[image["ds_id"]]
            persistent = image["persistent"]
            disk.update(IMAGE=image["name"], SOURCE=image["source"], SIZE=str(image["size"]),
                        ORIGINAL_SIZE=str(image["size"]), DATASTORE=ds["name"],
                        DATASTORE_ID=str(ds["id"]), TM_MAD=ds["tm_mad"],
                        CLONE="NO" if persistent or image["type"] == 1 else "YES",
                        SAVE="YES" if persistent else "NO", FORMAT=image["format"] or "raw",
                        TYPE="CDROM" if image["type"] == 1 else "BLOCK",
                        READONLY="YES" if image["type"] == 1 else "NO")
            if persistent:
                disk["PERSISTENT"] = "YES"
            image["vms"].append(vm_id)
            image["state"] = ImageState.USED_PERS if persistent else ImageState.USED
        else:
            disk.setdefault("TYPE", "fs")
            disk.setdefault("FORMAT", "raw")
        return disk

    def _vm(self, vm_id: int) -> dict[str, Any]:
        if vm_id not in self.vms:
            raise OneFailure(NO_EXISTS, f"[one.vm.info] Error getting virtual machine "
                                        f"[{vm_id}].", vm_id)
        return self.vms[vm_id]

    def vm_info(self, vm_id: int, decrypt: bool = False) -> str:
        return X.vm_body(self._vm(vm_id))

    def vmpool_info(self, *filters: Any) -> str:
        state = filters[3] if len(filters) > 3 else -1
        bodies = [X.vm_body(v) for v in self.vms.values()
                  if state == -2 or (state == -1 and v["state"] != VmState.DONE)
                  or v["state"] == state]
        return X.pool("VM_POOL", bodies)

    def vm_update(self, vm_id: int, text: str, merge: int = 0) -> int:
        vm = self._vm(vm_id)
        update = X.parse_template(text)
        vm["user_template"] = {**vm["user_template"], **update} if merge else update
        return vm_id

    def _set_vm_state(self, vm: dict[str, Any], state: int, lcm: int = 0) -> None:
        with self.lock:
            if (vm["state"], vm["lcm_state"]) == (state, lcm):
                return
            vm["prev_state"], vm["prev_lcm_state"] = vm["state"], vm["lcm_state"]
            vm["state"], vm["lcm_state"] = state, lcm
            if state == VmState.DONE:
                vm["etime"] = int(time.time())
            self._vm_event(vm)
            self.changed.notify_all()

    def _vm_event(self, vm: dict[str, Any]) -> None:
        state, lcm = VmState(vm["state"]).name, LCM_STATE_NAMES[vm["lcm_state"]]
        remote = vm["history"][-1]["hostname"] if vm["history"] else ""
        remote_xml = f"<REMOTE_HOST>{remote}</REMOTE_HOST>" if remote else "<REMOTE_HOST/>"
        message = (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
                   f"<STATE>{state}</STATE><LCM_STATE>{lcm}</LCM_STATE>"
                   f"<RESOURCE_ID>{vm['id']}</RESOURCE_ID>{remote_xml}{X.vm_body(vm)}"
                   "</HOOK_MESSAGE>")
        keys = [f"EVENT VM {vm['id']}/{state}/{lcm} ",
                f"EVENT STATE VM/{state}/{lcm}/{vm['id']} "]
        service = vm["user_template"].get("SERVICE_ID", "")
        if service.isdigit():  # VMs of a OneFlow service (5.12+)
            keys.append(f"EVENT SERVICE {service} ")
        self.hooks.publish(keys, message)

    def vm_deploy(self, vm_id: int, host_id: int, enforce: bool = False,
                  ds_id: int = -1) -> int:
        vm = self._vm(vm_id)
        if vm["state"] not in (VmState.PENDING, VmState.HOLD):
            raise OneFailure(ACTION, "[one.vm.deploy] Wrong state to perform action", vm_id)
        host = self._host(host_id)
        system = next((d for d in self.datastores.values() if d["type"] == 1
                       and (ds_id < 0 or d["id"] == ds_id)), None)
        if system is None:
            raise OneFailure(ACTION, "[one.vm.deploy] No system datastore", vm_id)
        vm["history"].append({"seq": len(vm["history"]), "hostname": host["name"],
                              "hid": host_id, "stime": int(time.time()),
                              "tm_mad": system["tm_mad"], "ds_id": system["id"]})
        host["vms"].append(vm_id)
        self._set_vm_state(vm, VmState.ACTIVE, 1)  # PROLOG
        self.work.put(lambda: self._prolog(vm, host, system))
        return vm_id

    def _vm_dir(self, vm: dict[str, Any], system: dict[str, Any]) -> str:
        return f"/var/lib/one//datastores/{system['id']}/{vm['id']}"

    def _prolog(self, vm: dict[str, Any], host: dict[str, Any],
                system: dict[str, Any]) -> None:
        vm_dir = self._vm_dir(vm, system)
        hostname = host["name"]
        (self.hosts_root / hostname / vm_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        lines = []
        for disk in vm["template"]["DISK"]:
            target = f"{hostname}:{vm_dir}/disk.{disk['DISK_ID']}"
            if "IMAGE_ID" in disk:
                source = disk["SOURCE"] if ":" in disk["SOURCE"] else f"localhost:{disk['SOURCE']}"
                action = "clone" if disk["CLONE"] == "YES" else "ln"
                lines.append((disk["TM_MAD"], action, [source, target, str(vm["id"]),
                                                       disk["DATASTORE_ID"]]))
            elif disk["TYPE"].lower() == "swap":
                lines.append((system["tm_mad"], "mkswap", [disk.get("SIZE", "0"), target,
                                                          str(vm["id"]), str(system["id"])]))
            else:
                lines.append((system["tm_mad"], "mkimage", [
                    disk.get("SIZE", "0"), disk.get("FORMAT", "raw"), target, str(vm["id"]),
                    str(system["id"])]))
        if "CONTEXT" in vm["template"]:
            disk_id = vm["template"]["CONTEXT"][0]["DISK_ID"]
            context_file = self.directory / "vms" / str(vm["id"]) / "context.sh"
            context_file.parent.mkdir(parents=True, exist_ok=True)
            context_file.write_text("".join(f"{k}='{v}'\n" for k, v in
                                            vm["template"]["CONTEXT"][0].items()))
            lines.append((system["tm_mad"], "context", [
                str(context_file), f"{hostname}:{vm_dir}/disk.{disk_id}", str(vm["id"]),
                str(system["id"])]))
        error = self._run_transfer(vm, lines)
        if error:
            vm["error"] = error
            vm["user_template"]["ERROR"] = error
            self._set_vm_state(vm, VmState.ACTIVE, 39)  # PROLOG_FAILURE
            return
        self._set_vm_state(vm, VmState.ACTIVE, 2)  # BOOT
        vm["deploy_id"] = f"one-{vm['id']}"
        self._set_vm_state(vm, VmState.ACTIVE, 3)  # RUNNING

    def _run_transfer(self, vm: dict[str, Any], lines: list[tuple[str, str, list[str]]]
                      ) -> str:
        """Run a transfer file's lines in order; the first failure aborts (one_tm)."""
        for tm_mad, action, args in lines:
            script = self.remotes / "tm" / tm_mad / action
            result = self._run(["tm", tm_mad, action], script, args, None, vm["id"])
            if result["exit"] != 0:
                return f"Error executing image transfer script: {result['error']}"
        return ""

    def vm_action(self, action: str, vm_id: int) -> int:
        vm = self._vm(vm_id)
        running = (vm["state"], vm["lcm_state"]) == (VmState.ACTIVE, 3)
        if action in ("terminate", "terminate-hard"):
            if vm["state"] in (VmState.PENDING, VmState.HOLD):
                self._release_images(vm)
                self._set_vm_state(vm, VmState.DONE, 0)
                return vm_id
            if not (running or vm["state"] == VmState.POWEROFF or vm["lcm_state"] in (39, 36)):
                raise OneFailure(ACTION, "[one.vm.action] Wrong state to perform action",
                                 vm_id)
            self._set_vm_state(vm, VmState.ACTIVE, 12)  # SHUTDOWN
            self.work.put(lambda: self._epilog(vm))
        elif action in ("poweroff", "poweroff-hard"):
            if not running:
                raise OneFailure(ACTION, "[one.vm.action] Wrong state to perform action",
                                 vm_id)
            self._set_vm_state(vm, VmState.ACTIVE, 18)  # SHUTDOWN_POWEROFF
            self._set_vm_state(vm, VmState.POWEROFF, 0)
        elif action == "resume" and vm["state"] == VmState.POWEROFF:
            self._set_vm_state(vm, VmState.ACTIVE, 20)  # BOOT_POWEROFF
            self._set_vm_state(vm, VmState.ACTIVE, 3)
        elif action in ("resume", "stop", "suspend", "undeploy", "undeploy-hard"):
            self.vm_lifecycle_action(action, vm)
        else:
            raise OneFailure(ACTION, f"[one.vm.action] action {action} not available in the "
                                     "oned sandbox yet", vm_id)
        return vm_id

    def _epilog(self, vm: dict[str, Any]) -> None:
        self._set_vm_state(vm, VmState.ACTIVE, 11)  # EPILOG
        last = vm["history"][-1]
        system = self.datastores[last["ds_id"]]
        vm_dir = self._vm_dir(vm, system)
        lines = []
        for disk in vm["template"]["DISK"]:
            path = f"{last['hostname']}:{vm_dir}/disk.{disk['DISK_ID']}"
            if disk.get("SAVE") == "YES":
                lines.append((disk["TM_MAD"], "mvds", [path, disk["SOURCE"], str(vm["id"]),
                                                        disk["DATASTORE_ID"]]))
            else:
                tm_mad = disk.get("TM_MAD") or system["tm_mad"]
                ds = disk.get("DATASTORE_ID", str(system["id"]))
                lines.append((tm_mad, "delete", [path, str(vm["id"]), ds]))
        lines.append((system["tm_mad"], "delete", [f"{last['hostname']}:{vm_dir}",
                                                   str(vm["id"]), str(system["id"])]))
        error = self._run_transfer(vm, lines)
        if error:
            vm["user_template"]["ERROR"] = error
            self._set_vm_state(vm, VmState.ACTIVE, 40)  # EPILOG_FAILURE
            return
        self._release_images(vm)
        self.hosts[last["hid"]]["vms"].remove(vm["id"])
        self._set_vm_state(vm, VmState.DONE, 0)

    def _release_images(self, vm: dict[str, Any]) -> None:
        with self.lock:
            for disk in vm["template"]["DISK"]:
                image = self.images.get(int(disk.get("IMAGE_ID", -1)))
                if image is not None and vm["id"] in image["vms"]:
                    image["vms"].remove(vm["id"])
                    if not image["vms"]:
                        self._set_image_state(image, ImageState.READY)

    # -- drivers --------------------------------------------------------------------------

    def _run_ds(self, ds: dict[str, Any], action: str, xml: str, object_id: int
                ) -> dict[str, Any]:
        script = self.remotes / "datastore" / ds["ds_mad"] / action
        payload = base64.b64encode(xml.encode()).decode()
        if self.version >= STDIN_SINCE:
            return self._run(["datastore", ds["ds_mad"], action], script, [str(object_id)],
                             payload, object_id)
        return self._run(["datastore", ds["ds_mad"], action], script,
                         [payload, str(object_id)], None, object_id)

    def _run(self, what: list[str], script: Path, args: list[str], stdin: str | None,
             object_id: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": what[0], "driver": what[1], "action": what[2],
                                 "argv": args, "stdin": stdin, "object_id": object_id}
        if not script.is_file():
            driver = "Datastore" if what[0] == "datastore" else "Transfer"
            entry.update(exit=-1, stdout="", stderr="",
                         error=f"{driver} driver '{what[1]}' action {what[2]} not available")
            self._log_driver(entry)
            return entry
        try:
            # No stdin unless the convention passes one: a driver must never read oned's.
            stdin_args: dict[str, Any] = ({"input": stdin} if stdin is not None
                                          else {"stdin": subprocess.DEVNULL})
            done = subprocess.run([str(script), *args], capture_output=True, text=True,
                                  env=self.driver_env, timeout=600, cwd=self.directory,
                                  **stdin_args)
            entry.update(exit=done.returncode, stdout=done.stdout, stderr=done.stderr)
        except (OSError, subprocess.TimeoutExpired) as exc:
            entry.update(exit=-1, stdout="", stderr=str(exc))
        entry["error"] = oned_error_text(entry["stderr"])
        self._log_driver(entry)
        return entry

    def _log_driver(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.driver_log.append(entry)

    # -- scenario API ---------------------------------------------------------------------

    def call(self, method: str, *params: Any) -> Any:
        """Call like a client would (session added); raises on an oned error."""
        reply = self._dispatch_call(method, self.session, *params)
        if not reply[0]:
            raise OneFailure(reply[2], reply[1], reply[3] if len(reply) > 3 else -1)
        return reply[1]

    def create_datastore(self, name: str, ds_type: str = "IMAGE_DS", **attributes: str
                         ) -> int:
        """``create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool")``."""
        lines = [f'NAME="{name}"', f'TYPE="{ds_type}"']
        lines += [f'{key}="{value}"' for key, value in attributes.items()]
        return self.call("one.datastore.allocate", "\n".join(lines), -1)

    def create_image(self, ds_id: int, name: str, *, path: str = "", size_mb: int = 0,
                     persistent: bool = False, timeout: float = 120) -> int:
        """Register an image and wait until it is READY (raises with oned's error)."""
        lines = [f'NAME="{name}"', f'PERSISTENT="{"YES" if persistent else "NO"}"']
        lines += [f'PATH="{path}"'] if path else [f'SIZE="{size_mb}"']
        image_id = self.call("one.image.allocate", "\n".join(lines), ds_id)
        if self.wait_image(image_id, {"READY", "ERROR"}, timeout) == "ERROR":
            raise RuntimeError(f"image {image_id}: {self.images[image_id]['template']['ERROR']}")
        return image_id

    def create_host(self, name: str) -> int:
        return self.call("one.host.allocate", name, "kvm", "kvm", -1)

    def instantiate(self, template: str, host_id: int, system_ds: int,
                    timeout: float = 120) -> int:
        """Allocate a VM from template text, deploy it and wait until it RUNs."""
        vm_id = self.call("one.vm.allocate", template, False)
        self.call("one.vm.deploy", vm_id, host_id, False, system_ds)
        self.wait_vm(vm_id, "ACTIVE", "RUNNING", timeout)
        return vm_id

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until the lifecycle worker has run everything queued so far."""
        done = threading.Event()
        self.work.put(done.set)
        if not done.wait(timeout):
            raise TimeoutError(f"oned sandbox: still busy after {timeout}s")

    def wait_image(self, image_id: int, states: set[str], timeout: float = 60) -> str:
        def current() -> str | None:
            image = self.images.get(image_id)
            if image is None:
                return "GONE" if "GONE" in states else None
            name = ImageState(image["state"]).name
            return name if name in states else None

        return self._wait(current, f"image {image_id} in {states}", timeout)

    def wait_vm(self, vm_id: int, state: str, lcm: str = "LCM_INIT",
                timeout: float = 60) -> None:
        def current() -> bool | None:
            vm = self.vms[vm_id]
            now = (VmState(vm["state"]).name, LCM_STATE_NAMES[vm["lcm_state"]])
            if now[1].endswith("_FAILURE") and now != (state, lcm):
                raise RuntimeError(f"VM {vm_id} is in {now[0]}/{now[1]}: "
                                   f"{vm['user_template'].get('ERROR', '')}")
            return now == (state, lcm) or None

        self._wait(current, f"VM {vm_id} in {state}/{lcm}", timeout)

    def _wait(self, probe: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while (found := probe()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"oned sandbox: waited {timeout}s for {what}")
                self.changed.wait(min(remaining, 0.2))
            return found


def oned_error_text(stderr: str) -> str:
    """What oned keeps as the error: stderr lines that are not ERROR/INFO/WARN/DEBUG log
    lines, concatenated; oned's scripts also report ``ERROR:`` lines, which oned logs and
    (when nothing else was said) shows."""
    log_prefixes = ("ERROR:", "INFO:", "WARN:", "DEBUG:")
    plain = "".join(line.strip() for line in stderr.splitlines()
                    if line.strip() and not line.startswith(log_prefixes))
    if plain:
        return plain
    errors = [line.split(":", 1)[1].strip() for line in stderr.splitlines()
              if line.startswith("ERROR:")]
    return " ".join(errors) or "-"


def _post(admin: tuple[str, str], path: str, body: dict[str, Any]) -> None:
    import json
    import urllib.request

    url, token = admin
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     method="POST",
                                     headers={"Authorization": f"Storpool v1:{token}"})
    with urllib.request.urlopen(request, timeout=10):
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="onestorpool sandbox oned",
                                     description="Run the oned sandbox (XML-RPC + hook bus).")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=2633)
    parser.add_argument("--hook-endpoint", default="tcp://127.0.0.1:2101")
    parser.add_argument("--one-version", default="6.10")
    parser.add_argument("--remotes", type=Path, default=None)
    parser.add_argument("--storpool-admin", default=None, metavar="URL",
                        help="StorPool sandbox URL (token from $ONESTORPOOL_SANDBOX_TOKEN)")
    parser.add_argument("--session", default="oneadmin:sandbox")
    args = parser.parse_args(argv)
    admin = None
    if args.storpool_admin:
        admin = (args.storpool_admin, os.environ.get("ONESTORPOOL_SANDBOX_TOKEN", ""))
    env = {k: v for k, v in os.environ.items() if k.startswith("ONESTORPOOL_")}
    oned = OnedSandbox(args.dir, remotes=args.remotes, one_version=args.one_version,
                       driver_env=env, storpool_admin=admin, port=args.port,
                       hook_endpoint=args.hook_endpoint, session=args.session).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"oned sandbox {oned.system_version()} on {oned.endpoint}, hooks on "
          f"{oned.hooks.endpoint}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    oned.stop()
    return 0
