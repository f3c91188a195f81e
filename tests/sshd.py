"""Real OpenSSH servers on loopback for the tests of the production host path.

:func:`ssh_servers` starts one ``sshd`` (Debian's openssh-server) per host name on a free
port with throwaway keys and writes an ssh client configuration naming them, which the
product reads through ``ONESTORPOOL_SSH_CONFIG`` as an admin's ``~/.ssh/config``.

A host may be given a directory that stands for its filesystem (a sandbox host directory):
its ``sshd`` then runs in a private mount namespace (``unshare --mount``) where
``/dev/storpool`` and ``/var/lib/one`` are that directory's, so the commands the product
sends see what a real KVM host shows (the StorPool sandbox's device links at
``/dev/storpool/<volume>``, the VM folders under the system datastore's path) and nothing
is mounted or created outside the namespace. :func:`host_view` gives the same view to any
other process (the transfer manager's executables, which run "on the front-end").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# The paths a host's commands see from its directory.
HOST_PATHS = ("/dev/storpool", "/var/lib/one")

# Run as ``sh VIEW <host dir> <scratch dir> <command...>`` inside ``unshare -m``: every
# path of HOST_PATHS bind-mounted from the host directory. A missing mount point is made
# in an overlay of its nearest existing parent (upper layer on a tmpfs of the namespace),
# whose sub-mounts (/dev/pts, /dev/shm...) are put back on top; nothing touches the
# machine's own filesystem.
VIEW = r"""
set -eu
root=$1 scratch=$2; shift 2
mount -t tmpfs host-view "$scratch"
for target in $HOST_PATHS; do
  parent=$(dirname "$target")
  while [ ! -d "$parent" ]; do parent=$(dirname "$parent"); done
  if [ ! -d "$target" ]; then
    layer=$scratch/$(echo "$parent" | tr / _)
    mkdir -p "$layer/upper" "$layer/work" "$layer/lower"
    mount --rbind "$parent" "$layer/lower"
    subs=$(awk -v p="$parent/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo)
    mount -t overlay overlay \
      -o "lowerdir=$parent,upperdir=$layer/upper,workdir=$layer/work" "$parent"
    for sub in $subs; do
      if [ -d "$sub" ]; then mount --rbind "$layer/lower/${sub#"$parent"/}" "$sub"; fi
    done
    mkdir -p "$target"
  fi
  mount --bind "$root$target" "$target"
done
exec "$@"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def host_view(root: Path, scratch: Path) -> list[str]:
    """The argv prefix that runs a command seeing ``root`` as its host's filesystem."""
    for path in HOST_PATHS:
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    script = scratch.parent / "host-view.sh"
    if not script.exists():
        script.write_text(VIEW.replace("$HOST_PATHS", " ".join(HOST_PATHS)))
    return ["unshare", "--mount", "--propagation", "private", "sh", str(script), str(root),
            str(scratch)]


def user_name() -> str:
    return os.environ.get("USER") or subprocess.run(
        ["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()


@contextmanager
def ssh_servers(base: Path, hosts: Mapping[str, Path | None]) -> Iterator[Path]:
    """One sshd per host name (a directory: seen as that host's filesystem); yields the
    ssh client configuration that reaches them as oneadmin's would. Stopped on exit."""
    base.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(base / name)], check=True)
    (base / "authorized_keys").write_text((base / "user_key.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    config = base / "ssh_config"
    servers: list[subprocess.Popen[bytes]] = []
    entries = []
    try:
        for name, root in hosts.items():
            port = free_port()
            sshd_config = base / f"sshd_config.{name}"
            sshd_config.write_text(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
                f"AuthorizedKeysFile {base / 'authorized_keys'}\n"
                f"PidFile {base / f'sshd.{name}.pid'}\nStrictModes no\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                "PermitRootLogin prohibit-password\nMaxStartups 100\n")
            view = host_view(root, base / f"scratch.{name}") if root is not None else []
            with (base / f"sshd.{name}.log").open("wb") as log:  # a pipe would fill up
                servers.append(subprocess.Popen([*view, SSHD, "-D", "-e", "-f",
                                                 str(sshd_config)], stderr=log))
            entries.append(f"Host {name}\n  HostName 127.0.0.1\n  Port {port}\n"
                           f"  User {user_name()}\n  IdentityFile {base / 'user_key'}\n"
                           "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
                           "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
        config.write_text("".join(entries))
        for name, server in zip(hosts, servers, strict=True):
            _wait_until_serving(config, name, server, base / f"sshd.{name}.log")
        yield config
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=10)


def _wait_until_serving(config: Path, name: str, server: subprocess.Popen[bytes],
                        log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        probe = ssh(config, name, ["true"], check=False)
        if probe.returncode == 0:
            return
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, probe.stderr.decode()
        time.sleep(0.1)


def ssh(config: Path, name: str, argv: Sequence[str], *, stdin: bytes | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a command on a test host directly (the tests' own look, not the product's)."""
    import shlex

    return subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", name,
                           shlex.join(argv)], input=stdin, capture_output=True, check=check,
                          timeout=60)
