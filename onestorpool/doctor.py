"""``onestorpool doctor``: is this front-end ready for the add-on? Each check says how to fix
what it finds missing; the exit status is 1 when a check failed (``--json`` for scripts).

The checks follow the seed's requirements: oned reachable, the StorPool API reachable with
the token, a ``<px>-ds-<ID>`` template for every StorPool datastore, the oned.conf entries
(as ``onestorpool install`` writes them), the driver executables in oned's remotes,
qemu-img, oneadmin in group disk, a StorPool client id (``SP_OURID``) for every host, the
event log writable by oneadmin, the subscriber.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"
UNIT = "onestorpool-subscriber.service"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


class Doctor:
    """Runs the checks in order; later checks use what earlier ones found (the datastores
    and hosts oned reported, the StorPool client)."""

    def __init__(self, oned_conf: Path | None = None, user: str = "oneadmin"):
        from onestorpool import config as config_module
        from onestorpool.install import etc_dir

        self.config_module = config_module
        self.oned_conf = oned_conf or etc_dir() / "oned.conf"
        self.user = user
        self.checks: list[Check] = []
        self.config: Any = None
        self.datastores: list[Any] | None = None
        self.hosts: list[Any] | None = None
        self.storpool: Any = None

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix if status != OK else ""))

    def run(self) -> list[Check]:
        for step in (self.configuration, self.oned, self.storpool_api, self.templates,
                     self.oned_conf_entries, self.drivers, self.qemu_img, self.group_disk,
                     self.client_ids, self.event_log, self.subscriber):
            try:
                step()
            except Exception as exc:  # a check that breaks is a failed check, not a crash
                self.add(step.__name__.replace("_", " "), FAIL, f"{type(exc).__name__}: {exc}",
                         "run with ONESTORPOOL_DEBUG=1 for the traceback and report it")
        return self.checks

    # -- the checks -----------------------------------------------------------------------------

    def configuration(self) -> None:
        try:
            self.config = self.config_module.load()
        except Exception as exc:
            self.add("configuration", FAIL, str(exc), "correct the file and line named")
            return
        self.add("configuration", OK, "addon-storpoolrc and local overrides parse")

    def oned(self) -> None:
        from onestorpool import oneapi
        from onestorpool.one import parse_datastore, parse_host
        from onestorpool.retry import RetryPolicy

        once = RetryPolicy(attempts=1, deadline=10)
        url = oneapi.endpoint()
        try:
            version = oneapi.one_call("one.system.version", retry=once, timeout=10)
            pool = oneapi.one_call("one.datastorepool.info", -2, -1, -1, retry=once, timeout=10)
            hosts = oneapi.one_call("one.hostpool.info", retry=once, timeout=10)
        except Exception as exc:
            self.add("oned", FAIL, f"{url}: {exc}",
                     "start oned (systemctl start opennebula), or set ONE_XMLRPC in "
                     "addon-storpoolrc and the session in ~oneadmin/.one/one_auth")
            return
        self.datastores = [parse_datastore(xml) for xml in _children(pool, "DATASTORE")]
        self.hosts = [parse_host(xml) for xml in _children(hosts, "HOST")]
        self.add("oned", OK, f"OpenNebula {version} at {url}: {len(self.datastores)} "
                             f"datastores, {len(self.hosts)} hosts")

    def storpool_api(self) -> None:
        if self.config is None:
            self.add("StorPool API", SKIP, "no configuration")
            return
        from onestorpool.retry import RetryPolicy
        from onestorpool.storpool import StorPoolClient

        try:
            endpoint = self.config.endpoint()
            client = StorPoolClient(endpoint.host, endpoint.port, endpoint.token,
                                    connect_timeout=3, timeout=10,
                                    retry=RetryPolicy(attempts=1, deadline=10))
            templates = client.volume_templates_list()
        except Exception as exc:
            self.add("StorPool API", FAIL, str(exc),
                     "check SP_API_HTTP_HOST, SP_API_HTTP_PORT and SP_AUTH_TOKEN in "
                     "/etc/storpool.conf and that the API answers from this host")
            return
        self.storpool = client
        self.template_names = {t["name"] for t in templates}
        self.add("StorPool API", OK, f"{endpoint.host}:{endpoint.port}, token accepted, "
                                     f"{len(templates)} templates")

    def templates(self) -> None:
        if self.datastores is None or self.storpool is None:
            self.add("datastore templates", SKIP, "needs oned and the StorPool API")
            return
        naming = self.config.naming()
        ours = [ds for ds in self.datastores if "storpool" in (ds.ds_mad, ds.tm_mad)]
        missing = [f"{ds.id} ({naming.template(ds.id)})" for ds in ours
                   if naming.template(ds.id) not in self.template_names]
        if missing:
            first = naming.template(int(missing[0].split()[0]))
            self.add("datastore templates", FAIL,
                     f"no StorPool template for datastore {', '.join(missing)}",
                     f"storpool template {first} replication 3 placeAll <group> placeTail "
                     "<group> (one per datastore; onestorpool datastore create does it)")
        else:
            self.add("datastore templates", OK,
                     f"{len(ours)} StorPool datastores, each with its template")

    def oned_conf_entries(self) -> None:
        from onestorpool import install
        from onestorpool.drivers.install import shipped_remotes

        if not self.oned_conf.exists():
            self.add("oned.conf", SKIP, f"{self.oned_conf} not here (oned elsewhere?)")
            return
        try:
            text = self.oned_conf.read_bytes().decode("utf-8", "surrogateescape")
        except PermissionError:
            self.add("oned.conf", WARN, f"{self.oned_conf} is not readable by this user",
                     "run onestorpool doctor as root or oneadmin")
            return
        plan = install.oned_conf_plan(self.oned_conf, text,
                                      install.local_actions(shipped_remotes()))
        if plan.edits:
            self.add("oned.conf", FAIL,
                     "missing: " + "; ".join(edit.what for edit in plan.edits),
                     "onestorpool install (--dry-run shows the changes), then restart oned")
        else:
            self.add("oned.conf", OK, f"{self.oned_conf} has the add-on's entries"
                     + (f" ({'; '.join(plan.notes)})" if plan.notes else ""))

    def drivers(self) -> None:
        from onestorpool import install
        from onestorpool.config import remotes_dir

        target = remotes_dir()
        stale = install.stale_remotes(target, None)
        if stale:
            names = ", ".join(str(p.relative_to(target)) for p in stale[:3])
            more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
            self.add("drivers", FAIL, f"missing or out of date in {target}: {names}{more}",
                     "onestorpool install (or reinstall the package), then, as oneadmin, "
                     "onehost sync --force")
        else:
            self.add("drivers", OK, f"the add-on's driver executables are in {target}")

    def qemu_img(self) -> None:
        path = shutil.which("qemu-img")
        if path:
            self.add("qemu-img", OK, path)
        else:
            self.add("qemu-img", FAIL, "not found in PATH (image imports convert with it)",
                     "dnf install qemu-img / apt install qemu-utils")

    def group_disk(self) -> None:
        from onestorpool import install

        member = install.user_in_group(self.user, "disk")
        if member is None:
            self.add("group disk", FAIL, f"user {self.user} or group disk does not exist",
                     "install OpenNebula (it creates oneadmin) first")
        elif member:
            self.add("group disk", OK, f"{self.user} is in group disk")
        else:
            self.add("group disk", FAIL, f"{self.user} is not in group disk",
                     f"usermod -a -G disk {self.user} (onestorpool install does it)")

    def client_ids(self) -> None:
        if self.hosts is None or self.config is None:
            self.add("SP_OURID", SKIP, "needs oned")
            return
        from onestorpool import hosts as hosts_module

        config = self.config
        # LOCAL and ONEHOST only: asking each host over ssh is the drivers' last resort
        sources = tuple(s for s in config["STORPOOL_CLIENT_ID_SOURCES"] if s != "FROMHOST")
        missing = []
        for host in self.hosts:
            handle = hosts_module.Host(host.name, ssh=True)
            try:
                hosts_module.client_id(handle, _with(config, STORPOOL_CLIENT_ID_SOURCES=sources),
                                       host.template)
            except Exception:
                missing.append(host.name)
        if missing:
            self.add("SP_OURID", FAIL, f"no StorPool client id for {', '.join(missing)}",
                     "add [<host>] SP_OURID=<id> to /etc/storpool.conf on the front-end, or "
                     "SP_OURID=<id> to the host template (onehost update)")
        else:
            self.add("SP_OURID", OK, f"{len(self.hosts)} hosts, each with its client id")

    def event_log(self) -> None:
        path = Path(self.config_module.event_log_origin(self.config)[0])
        directory = path.parent
        if self.config is not None and self.config["EVENT_LOG_VOLUME"]:
            self.event_log_volume(path)
            return
        try:
            account = pwd.getpwnam(self.user)
        except KeyError:
            self.add("event log", FAIL, f"user {self.user} does not exist",
                     "install OpenNebula (it creates oneadmin) first")
            return
        if not directory.is_dir():
            self.add("event log", FAIL, f"{directory} does not exist",
                     f"install -d -o {self.user} -g {self.user} -m 0750 {directory}")
            return
        target = path if path.exists() else directory
        if not _writable_by(target, account):
            self.add("event log", FAIL, f"{target} is not writable by {self.user}",
                     f"chown -R {self.user}:{self.user} {directory}")
            return
        self.add("event log", OK, f"{path} writable by {self.user}")

    def event_log_volume(self, path: Path) -> None:
        """EVENT_LOG_VOLUME: the volume exists, this front-end has a client id, and the log
        is mounted here exactly when the volume is attached here (the leader)."""
        from onestorpool.eventlog.volume import LogVolume

        if self.storpool is None:
            self.add("event log volume", SKIP, "needs the StorPool API")
            return
        volume = LogVolume.from_config(self.config, self.storpool)  # SP_OURID checked
        state = volume.status()
        where = f"{volume.name} (mount point {volume.directory}, client {volume.client})"
        if not state["exists"]:
            self.add("event log volume", FAIL, f"{where} does not exist",
                     "onestorpool subscriber log-volume init --size 20G --template <name>")
        elif state["mounted"] != (volume.client in state["attached"]):
            self.add("event log volume", FAIL, f"{where}: attached to {state['attached']}, "
                     f"{'' if state['mounted'] else 'not '}mounted here",
                     "restart onestorpool-subscriber on every front-end")
        elif state["mounted"]:
            self.add("event log volume", OK, f"{where}: mounted here (the leader), {path}")
        else:
            holder = (f"client {', '.join(map(str, state['attached']))}"
                      if state["attached"] else "no front-end")
            self.add("event log volume", OK, f"{where}: a standby here; held by {holder}")

    def subscriber(self) -> None:
        systemctl = shutil.which("systemctl")
        if systemctl is None:
            self.add("subscriber", WARN, "no systemctl here: cannot tell whether it runs")
            return
        state = subprocess.run([systemctl, "is-active", UNIT], capture_output=True,
                               text=True).stdout.strip()
        if state == "active":
            self.add("subscriber", OK, f"{UNIT} active")
        else:
            self.add("subscriber", FAIL, f"{UNIT} {state or 'unknown'}",
                     f"systemctl enable --now {UNIT}")


def _children(xml: str, tag: str) -> list[bytes]:
    from lxml import etree

    from onestorpool.one import parse_xml

    root = parse_xml(xml, f"{tag} pool")
    return [etree.tostring(node) for node in root.iter(tag)]


def _with(config: Any, **values: Any) -> Any:
    """A view of ``config`` with some values replaced."""
    class View:
        def __getitem__(self, name: str) -> Any:
            return values[name] if name in values else config[name]

    return View()


def _writable_by(path: Path, account: pwd.struct_passwd) -> bool:
    import grp

    info = path.stat()
    mode = info.st_mode
    if account.pw_uid == 0:
        return True
    if info.st_uid == account.pw_uid:
        return bool(mode & stat.S_IWUSR)
    groups = {g.gr_gid for g in grp.getgrall() if account.pw_name in g.gr_mem}
    groups.add(account.pw_gid)
    if info.st_gid in groups:
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)


def report(checks: list[Check], out: Callable[[str], None] = print) -> None:
    labels = {OK: " ok ", FAIL: "FAIL", WARN: "warn", SKIP: "skip"}
    for check in checks:
        out(f"[{labels[check.status]}] {check.name}: {check.detail}")
        if check.fix:
            out(f"       fix: {check.fix}")
    failed = sum(c.status == FAIL for c in checks)
    out(f"{failed} of {len(checks)} checks failed" if failed else "all checks passed")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="one JSON object: {ok, checks: [{name, status, detail, fix}]}")
    parser.add_argument("--oned-conf", type=Path, default=None,
                        help="oned.conf to check (default: /etc/one/oned.conf)")
    parser.add_argument("--user", default=os.environ.get("ONESTORPOOL_DOCTOR_USER", "oneadmin"),
                        help="the user oned runs drivers as (default: oneadmin)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    checks = Doctor(args.oned_conf, args.user).run()
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=1))
    else:
        report(checks)
    return 1 if failed else 0
