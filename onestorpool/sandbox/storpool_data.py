"""Backing files of the StorPool sandbox: sparse data, immutability and open-file checks.

Every volume and snapshot of a sandbox cluster is one sparse file ``<data>/objects/<globalId>``.
This module holds the file-level mechanics the model (:mod:`.storpool_state`) relies on:

* :func:`sparse_copy` makes a point-in-time copy that keeps holes (``SEEK_DATA``/``SEEK_HOLE``
  plus ``copy_file_range``, which reflinks on filesystems that can);
* :func:`data_extents`, :class:`ExtentReader` and :func:`write_extents` move only the data
  ranges of a file, so a backup of a mostly empty 10 GiB volume sends kilobytes;
* :class:`Immutability` makes a file unwritable *for root too*: the Linux immutable inode flag
  (``FS_IOC_SETFLAGS``, what ``chattr +i`` does). Tests run as root, and root ignores file
  modes, so a read-only attachment enforced by ``chmod`` alone would not stop a write. Where
  the flag is not available (another OS, a filesystem without it, no ``CAP_LINUX_IMMUTABLE``)
  files are made read-only by mode instead, which stops every user but root;
  :attr:`Immutability.enforced` says which one is in use;
* :func:`open_by_any_process` tells whether some process has a file open, which is how the
  sandbox answers ``busy`` to a detach of a device that is still in use, as StorPool does.

Immutable files cannot be deleted, renamed or truncated, not even by root: anything that
removes a sandbox's data directory (pytest's ``tmp_path`` cleanup, ``rm -rf``) must call
:func:`release_immutable_files` first. :meth:`StorPoolSandbox.stop` does it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

# _IOR('f', 1, long) / _IOW('f', 2, long): the ioctl numbers carry sizeof(long), while the
# kernel reads and writes an int, so the argument is packed as one.
_LONG = struct.calcsize("l")
FS_IOC_GETFLAGS = 0x80000000 | (_LONG << 16) | 0x6601
FS_IOC_SETFLAGS = 0x40000000 | (_LONG << 16) | 0x6602
FS_IMMUTABLE_FL = 0x00000010

CHUNK = 1 << 20


def allocated(path: Path) -> int:
    """Bytes the file really occupies (``st_blocks`` are 512-byte units); 0 if missing."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of every data range of the open file up to ``size``."""
    if not hasattr(os, "SEEK_DATA"):  # no hole detection on this platform: all data
        if size:
            yield 0, size
        return
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: all data
                yield offset, size - offset
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start
        offset = end


def _copy_range(src: int, dst: int, start: int, length: int) -> None:
    end = start + length
    while start < end:
        copied = 0
        if hasattr(os, "copy_file_range"):  # Linux: in-kernel, and a reflink where possible
            try:
                copied = os.copy_file_range(src, dst, end - start, start, start)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                     errno.EOPNOTSUPP):
                    raise
        if copied <= 0:  # not supported here: plain reads and writes
            chunk = os.pread(src, min(CHUNK, end - start), start)
            if not chunk:
                return
            copied = os.pwrite(dst, chunk, start)
        start += copied


def sparse_copy(src: Path, dst: Path, size: int | None = None) -> None:
    """Copy ``src`` to a new file ``dst`` (data ranges only), then set its size to ``size``
    (default: the source's). The copy is synced: a snapshot must survive a crash."""
    with open(src, "rb") as fin:
        source_size = os.fstat(fin.fileno()).st_size
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, source_size)
            for start, length in data_extents(fin.fileno(), source_size):
                _copy_range(fin.fileno(), fd, start, length)
            os.ftruncate(fd, source_size if size is None else size)
            os.fsync(fd)
        finally:
            os.close(fd)


def create_sparse(path: Path, size: int) -> None:
    """A new, empty (all holes) file of ``size`` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


class ExtentReader:
    """The data ranges of a file (``extents``, ``length`` bytes in all) and, iterated, their
    bytes in order. Used to send a snapshot to another sandbox: the receiver gets the list
    first and the concatenated ranges after it. A context manager: it holds the file open."""

    def __init__(self, path: Path, size: int):
        self._handle = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            self.extents = list(data_extents(self._handle.fileno(), size))
        except BaseException:
            self._handle.close()
            raise
        self.length = sum(n for _, n in self.extents)

    def __iter__(self) -> Iterator[bytes]:
        fd = self._handle.fileno()
        for start, length in self.extents:
            offset, end = start, start + length
            while offset < end:
                chunk = os.pread(fd, min(CHUNK, end - offset), offset)
                if not chunk:  # the file shrank meanwhile: the rest reads as zeroes
                    chunk = b"\0" * min(CHUNK, end - offset)
                yield chunk
                offset += len(chunk)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ExtentReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``: a file, a socket file, an HTTP response."""

    def read(self, size: int = -1, /) -> bytes: ...


def write_extents(stream: Readable, path: Path, size: int,
                  extents: list[tuple[int, int]]) -> None:
    """Create ``path`` with ``size`` bytes, filling ``extents`` from ``stream`` in order."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        for start, length in extents:
            if start < 0 or length < 0 or start + length > size:
                raise ValueError(f"extent {start}+{length} outside a {size}-byte object")
            offset, end = start, start + length
            while offset < end:
                chunk = stream.read(min(CHUNK, end - offset))
                if not chunk:
                    raise ValueError("the data stream ended early")
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _get_flags(fd: int) -> int:
    import fcntl

    return struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]


def _set_immutable(path: Path, on: bool) -> None:
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        flags = _get_flags(fd)
        wanted = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        if wanted != flags:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", wanted))
    finally:
        os.close(fd)


def _writable(path: Path) -> bool:
    try:
        with open(path, "r+b"):
            return True
    except PermissionError:
        return False


class Immutability:
    """Makes files unwritable for everybody (see the module docstring)."""

    def __init__(self, probe_dir: Path):
        self.enforced = False
        probe = probe_dir / ".immutable-probe"
        with contextlib.suppress(OSError, ImportError):  # left frozen by a crash
            _set_immutable(probe, False)
        probe.unlink(missing_ok=True)
        probe.write_bytes(b"")
        try:
            _set_immutable(probe, True)
            self.enforced = not _writable(probe)
        except (OSError, ImportError):  # ENOTTY/EOPNOTSUPP (filesystem), EPERM (capability)
            self.enforced = False
        finally:
            with contextlib.suppress(OSError, ImportError):
                _set_immutable(probe, False)
            probe.unlink(missing_ok=True)

    def set(self, path: Path, frozen: bool) -> None:
        """Freeze (no writes, no truncation, no unlink) or thaw ``path``."""
        if self.enforced:
            try:
                _set_immutable(path, frozen)
                return
            except OSError:  # this one file refuses (another filesystem): fall back to modes
                pass
        path.chmod(0o444 if frozen else 0o644)

    def thaw(self, path: Path) -> None:
        """Make ``path`` writable and removable again, whatever froze it."""
        with contextlib.suppress(OSError, ImportError):
            _set_immutable(path, False)
        with contextlib.suppress(OSError):
            path.chmod(0o644)


def release_immutable_files(data_dir: Path) -> None:
    """Clear the immutable flag on every object file under a sandbox's data directory, so
    the directory can be removed. Safe to call on a directory in any state (or none)."""
    objects = Path(data_dir) / "objects"
    if not objects.is_dir():
        return
    for path in objects.iterdir():
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError, ImportError):
                _set_immutable(path, False)
            with contextlib.suppress(OSError):
                path.chmod(0o644)


def open_by_any_process(path: Path) -> bool:
    """Whether any process has ``path`` open (Linux ``/proc/<pid>/fd``).

    A device link opened on a "host" resolves to the backing file, so this sees the opens
    made through any client's ``/dev/storpool/<name>``. Processes whose descriptors we may
    not read are skipped; without ``/proc`` the answer is ``False``.
    """
    target = os.path.realpath(path)
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return False
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    return True
            except OSError:
                continue
    return False
