"""The event log on a StorPool volume, for OpenNebula HA (``EVENT_LOG_VOLUME``).

The log's directory (that of ``EVENT_LOG``) is an ext4 filesystem on a StorPool volume
(replicated by StorPool), mounted on the leading front-end only. The subscriber of the front-end
that becomes leader :meth:`LogVolume.acquire`\\ s it before acting: it attaches the volume
read-write to its own StorPool client with ``force``, detaching it from every other client
(fencing: the old leader's device stops taking writes), checks and mounts the filesystem and
verifies the log; on losing leadership or stopping it :meth:`LogVolume.release`\\ s it: shuts
the filesystem down (every writer still in it gets an I/O error, nothing more reaches the
volume), unmounts and detaches it. A standby never opens it.

A writer on a front-end where the volume is not mounted fails (:func:`check_mounted`, run by
:func:`onestorpool.config.event_log_path`) instead of starting a local, split-brain log, and the
empty mount point is immutable (``chattr +i``) so that not even a writer that resolved the path
just before the release can create a file there.

Mounting, checking and making filesystems go through :class:`Filesystem` (:class:`Ext4`).
See docs/eventlog.md, "High availability".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from onestorpool.eventlog.store import EventLog, EventLogError

MARKER = ".onestorpool-log-volume"  # in the filesystem's root: the volume's name
LABEL = "onestorpool-log"
# ioctl FS_IOC_SHUTDOWN = _IOR('X', 125, __u32); flag 1: flush the journal, then stop all
# I/O (ext4's EXT4_GOING_FLAGS_LOGFLUSH, xfs's XFS_FSOP_GOING_FLAGS_LOGFLUSH).
FS_IOC_SHUTDOWN = 0x8004587D
SHUTDOWN_LOGFLUSH = 1
DEVICE_TIMEOUT = 30.0


class LogVolumeError(EventLogError):
    """The event log volume cannot be attached, checked, mounted or verified."""


def volume_name(config: Any) -> str | None:
    """The configured volume (``EVENT_LOG_VOLUME``: ``yes`` means ``<ONE_PX>-eventlog``), or
    ``None`` when the log is a local file."""
    value = config["EVENT_LOG_VOLUME"]
    if not value:
        return None
    return f"{config.prefix}-eventlog" if value == "yes" else value


def client_id(config: Any) -> int:
    """This front-end's StorPool client id (``SP_OURID`` of its /etc/storpool.conf)."""
    raw = str(config.storpool.get("SP_OURID", "")).strip()
    if not raw.isdigit() or not 0 < int(raw) < 4096:
        raise LogVolumeError("EVENT_LOG_VOLUME needs this front-end's StorPool client id: "
                             "SP_OURID in /etc/storpool.conf (1-4095), got "
                             f"{raw or 'nothing'}")
    return int(raw)


def check_mounted(directory: Path, name: str) -> None:
    """The log's directory is the volume ``name``'s filesystem, mounted here: else the
    writer stops, one error, nothing written."""
    marker = directory / MARKER
    try:
        found = marker.read_text(encoding="utf-8").strip() if os.path.ismount(directory) \
            else None
    except OSError:
        found = None
    if found != name:
        raise LogVolumeError(
            f"event log: {directory} is not StorPool volume {name} (EVENT_LOG_VOLUME): the "
            "log is kept on the leading front-end only; run this there (a follower's oned "
            "runs no drivers)")


# -- the filesystem interface ------------------------------------------------------------------


class Filesystem(Protocol):
    """What the log volume needs from the machine: the one place that mounts."""

    def make(self, device: str) -> None: ...

    def check(self, device: str) -> None: ...

    def mount(self, device: str, directory: Path) -> None: ...

    def unmount(self, directory: Path) -> None: ...

    def is_mounted(self, directory: Path) -> bool: ...

    def seal(self, directory: Path) -> None: ...


class Ext4:
    """ext4 through e2fsprogs and mount(8). A device that is a regular file (an image) is
    mounted through a loop device."""

    def _run(self, argv: list[str], what: str, ok: tuple[int, ...] = (0,)) -> None:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                    stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise LogVolumeError(f"{what}: {argv[0]} not found (install e2fsprogs)") from None
        except subprocess.TimeoutExpired:
            raise LogVolumeError(f"{what}: {argv[0]} timed out") from None
        if result.returncode not in ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise LogVolumeError(f"{what}: {argv[0]} exit {result.returncode}: "
                                 f"{detail[-1] if detail else 'no message'}")

    def _output(self, argv: list[str], what: str) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0 or not result.stdout.strip():
            detail = result.stderr.strip().splitlines()
            raise LogVolumeError(f"{what}: {argv[0]} exit {result.returncode}: "
                                 f"{detail[-1] if detail else 'no output'}")
        return result.stdout.strip()

    def make(self, device: str) -> None:
        self._run(["mkfs.ext4", "-q", "-F", "-L", LABEL, device], f"mkfs {device}")

    def check(self, device: str) -> None:
        # -p repairs what is safe (a crashed leader's journal is replayed); 1 and 2 say it
        # did; 4 and up: damage it would not repair alone.
        self._run(["e2fsck", "-p", device], f"filesystem check of {device} (run "
                  f"'e2fsck -f {device}' by hand)", ok=(0, 1, 2))

    def mount(self, device: str, directory: Path) -> None:
        loop = None
        if Path(device).is_file():
            # A loop device of our own: mount -o loop would reuse one already bound to the
            # file, and with it a filesystem an earlier holder shut down.
            loop = self._output(["losetup", "--find", "--show", device], f"losetup {device}")
        try:
            self._run(["mount", "-t", "ext4", "-o", "nodev,nosuid,noexec,errors=remount-ro",
                       loop or device, str(directory)], f"mount {device} on {directory}")
        except LogVolumeError:
            if loop is not None:
                subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
            raise

    def unmount(self, directory: Path) -> None:
        """Stop every write at once, then unmount (lazily when a writer still has a file
        open: it only gets I/O errors now)."""
        with contextlib.suppress(OSError):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _syncfs(fd)  # what writers left unsynced goes too (a fenced device: EIO)
                fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", SHUTDOWN_LOGFLUSH))
            finally:
                os.close(fd)
        source = _mount_source(directory)
        try:
            self._run(["umount", str(directory)], f"unmount {directory}")
        except LogVolumeError:
            self._run(["umount", "-l", str(directory)], f"unmount {directory}")
        if source is not None and source.startswith("/dev/loop"):
            # ours (mount above); freed now, or when the last file in it is closed
            subprocess.run(["losetup", "-d", source], capture_output=True, check=False)

    def is_mounted(self, directory: Path) -> bool:
        return os.path.ismount(directory)

    def seal(self, directory: Path) -> None:
        """The empty mount point takes no file, not even root's (a writer racing a release
        would otherwise create a local log there)."""
        self._run(["chattr", "+i", str(directory)], f"chattr +i {directory}")


def _mount_source(directory: Path) -> str | None:
    """The device mounted on ``directory`` (the last mount there), from mountinfo."""
    target = os.path.realpath(directory)
    source = None
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            fields = line.split()
            mount_point = fields[4].encode().decode("unicode_escape")
            if mount_point == target:
                source = fields[fields.index("-") + 2]
    return source


def _syncfs(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _own_root(directory: Path, name: str) -> None:
    """Mark the new filesystem as the volume's; its root 0750, group oneadmin (drivers)."""
    # readable by all: the drivers (oneadmin) check it before writing; it holds only a name
    fd = os.open(directory / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, (name + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(directory, 0o750)
    with contextlib.suppress(KeyError, OSError):
        import pwd

        account = pwd.getpwnam("oneadmin")
        os.chown(directory, account.pw_uid, account.pw_gid)


def _log_file_for_the_drivers(path: Path) -> None:
    """A new volume's database is made here, owned like its directory (oneadmin), before
    SQLite opens it as root: SQLite gives its -wal and -shm files the database's owner, the
    writers' queue its lock file, so the drivers can write them all."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    except FileExistsError:
        return
    try:
        owner = os.stat(path.parent)
        os.fchown(fd, owner.st_uid, owner.st_gid)
        os.fchmod(fd, 0o640)
    finally:
        os.close(fd)


# -- the volume -----------------------------------------------------------------------------


class LogVolume:
    """The volume ``name`` holding the log ``path`` (its directory is the mount point),
    attached to StorPool client ``client`` (this front-end) through ``sp``."""

    def __init__(self, name: str, path: Path, client: int, sp: Any, *,
                 filesystem: Filesystem | None = None, device: str | None = None,
                 device_timeout: float = DEVICE_TIMEOUT):
        self.name, self.path, self.client, self.sp = name, Path(path), client, sp
        self.directory = self.path.parent
        self.filesystem: Filesystem = filesystem or Ext4()
        self._device, self.device_timeout = device, device_timeout

    @classmethod
    def from_config(cls, config: Any, sp: Any, **options: Any) -> LogVolume:
        from onestorpool.config import event_log_origin

        name = volume_name(config)
        if name is None:
            raise LogVolumeError("EVENT_LOG_VOLUME is not set: the log is a local file")
        return cls(name, Path(event_log_origin(config)[0]), client_id(config), sp, **options)

    def __repr__(self) -> str:
        return f"LogVolume({self.name!r} on {self.directory}, client {self.client})"

    def device(self) -> str:
        """The volume's device on this front-end, once attached (waits for it to appear)."""
        if self._device is not None:
            return self._device
        from onestorpool import hosts

        try:
            return hosts.frontend().wait_for_device(self.name, self.device_timeout)
        except hosts.HostCommandError as exc:
            raise LogVolumeError(f"event log volume {self.name}: {exc}") from None

    def _attach_exclusively(self) -> None:
        """Read-write here and nowhere else, taken from any other client by force (the
        cluster refuses the old leader's writes from then on)."""
        from onestorpool.storpool import StorPoolError

        try:
            self.sp.volumes_reassign_wait([{"volume": self.name, "detach": "all",
                                            "rw": [self.client], "force": True}])
        except StorPoolError as exc:
            raise LogVolumeError(f"event log volume {self.name}: attaching it to client "
                                 f"{self.client} was refused: {exc}") from None

    def _detach(self) -> None:
        from onestorpool.storpool import StorPoolError

        with contextlib.suppress(StorPoolError):
            self.sp.volumes_reassign_wait([{"volume": self.name, "detach": [self.client],
                                            "force": True}])

    def _require_volume(self) -> None:
        from onestorpool.storpool import StorPoolError

        try:
            exists = self.sp.volume_exists(self.name)
        except StorPoolError as exc:
            raise LogVolumeError(f"event log volume {self.name}: {exc}") from None
        if not exists:
            raise LogVolumeError(f"event log volume {self.name} does not exist in StorPool: "
                                 "create it with 'onestorpool subscriber log-volume init' (see "
                                 "docs/eventlog.md, High availability)")

    def _prepare_mount_point(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self.filesystem.is_mounted(self.directory):
            return
        leftovers = sorted(p.name for p in self.directory.iterdir())
        if leftovers:
            raise LogVolumeError(
                f"event log: {self.directory} holds {', '.join(leftovers[:5])} outside the "
                f"volume {self.name}: a log written here is not the shared one; move it away "
                "(its records are not in the shared log) and start again")
        self.filesystem.seal(self.directory)

    def init(self, *, size: int, template: str) -> None:
        """Create the volume, make its filesystem and mark it (once, by an admin)."""
        from onestorpool.storpool import StorPoolError

        self._prepare_mount_point()
        try:
            if self.sp.volume_exists(self.name):
                raise LogVolumeError(f"event log volume {self.name} exists already")
            self.sp.volume_create(self.name, size=size, template=template,
                                  tags={"onestorpool": "eventlog"})
        except StorPoolError as exc:
            raise LogVolumeError(f"event log volume {self.name}: {exc}") from None
        self._attach_exclusively()
        try:
            device = self.device()
            self.filesystem.make(device)
            self.filesystem.mount(device, self.directory)
            try:
                _own_root(self.directory, self.name)
            finally:
                self.filesystem.unmount(self.directory)
        except BaseException:
            self._detach()
            with contextlib.suppress(StorPoolError):
                self.sp.volume_delete(self.name)  # nothing half-made is left
            raise
        self._detach()

    def acquire(self, *, anchors: list[tuple[int, bytes]] | None = None) -> dict[str, Any]:
        """Take the volume (fencing every other front-end), check, mount, verify. On any
        failure the volume is released again and nothing acts: one error says why."""
        from onestorpool.eventlog.verify import verify

        started = time.monotonic()
        self._require_volume()
        if self.filesystem.is_mounted(self.directory):
            self.filesystem.unmount(self.directory)  # ours from before: maybe fenced since
        self._prepare_mount_point()
        self._attach_exclusively()
        try:
            device = self.device()
            self.filesystem.check(device)
            self.filesystem.mount(device, self.directory)
            check_mounted(self.directory, self.name)
            _log_file_for_the_drivers(self.path)
            with EventLog(self.path) as log:
                result = verify(log, anchors=anchors or (), find_archives=False)
                if not result.ok:
                    raise LogVolumeError(
                        f"event log {self.path} on volume {self.name} does not verify: "
                        f"{result.reason}; nothing was done (inspect it with 'onestorpool "
                        f"log verify --log {self.path}' after mounting it by hand)")
                head = log.head()
        except BaseException:
            self.release()
            raise
        return {"volume": self.name, "client": self.client, "head": head[0],
                "head_hash": head[1].hex(), "records": result.checked,
                "seconds": round(time.monotonic() - started, 3)}

    def release(self) -> None:
        """Stop writes, unmount, detach (``force``: the filesystem is shut down already)."""
        if self.filesystem.is_mounted(self.directory):
            self.filesystem.unmount(self.directory)
        self._detach()

    def status(self) -> dict[str, Any]:
        """For ``doctor``: whether the volume exists, where it is attached, mounted here."""
        attached = [a.get("client") for a in self.sp.attachments_list()
                    if a.get("volume") == self.name and not a.get("snapshot")]
        return {"exists": self.sp.volume_exists(self.name), "attached": attached,
                "mounted": self.filesystem.is_mounted(self.directory)}


# -- the command (onestorpool subscriber log-volume) -----------------------------------------


def configure(parser: Any) -> None:
    sub = parser.add_subparsers(dest="volume_command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="create the volume and its filesystem (once, on the "
                                       "leader, with the subscriber stopped everywhere)")
    init.add_argument("--size", required=True, help="e.g. 20G (the log grows ~1 GiB per "
                                                    "3 million records)")
    init.add_argument("--template", required=True,
                      help="the StorPool template (its replication keeps the log)")
    sub.add_parser("status", help="where the volume is attached and whether it is mounted "
                                  "here")
    parser.set_defaults(run=run)


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``1T`` (binary units) or bytes; at least 32 MiB (ext4 and a log)."""
    import re

    match = re.fullmatch(r"(\d{1,15})([KMGT]?)(?:i?B)?", text.strip().upper())
    if match is None:
        raise LogVolumeError(f"--size: not a size: {text!r} (e.g. 20G)")
    size = int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[match[2]]
    if size < 32 << 20:
        raise LogVolumeError(f"--size: {text} is less than 32M")
    return size


def run(args: Any) -> int:
    from onestorpool import config as config_module
    from onestorpool.storpool import StorPoolClient

    config = config_module.load()
    with StorPoolClient.from_config(config) as sp:
        volume = LogVolume.from_config(config, sp)
        if args.volume_command == "init":
            size = parse_size(args.size)
            volume.init(size=size, template=args.template)
            print(f"event log volume {volume.name} created ({size} bytes, template "
                  f"{args.template}); the leader's subscriber mounts it on {volume.directory}")
        else:
            state = volume.status()
            print(f"volume {volume.name}: {'exists' if state['exists'] else 'missing'}; "
                  f"attached to client(s) {state['attached'] or 'none'}; "
                  f"{'mounted' if state['mounted'] else 'not mounted'} on {volume.directory}"
                  f" (this front-end: client {volume.client})")
    return 0
