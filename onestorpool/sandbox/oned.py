"""The oned sandbox: a process that behaves towards the add-on as oned does.

* XML-RPC like oned's (``http://127.0.0.1:<port>/RPC2``): session ``user:password``
  checked, oned's reply arrays (``[true, value, 0]``, ``[false, message, code, object id,
  i8]``), bodies in oned's element order; pyone works against it unchanged.
* The hook bus like ``one_hm``: a ZeroMQ PUB socket, two frames per event, the keys and
  base64 ``HOOK_MESSAGE`` payloads oned's code produces, for every state change and every
  call that is not read-only (the set depends on the release).
* A lifecycle engine that runs the **real driver executables** from a remotes directory
  (``datastore/<DS_MAD>/<action>``, ``tm/<TM_MAD>/<action>``, ``vmm/kvm/<local action>``)
  with oned's arguments, stdin and environment, parses their output as oned does and
  publishes what oned would (``oned_storage``, ``oned_vm``, ``oned_vmops``).
* Hosts are directories ``<hosts>/<name>/`` (``ONESTORPOOL_SANDBOX_HOSTS`` in the drivers'
  environment); each is a StorPool sandbox client (``SP_OURID``), registered through the
  StorPool sandbox's admin API when ``storpool_admin=(url, token)`` is given. The front-end
  is the host named ``frontend`` (default ``localhost``): oned's own files
  (``/var/lib/one/vms/<id>/...``, oneadmin's ``~/.one``) live in its directory.

Python API (tests, the demo, ``sandbox up``)::

    with OnedSandbox(directory, remotes, one_version="6.10",
                     storpool_admin=(url, token), driver_env={...},
                     vmm_local="deploy=deploy-tweaks") as oned:
        ds = oned.create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool",
                                   DISK_TYPE="BLOCK")
        system = oned.create_datastore("sys", "SYSTEM_DS", TM_MAD="storpool")
        image = oned.create_image(ds, "blank", size_mb=10)
        host = oned.create_host("node1")
        vm = oned.instantiate('NAME="x" DISK=[IMAGE_ID="0"]', host, system)
        oned.call("one.vm.action", "terminate", vm); oned.wait_vm(vm, "DONE")
        oned.endpoint, oned.credentials, oned.hook_endpoint, oned.driver_log

Driver conventions by ``one_version`` (reference opennebula-interfaces.md §2, §7):

* DS actions: ``<action> <base64> <id>`` up to 6.6, ``<action> <id>`` + base64 on stdin
  from 6.8; ``cp`` must print FORMAT from 6.0; ``mkfs``'s whole line is SOURCE from 6.0.
* Failure text: ``error_message`` markers up to 6.0, the whole stderr 6.2-6.10, non-log
  lines from 7.0 (``oned_drivers.error_info``).
* VM disk usage printed by the system TM monitor (5.10) or pushed to onemonitord over UDP
  (5.12+: ``MONITOR_ADDRESS``/``MONITOR_PORT`` of the sandbox's listener).
* Hook bus: every call published in 5.10.0 (only the hook calls were silent), read-only
  calls silent from 5.10.2 (src/hm/HookAPI.cc); SERVICE_ID and the SERVICE key from 5.12;
  image state events from 6.0. Deploy ids: ``one-<id>`` before 6.0, UUIDs after.
* Bodies in the form of the release (``oned_xml``; checked against each release's XSDs by
  tests/sandbox/test_oned_conformance.py); methods as the release registers them
  (``oned_methods``); the scheduler deploys through XML-RPC up to 6.10, inside oned from
  7.0 (``oned_sched``).

VMM actions: a script runs only for the actions VM_MAD declares local (``vmm_local``, the
``-l`` syntax); the others are the hypervisor's, which the sandbox plays (deployment file
and checkpoint in the host directory, libvirt-like answers).

Parts: the XML-RPC front (``oned_rpc``), the hook bus (``oned_hookbus``), hooks with their
log and execution (``oned_hooks``, ``oned_hem``), VM templates (``oned_templates``), the
scheduler (``oned_sched``), cluster 0 (``oned_cluster``), users and groups
(``oned_users``), the driver runner (``oned_drivers``), datastores, hosts and images
(``oned_storage``), the VM pool, life cycle, actions and recovery (``oned_vm``), disk and
snapshot operations (``oned_vmops``), all around the shared core (``oned_core``).

Not emulated: backups and restore (``one.vm.backup``/``restore`` answer "not emulated"),
nor any other registered method without a handler; ``one.vm.recover`` retry, NICs and
networks, ACLs and quotas (users and groups are read-only), the hook REP socket (hooks run
inside the sandbox), oned's periodic VM monitoring, the 6.4.7/6.6.3 ``one_datastore -i``
convention (``<action> - <id>``); the capacity check waits for a datastore's first
monitoring (oned would refuse with FREE_MB 0); text template syntax errors are not
bison's exact words.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import socket
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

from onestorpool.sandbox import oned_hookbus as hookbus
from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.hosts import env as sandbox_hosts_env
from onestorpool.sandbox.oned_cluster import DEFAULT_DATASTORES, ClusterPool
from onestorpool.sandbox.oned_core import ONEADMIN_HOME, SandboxCore
from onestorpool.sandbox.oned_drivers import DriverRun, DriverRunner
from onestorpool.sandbox.oned_hooks import HookManager
from onestorpool.sandbox.oned_methods import RELEASES
from onestorpool.sandbox.oned_objects import (
    IMAGE_STATES,
    LCM_STATES,
    VM_STATES,
    OneFailure,
    Template,
    Version,
)
from onestorpool.sandbox.oned_rpc import I8, RpcServer
from onestorpool.sandbox.oned_sched import Scheduler
from onestorpool.sandbox.oned_storage import (
    DEFAULT_DEVICE_PREFIX,
    DS_MAD_CONF,
    DS_MONITOR_VM_DISK,
    TM_MAD_CONF,
    Datastores,
    Hosts,
    ImageOps,
    ImageRegistry,
)
from onestorpool.sandbox.oned_templates import TemplatePool
from onestorpool.sandbox.oned_users import UserPool
from onestorpool.sandbox.oned_vm import Lifecycle, Recovery, VmActions, VmDrivers, VmPool
from onestorpool.sandbox.oned_vmops import LIVE_DISK_SNAPSHOTS, DiskOps, SnapshotOps

# Environment a driver inherits from the sandbox's own (oned runs as a service: the rest
# of a developer's environment, ONE_XMLRPC included, must not leak into the drivers).
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH",
                 "COVERAGE_PROCESS_START", "COVERAGE_FILE")
# VM_MAD "-l" of an add-on install (reference addon-storpool.md §6.2; 'sandbox up' declares
# those whose scripts exist): the hosts' native KVM scripts they hand over to are the
# sandbox's stand-ins (onestorpool.sandbox.kvm_host).
ADDON_VMM_LOCAL = ("deploy=deploy-tweaks,attach_disk=attach_disk.storpool,save=tmsave,"
                   "restore=tmrestore,snapshotcreate=snapshot_create-storpool,"
                   "snapshotrevert=snapshot_revert-storpool,"
                   "snapshotdelete=snapshot_delete-storpool")


def install_remotes(directory: Path, remotes: Path | None, version: Version) -> Path:
    """oned's remotes directory with ``VERSION`` in it, as each release's ``install.sh``
    puts it there (drivers read it to know how oned shows their errors). Without
    ``remotes``: ``<directory>/remotes`` with the add-on's drivers installed as the
    installer does (their interpreter: this one)."""
    if remotes is None:
        from onestorpool.drivers.install import install_remotes as install_drivers

        remotes = directory / "remotes"
        install_drivers(remotes)
    remotes = Path(remotes).resolve()
    remotes.mkdir(parents=True, exist_ok=True)
    (remotes / "VERSION").write_text(f"{version}.0\n")
    return remotes


def parse_local_actions(text: str) -> dict[str, str]:
    """``-l deploy=deploy-tweaks,attach_disk`` (OpenNebulaDriver.parse_actions_list)."""
    actions = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, script = item.partition("=")
        actions[name.strip().upper()] = script.strip()
    return actions


# XML-RPC method -> the name of its handler in one of the parts
METHODS: dict[str, str] = {
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
    "one.vmpool.info": "vmpool_info", "one.vmpool.infoextended": "vmpool_infoextended",
    "one.vm.deploy": "vm_deploy", "one.vm.action": "vm_action",
    "one.vm.update": "vm_update", "one.vm.migrate": "vm_migrate",
    "one.vm.attach": "vm_attach", "one.vm.detach": "vm_detach",
    "one.vm.disksaveas": "vm_disk_saveas",
    "one.vm.disksnapshotcreate": "vm_disk_snapshot_create",
    "one.vm.disksnapshotrevert": "vm_disk_snapshot_revert",
    "one.vm.disksnapshotdelete": "vm_disk_snapshot_delete",
    "one.vm.diskresize": "vm_disk_resize", "one.vm.snapshotcreate": "vm_snapshot_create",
    "one.vm.snapshotrevert": "vm_snapshot_revert",
    "one.vm.snapshotdelete": "vm_snapshot_delete", "one.vm.recover": "vm_recover",
}


class OnedSandbox(SandboxCore):
    """See the module docstring."""

    def __init__(self, directory: Path, remotes: Path | None = None, *,
                 one_version: str = "6.10", storpool_admin: tuple[str, str] | None = None,
                 driver_env: dict[str, str] | None = None, port: int = 0,
                 hook_endpoint: str | None = None, session: str = "oneadmin:sandbox",
                 frontend: str = "localhost", hosts_root: Path | None = None,
                 vmm_local: str | dict[str, str] | None = None,
                 tm_mad_conf: dict[str, Template] | None = None,
                 ds_mad_conf: dict[str, Template] | None = None,
                 live_disk_snapshots: set[str] | frozenset[str] | None = None,
                 scheduler: bool = False, monitor_interval: float = 0,
                 keep_snapshots: bool = False):
        super().__init__()
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.version = Version(one_version)
        if str(self.version) not in RELEASES:
            raise ValueError(f"OpenNebula {one_version}: the oned sandbox emulates "
                             f"{', '.join(RELEASES)}")
        self.remotes = install_remotes(self.directory, remotes, self.version)
        self.session = session
        self.frontend = frontend
        self.storpool_admin = storpool_admin
        self.tm_mad_conf = {**TM_MAD_CONF, **(tm_mad_conf or {})}
        self.ds_mad_conf = {**DS_MAD_CONF, **(ds_mad_conf or {})}
        self.live_disk_snapshots = frozenset(live_disk_snapshots or LIVE_DISK_SNAPSHOTS)
        self.scheduler = scheduler
        self.monitor_interval = monitor_interval
        self.keep_snapshots = keep_snapshots
        extra_env = dict(driver_env or {})
        self.hosts_root = Path(hosts_root or extra_env.get("ONESTORPOOL_SANDBOX_HOSTS")
                               or self.directory / "hosts").resolve()
        self.hosts_root.mkdir(parents=True, exist_ok=True)
        root = extra_env.get("ONESTORPOOL_ROOT")
        self.storpool_conf = Path(root) / "etc" / "storpool.conf" if root else None

        self.hooks = hookbus.HookBus(hook_endpoint)
        self.rpc = RpcServer(port, self.version, self.session, self.hooks, self.lock,
                             self.internal_errors)
        self.server = self.rpc.server
        self.endpoint = self.rpc.endpoint

        self.monitord: socket.socket | None = None
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        # "#!/usr/bin/env python3" must find the interpreter that has this package, as the
        # packaged install's does on a real front-end.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        env["HOME"] = str(self.fe_path(ONEADMIN_HOME))  # oneadmin's home: ~/.one/one_auth
        env.update(sandbox_hosts_env(self.hosts_root))
        if self.version >= (5, 12):
            # onemonitord's UDP port: drivers push VM disk usage there (send_to_monitor)
            self.monitord = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.monitord.bind(("127.0.0.1", 0))
            env["MONITOR_ADDRESS"] = "127.0.0.1"
            env["MONITOR_PORT"] = str(self.monitord.getsockname()[1])
        env.update(extra_env)
        self.driver_env = env
        local = parse_local_actions(vmm_local) if isinstance(vmm_local, str) else \
            {k.upper(): v for k, v in (vmm_local or {}).items()}
        self.drivers = DriverRunner(self.remotes, self.version, env, self.driver_log,
                                    self.lock, cwd="/", vmm_local=local)
        self.hook_manager = HookManager(self.hooks, self.version, self.remotes,
                                        self.host_path, env)
        # the parts, composed around this core
        self.ds_api, self.host_api = Datastores(self), Hosts(self)
        self.image_api, self.image_ops = ImageRegistry(self), ImageOps(self)
        self.vm_pool, self.vm_drivers = VmPool(self), VmDrivers(self)
        self.lifecycle, self.vm_actions = Lifecycle(self), VmActions(self)
        self.recovery = Recovery(self)
        self.disk_ops, self.snapshot_ops = DiskOps(self), SnapshotOps(self)
        self.vm_templates = TemplatePool(self.vm_pool.vm_allocate)
        self.clusters = ClusterPool(self.lock, self.hosts, self.datastores)
        self.users = UserPool(self.session)
        # XML-RPC method -> callable: this class's own, then its composed parts'
        self.handlers = self.rpc.handlers
        api_parts = (self, self.ds_api, self.host_api, self.image_api, self.image_ops,
                     self.vm_pool, self.lifecycle, self.vm_actions, self.recovery,
                     self.disk_ops, self.snapshot_ops)
        for method, name in METHODS.items():
            self.handlers[method] = next(getattr(part, name) for part in api_parts
                                         if hasattr(part, name))
        for part in (self.hook_manager, self.vm_templates, self.clusters, self.users):
            self.handlers.update(part.methods())
        for ds_id, template in DEFAULT_DATASTORES:  # what every oned has from the start
            self.datastores[ds_id] = self.ds_api.new_datastore(ds_id, dict(template))
        self.sched = Scheduler(self.lock, self.vms, self.hosts, self.datastores, self.version,
                               self.session, self.dispatch, self.lifecycle.vm_deploy,
                               self.recovery.vm_migrate)
        self._write_credentials()
        self._stopping = threading.Event()
        self._serving = False
        self._threads: list[threading.Thread] = []

    def _write_credentials(self) -> None:
        """oneadmin's ``~/.one/one_auth`` and ``one_endpoint`` (what the CLI and the
        add-on's drivers find as oneadmin), and copies in the sandbox directory."""
        for base in (self.fe_path(f"{ONEADMIN_HOME}/.one"), self.directory):
            base.mkdir(parents=True, exist_ok=True)
            (base / "one_auth").write_text(self.session + "\n")
            (base / "one_auth").chmod(0o600)
            (base / "one_endpoint").write_text(self.endpoint + "\n")

    # -- process ---------------------------------------------------------------------------

    @property
    def credentials(self) -> tuple[str, str]:
        user, _, password = self.session.partition(":")
        return user, password

    @property
    def hook_endpoint(self) -> str:
        return self.hooks.endpoint

    def start(self) -> OnedSandbox:
        self._serving = True
        targets = [self.server.serve_forever]
        if self.monitord is not None:
            targets.append(self._receive_monitoring)
        if self.scheduler:
            targets.append(self._schedule_loop)
        if self.monitor_interval > 0:
            targets.append(self._monitor_loop)
        for target in targets:
            thread = threading.Thread(target=target, daemon=True, name=f"oned-{target}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._serving:  # shutdown() waits for serve_forever: only when it runs
            self.server.shutdown()
        self.server.server_close()
        self._jobs.shutdown(wait=True, cancel_futures=True)
        self.hook_manager.close()
        self.hooks.close()
        if self.monitord is not None:
            self.monitord.close()

    def __enter__(self) -> OnedSandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _schedule_loop(self) -> None:
        while not self._stopping.wait(0.3):
            with contextlib.suppress(Exception):
                self.sched.schedule_once()

    def _monitor_loop(self) -> None:
        while not self._stopping.wait(self.monitor_interval):
            for ds_id in list(self.datastores):
                with contextlib.suppress(Exception):
                    self.ds_api.monitor_datastore(ds_id)

    def _receive_monitoring(self) -> None:
        """onemonitord: ``MONITOR_VM SUCCESS <oid> <ts> <base64(zlib(payload))>``."""
        assert self.monitord is not None
        while True:
            try:
                data = self.monitord.recv(1 << 20)
            except OSError:
                return  # closed by stop()
            words = data.decode(errors="replace").split()
            if len(words) != 5 or words[:2] != ["MONITOR_VM", "SUCCESS"]:
                continue
            try:
                payload = zlib.decompress(base64.b64decode(words[4])).decode()
                vectors = X.parse_template(payload).get("VM", [])
            except (ValueError, zlib.error):
                continue
            for vector in vectors if isinstance(vectors, list) else []:
                self.ds_api.store_vm_monitoring(vector)

    # -- XML-RPC ---------------------------------------------------------------------------

    def dispatch(self, method: str, params: tuple[Any, ...]) -> list[Any]:
        """One XML-RPC call, as a client's would be handled (``oned_rpc``)."""
        return self.rpc.dispatch(method, params)

    def system_version(self) -> str:
        return f"{self.version}.0"

    def system_config(self) -> str:
        """``one.system.config``: the sandbox's oned.conf (the parts drivers consult)."""
        tm = [{"NAME": name, **{k: str(v) for k, v in conf.items()}}
              for name, conf in sorted(self.tm_mad_conf.items())]
        ds = [{"NAME": name, **{k: str(v) for k, v in conf.items()}}
              for name, conf in sorted(self.ds_mad_conf.items())]
        local = ",".join(f"{k.lower()}={v}" if v else k.lower()
                         for k, v in sorted(self.drivers.vmm_local.items()))
        arguments = f"-t 15 -r 0 kvm{' -l ' + local if local else ''}"
        return X.configuration_xml({
            "DATASTORE_CAPACITY_CHECK": "yes" if self.capacity_check else "no",
            "DATASTORE_LOCATION": "/var/lib/one//datastores",
            "DEFAULT_DEVICE_PREFIX": DEFAULT_DEVICE_PREFIX, "DEFAULT_IMAGE_TYPE": "OS",
            "DS_MAD_CONF": ds, "DS_MONITOR_VM_DISK": str(DS_MONITOR_VM_DISK),
            "MONITORING_INTERVAL_DATASTORE": str(int(self.monitor_interval or 300)),
            "PORT": str(self.server.server_address[1]), "SCRIPTS_REMOTE_DIR": "/var/tmp/one",
            "TM_MAD_CONF": tm,
            "VM_MAD": [{"NAME": "kvm", "EXECUTABLE": "one_vmm_exec", "ARGUMENTS": arguments,
                        "KEEP_SNAPSHOTS": "YES" if self.keep_snapshots else "NO",
                        "TYPE": "kvm"}],
        })

    def zone_raftstatus(self) -> str:
        return X.RAFT_SOLO

    # -- scenario API ------------------------------------------------------------------------

    def call(self, method: str, *params: Any) -> Any:
        """Call as a client would (session added); raises :class:`OneFailure` on an error
        reply. Goes through the same dispatcher, so API events are published."""
        reply = self.dispatch(method, (self.session, *params))
        if not reply[0]:
            raise OneFailure(reply[2], reply[1], reply[3])
        return reply[1]

    def create_datastore(self, name: str, ds_type: str = "IMAGE_DS", **attributes: str
                         ) -> int:
        """``create_datastore("sp", DS_MAD="storpool", TM_MAD="storpool")``."""
        lines = [f'NAME="{name}"', f'TYPE="{ds_type}"']
        lines += [f'{key}="{value}"' for key, value in attributes.items()]
        return self.call("one.datastore.allocate", "\n".join(lines), -1)

    def create_image(self, ds_id: int, name: str, *, path: str = "", size_mb: int = 0,
                     persistent: bool = False, image_type: str = "", timeout: float = 120,
                     **attributes: str) -> int:
        """Register an image and wait until it is READY (raises with oned's error)."""
        lines = [f'NAME="{name}"', f'PERSISTENT="{"YES" if persistent else "NO"}"']
        lines += [f'PATH="{path}"'] if path else [f'SIZE="{size_mb}"']
        if image_type:
            lines.append(f'TYPE="{image_type}"')
        lines += [f'{key}="{value}"' for key, value in attributes.items()]
        image_id = self.call("one.image.allocate", "\n".join(lines), ds_id)
        if self.wait_image(image_id, {"READY", "ERROR"}, timeout) == "ERROR":
            raise RuntimeError(f"image {image_id}: {self.images[image_id].template['ERROR']}")
        return image_id

    def create_host(self, name: str, timeout: float = 30) -> int:
        """Allocate a KVM host and wait for its first monitoring (MONITORED)."""
        host_id = self.call("one.host.allocate", name, "kvm", "kvm", -1)
        self._wait(lambda: self.hosts[host_id].state == 2 or None, f"host {name}", timeout)
        return host_id

    def instantiate(self, template: str, host_id: int, system_ds: int = -1,
                    timeout: float = 120) -> int:
        """Allocate a VM (CPU and MEMORY added when the template has none), deploy it and
        wait until it runs."""
        parsed = X.parse_template(template)
        extra = "".join(f'\n{key}="{value}"' for key, value in (("CPU", "1"), ("MEMORY", "128"))
                        if key not in parsed)
        vm_id = self.call("one.vm.allocate", template + extra, False)
        self.call("one.vm.deploy", vm_id, host_id, False, system_ds)
        self.wait_vm(vm_id, "ACTIVE", "RUNNING", timeout)
        return vm_id

    def wait_image(self, image_id: int, states: set[str], timeout: float = 60) -> str:
        """Wait until the image is in one of ``states`` (names; ``GONE`` once deleted)."""
        def current() -> str | None:
            image = self.images.get(image_id)
            if image is None:
                return "GONE" if "GONE" in states else None
            name = IMAGE_STATES[image.state]
            return name if name in states else None

        return self._wait(current, f"image {image_id} in {sorted(states)}", timeout)

    def wait_vm(self, vm_id: int, state: str, lcm: str = "LCM_INIT",
                timeout: float = 60) -> None:
        """Wait for (state, lcm state) by name; a *_FAILURE state other than the one
        awaited raises with the VM's error."""
        def current() -> bool | None:
            vm = self.vms[vm_id]
            now = (VM_STATES[vm.state], LCM_STATES[vm.lcm_state])
            if now[1].endswith("_FAILURE") and now != (state, lcm):
                raise RuntimeError(f"VM {vm_id} is in {now[0]}/{now[1]}: "
                                   f"{vm.user_template.get('ERROR', '')}")
            return now == (state, lcm) or None

        self._wait(current, f"VM {vm_id} in {state}/{lcm}", timeout)

    def runs(self, kind: str = "", action: str = "") -> list[DriverRun]:
        """The driver log, filtered by kind (datastore, tm, vmm) and action."""
        with self.lock:
            return [r for r in self.driver_log if (not kind or r.kind == kind)
                    and (not action or r.action == action)]

    def monitor_datastore(self, ds_id: int) -> DriverRun | None:
        """Monitor a datastore now, as oned's periodic monitoring does (``oned_storage``)."""
        return self.ds_api.monitor_datastore(ds_id)

    def schedule_once(self) -> list[tuple[int, int]]:
        """One pass of the scheduler (``oned_sched``), whether its loop runs or not."""
        return self.sched.schedule_once()

    def add_image_snapshot(self, image_id: int, name: str = "") -> int:
        """Scenario helper: give an image a snapshot as a persistent disk's snapshot leaves
        one behind (see one.vm.disksnapshotcreate on a persistent image)."""
        from onestorpool.sandbox.oned_storage import add_snapshot

        with self.lock:
            image = self._image(image_id)
            snapshot = add_snapshot(image.snapshots, image.next_snapshot, name, image.size)
            image.next_snapshot += 1
            return snapshot.id


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="onestorpool sandbox oned",
                                     description="Run the oned sandbox (XML-RPC, hook bus, "
                                                 "lifecycle with the real drivers).")
    parser.add_argument("--dir", type=Path, required=True, help="the sandbox's directory")
    parser.add_argument("--port", type=int, default=2633, help="XML-RPC port (oned: 2633)")
    parser.add_argument("--hook-endpoint", default="tcp://127.0.0.1:2101",
                        help="hook bus PUB endpoint (one_hm: tcp://127.0.0.1:2101)")
    parser.add_argument("--one-version", default="6.10", choices=RELEASES,
                        help="OpenNebula release whose conventions to follow")
    parser.add_argument("--remotes", type=Path, default=None,
                        help="drivers' remotes directory (default: the add-on's)")
    parser.add_argument("--hosts", type=Path, default=None,
                        help="directory of the host directories (default: DIR/hosts)")
    parser.add_argument("--frontend", default="localhost", help="oned's HOSTNAME")
    parser.add_argument("--storpool-admin", default=None, metavar="URL",
                        help="StorPool sandbox URL; the token from $ONESTORPOOL_SANDBOX_TOKEN")
    parser.add_argument("--session", default="oneadmin:sandbox", help="user:password")
    parser.add_argument("--vmm-local", default="", metavar="LIST",
                        help=f"VM_MAD local actions, e.g. {ADDON_VMM_LOCAL!r}")
    parser.add_argument("--scheduler", action="store_true",
                        help="deploy PENDING VMs (oned's scheduler)")
    parser.add_argument("--monitor-interval", type=float, default=0,
                        help="monitor the datastores every N seconds (0: never)")
    args = parser.parse_args(argv)
    admin = None
    if args.storpool_admin:
        admin = (args.storpool_admin, os.environ.get("ONESTORPOOL_SANDBOX_TOKEN", ""))
    env = {k: v for k, v in os.environ.items()
           if k.startswith("ONESTORPOOL_") and k != "ONESTORPOOL_SANDBOX_TOKEN"}
    oned = OnedSandbox(args.dir, args.remotes, one_version=args.one_version,
                       storpool_admin=admin, driver_env=env, port=args.port,
                       hook_endpoint=args.hook_endpoint, session=args.session,
                       frontend=args.frontend, hosts_root=args.hosts,
                       vmm_local=args.vmm_local, scheduler=args.scheduler,
                       monitor_interval=args.monitor_interval)
    oned.drivers.log_stream = sys.stderr  # what oned writes to oned.log about driver runs
    oned.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"oned sandbox {oned.system_version()} on {oned.endpoint}, hook bus on "
          f"{oned.hook_endpoint}, hosts in {oned.hosts_root}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(1):
            pass
    oned.stop()
    return 0


__all__ = ["I8", "OneFailure", "OnedSandbox", "main", "parse_local_actions"]
