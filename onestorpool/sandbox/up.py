"""``onestorpool sandbox up --dir D`` / ``onestorpool sandbox down --dir D``.

``up`` starts the StorPool sandbox and the oned sandbox as background processes, writes the
add-on's configuration for them under ``D`` (``D/etc/storpool.conf``,
``D/var/lib/one/remotes/addon-storpoolrc``), waits until both answer and prints the
endpoints, the credentials and the environment to export; ``down`` stops them. An admin can
then point pyone or scripts at the sandbox before touching a real cloud. (When the subscriber
daemon exists, ``up`` starts it here too.)
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
from pathlib import Path

from onestorpool.errors import AddonError

PIDS = "sandbox.pids"
ENV = "sandbox.env"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, what: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AddonError(f"sandbox: {what} exited with {process.returncode} while starting")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AddonError(f"sandbox: {what} did not answer on port {port} in {timeout:.0f}s")


def up(directory: Path, one_version: str) -> int:
    directory = directory.resolve()
    if (directory / PIDS).exists():
        raise AddonError(f"a sandbox already runs in {directory} (run 'down' first)")
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    sp_port, oned_port, hook_port = free_port(), free_port(), free_port()
    (directory / "etc").mkdir(exist_ok=True)
    (directory / "etc/storpool.conf").write_text(
        f"SP_API_HTTP_HOST=127.0.0.1\nSP_API_HTTP_PORT={sp_port}\nSP_AUTH_TOKEN={token}\n"
        "[localhost]\nSP_OURID=1\n")
    (directory / "etc/storpool.conf").chmod(0o600)
    remotes = directory / "var/lib/one/remotes"
    remotes.mkdir(parents=True, exist_ok=True)
    if not (remotes / "addon-storpoolrc").exists():
        (remotes / "addon-storpoolrc").write_text("ONE_PX=one\nDELAY_DELETE=48h\n")
    (directory / "hosts/localhost").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ONESTORPOOL_ROOT": str(directory),
           "ONESTORPOOL_EVENTLOG": str(directory / "events.db"),
           "ONESTORPOOL_SANDBOX_TOKEN": token}
    cli = [sys.executable, "-m", "onestorpool.cli", "sandbox"]
    started: list[subprocess.Popen] = []
    try:
        storpool = _spawn([*cli, "storpool", "--port", str(sp_port), "--data",
                                 str(directory / "storpool"), "--token", token, "--client",
                                 f"1={directory / 'hosts/localhost'}"],
                          directory / "storpool.log", env)
        started.append(storpool)
        wait_for_port(sp_port, "StorPool sandbox", storpool)
        oned = _spawn([*cli, "oned", "--dir", str(directory), "--port", str(oned_port),
                             "--hook-endpoint", f"tcp://127.0.0.1:{hook_port}",
                             "--one-version", one_version,
                             "--storpool-admin", f"http://127.0.0.1:{sp_port}"],
                      directory / "oned.log", env)
        started.append(oned)
        wait_for_port(oned_port, "oned sandbox", oned)
    except BaseException:
        for process in started:
            process.terminate()
        raise
    session = "oneadmin:sandbox"
    exports = {"ONE_XMLRPC": f"http://127.0.0.1:{oned_port}/RPC2",
               "ONE_AUTH": str(directory / "one_auth"),
               "ONE_ZMQ": f"tcp://127.0.0.1:{hook_port}",
               "ONESTORPOOL_ROOT": str(directory),
               "ONESTORPOOL_EVENTLOG": str(directory / "events.db"),
               "ONESTORPOOL_SANDBOX_HOSTS": str(directory / "hosts")}
    (directory / ENV).write_text("".join(f"export {k}={v}\n" for k, v in exports.items()))
    (directory / PIDS).write_text(json.dumps({"storpool": storpool.pid, "oned": oned.pid}))
    print(f"StorPool API   http://127.0.0.1:{sp_port}  token {token}")
    print(f"oned XML-RPC   {exports['ONE_XMLRPC']}  session {session}")
    print(f"hook bus (PUB) {exports['ONE_ZMQ']}")
    print(f"environment:   source {directory / ENV}")
    return 0


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def down(directory: Path) -> int:
    pid_file = directory / PIDS
    if not pid_file.exists():
        print(f"no sandbox runs in {directory}")
        return 0
    pids = json.loads(pid_file.read_text())
    for name in ("oned", "storpool"):  # oned first: it may still call StorPool
        pid = pids.get(name)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    print(f"sandbox in {directory} stopped")
    return 0


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
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(
        f"/proc/{pid}/stat").read_text()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="onestorpool sandbox",
                                     description="Start or stop both sandboxes.")
    parser.add_argument("verb", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--one-version", default="6.10")
    args = parser.parse_args(argv)
    return up(args.dir, args.one_version) if args.verb == "up" else down(args.dir.resolve())


