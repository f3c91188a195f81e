"""``onestorpool sandbox up --dir D`` / ``onestorpool sandbox down --dir D``.

``up`` starts the StorPool sandbox and the oned sandbox as background processes, writes the
add-on's configuration for them under ``D`` (the product's config loader reads it with
``ONESTORPOOL_ROOT=D``)::

    D/etc/storpool.conf                         SP_API_HTTP_HOST/PORT, SP_AUTH_TOKEN, [localhost]
    D/var/lib/one/remotes/addon-storpoolrc      the add-on's settings (kept if present)
    D/one_auth, D/one_endpoint                  oned's credentials and XML-RPC endpoint
    D/sandbox.env                               the environment lines to export
    D/sandbox.pids                              what ``down`` stops
    D/hosts/<name>/                             the hosts (the front-end is ``localhost``)

waits until both answer a real request (StorPool: ``GET /sandbox/info`` with the token;
oned: ``one.system.version`` with the session), then prints the endpoints, the credentials
and the environment. ``down`` stops them (oned first: it may still call StorPool) and
releases the StorPool sandbox's data so ``D`` can be removed.

The oned sandbox runs with its scheduler on (a pyone script written for a real cloud can
allocate a VM and wait for RUNNING), monitors the datastores every minute, and declares as
VM_MAD local actions those of the add-on's that exist in the remotes. When the hook-bus
subscriber daemon exists, ``SERVICES`` gets its entry: ``up`` starts it and ``down`` stops
it like the others.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

from onestorpool.errors import AddonError
from onestorpool.sandbox.hosts import env as sandbox_hosts_env
from onestorpool.sandbox.oned_methods import RELEASES

PIDS = "sandbox.pids"
ENV = "sandbox.env"
# The OpenNebula releases whose driver conventions, hook bus and failure display the oned
# sandbox follows (its per-release XML-RPC registries); 7.2's gRPC and one.internal.* are not.
ONE_VERSIONS = RELEASES
DEFAULT_ONE_VERSION = "6.10"
SESSION = "oneadmin:sandbox"
FRONTEND_CLIENT_ID = 1  # the front-end's StorPool client ([localhost] in storpool.conf)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(answers: Callable[[], bool], what: str, process: subprocess.Popen,
               log: Path, timeout: float = 30) -> None:
    """Poll ``answers`` until it is true; fail early when the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise AddonError(f"sandbox: {what} exited with {process.returncode} while "
                             f"starting: {' / '.join(tail)}")
        try:
            if answers():
                return
        except (OSError, xmlrpc.client.Error, ValueError):
            pass  # not listening yet
        time.sleep(0.1)
    raise AddonError(f"sandbox: {what} did not answer in {timeout:.0f}s (see {log})")


def storpool_answers(port: int, token: str) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sandbox/info",
                                     headers={"Authorization": f"Storpool v1:{token}"})
    with urllib.request.urlopen(request, timeout=2) as response:
        return response.status == 200


def oned_answers(port: int) -> bool:
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
    reply = proxy.one.system.version(SESSION)
    return bool(reply[0])


def local_actions(remotes: Path) -> str:
    """The add-on's VM_MAD local actions whose scripts exist under ``remotes``."""
    from onestorpool.sandbox.oned import ADDON_VMM_LOCAL

    present = [item for item in ADDON_VMM_LOCAL.split(",")
               if (remotes / "vmm" / "kvm" / item.partition("=")[2]).is_file()]
    return ",".join(present)


def _subscriber_command(directory: Path) -> list[str] | None:
    """The hook-bus subscriber daemon's command line (the seam ``up`` and ``down`` use);
    it finds oned and the bus in the environment ``up`` gives it."""
    return [sys.executable, "-m", "onestorpool.cli", "subscriber", "run"]


def write_configuration(directory: Path, sp_port: int, token: str) -> None:
    (directory / "etc").mkdir(parents=True, exist_ok=True)
    conf = directory / "etc/storpool.conf"
    conf.write_text(f"SP_API_HTTP_HOST=127.0.0.1\nSP_API_HTTP_PORT={sp_port}\n"
                    f"SP_AUTH_TOKEN={token}\n[localhost]\nSP_OURID={FRONTEND_CLIENT_ID}\n")
    conf.chmod(0o600)
    remotes = directory / "var/lib/one/remotes"
    remotes.mkdir(parents=True, exist_ok=True)
    rc = remotes / "addon-storpoolrc"
    if not rc.exists():  # an admin's edits survive a restart
        rc.write_text("ONE_PX=one\n")
    (directory / "hosts/localhost").mkdir(parents=True, exist_ok=True)


def up(directory: Path, one_version: str) -> int:
    directory = directory.resolve()
    if (directory / PIDS).exists():
        if _running(directory):
            raise AddonError(f"a sandbox already runs in {directory} (run 'onestorpool "
                             f"sandbox down --dir {directory}' first)")
        print(f"removing the stale {directory / PIDS} (its processes are gone)")
        (directory / PIDS).unlink()
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    sp_port, oned_port, hook_port = free_port(), free_port(), free_port()
    write_configuration(directory, sp_port, token)
    env = {**os.environ, "ONESTORPOOL_ROOT": str(directory),
           **sandbox_hosts_env(directory / "hosts"),
           "ONESTORPOOL_EVENTLOG": str(directory / "events.db"),
           "ONESTORPOOL_SANDBOX_TOKEN": token}
    for leak in ("ONE_XMLRPC", "ONE_AUTH"):  # the sandbox's, not a real cloud's
        env.pop(leak, None)
    cli = [sys.executable, "-m", "onestorpool.cli", "sandbox"]
    from onestorpool.drivers.install import shipped_remotes

    started: dict[str, subprocess.Popen] = {}
    try:
        log = directory / "storpool.log"
        started["storpool"] = _spawn(
            [*cli, "storpool", "--port", str(sp_port), "--data", str(directory / "storpool"),
             "--token", token, "--client",
             f"{FRONTEND_CLIENT_ID}={directory / 'hosts/localhost'}"], log, env)
        wait_until(lambda: storpool_answers(sp_port, token), "StorPool sandbox",
                   started["storpool"], log)
        log = directory / "oned.log"
        started["oned"] = _spawn(
            [*cli, "oned", "--dir", str(directory), "--port", str(oned_port),
             "--hook-endpoint", f"tcp://127.0.0.1:{hook_port}", "--one-version", one_version,
             "--storpool-admin", f"http://127.0.0.1:{sp_port}", "--session", SESSION,
             "--hosts", str(directory / "hosts"), "--scheduler", "--monitor-interval", "60",
             "--vmm-local", local_actions(shipped_remotes())], log, env)
        wait_until(lambda: oned_answers(oned_port), "oned sandbox", started["oned"], log)
        subscriber = _subscriber_command(directory)
        if subscriber is not None:
            started["subscriber"] = _spawn(
                subscriber, directory / "subscriber.log",
                {**env, "ONE_XMLRPC": f"http://127.0.0.1:{oned_port}/RPC2",
                 "ONE_AUTH": str(directory / "one_auth"),
                 "ONE_ZMQ": f"tcp://127.0.0.1:{hook_port}"})
    except BaseException:
        for process in started.values():
            process.terminate()
        raise
    exports = {"ONE_XMLRPC": f"http://127.0.0.1:{oned_port}/RPC2",
               "ONE_AUTH": str(directory / "one_auth"),
               "ONE_ZMQ": f"tcp://127.0.0.1:{hook_port}",
               "ONESTORPOOL_ROOT": str(directory),
               "ONESTORPOOL_EVENTLOG": str(directory / "events.db"),
               **sandbox_hosts_env(directory / "hosts")}
    (directory / ENV).write_text("".join(f"export {k}={v}\n" for k, v in exports.items()))
    (directory / PIDS).write_text(json.dumps(
        {name: {"pid": p.pid, "start": _start_time(p.pid)} for name, p in started.items()}))
    print(f"StorPool API   http://127.0.0.1:{sp_port}  token {token}")
    print(f"oned XML-RPC   {exports['ONE_XMLRPC']}  session {SESSION}")
    print(f"hook bus (PUB) {exports['ONE_ZMQ']}")
    print(f"configuration  {directory / 'etc/storpool.conf'}")
    print(f"environment:   source {directory / ENV}")
    for key, value in exports.items():
        print(f"  export {key}={value}")
    return 0


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def down(directory: Path) -> int:
    directory = directory.resolve()
    pid_file = directory / PIDS
    if not pid_file.exists():
        (directory / ENV).unlink(missing_ok=True)
        print(f"no sandbox runs in {directory}")
        return 0
    # the subscriber and oned first: they may still call StorPool
    started = _started(directory)
    for name in ("subscriber", "oned", "storpool"):
        if name in started:
            _terminate(started[name])
    pid_file.unlink()
    (directory / ENV).unlink(missing_ok=True)
    if (directory / "storpool").is_dir():
        subprocess.run([sys.executable, "-m", "onestorpool.cli", "sandbox", "storpool",
                        "--release", "--data", str(directory / "storpool")],
                       capture_output=True, check=False, timeout=60)
    print(f"sandbox in {directory} stopped")
    return 0


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): a pid reused by another
    process has another one."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _started(directory: Path) -> dict[str, int]:
    """The processes of ``sandbox.pids`` that are still the ones 'up' started: same start
    time (or, for a file without one, a sandbox command line naming ``directory``)."""
    try:
        entries = json.loads((directory / PIDS).read_text())
    except (OSError, ValueError):
        return {}
    alive = {}
    for name, entry in entries.items() if isinstance(entries, dict) else ():
        pid, start = (entry.get("pid"), entry.get("start")) if isinstance(entry, dict) \
            else (entry, None)
        if not isinstance(pid, int) or pid <= 1 or not _alive(pid):
            continue
        if start is not None:
            if _start_time(pid) == start:
                alive[name] = pid
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"onestorpool.cli" in argv and any(str(directory).encode() in a for a in argv):
            alive[name] = pid
    return alive


def _running(directory: Path) -> bool:
    return bool(_started(directory))


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by another 'up'): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and never ours
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ", 1)[1][:1] != "Z"  # a zombie has ended
    except (OSError, IndexError):
        return True


def configure_up(parser: argparse.ArgumentParser) -> None:
    """``onestorpool sandbox up`` options (the CLI's argparse tree calls this)."""
    parser.add_argument("--dir", type=Path, required=True,
                        help="directory of the sandbox: configuration, data, logs (created; "
                             "relative paths are taken from the current directory)")
    parser.add_argument("--one-version", default=DEFAULT_ONE_VERSION, choices=ONE_VERSIONS,
                        metavar="VERSION",
                        help="OpenNebula release the oned sandbox follows: "
                             f"{', '.join(ONE_VERSIONS)} (default: %(default)s)")
    parser.set_defaults(run=lambda args: up(args.dir, args.one_version))


def configure_down(parser: argparse.ArgumentParser) -> None:
    """``onestorpool sandbox down`` options."""
    parser.add_argument("--dir", type=Path, required=True,
                        help="directory given to 'sandbox up'")
    parser.set_defaults(run=lambda args: down(args.dir))


def main(argv: list[str]) -> int:
    """``up|down --dir D [...]`` (the ``onestorpool`` command builds the same options)."""
    parser = argparse.ArgumentParser(prog="onestorpool sandbox",
                                     description="Start or stop both sandboxes.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="up|down")
    configure_up(verbs.add_parser("up", help="start both sandboxes"))
    configure_down(verbs.add_parser("down", help="stop them"))
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)
