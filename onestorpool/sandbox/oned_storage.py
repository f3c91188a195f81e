"""Datastores, hosts and images of the oned sandbox: the XML-RPC calls and what oned's
Image Manager does with the datastore driver (``src/rm/RequestManagerAllocate.cc``,
``src/image/ImageManagerActions.cc``, ``src/image/ImageManagerProtocol.cc``).

Image registration runs ``stat`` synchronously inside ``one.image.allocate`` (as oned does,
the call fails when it fails), then ``cp`` or ``mkfs`` in the background; ``one.image.clone``
runs ``clone``, ``one.image.delete`` runs ``rm``, the snapshot calls run ``snap_*``. After
image changes the datastore is monitored.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import urllib.error
import urllib.request
from typing import Any
from xml.sax.saxutils import escape

from onestorpool.sandbox import oned_hookbus as hookbus
from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.kvm_host import install_native_kvm
from onestorpool.sandbox.oned_core import DATASTORE_LOCATION, SandboxCore
from onestorpool.sandbox.oned_objects import (
    ACTION,
    ALLOCATE,
    DATASTORE_TYPES,
    DISK_TYPES,
    IMAGE_TYPES,
    INTERNAL,
    Datastore,
    Host,
    Image,
    ImageSnapshot,
    ImageState,
    OneFailure,
    Template,
    check_name,
    now,
)

# TM_MAD_CONF / DS_MAD_CONF the sandbox's oned.conf has: OpenNebula's own for ssh and shared,
# and the add-on's (reference addon-storpool.md §6.2).
TM_MAD_CONF: dict[str, Template] = {
    "ssh": {"LN_TARGET": "SYSTEM", "CLONE_TARGET": "SYSTEM", "SHARED": "NO",
            "DS_MIGRATE": "YES", "ALLOW_ORPHANS": "YES"},
    "shared": {"LN_TARGET": "NONE", "CLONE_TARGET": "SYSTEM", "SHARED": "YES",
               "DS_MIGRATE": "YES", "TM_MAD_SYSTEM": "ssh", "LN_TARGET_SSH": "SYSTEM",
               "CLONE_TARGET_SSH": "SYSTEM", "DISK_TYPE_SSH": "FILE",
               "ALLOW_ORPHANS": "FORMAT"},
    "storpool": {"LN_TARGET": "NONE", "CLONE_TARGET": "SELF", "SHARED": "YES",
                 "DS_MIGRATE": "YES", "DRIVER": "raw", "ALLOW_ORPHANS": "YES"},
}
DS_MAD_CONF: dict[str, Template] = {
    "fs": {"REQUIRED_ATTRS": "", "PERSISTENT_ONLY": "NO", "MARKETPLACE_ACTIONS": "export"},
    "storpool": {"REQUIRED_ATTRS": "DISK_TYPE", "PERSISTENT_ONLY": "NO",
                 "MARKETPLACE_ACTIONS": "export"},
}
DEFAULT_DEVICE_PREFIX = "sd"  # oned.conf DEFAULT_DEVICE_PREFIX
DEFAULT_CDROM_DEVICE_PREFIX = "hd"
DS_MONITOR_VM_DISK = 10  # oned.conf: MONITOR_VM_DISKS=1 every 10th system DS monitoring


class Datastores:
    """``one.datastore.*`` and datastore monitoring (``ImageManager::monitor_datastore``)."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def datastore_allocate(self, text: str, cluster_id: int = -1) -> tuple[int, str]:
        method = "one.datastore.allocate"
        template = _parse(text, method)
        with self.core.lock:
            ds_id = self.core._next_id["datastore"]
            try:
                ds = self.new_datastore(ds_id, template)
            except ValueError as error:
                raise OneFailure(ALLOCATE, f"[{method}] Error allocating a new datastore. "
                                           f"{error}") from None
            self.core._new_id("datastore")
            self.core.datastores[ds_id] = ds
            body = X.datastore_body(ds, self.core.version)
        if self.core.storpool_admin is not None and "storpool" in (ds.ds_mad, ds.tm_mad):
            # as an admin does when adding a StorPool datastore (and as host_allocate
            # registers the host's StorPool client): its template, one per datastore
            create_storpool_template(self.core.storpool_admin, self._storpool_prefix(), ds_id)
        return ds_id, body

    def _storpool_prefix(self) -> str:
        """``ONE_PX`` of the add-on's configuration in the sandbox's root."""
        if self.core.storpool_conf is None:
            return "one"
        from onestorpool import config

        root = self.core.storpool_conf.parent.parent
        return config.load(rc_paths=[root / "var/lib/one/remotes/addon-storpoolrc"],
                           override_path=root / "etc/storpool/addon-storpool.conf",
                           storpool_paths=[], environ={}).prefix

    def new_datastore(self, ds_id: int, template: Template) -> Datastore:
        """``Datastore::insert``: DS_MAD_CONF and TM_MAD_CONF checked and copied."""
        name = template.pop("NAME", "")
        error = check_name(name)
        if error:
            raise ValueError(error)
        taken = next((d.id for d in self.core.datastores.values() if d.name == name), None)
        if taken is not None:
            raise ValueError(f"NAME is already taken by DATASTORE {taken}.")
        kind = str(template.get("TYPE", "IMAGE_DS")).upper()
        if kind not in DATASTORE_TYPES:
            raise ValueError(f"Invalid datastore TYPE: {kind}")
        ds_type = DATASTORE_TYPES.index(kind)
        ds_mad = template.get("DS_MAD", "")
        if ds_type == 1:
            if ds_mad:
                raise ValueError("SYSTEM datastores cannot have DS_MAD defined.")
            ds_mad = "-"
        elif not ds_mad:
            raise ValueError("No DS_MAD in template.")
        else:
            conf = self.core.ds_mad_conf.get(ds_mad)
            if conf is None:
                raise ValueError(f'DS_MAD named "{ds_mad}" is not defined in oned.conf')
            for required in filter(None, (a.strip().upper() for a in
                                          str(conf.get("REQUIRED_ATTRS", "")).split(","))):
                if not template.get(required):
                    raise ValueError(f'Datastore template is missing the "{required}" '
                                     "attribute or it's empty.")
        tm_mad = template.get("TM_MAD", "")
        if ds_type != 3:
            self._copy_tm_mad_conf(template, tm_mad, ds_type)
        else:
            tm_mad = "-"
        disk_type = str(template.pop("DISK_TYPE", "FILE") or "FILE").upper()
        if disk_type not in DISK_TYPES:
            raise ValueError(f"Invalid DISK_TYPE: {disk_type}")
        template.pop("BASE_PATH", None)
        if not template.get("SAFE_DIRS") and not template.get("RESTRICTED_DIRS"):
            template.update(SAFE_DIRS="/var/tmp", RESTRICTED_DIRS="/")
        template["TYPE"] = kind
        return Datastore(ds_id, name, ds_mad, tm_mad, ds_type, DISK_TYPES.index(disk_type),
                         f"{DATASTORE_LOCATION}/{ds_id}", template)

    def _copy_tm_mad_conf(self, template: Template, tm_mad: str, ds_type: int) -> None:
        """``Datastore::set_tm_mad``."""
        if not tm_mad:
            raise ValueError("No TM_MAD in template.")
        conf = self.core.tm_mad_conf.get(tm_mad)
        if conf is None:
            raise ValueError(f'TM_MAD named "{tm_mad}" is not defined in oned.conf')
        wrong = ValueError(f"Attribute shared, ln_target or clone_target in TM_MAD_CONF for "
                           f"{tm_mad} is missing or has wrong value in oned.conf")
        if ds_type == 1:
            if "SHARED" not in conf:
                raise wrong
            template["SHARED"] = "YES" if str(conf["SHARED"]).upper() == "YES" else "NO"
            migrate = str(conf.get("DS_MIGRATE", "YES")).upper() == "YES"
            template["DS_MIGRATE"] = "YES" if migrate else "NO"
            template.pop("LN_TARGET", None)
            template.pop("CLONE_TARGET", None)
        else:
            modes = [m.strip() for m in str(conf.get("TM_MAD_SYSTEM", "")).split(",")
                     if m.strip()]
            if modes:
                template["TM_MAD_SYSTEM"] = conf["TM_MAD_SYSTEM"]
            for mode in (m.upper() for m in modes):
                for attribute in ("LN_TARGET", "CLONE_TARGET", "DISK_TYPE"):
                    value = conf.get(f"{attribute}_{mode}", "")
                    if not value:
                        raise wrong
                    template[f"{attribute}_{mode}"] = value
            for attribute in ("LN_TARGET", "CLONE_TARGET"):
                if str(conf.get(attribute, "")).upper() not in ("NONE", "SELF", "SYSTEM"):
                    raise wrong
                template[attribute] = conf[attribute]
            for attribute in ("DRIVER", "DISK_TYPE"):
                if conf.get(attribute):
                    template[attribute] = conf[attribute]
            template.pop("SHARED", None)
        template["ALLOW_ORPHANS"] = conf.get("ALLOW_ORPHANS", "NO")

    def datastore_info(self, ds_id: int, decrypt: bool = False) -> str:
        with self.core.lock:
            return X.datastore_body(self.core._datastore(ds_id), self.core.version)

    def datastorepool_info(self) -> str:
        with self.core.lock:
            return X.pool("DATASTORE_POOL",
                          [X.datastore_body(d, self.core.version)
                           for d in self.core.datastores.values()])

    def datastore_update(self, ds_id: int, text: str, merge: int = 0) -> int:
        template = _parse(text, "one.datastore.update")
        with self.core.lock:
            ds = self.core._datastore(ds_id, "one.datastore.update")
            ds.template = {**ds.template, **template} if merge else template
            return ds_id

    def monitor_datastore(self, ds_id: int) -> Any:
        """``ImageManager::monitor_datastore``: image and file datastores through the
        datastore driver's ``monitor``; shared system datastores through the TM's, with
        DATASTORE_LOCATION and, every 10th time, MONITOR_VM_DISKS=1. Returns the run (None
        for a datastore oned does not monitor this way)."""
        with self.core.lock:
            ds = self.core.datastores.get(ds_id)
            if ds is None or (ds.type == 1 and not ds.shared):
                return None
            extra = ""
            if ds.type == 1:
                ds.monitor_counter -= 1
                vm_disks = ds.monitor_counter <= 0
                if vm_disks:
                    ds.monitor_counter = DS_MONITOR_VM_DISK
                extra = (f"<DATASTORE_LOCATION>{DATASTORE_LOCATION}</DATASTORE_LOCATION>"
                         f"<MONITOR_VM_DISKS>{int(vm_disks)}</MONITOR_VM_DISKS>")
            xml = X.ds_action_data(X.datastore_body(ds, self.core.version), extra)
            system, ds_mad, tm_mad = ds.type == 1, ds.ds_mad, ds.tm_mad
        if system:
            run = self.core.drivers.system_monitor(tm_mad, xml, ds_id)
        else:
            run = self.core.drivers.datastore(ds_mad, "monitor", xml, ds_id)
        if run.ok:
            self._store_monitor(ds_id, run.stdout)
        return run

    def _store_monitor(self, ds_id: int, output: str) -> None:
        """``ImageManager::_monitor``: the output parsed as a template; 5.10 also carries
        the VM disk usage (``VM=[ID=..., POLL="..."]``) in it."""
        try:
            data = X.parse_template(output)
        except ValueError:
            return
        with self.core.lock:
            ds = self.core.datastores.get(ds_id)
            if ds is None:
                return
            ds.monitored = True
            for key in ("TOTAL_MB", "FREE_MB", "USED_MB"):
                with contextlib.suppress(TypeError, ValueError):
                    setattr(ds, key.lower(), int(float(data.get(key, 0))))
            self.core.changed.notify_all()
        if self.core.version < (5, 12):
            for vector in data.get("VM", []) if isinstance(data.get("VM"), list) else []:
                self.store_vm_monitoring(vector)

    def store_vm_monitoring(self, fields: dict[str, str]) -> None:
        """``[ID=<vm>, POLL="..."]`` (5.10) or ``[ID=<vm>, MONITOR="<base64>"]``."""
        if not fields.get("ID", "").isdigit():
            return
        text = fields.get("POLL", "")
        if "MONITOR" in fields:
            try:
                text = base64.b64decode(fields["MONITOR"]).decode(errors="replace")
            except ValueError:
                return
        try:
            sizes = X.parse_template(text).get("DISK_SIZE", [])
        except ValueError:
            return
        disks = {int(d["ID"]): int(float(d["SIZE"])) for d in sizes
                 if isinstance(d, dict) and d.get("ID", "").isdigit() and d.get("SIZE")}
        with self.core.lock:
            vm = self.core.vms.get(int(fields["ID"]))
            if vm is not None:
                vm.monitoring = {"disks": disks, "timestamp": now()}
                self.core.changed.notify_all()


class Hosts:
    """``one.host.*``: allocation, first monitoring, the host's StorPool client."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def host_allocate(self, name: str, im_mad: str, vm_mad: str,
                      cluster_id: int = -1) -> tuple[int, str]:
        method = "one.host.allocate"
        with self.core.lock:
            error = check_name(name)
            taken = next((h.id for h in self.core.hosts.values() if h.name == name), None)
            if not error and taken is not None:
                error = f"NAME is already taken by HOST {taken}."
            if error:
                raise OneFailure(ALLOCATE, f"[{method}] Error allocating a new host. {error}")
            host_id = self.core._new_id("host")
            host = Host(host_id, name, im_mad, vm_mad, {})
            self.core.hosts[host_id] = host
        directory = self.core.hosts_root / name
        directory.mkdir(parents=True, exist_ok=True)
        install_native_kvm(directory)  # what `onehost sync` leaves on a node
        client_id = self._storpool_client(name, directory)
        with self.core.lock:
            host.template.update(SP_OURID=str(client_id))
            body = X.host_body(host, self.core.version)
            # HostPool::allocate publishes the new host's INIT state once, always
            # (src/host/HostPool.cc at release-5.10.0 ... release-7.0.0)
            self.core.hooks.publish(*hookbus.host_state_message(host, self.core.version))
        self.core._submit(lambda: self._first_probe(host))
        return host_id, body

    def _first_probe(self, host: Host) -> None:
        """The monitor daemon's first report: INIT becomes MONITORED (with the probes'
        attributes in the template)."""
        with self.core.lock:
            host.template.update(HYPERVISOR="kvm", HOSTNAME=host.name, ARCH="x86_64")
            host.state = 2
            self.core._update_host(host)

    def _storpool_client(self, name: str, directory: Any) -> int:
        """The host's StorPool client id: the one storpool.conf's ``[name]`` section gives,
        else the next free one, registered with the StorPool sandbox (admin API) and
        added to storpool.conf, as an admin setting up a node would."""
        known = _conf_sections(self.core.storpool_conf)
        if name in known:
            return known[name]
        with self.core.lock:
            used = set(known.values()) | {int(h.template.get("SP_OURID", 0))
                                          for h in self.core.hosts.values()}
            client_id = next(i for i in range(11, 4096) if i not in used)
        if self.core.storpool_admin is not None:
            register_storpool_client(self.core.storpool_admin, client_id, str(directory))
        if self.core.storpool_conf is not None and self.core.storpool_conf.exists():
            with self.core.storpool_conf.open("a") as handle:
                handle.write(f"[{name}]\nSP_OURID={client_id}\n")
        return client_id

    def host_info(self, host_id: int, decrypt: bool = False) -> str:
        with self.core.lock:
            return X.host_body(self.core._host(host_id), self.core.version)

    def hostpool_info(self) -> str:
        with self.core.lock:
            return X.pool("HOST_POOL", [X.host_body(h, self.core.version)
                                        for h in self.core.hosts.values()])


class ImageRegistry:
    """``one.image.allocate`` (stat inside the call, then cp/mkfs), info, update."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def image_allocate(self, text: str, ds_id: int, skip_capacity: bool = False
                       ) -> tuple[int, str]:
        method = "one.image.allocate"
        template = _parse(text, method)
        with self.core.lock:
            ds = self.core._datastore(ds_id, method)
            if ds.type in (1, 3):
                raise OneFailure(ALLOCATE, f"[{method}] Error allocating a new image. New "
                                           "images can only be allocated in a files or "
                                           "image datastore.")
            ds_body = X.datastore_body(ds, self.core.version)
            ds_mad = ds.ds_mad
        size = self._image_size(template, ds_mad, ds_body, method)
        with self.core.lock:
            ds = self.core._datastore(ds_id, method)
            # ImageAllocate::request_execute (release-6.10.5 RequestManagerAllocate.cc:514,
            # 626): the capacity check after stat, skipped on request (admins). oned has
            # monitored a datastore within MONITORING_INTERVAL_DATASTORE of its creation;
            # until the sandbox's first successful monitoring the capacity is unknown and
            # not checked (oned would see FREE_MB 0 and refuse).
            check, avail = ds.avail_mb(self.core.capacity_check)
            if ds.monitored and check and not skip_capacity and size > avail:
                raise OneFailure(ACTION, f"[{method}] Not enough space in datastore", -1)
            image = self.new_image(template, ds, size, method)
            self.core.images[image.id] = image
            ds.images.append(image.id)
            if image.source:  # registered with an existing SOURCE: ready at once
                image.state = ImageState.READY
                self.core._update_image(image)
            elif image.path or image.type in (0, 2):
                self.core._submit(lambda: self.register(image))
            return image.id, X.image_body(image, self.core.version)

    def _image_size(self, template: Template, ds_mad: str, ds_body: str, method: str) -> int:
        """``ImageManager::stat_image``: SIZE from the template, or the driver's ``stat``
        of PATH (run synchronously: the XML-RPC call waits for it)."""
        kind = str(template.get("TYPE", "OS")).upper()
        path = str(template.get("PATH", ""))
        if template.get("SOURCE") or not path or kind not in ("OS", "DATABLOCK", "CDROM"):
            if kind in ("CDROM",) and not path and not template.get("SOURCE"):
                raise OneFailure(INTERNAL, f"[{method}] Cannot parse image SIZE: Either PATH "
                                           "or SOURCE are required for CDROM")
            value = str(template.get("SIZE", ""))
            if not re.fullmatch(r"\s*-?\d+\s*", value):
                raise OneFailure(INTERNAL, f"[{method}] Cannot parse image SIZE: Wrong "
                                           "number or missing SIZE attribute.")
            return int(value)
        stat_xml = X.ds_action_data(f"<IMAGE><PATH>{escape(path)}</PATH></IMAGE>", ds_body)
        run = self.core.drivers.datastore(ds_mad, "stat", stat_xml, self._new_request_id())
        if not run.ok:
            raise OneFailure(INTERNAL, f"[{method}] Cannot parse image SIZE: {run.payload}")
        words = run.payload.split()
        if not words:
            raise OneFailure(INTERNAL, f"[{method}] Cannot parse image SIZE: Cannot get size "
                                       "from STAT")
        if not re.fullmatch(r"-?\d+", words[0]):
            raise OneFailure(INTERNAL, f"[{method}] Cannot parse image SIZE: {run.payload}")
        return int(words[0])

    def _new_request_id(self) -> int:
        """oned's SyncRequest id for STAT: a counter of its own."""
        with self.core.lock:
            self.core._next_id.setdefault("request", 0)
            self.core._next_id["request"] += 1
            return self.core._next_id["request"]

    def new_image(self, template: Template, ds: Datastore, size: int, method: str) -> Image:
        """``ImagePool::allocate`` + ``Image::insert``."""

        def fail(message: str) -> OneFailure:
            return OneFailure(ALLOCATE, f"[{method}] Error allocating a new image. {message}")

        name = str(template.pop("NAME", ""))
        error = check_name(name)
        taken = next((i.id for i in self.core.images.values() if i.name == name), None)
        if not error and taken is not None:
            error = f"NAME is already taken by IMAGE {taken}."
        if error:
            raise fail(error)
        kind = str(template.pop("TYPE", "OS")).upper()
        if kind not in IMAGE_TYPES:
            raise fail(f"Unknown image type {kind}")
        image_type = IMAGE_TYPES.index(kind)
        if image_type in (0, 1, 2) and ds.type != 0:
            raise fail("Only IMAGES of type KERNEL, RAMDISK and CONTEXT can be registered in "
                       "a FILE_DS datastore")
        if image_type in (3, 4, 5) and ds.type != 2:
            raise fail("IMAGES of type KERNEL, RAMDISK and CONTEXT cannot be registered in "
                       "an IMAGE_DS datastore")
        persistent = str(template.pop("PERSISTENT", "NO")).upper() == "YES"
        conf = self.core.ds_mad_conf.get(ds.ds_mad, {})
        if str(conf.get("PERSISTENT_ONLY", "NO")).upper() == "YES" and not persistent:
            raise fail("This Datastore only accepts persistent images.")
        if image_type in (0, 1, 2) and not template.get("DEV_PREFIX"):
            template["DEV_PREFIX"] = (DEFAULT_CDROM_DEVICE_PREFIX if image_type == 1
                                      else DEFAULT_DEVICE_PREFIX)
        template.pop("SIZE", None)
        template.pop("DRIVER", None)  # generated, cannot be set by the user
        template.pop("TM_MAD", None)
        fs = str(template.pop("FS", ""))
        path = str(template.pop("PATH", ""))
        source = str(template.pop("SOURCE", ""))
        fmt = str(template.pop("FORMAT", ""))
        if source:
            if path:
                raise fail("PATH and SOURCE cannot be both set.")
            if not fmt:
                raise fail("SOURCE needs FORMAT to be set.")
        elif path:
            fmt = ""  # the driver's cp says
        elif image_type in (0, 2):
            # mkfs: the datastore's DRIVER wins, then the image's FORMAT, then raw
            if ds.driver:
                template["DRIVER"] = ds.driver
                fmt = ds.driver
            fmt = fmt or "raw"
        else:
            raise fail("No PATH nor SOURCE in template.")
        return Image(self.core._new_id("image"), name, image_type, ds.disk_type, persistent,
                     ds.id, ds.name, template, path=path, source=source, format=fmt, fs=fs,
                     size=size)

    def register(self, image: Image) -> None:
        """``ImageManager::register_image``: ``cp`` of PATH, or ``mkfs`` of a new disk."""
        action = "cp" if image.path else "mkfs"
        with self.core.lock:
            ds = self.core.datastores[image.ds_id]
            xml = X.ds_action_data(X.image_body(image, self.core.version),
                                   X.datastore_body(ds, self.core.version))
            ds_mad = ds.ds_mad
        run = self.core.drivers.datastore(ds_mad, action, xml, image.id)
        with self.core.lock:
            if self.core.images.get(image.id) is not image:
                return  # deleted meanwhile: oned logs that the source may be left behind
            if action == "cp":
                self._cp_done(image, run.ok, run.payload)
            elif image.saving is None:
                self._mkfs_done(image, run.ok, run.payload)
            else:
                self.core.snapshot_ops.saveas_mkfs_done(image, run.ok, run.payload)
        self.core._submit(lambda: self.core.ds_api.monitor_datastore(image.ds_id))

    def unlock_image(self, image: Image) -> None:
        """``Image::set_state_unlock`` (release-6.10.5 src/image/Image.cc:1031): LOCKED is
        READY, LOCKED_USED (_PERS) USED (_PERS) and the VMs waiting in CLONING are told
        (``trigger_disk_lock_success``)."""
        with self.core.lock:
            notify = bool(image.vms)
            if image.state == ImageState.LOCKED:
                image.state, notify = ImageState.READY, False
            elif image.state == ImageState.LOCKED_USED:
                image.state = ImageState.USED
            elif image.state == ImageState.LOCKED_USED_PERS:
                image.state = ImageState.USED_PERS
            elif image.state == ImageState.ERROR:
                image.state = ImageState.READY if not image.vms else (
                    ImageState.USED_PERS if image.persistent else ImageState.USED)
            else:
                notify = False
            self.core._update_image(image)
            for vm_id in list(image.vms) if notify else []:
                vm = self.core.vms.get(vm_id)
                if vm is not None:
                    self.core.vm_pool.disk_lock_success(vm)

    def _cp_done(self, image: Image, ok: bool, payload: str) -> None:
        """``ImageManager::_cp``: SOURCE and FORMAT (6.0+ requires FORMAT)."""
        words = payload.split()
        if ok and words:
            image.source = words[0]
            if len(words) > 1:
                image.format = words[1]
            elif self.core.version >= (6, 0):
                self.core._image_error(image, "CP operation succeeded but image FORMAT was not "
                                         "returned.")
                self.core._set_image_state(image, ImageState.ERROR)
                return
            self.core.image_api.unlock_image(image)
            return
        self.core._image_error(image, self.core._with_info("Error copying image in the datastore",
                                                 payload))
        self.core._set_image_state(image, ImageState.ERROR)

    def _mkfs_done(self, image: Image, ok: bool, payload: str) -> None:
        """``ImageManager::_mkfs``: the whole reply is the SOURCE (5.x: its first word)."""
        if image.state == ImageState.DELETE:
            return
        if not ok:
            self.core._image_error(image, self.core._with_info("Error creating datablock", payload))
            self.core._set_image_state(image, ImageState.ERROR)
            return
        image.source = payload if self.core.version >= (6, 0) else (payload.split() or [""])[0]
        self.core.image_api.unlock_image(image)

    def image_info(self, image_id: int, decrypt: bool = False) -> str:
        with self.core.lock:
            return X.image_body(self.core._image(image_id), self.core.version)

    def imagepool_info(self, *filters: Any) -> str:
        with self.core.lock:
            return X.pool("IMAGE_POOL", [X.image_body(i, self.core.version)
                                         for i in self.core.images.values()])

    def image_update(self, image_id: int, text: str, merge: int = 0) -> int:
        template = _parse(text, "one.image.update")
        with self.core.lock:
            image = self.core._image(image_id, "one.image.update")
            image.template = {**image.template, **template} if merge else template
            return image_id


class ImageOps:
    """``one.image.delete``, ``clone`` and the image snapshot calls."""

    def __init__(self, core: SandboxCore):
        self.core = core

    def image_delete(self, image_id: int, force: bool = False) -> tuple[int, str]:
        """``ImageDelete`` + ``ImageManager::delete_image``."""
        method = "one.image.delete"
        with self.core.lock:
            image = self.core._image(image_id, method)
            if force:
                image.template["FORCE_DELETE"] = "YES"
            # EXTRA of the API event, failed or not: the body before deleting
            # (release-6.10.5 src/rm/RequestManagerDelete.cc:421,428)
            body = X.image_body(image, self.core.version)
            state = ImageState(image.state)
            error = ""
            if state in (ImageState.READY, ImageState.USED, ImageState.USED_PERS,
                         ImageState.LOCKED_USED, ImageState.LOCKED_USED_PERS) and image.vms:
                error = f"There are {len(image.vms)} VMs using it."
            elif state == ImageState.CLONE:
                error = f"There are {image.cloning_ops} active clone operations."
            if error:
                raise OneFailure(ACTION, f"[{method}] Cannot delete image. {error}", image_id,
                                 extra=body)
            ds = self.core.datastores[image.ds_id]
            if not image.source:  # nothing in the datastore: dropped at once
                self._drop_image(image)
                return image_id, body
            xml = X.ds_action_data(X.image_body(image, self.core.version),
                                   X.datastore_body(ds, self.core.version))
            self.core._set_image_state(image, ImageState.DELETE)
            if image.cloning_id >= 0:
                self._release_cloning(image.cloning_id)
                image.cloning_id = -1

        def remove() -> None:
            run = self.core.drivers.datastore(ds.ds_mad, "rm", xml, image_id)
            with self.core.lock:
                if run.ok or str(image.template.get("FORCE_DELETE", "")).upper() == "YES":
                    self._drop_image(image)
                else:
                    # oned's message names the source variable before it is set: empty
                    self.core._image_error(image, "Error removing image from datastore. Retry the "
                                             "operation or manually remove image source  and "
                                             "run the delete --force operation to completely "
                                             "delete the image")
                    self.core._set_image_state(image, ImageState.ERROR)
            self.core.ds_api.monitor_datastore(ds.id)

        self.core._submit(remove)
        return image_id, body

    def _drop_image(self, image: Image) -> None:
        with self.core.lock:
            self.core.images.pop(image.id, None)
            ds = self.core.datastores.get(image.ds_id)
            if ds is not None and image.id in ds.images:
                ds.images.remove(image.id)
            self.core.changed.notify_all()

    def image_clone(self, image_id: int, name: str, ds_id: int = -1) -> tuple[int, str]:
        """``ImageClone``: the new image's PATH is the SOURCE of the cloned one."""
        method = "one.image.clone"
        with self.core.lock:
            source = self.core._image(image_id, method)
            if source.type not in (0, 1, 2):
                raise OneFailure(ACTION, f"[{method}] KERNEL, RAMDISK, BACKUP and CONTEXT "
                                         "cannot be cloned.", image_id)
            if source.snapshots:
                raise OneFailure(ACTION, f"[{method}] Cannot clone images with snapshots",
                                 image_id)
            target = self.core._datastore(source.ds_id if ds_id < 0 else ds_id, method)
            origin = self.core.datastores[source.ds_id]
            if target.type != 0:
                raise OneFailure(ACTION, f"[{method}] Clone only supported for IMAGE_DS "
                                         "Datastores", image_id)
            if target.ds_mad != origin.ds_mad:
                raise OneFailure(ACTION, f"[{method}] Clone only supported to same DS_MAD "
                                         "Datastores", image_id)
            if source.state not in (ImageState.READY, ImageState.USED, ImageState.USED_PERS,
                                    ImageState.CLONE):
                raise OneFailure(ACTION, f"[{method}] Cannot clone image in state "
                                         f"{ImageState(source.state).name}", image_id)
            template = {k: v for k, v in source.template.items() if k != "ERROR"}
            template.update(NAME=name, TYPE=IMAGE_TYPES[source.type], PATH=source.source)
            clone = self.core.image_api.new_image(template, target, source.size, method)
            clone.format, clone.cloning_id = source.format, source.id
            self.core.images[clone.id] = clone
            target.images.append(clone.id)
            source.cloning_ops += 1
            source.clones.append(clone.id)
            if source.state == ImageState.READY:
                self.core._set_image_state(source, ImageState.CLONE)
            xml = X.ds_action_data(X.image_body(clone, self.core.version),
                                   X.datastore_body(target, self.core.version))
            clone_id, ds_mad = clone.id, target.ds_mad

        def run() -> None:
            result = self.core.drivers.datastore(ds_mad, "clone", xml, clone_id)
            with self.core.lock:
                if self.core.images.get(clone_id) is clone:
                    words = result.payload.split()
                    if result.ok and words:
                        clone.source = words[0]
                        if len(words) > 1:
                            clone.format = words[1]
                        clone.cloning_id = -1
                        self.core.image_api.unlock_image(clone)
                    else:
                        self.core._image_error(clone, self.core._with_info(
                            f"Error cloning from Image {image_id}", result.payload))
                        clone.cloning_id = -1
                        self.core._set_image_state(clone, ImageState.ERROR)
                self._release_cloning(image_id, clone_id)
            self.core.ds_api.monitor_datastore(target.id)

        self.core._submit(run)
        return clone_id, X.image_body(clone, self.core.version)

    def _release_cloning(self, image_id: int, clone_id: int = -1) -> None:
        """``release_cloning_image``: the source is READY again after its last clone."""
        source = self.core.images.get(image_id)
        if source is None:
            return
        source.cloning_ops = max(0, source.cloning_ops - 1)
        if clone_id in source.clones:
            source.clones.remove(clone_id)
        if source.cloning_ops == 0 and source.state == ImageState.CLONE:
            self.core._set_image_state(source, ImageState.READY)

    def _image_snapshot_op(self, method: str, action: str, image_id: int, snap_id: int) -> int:
        """``ImageManager::{delete,revert,flatten}_snapshot``: the driver gets the body with
        TARGET_SNAPSHOT (state still READY), then the image is LOCKED until it answers."""
        with self.core.lock:
            image = self.core._image(image_id, method)
            verb = {"snap_delete": "delete", "snap_revert": "revert",
                    "snap_flatten": "flatten"}[action]
            error = ""
            if image.type not in (0, 2):
                error = ("IMAGES of type KERNEL, RAMDISK, BACKUP and CONTEXT does not have "
                         "snapshots.")
            elif image.state != ImageState.READY:
                error = f"Cannot {verb} snapshot in state {ImageState(image.state).name}"
            snapshot = next((s for s in image.snapshots if s.id == snap_id), None)
            if not error and snapshot is None:
                error = "Snapshot does not exist"
            elif not error and action == "snap_delete":
                if snapshot is not None and snapshot.active:
                    error = "Cannot delete the active snapshot"
                elif any(s.parent == snap_id for s in image.snapshots):
                    error = "Cannot delete snapshot with children"
            if error:
                raise OneFailure(ACTION, f"[{method}] {error}", image_id)
            image.target_snapshot = snap_id
            ds = self.core.datastores[image.ds_id]
            xml = X.ds_action_data(X.image_body(image, self.core.version),
                                   X.datastore_body(ds, self.core.version))
            self.core._set_image_state(image, ImageState.LOCKED)

        def run() -> None:
            result = self.core.drivers.datastore(ds.ds_mad, action, xml, image_id)
            with self.core.lock:
                if self.core.images.get(image_id) is not image:
                    return
                if result.ok:
                    _apply_image_snapshot_op(image, action, snap_id)
                else:
                    message = {"snap_delete": f"Error removing snapshot {snap_id} from image "
                                              f"{image_id}",
                               "snap_revert": "Error reverting image snapshot",
                               "snap_flatten": "Error flattening image snapshot"}[action]
                    self.core._image_error(image, self.core._with_info(message, result.payload))
                image.target_snapshot = -1
                self.core.image_api.unlock_image(image)

        self.core._submit(run)
        return image_id

    def image_snapshot_delete(self, image_id: int, snap_id: int) -> int:
        return self._image_snapshot_op("one.image.snapshotdelete", "snap_delete", image_id,
                                       snap_id)

    def image_snapshot_revert(self, image_id: int, snap_id: int) -> int:
        return self._image_snapshot_op("one.image.snapshotrevert", "snap_revert", image_id,
                                       snap_id)

    def image_snapshot_flatten(self, image_id: int, snap_id: int) -> int:
        return self._image_snapshot_op("one.image.snapshotflatten", "snap_flatten", image_id,
                                       snap_id)


def _apply_image_snapshot_op(image: Image, action: str, snap_id: int) -> None:
    if action == "snap_delete":
        image.snapshots = [s for s in image.snapshots if s.id != snap_id]
    elif action == "snap_flatten":
        image.snapshots = []
    else:
        for snapshot in image.snapshots:
            snapshot.active = snapshot.id == snap_id


def add_snapshot(snapshots: list[ImageSnapshot], next_id: int, name: str, size: int
                 ) -> ImageSnapshot:
    """A new snapshot, child of the active one (which it replaces as active)."""
    active = next((s for s in snapshots if s.active), None)
    snapshot = ImageSnapshot(next_id, name or f"snapshot-{next_id}", now(),
                             parent=active.id if active else -1, active=True, size=size)
    for other in snapshots:
        other.active = False
    snapshots.append(snapshot)
    return snapshot


def _parse(text: str, method: str) -> Template:
    try:
        return X.parse_template(text)
    except ValueError as error:
        raise OneFailure(INTERNAL, f"[{method}] Parse error: {error}") from None


def _conf_sections(path: Any) -> dict[str, int]:
    """``[host]`` sections of storpool.conf with their SP_OURID."""
    if path is None or not path.exists():
        return {}
    sections: dict[str, int] = {}
    current = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif current and line.startswith("SP_OURID="):
            value = line.split("=", 1)[1].strip()
            if value.isdigit():
                sections[current] = int(value)
    return sections


def create_storpool_template(admin: tuple[str, str], prefix: str, ds_id: int) -> None:
    """``<prefix>-ds-<ds_id>``, the datastore's StorPool template (``VolumeTemplateCreate``);
    one that exists already is kept."""
    url, token = admin
    request = urllib.request.Request(
        f"{url.rstrip('/')}/ctrl/1.0/VolumeTemplateCreate", method="POST",
        data=json.dumps({"name": f"{prefix}-ds-{ds_id}", "replication": 3}).encode(),
        headers={"Authorization": f"Storpool v1:{token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except urllib.error.HTTPError as error:
        reply = json.loads(error.read() or b"{}")
        if (reply.get("error") or {}).get("name") != "objectExists":
            raise


def register_storpool_client(admin: tuple[str, str], client_id: int, directory: str) -> None:
    """Make ``directory`` the StorPool sandbox's client ``client_id`` (its admin API:
    ``POST /sandbox/clients {id, dir}``), so volumes attached to it appear under
    ``<directory>/dev/storpool/``."""
    url, token = admin
    request = urllib.request.Request(
        f"{url.rstrip('/')}/sandbox/clients", method="POST",
        data=json.dumps({"id": client_id, "dir": directory}).encode(),
        headers={"Authorization": f"Storpool v1:{token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass
