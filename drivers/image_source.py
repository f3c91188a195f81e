"""The bytes of an image being imported: may they be read, what are they, are they whole?

A user who registers an image controls its PATH (or URL) and every byte of it. Before a
byte reaches StorPool this module makes sure that:

* the path is one the datastore lets users read (``SAFE_DIRS`` / ``RESTRICTED_DIRS``,
  exactly as upstream's ``check_restricted`` in ``datastore_mad/remotes/libfs.sh``, with
  oned's defaults from ``Datastore::insert`` when the datastore sets neither);
* it is a regular file (not a device, a FIFO or a directory);
* compressed sources (gzip, bzip2, xz) are decompressed, as upstream's ``downloader.sh``
  does, unless ``NO_DECOMPRESS`` is set;
* qemu-img reads nothing but the image itself: no backing file (any format), no external
  data file (qcow2), no VMDK extent outside the descriptor's own directory (and none at all
  when the image is not a plain local file), no ``json:``/protocol names, only formats whose
  every way of naming another file is checked here;
* the image is whole: ``qemu-img check`` where the format has one, and no allocated data
  beyond the end of the file (``qemu-img map``), which catches truncations ``check`` misses.

Everything is refused with one line the user sees, before anything is created.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from onestorpool.errors import InputError

MIB = 1 << 20
CHUNK = 4 * MIB
QEMU_TIMEOUT = 120  # seconds for info/check/map: a FIFO named by an extent must not hang us
HEAD_BYTES = (1 * MIB, 16 * MIB)  # what stat reads of a URL to find the format (upstream: 13MB)

# Formats qemu-img may read from a user's file. Every way each can name another file is
# checked below (backing files, qcow2 data files, VMDK extents); the others (luks, nbd,
# quorum, blkdebug, ...) are refused outright.
SAFE_FORMATS = frozenset({"raw", "qcow2", "qcow", "qed", "vmdk", "vpc", "vhdx", "vdi",
                          "parallels"})
CHECKABLE = frozenset({"qcow2", "qed", "vmdk", "vhdx", "vdi", "parallels"})
COMPRESSIONS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
# A VMDK descriptor's extent line: access, size, type, "file name" (qemu's vmdk_parse_extents)
EXTENT_RE = re.compile(rb'^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+(\w+)\s*(?:"([^"]*)")?', re.M)


class ImageRefused(InputError):
    """The image may not be imported; the message says why, in one line."""


# -- where users may read from -----------------------------------------------------------


@dataclass(frozen=True)
class AccessPolicy:
    """``SAFE_DIRS`` win over ``RESTRICTED_DIRS``; both are regular-expression prefixes of
    the resolved path (``readlink -f $1 | grep -E "^$path"``, libfs.sh)."""

    safe_dirs: tuple[str, ...]
    restricted_dirs: tuple[str, ...]

    @classmethod
    def for_datastore(cls, attributes: Mapping[str, str],
                      environ: Mapping[str, str] = os.environ) -> AccessPolicy:
        safe = attributes.get("SAFE_DIRS", "").split()
        restricted = attributes.get("RESTRICTED_DIRS", "").split()
        if not safe and not restricted:
            # src/datastore/Datastore.cc (insert): oned stores these when both are unset
            safe, restricted = ["/var/tmp"], ["/"]
        # libfs.sh set_up_datastore: oned's own directories and oneadmin's HOME always
        location = environ.get("ONE_LOCATION")
        var, etc = ((f"{location}/var/", f"{location}/etc/") if location
                    else ("/var/lib/one/", "/etc/one/"))
        home = environ.get("HOME", "/var/lib/one")
        return cls(tuple(safe), (var, etc, f"{home}/", *restricted))

    def allows(self, path: str) -> bool:
        real = os.path.realpath(path)
        if any(_prefix_matches(pattern, real) for pattern in self.safe_dirs):
            return True
        return not any(_prefix_matches(pattern, real) for pattern in self.restricted_dirs)

    def check(self, path: str) -> None:
        if not self.allows(path):
            # the text of upstream's fs/cp error_message
            raise ImageRefused(f"Not allowed to copy image from {path}, check RESTRICTED_DIRS "
                               "in your datastore")


def _prefix_matches(pattern: str, path: str) -> bool:
    try:
        return re.match(pattern, path) is not None
    except re.error:  # grep -E would have failed on it too; compare literally
        return path.startswith(pattern)


def open_regular_file(path: str, policy: AccessPolicy) -> BinaryIO:
    """``path`` opened for reading after the policy check; only regular files."""
    if not path.startswith("/") or "\0" in path:
        raise ImageRefused(f"image PATH must be an absolute path or an http(s) URL, got "
                           f"{path!r}")
    policy.check(path)
    real = os.path.realpath(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageRefused(f"cannot access '{path}' ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageRefused(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


# -- compression ----------------------------------------------------------------------


def compression_of(head: bytes) -> str | None:
    return next((name for magic, name in COMPRESSIONS.items() if head.startswith(magic)),
                None)


class DecompressError(Exception):
    """Compressed data that does not decompress (truncated, corrupt)."""


class _Decompressed:
    """A decompressing reader whose failures are one exception type."""

    def __init__(self, inner: BinaryIO, errors: tuple[type[BaseException], ...]):
        self.inner, self.errors = inner, errors

    def read(self, size: int = -1) -> bytes:
        try:
            return self.inner.read(size)
        except self.errors as exc:
            raise DecompressError(str(exc) or type(exc).__name__) from None


def decompressing(stream: BinaryIO, compression: str | None) -> BinaryIO:
    """A reader of the decompressed bytes (``stream`` itself when not compressed); the
    decompressor is imported only when a source needs it (drivers start fast)."""
    if compression == "gzip":
        import gzip
        import zlib

        return _Decompressed(gzip.GzipFile(fileobj=stream, mode="rb"),  # type: ignore[return-value]
                             (OSError, EOFError, zlib.error))
    if compression == "bzip2":
        import bz2

        return _Decompressed(bz2.BZ2File(stream, mode="rb"),  # type: ignore[return-value]
                             (OSError, EOFError, ValueError))
    if compression == "xz":
        import lzma

        return _Decompressed(lzma.LZMAFile(stream, mode="rb"),  # type: ignore[return-value]
                             (lzma.LZMAError, EOFError))
    return stream


def wants_decompress(no_decompress: str) -> bool:
    return no_decompress.strip().lower() != "yes"


class PeekableReader:
    """A stream whose first bytes can be looked at (to find a compression magic) and are
    then read again; counts and optionally hashes every byte read from the source."""

    def __init__(self, stream: BinaryIO, hashes: tuple[str, ...] = ()):
        self.stream, self.read_bytes = stream, 0
        import hashlib  # only when the image asks for a checksum

        self.digests = {name: hashlib.new(name) for name in hashes}
        self._head = b""

    def peek(self, size: int = 16) -> bytes:
        while len(self._head) < size:
            chunk = self._raw_read(size - len(self._head))
            if not chunk:
                break
            self._head += chunk
        return self._head[:size]

    def _raw_read(self, size: int) -> bytes:
        chunk = self.stream.read(size)
        self.read_bytes += len(chunk)
        for digest in self.digests.values():
            digest.update(chunk)
        return chunk

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._raw_read(size)
        if size < 0 or size >= len(self._head):
            head, self._head = self._head, b""
        else:
            head, self._head = self._head[:size], self._head[size:]
        return head

    def readable(self) -> bool:
        return True

    def hexdigests(self) -> dict[str, str]:
        return {name: digest.hexdigest() for name, digest in self.digests.items()}


def copy_to_file(source: BinaryIO, target: BinaryIO, limit: int | None = None) -> int:
    """Copy until EOF (or ``limit`` bytes); returns the bytes written."""
    written = 0
    while limit is None or written < limit:
        chunk = source.read(CHUNK if limit is None else min(CHUNK, limit - written))
        if not chunk:
            break
        target.write(chunk)
        written += len(chunk)
    return written


def decompressed_length(stream: BinaryIO) -> int:
    """Bytes a decompressing reader yields (gzip's trailer is modulo 4 GiB: count them)."""
    total = 0
    while chunk := stream.read(CHUNK):
        total += len(chunk)
    return total


@contextlib.contextmanager
def scratch_file(directory: str, prefix: str) -> Iterator[tuple[str, BinaryIO]]:
    """A private temporary file (mode 0600) removed when the block ends."""
    import tempfile

    try:
        os.makedirs(directory, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=prefix, dir=directory)
    except OSError as exc:
        raise ImageRefused(f"cannot create a scratch file in {directory}: "
                           f"{exc.strerror}") from None
    try:
        with os.fdopen(fd, "w+b") as handle:
            yield path, handle
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# -- what qemu-img sees -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    format: str
    virtual_size: int
    extents: tuple[str, ...] = ()  # files other than the image itself (multi-file VMDK)


def inspect(path: str, *, policy: AccessPolicy | None, check: bool = True) -> ImageFacts:
    """The format and virtual size of the local file ``path``, refusing anything that
    would make qemu-img read another file. ``policy`` is given for a user's own file: its
    VMDK extents may then sit beside it (and must pass the policy); ``None`` means a file we
    made (a download, a decompressed copy): only self-contained images."""
    real = os.path.realpath(path)
    _prescan_descriptor(real, policy)
    info = _qemu_json(["qemu-img", "info", "--output=json", "-U", real], "qemu-img info")
    if not isinstance(info, dict):
        raise ImageRefused("qemu-img info: unexpected output")
    fmt = str(info.get("format", ""))
    if fmt not in SAFE_FORMATS:
        raise ImageRefused(f"image format {fmt or 'unknown'!r} is not supported for import "
                           f"(supported: {', '.join(sorted(SAFE_FORMATS))})")
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise ImageRefused(f"the image names a backing file ({backing}); import a "
                           "self-contained image (qemu-img convert it first)")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise ImageRefused(f"the image names an external data file ({specific['data-file']}); "
                           "import a self-contained image")
    extents = _foreign_extents(real, specific.get("extents") or [], policy)
    virtual = info.get("virtual-size")
    if not isinstance(virtual, int) or virtual < 0:
        raise ImageRefused(f"qemu-img reports no virtual size for the {fmt} image")
    facts = ImageFacts(fmt, virtual, extents)
    if check:
        _check_integrity(real, facts)
    return facts


def _prescan_descriptor(path: str, policy: AccessPolicy | None) -> None:
    """A VMDK text descriptor names its extents; check them before qemu-img opens any
    (an extent may be a FIFO or a device that blocks or changes state when opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageRefused(f"cannot access '{path}' ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a FIFO since it was checked
            raise ImageRefused(f"{path} is not a regular file")
        head = handle.read(64 * 1024)
    if b"\0" in head[:1024]:
        return  # binary: not a text descriptor (embedded ones are checked from qemu's view)
    names = [m.group(3).decode("utf-8", "replace") for m in EXTENT_RE.finditer(head)
             if m.group(3) is not None]
    _foreign_extents(path, [{"filename": _extent_path(path, name)} for name in names], policy)


def _extent_path(descriptor: str, name: str) -> str:
    # vmdk's path_combine: protocol-prefixed (json:, nbd:, ...) and absolute names as is
    if name.startswith("/") or re.match(r"^[A-Za-z0-9.+_-]+:", name):
        return name
    return os.path.join(os.path.dirname(descriptor), name)


def _foreign_extents(image: str, extents: list[dict[str, Any]],
                     policy: AccessPolicy | None) -> tuple[str, ...]:
    directory = os.path.dirname(image)
    foreign = []
    for extent in extents:
        name = str(extent.get("filename", "")) if isinstance(extent, dict) else ""
        if not name or os.path.realpath(name) == image:
            continue
        if (policy is None or not name.startswith("/") or os.path.dirname(
                os.path.realpath(name)) != directory or not policy.allows(name)
                or not os.path.isfile(name)):
            raise ImageRefused(f"the VMDK descriptor names an extent outside its directory "
                               f"or not a plain file ({name[:120]}); refusing it")
        foreign.append(os.path.realpath(name))
    return tuple(foreign)


def _check_integrity(path: str, facts: ImageFacts) -> None:
    if facts.format in CHECKABLE:
        done = _qemu(["qemu-img", "check", "-U", "-f", facts.format, path], "qemu-img check")
        if done.returncode not in (0, 3):  # 3: leaked clusters only, harmless
            raise ImageRefused(f"the {facts.format} image is corrupt or truncated (qemu-img "
                               f"check: {_last_line(done.stdout + done.stderr)})")
    if facts.format == "raw" or facts.extents:
        return  # raw has no metadata; extents' offsets are in other files
    mapping = _qemu_json(["qemu-img", "map", "-U", "-f", facts.format, "--output=json", path],
                         "qemu-img map")
    size = os.path.getsize(path)
    for entry in mapping if isinstance(mapping, list) else []:
        offset, length = entry.get("offset"), entry.get("length")
        if entry.get("data") and isinstance(offset, int) and isinstance(length, int) \
                and offset + length > size:
            raise ImageRefused(f"the {facts.format} image is truncated: its data reaches byte "
                               f"{offset + length}, the file has {size}")


def _qemu(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ImageRefused(f"{what} did not finish in {QEMU_TIMEOUT}s") from None
    except FileNotFoundError:
        raise ImageRefused("qemu-img is not installed on the front-end") from None


def _qemu_json(argv: list[str], what: str) -> Any:
    done = _qemu(argv, what)
    if done.returncode != 0:
        raise ImageRefused(f"{what}: {_last_line(done.stderr)}")
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise ImageRefused(f"{what}: unreadable output") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
