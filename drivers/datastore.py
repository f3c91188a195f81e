"""Datastore driver actions (``DS_MAD=storpool``): one function per action.

Each action takes a :class:`DsContext` (the parsed request, the configuration with the
datastore's attributes applied, the StorPool client) and returns what oned reads on stdout.
It records what it did in ``ctx.event`` (the event the runtime appends to the log) and undoes
what it created when it fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from onestorpool import hosts
from onestorpool.config import Config
from onestorpool.drivers.image_source import (
    CHUNK,
    HEAD_BYTES,
    AccessPolicy,
    DecompressError,
    ImageFacts,
    ImageRefused,
    PeekableReader,
    compression_of,
    copy_to_file,
    decompressed_length,
    decompressing,
    inspect,
    open_regular_file,
    scratch_file,
    wants_decompress,
)
from onestorpool.drivers.storage import (
    MIB,
    Rollback,
    StorageError,
    Tags,
    attached,
    create_volume,
    delete_snapshot,
    delete_volume,
    mib,
    qos_class,
    random_suffix,
    retire_volume,
    revert_volume,
    round_up,
    snapshots_with_prefix,
)
from onestorpool.errors import InputError
from onestorpool.naming import Naming, volume_from_source
from onestorpool.storpool import StorPoolClient

PROGRESS_EVERY = 5.0  # seconds between progress lines in the driver log
URL_RE = re.compile(r"^https?://", re.IGNORECASE)
FS_RE = re.compile(r"^[a-z0-9]+$")


# -- the request ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """The IMAGE part of a DS action, as the actions use it."""

    id: int
    source: str = ""
    path: str = ""
    size_mb: int = 0
    format: str = ""
    fs: str = ""
    fstype: str = ""
    driver: str = ""
    md5: str = ""
    sha1: str = ""
    qos: str = ""
    target_snapshot: int | None = None
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class DatastoreInfo:
    id: int
    attributes: dict[str, str] = field(default_factory=dict)
    tm_mad: str = "storpool"
    ds_mad: str = "storpool"


@dataclass(frozen=True)
class SourceCluster:
    """For a clone from a datastore on another StorPool cluster: that cluster's client and
    the gateway host (``SP_CLONE_GW`` or a bridge) that reads the source there."""

    sp: StorPoolClient
    host: hosts.Host
    client_id: int


@dataclass
class DsContext:
    action: str
    object_id: int
    datastore: DatastoreInfo
    image: ImageInfo | None
    config: Config
    naming: Naming
    sp: StorPoolClient
    source_cluster: SourceCluster | None = None
    event: dict[str, Any] = field(default_factory=dict)

    @property
    def tags(self) -> Tags:
        return Tags.from_config(self.config)

    def require_image(self) -> ImageInfo:
        if self.image is None:
            raise InputError(f"{self.action}: the driver action has no IMAGE")
        return self.image

    def image_volume(self) -> str:
        """The image's volume, from its SOURCE; never another OpenNebula instance's."""
        image = self.require_image()
        volume = volume_from_source(image.source) if image.source else self.naming.image(
            image.id)
        if self.naming.parse(volume) is None:
            raise InputError(f"{volume} is not this instance's volume (ONE_PX="
                             f"{self.naming.prefix}); refusing to touch it")
        return volume

    def qos(self) -> str:
        image_qos = self.image.qos if self.image else ""
        return qos_class(image_qos, self.config["SP_QOSCLASS"], self.config["DEFAULT_QOSCLASS"])

    def block_host(self, export: bool = False) -> tuple[hosts.Host, int]:
        """Where block work happens: a BRIDGE_LIST host, or the front-end."""
        candidates = list(self.config["EXPORT_BRIDGE_LIST"]) if export else []
        candidates = candidates or list(self.config["BRIDGE_LIST"])
        host = hosts.get(random.choice(candidates)) if candidates else hosts.frontend()
        return host, hosts.client_id(host, self.config)


log = logging.getLogger("onestorpool.drivers")


def progress(message: str) -> None:
    """A line for oned's log only (``INFO:``), never the user's error message."""
    log.info("%s", message)


# -- cp: import an image ----------------------------------------------------------------------


def cp(ctx: DsContext) -> str:
    image = ctx.require_image()
    final = ctx.naming.image(image.id)
    template = ctx.naming.template(ctx.datastore.id)
    ctx.event.update(volume=final, source_path=_redact_url(image.path))
    if ctx.sp.volume_exists(final):
        raise StorageError(f"volume {final} already exists; refusing to overwrite it")
    path = image.path
    if path.startswith("SPSNAPSHOT:"):
        _import_from_snapshot(ctx, final, template, path.removeprefix("SPSNAPSHOT:"))
    elif path.startswith("VMSNAP:"):
        snapshot, _vm = _vmsnap(ctx, path)
        create_volume(ctx.sp, final, parent=snapshot, template=template,
                      tags=ctx.tags.base(ctx.qos()))
        ctx.event.update(from_snapshot=snapshot)
    else:
        _import_data(ctx, final, template)
    ctx.event["created"] = [final]
    source = ctx.naming.image_source(ctx.datastore.id, image.id)
    # DS_CP_REPORT_FORMAT (default on): "SOURCE raw" tells oned the image is now raw.
    return f"{source} raw" if ctx.config["DS_CP_REPORT_FORMAT"] else source


def _import_from_snapshot(ctx: DsContext, final: str, template: str, snapshot: str) -> None:
    if ctx.require_image().uid != 0 and ctx.require_image().gid != 0:
        raise InputError("cp: SPSNAPSHOT: imports are reserved to oneadmin")
    ctx.sp.snapshot(snapshot)  # NotFound → clear error
    create_volume(ctx.sp, final, parent=snapshot, template=template,
                  tags=ctx.tags.base(ctx.qos()))
    ctx.event.update(from_snapshot=snapshot)


@dataclass
class _Source:
    stream: BinaryIO
    length: int | None  # bytes, when known


@dataclass
class _LocalImage:
    """The image as a local file: the user's own (``users_file``) or one we downloaded or
    decompressed into ``STAGING_DIR``."""

    path: str
    users_file: bool
    length: int
    digests: dict[str, str]
    compression: str | None


def _opener() -> Any:
    """urllib without file:// or ftp:// (also not through a redirect)."""
    import urllib.request

    class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
            if not URL_RE.match(newurl):
                raise InputError(f"cp: refusing a redirect to {_redact_url(newurl)}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    HttpOnlyRedirects(), urllib.request.HTTPErrorProcessor(),
                    urllib.request.HTTPDefaultErrorHandler()):
        opener.add_handler(handler)
    return opener


@contextlib.contextmanager
def _download(url: str, what: str) -> Iterator[_Source]:
    try:
        response = _opener().open(url, timeout=60)
    except OSError as exc:
        raise InputError(f"{what}: cannot download {_redact_url(url)}: {exc}") from None
    with response:
        length = response.headers.get("Content-Length")
        yield _Source(response, int(length) if length and length.isdigit() else None)


def _wanted_hashes(image: ImageInfo) -> tuple[str, ...]:
    """Only what the image asks to check: hashing every byte costs more than the copy."""
    return tuple(name for name, value in (("md5", image.md5), ("sha1", image.sha1)) if value)


@contextlib.contextmanager
def _local_image(ctx: DsContext) -> Iterator[_LocalImage]:
    """The source as a local file qemu-img can inspect; downloads and compressed sources
    go through a private scratch file (qemu-img cannot inspect a stream)."""
    image = ctx.require_image()
    policy = AccessPolicy.for_datastore(ctx.datastore.attributes)
    decompress = wants_decompress(ctx.config["NO_DECOMPRESS"])
    hashes = _wanted_hashes(image)
    scratch_dir = ctx.config["STAGING_DIR"]
    if URL_RE.match(image.path):
        with _download(image.path, "cp") as source, \
                scratch_file(scratch_dir, f"one-img-{image.id}-") as (path, handle):
            reader = PeekableReader(source.stream, hashes)
            compression = compression_of(reader.peek()) if decompress else None
            progress(f"cp: downloading {_redact_url(image.path)}")
            try:
                copy_to_file(decompressing(reader, compression), handle)
            except (OSError, DecompressError) as exc:
                raise InputError(f"cp: cannot read {_redact_url(image.path)}: {exc}") from None
            if source.length is not None and reader.read_bytes != source.length:
                raise InputError(f"cp: download ended after {reader.read_bytes} of "
                                 f"{source.length} bytes")
            handle.flush()
            yield _LocalImage(path, False, handle.tell(), reader.hexdigests(), compression)
        return
    with open_regular_file(image.path, policy) as handle:
        reader = PeekableReader(handle, hashes)
        compression = compression_of(reader.peek()) if decompress else None
        if compression is None:
            if hashes:
                while reader.read(CHUNK):
                    pass
            yield _LocalImage(os.path.realpath(image.path), True,
                              os.fstat(handle.fileno()).st_size, reader.hexdigests(), None)
            return
        with scratch_file(scratch_dir, f"one-img-{image.id}-") as (path, scratch):
            progress(f"cp: decompressing {compression} source")
            try:
                copy_to_file(decompressing(reader, compression), scratch)
            except (OSError, DecompressError) as exc:
                raise InputError(f"cp: cannot decompress {image.path}: {exc}") from None
            scratch.flush()
            yield _LocalImage(path, False, scratch.tell(), reader.hexdigests(), compression)


def _import_data(ctx: DsContext, final: str, template: str) -> None:
    """Read the source once, write the volume once: the local file is inspected, then
    converted straight into the final volume on the front-end. Through a remote bridge a raw
    image is streamed into the final volume; any other format goes through a staging volume
    on the bridge, because qemu-img there can only read a device, not our pipe."""
    image = ctx.require_image()
    with _local_image(ctx) as local:
        _verify_checksums(image, local.digests)
        policy = AccessPolicy.for_datastore(ctx.datastore.attributes)
        facts = inspect(local.path, policy=policy if local.users_file else None)
        if facts.virtual_size == 0:
            raise InputError(f"cp: the image {_redact_url(image.path)} is empty")
        size = round_up(max(facts.virtual_size, image.size_mb * MIB), MIB)
        host, client = ctx.block_host()
        timeout = ctx.config["ATTACH_TIMEOUT"]
        tags = ctx.tags.base(ctx.qos())
        ctx.event.update(format=facts.format, bytes=local.length,
                         virtual_size=facts.virtual_size, host=host.name)
        if local.compression:
            ctx.event["compression"] = local.compression
        with Rollback() as undo:
            create_volume(ctx.sp, final, size=size, template=template, tags=tags)
            undo.push(f"delete {final}", delete_volume, ctx.sp, final)
            if facts.format == "raw":
                _copy_file_into(ctx, local, final, host, client, size)
            elif not host.ssh:
                with attached(ctx.sp, final, host, client, timeout=timeout) as device:
                    progress(f"cp: writing {facts.format} image into {final}")
                    _qemu_convert(host, local.path, facts.format, device, "raw")
            else:
                _convert_on_bridge(ctx, local, facts, final, host, client)


def _copy_file_into(ctx: DsContext, local: _LocalImage, volume: str, host: hosts.Host,
                    client: int, capacity: int) -> None:
    """The local file's bytes into ``volume`` on ``host``, all of them (counted)."""
    with attached(ctx.sp, volume, host, client, timeout=ctx.config["ATTACH_TIMEOUT"]) as device, \
            open(local.path, "rb") as source:
        written = _stream_into(host, device, _Source(source, local.length), capacity,
                               ctx.config["COPY_CMD_DD_BS"])
    if written != local.length:
        raise StorageError(f"cp: wrote {written} of {local.length} bytes")


def _convert_on_bridge(ctx: DsContext, local: _LocalImage, facts: ImageFacts, final: str,
                       host: hosts.Host, client: int) -> None:
    if facts.extents:
        raise InputError("cp: a VMDK made of several files cannot be imported through a "
                         "remote BRIDGE_LIST host; import it on the front-end")
    image = ctx.require_image()
    staging = ctx.naming.staging(image.id)
    delete_volume(ctx.sp, staging)  # a leftover of a crashed import is never reused
    timeout = ctx.config["ATTACH_TIMEOUT"]
    staging_size = round_up(local.length, MIB)
    with Rollback() as undo:
        create_volume(ctx.sp, staging, size=staging_size,
                      template=ctx.naming.template(ctx.datastore.id), tags=ctx.tags.base())
        undo.push(f"delete {staging}", delete_volume, ctx.sp, staging)
        _copy_file_into(ctx, local, staging, host, client, staging_size)
        with attached(ctx.sp, staging, host, client, mode="ro", timeout=timeout) as src, \
                attached(ctx.sp, final, host, client, timeout=timeout) as dst:
            progress(f"cp: converting {facts.format} to raw on {host.name}")
            _qemu_convert(host, src, facts.format, dst, "raw")
        delete_volume(ctx.sp, staging)


def _stream_into(host: hosts.Host, device: str, source: _Source, capacity: int,
                 block_size: str = "1M") -> int:
    """Copy the source into the device on ``host`` (``dd bs=block_size``, the rc's
    ``COPY_CMD_DD_BS``); returns the bytes written."""
    written = 0
    last = time.monotonic()
    total = f"{mib(source.length)} MiB" if source.length else "unknown size"
    sink = host.popen(["dd", f"of={device}", f"bs={block_size}", "iflag=fullblock",
                       "conv=notrunc,fsync", "status=none"],
                      stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert sink.stdin is not None
        while chunk := source.stream.read(CHUNK):
            written += len(chunk)
            if written > capacity:
                raise StorageError(f"cp: source is larger than the {mib(capacity)} MiB "
                                   "it announced")
            sink.stdin.write(chunk)
            if time.monotonic() - last >= PROGRESS_EVERY:
                progress(f"cp: {mib(written)} MiB of {total} copied")
                last = time.monotonic()
        sink.stdin.close()
        stderr = sink.stderr.read() if sink.stderr else b""
        if sink.wait() != 0:
            raise StorageError(f"cp: writing {device} on {host.name} failed: "
                               f"{stderr.decode(errors='replace').strip()[-200:]}")
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return written


def _verify_checksums(image: ImageInfo, digests: dict[str, str]) -> None:
    for name, expected in (("md5", image.md5), ("sha1", image.sha1)):
        if expected and expected.strip().lower() != digests[name]:
            raise StorageError(f"cp: {name.upper()} mismatch: image says {expected.strip()}, "
                               f"data has {digests[name]}")


def _qemu_convert(host: hosts.Host, src: str, src_fmt: str, dst: str, dst_fmt: str) -> None:
    """Into a volume created for it. The format is always given (-f): qemu-img never probes
    a user's bytes again. No host cache on real devices (-t/-T none); -n: the target exists;
    a new StorPool volume reads as zeros, so zero areas are skipped, not written."""
    cache = ["-t", "none", "-T", "none"] if host.direct_io else []
    host.run(["qemu-img", "convert", "-n", "--target-is-zero", "-q", *cache, "-S", "4k",
              "-f", src_fmt, "-O", dst_fmt, src, dst], timeout=None)


def _redact_url(path: str) -> str:
    """URLs may carry credentials (``https://user:pass@...``): never log them."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", path)


# -- mkfs: an empty image ----------------------------------------------------------------------


def mkfs(ctx: DsContext) -> str:
    image = ctx.require_image()
    source = ctx.naming.image_source(ctx.datastore.id, image.id)
    if "save_as" in (image.fstype, image.format):
        ctx.event.update(save_as=True)
        return source  # TM cpds fills it later
    if image.driver and image.driver != "raw":
        raise InputError(f"mkfs: StorPool images are raw, not {image.driver!r}")
    if image.size_mb <= 0:
        raise InputError("mkfs: IMAGE/SIZE must be a positive number of MB")
    fs = image.fs or (image.fstype if image.fstype not in ("", "raw") else "")
    if fs and not FS_RE.match(fs):
        raise InputError(f"mkfs: invalid filesystem type {fs!r}")
    volume = ctx.naming.image(image.id)
    with Rollback() as undo:
        create_volume(ctx.sp, volume, size=image.size_mb * MIB,
                      template=ctx.naming.template(ctx.datastore.id),
                      tags=ctx.tags.base(ctx.qos()))
        undo.push(f"delete {volume}", delete_volume, ctx.sp, volume)
        if fs:
            host, client = ctx.block_host()
            with attached(ctx.sp, volume, host, client,
                          timeout=ctx.config["ATTACH_TIMEOUT"]) as device:
                mkfs_cmd = shlex.split(ctx.config["MKFS"])
                host.run([*mkfs_cmd, "-F", "-t", fs, device], timeout=600)
    ctx.event.update(volume=volume, size_mb=image.size_mb, fs=fs, created=[volume])
    return source  # mkfs prints SOURCE alone: oned takes the whole line


# -- rm: delete an image ----------------------------------------------------------------------


def rm(ctx: DsContext) -> str:
    volume = ctx.image_volume()
    ctx.event.update(volume=volume)
    delay = ctx.config["DELAY_DELETE"]
    remote = ctx.config["REMOTE_BACKUP_DELETE"]
    exists = ctx.sp.volume_exists(volume)
    if exists:
        ctx.event.update(retire_volume(ctx.sp, ctx.naming, ctx.tags, volume, delay=delay,
                                       remote=remote))
    deleted = []
    for snap in snapshots_with_prefix(ctx.sp, ctx.naming.disk_snapshot_prefix(volume)):
        if ctx.naming.parse(snap["name"]) and delete_snapshot(ctx.sp, snap["name"]):
            deleted.append(snap["name"])
    if ctx.config["VMSNAPSHOT_DELETE_ON_TERMINATE"]:
        for snap in snapshots_with_prefix(ctx.sp, ctx.naming.vm_snapshot_marker(volume)):
            if delete_snapshot(ctx.sp, snap["name"]):
                deleted.append(snap["name"])
    ctx.event.update(snapshots_deleted=deleted,
                     removed=([volume] if exists else []) + deleted)
    parsed = ctx.naming.parse(volume)
    if parsed is not None and parsed.kind == "image":
        delete_volume(ctx.sp, ctx.naming.staging(parsed.image_id))
    return ""


# -- stat: size of a source ----------------------------------------------------------------------


def stat(ctx: DsContext) -> str:
    """The size in MiB of what ``cp`` will import: the virtual size of the image, after
    decompression (upstream ``fs_size``); never the length of a compressed or qcow2 file."""
    path = ctx.require_image().path
    if path.startswith("SPSNAPSHOT:"):
        size = int(ctx.sp.snapshot(path.removeprefix("SPSNAPSHOT:")).get("size") or 0)
    elif path.startswith("VMSNAP:"):
        snapshot, _vm = _vmsnap(ctx, path)
        size = int(ctx.sp.snapshot(snapshot).get("size") or 0)
    else:
        size = _source_virtual_size(ctx, path)
    if size <= 0:
        raise InputError(f"Cannot determine size for {_redact_url(path)}")
    ctx.event.update(size_mb=mib(size))
    return str(mib(size))


def _source_virtual_size(ctx: DsContext, path: str) -> int:
    decompress = wants_decompress(ctx.config["NO_DECOMPRESS"])
    scratch_dir = ctx.config["STAGING_DIR"]
    if not URL_RE.match(path):
        policy = AccessPolicy.for_datastore(ctx.datastore.attributes)
        with open_regular_file(path, policy) as handle:
            reader = PeekableReader(handle)
            compression = compression_of(reader.peek()) if decompress else None
            if compression is None:
                return inspect(os.path.realpath(path), policy=policy, check=False).virtual_size
            return _head_virtual_size(decompressing(reader, compression), None, scratch_dir,
                                      path)
    for head in HEAD_BYTES:
        with _download(path, "stat") as source:
            reader = PeekableReader(source.stream)
            compression = compression_of(reader.peek()) if decompress else None
            try:
                return _head_virtual_size(decompressing(reader, compression),
                                          None if compression else source.length,
                                          scratch_dir, path, head)
            except ImageRefused:
                if head == HEAD_BYTES[-1]:
                    raise
    raise AssertionError("unreachable")


def _head_virtual_size(stream: BinaryIO, length: int | None, scratch_dir: str, path: str,
                       head: int = HEAD_BYTES[-1]) -> int:
    """The format from the first ``head`` bytes; a raw image's size is its (decompressed)
    length, anything else's the virtual size in its header."""
    with scratch_file(scratch_dir, "one-stat-") as (scratch, handle):
        try:
            copied = copy_to_file(stream, handle, head)
            handle.flush()
            facts = inspect(scratch, policy=None, check=False)
            if facts.format != "raw":
                return facts.virtual_size
            if length is not None:
                return length
            return copied + decompressed_length(stream)
        except (OSError, DecompressError) as exc:
            raise InputError(f"stat: cannot read {_redact_url(path)}: {exc}") from None


def _vmsnap(ctx: DsContext, path: str) -> tuple[str, Any]:
    from onestorpool import oneapi
    from onestorpool.drivers.vm_volumes import vmsnap_snapshot
    from onestorpool.one import parse_vm

    image = ctx.require_image()
    return vmsnap_snapshot(ctx.naming, path, image.uid, image.gid,
                           lambda vm_id: parse_vm(oneapi.one_call("one.vm.info", vm_id)))


# -- clone ----------------------------------------------------------------------


def clone(ctx: DsContext) -> str:
    image = ctx.require_image()
    parent = volume_from_source(image.path)
    target = ctx.naming.image(image.id)
    template = None if ctx.config["NO_VOLUME_TEMPLATE"] else ctx.naming.template(
        ctx.datastore.id)
    ctx.event.update(volume=target, parent=parent)
    if ctx.sp.volume_exists(target):
        raise StorageError(f"clone: volume {target} already exists")
    if ctx.source_cluster is None:
        with Rollback() as undo:
            create_volume(ctx.sp, target, base_on=parent, template=template,
                          tags=ctx.tags.base(ctx.qos()))
            undo.push(f"delete {target}", delete_volume, ctx.sp, target)
            _grow(ctx.sp, target, image.size_mb)
    else:
        _clone_across_clusters(ctx, ctx.source_cluster, parent, target)
    ctx.event["created"] = [target]
    return f"{ctx.naming.image_source(ctx.datastore.id, image.id)} raw"


def _grow(sp: StorPoolClient, volume: str, size_mb: int) -> None:
    current = int(sp.volume(volume).get("size") or 0)
    if size_mb * MIB > current:
        sp.volume_update(volume, size=size_mb * MIB)


def _clone_across_clusters(ctx: DsContext, source: SourceCluster, parent: str,
                           target: str) -> None:
    """Copy the data between two clusters' devices (two datastores, two API endpoints)."""
    host, client = ctx.block_host()
    size = int(source.sp.volume(parent)["size"])
    tags = ctx.tags.base(ctx.qos())
    with Rollback() as undo:
        create_volume(ctx.sp, target, size=size, template=ctx.naming.template(ctx.datastore.id),
                      tags=tags)
        undo.push(f"delete {target}", delete_volume, ctx.sp, target)
        with attached(source.sp, parent, source.host, source.client_id, mode="ro",
                      timeout=ctx.config["ATTACH_TIMEOUT"]) as src, \
                attached(ctx.sp, target, host, client,
                         timeout=ctx.config["ATTACH_TIMEOUT"]) as dst:
            _copy_device(source.host, src, host, dst, size)
    ctx.event.update(cross_cluster=True, size=size)


def _copy_device(src_host: hosts.Host, src: str, dst_host: hosts.Host, dst: str,
                 size: int) -> None:
    reader = src_host.popen(["dd", f"if={src}", "bs=1M", "status=none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None
    try:
        written = _stream_into(dst_host, dst, _Source(reader.stdout, size),
                                  round_up(size, MIB))
    finally:
        reader.stdout.close()
        reader.wait()
    if reader.returncode != 0 or written != size:
        raise StorageError(f"clone: copied {written} of {size} bytes from {src_host.name}")


# -- image snapshots ----------------------------------------------------------------------


def _target_snapshot(ctx: DsContext) -> tuple[str, str]:
    image = ctx.require_image()
    if image.target_snapshot is None:
        raise InputError(f"{ctx.action}: IMAGE/TARGET_SNAPSHOT is missing")
    volume = ctx.image_volume()
    snapshot = ctx.naming.disk_snapshot(volume, image.target_snapshot)
    ctx.event.update(volume=volume, snapshot=snapshot)
    return volume, snapshot


def snap_delete(ctx: DsContext) -> str:
    _, snapshot = _target_snapshot(ctx)
    deleted = delete_snapshot(ctx.sp, snapshot)
    ctx.event.update(deleted=deleted, removed=[snapshot] if deleted else [])
    return ""


def snap_revert(ctx: DsContext) -> str:
    volume, snapshot = _target_snapshot(ctx)
    revert_to_snapshot(ctx, volume, snapshot)
    return ""


def revert_to_snapshot(ctx: DsContext, volume: str, snapshot: str) -> None:
    kept = revert_volume(ctx.sp, volume, snapshot, delay=ctx.config["DELAY_DELETE"],
                         tags=ctx.tags.base(ctx.qos()))
    ctx.event.update(reverted_from=snapshot, kept_snapshot=kept)


def snap_flatten(ctx: DsContext) -> str:
    volume, snapshot = _target_snapshot(ctx)
    if ctx.sp.volume(volume).get("parentName") != snapshot:
        revert_to_snapshot(ctx, volume, snapshot)
    deleted = [s["name"] for s in snapshots_with_prefix(ctx.sp,
                                                          ctx.naming.disk_snapshot_prefix(volume))
               if _is_disk_snapshot_of(ctx.naming, s["name"], volume)
               and delete_snapshot(ctx.sp, s["name"])]
    ctx.event.update(snapshots_deleted=deleted, removed=deleted)
    return ""


def _is_disk_snapshot_of(naming: Naming, name: str, volume: str) -> bool:
    parsed = naming.parse(name)
    return parsed is not None and parsed.kind == "disk_snapshot" and name.rsplit(
        "-snap", 1)[0] == volume


# -- monitor ----------------------------------------------------------------------


def monitor(ctx: DsContext) -> str:
    template = ctx.naming.template(ctx.datastore.id)
    if ctx.config["SP_SKIP_MONITOR"]:
        # As the Bash add-on's monitor sync: the datastore is not asked about (e.g. its
        # cluster is unreachable from here); oned keeps its last figures.
        ctx.event.update(template=template, skipped="SP_SKIP_MONITOR")
        return ""
    for status in ctx.sp.volume_templates_status():
        if status.get("name") == template:
            break
    else:
        raise StorageError(
            f"StorPool template {template} does not exist: create it with 'storpool template "
            f"{template} replication 3 placeAll <pg> placeTail <pg>' (one template per "
            "datastore)")
    stored = status.get("stored") or {}
    try:
        total = int(stored["capacity"])
        free = int(stored["free"])
        if ctx.config["ALT_STATS"]:
            internal = stored.get("internal") or {}
            free += int(internal.get("u2", 0)) + int(internal.get("u3", 0))
    except (KeyError, TypeError, ValueError):
        raise StorageError(f"VolumeTemplatesStatus: no capacity for {template}") from None
    used = max(0, total - free)
    mb = 1024 * 1024
    ctx.event.update(template=template, total=total, free=free)
    return f"USED_MB={used // mb}\nTOTAL_MB={total // mb}\nFREE_MB={free // mb}"


# -- export (marketplace) ----------------------------------------------------------------------


def export(ctx: DsContext) -> str:
    volume = ctx.image_volume()
    size_mb = mib(int(ctx.sp.volume(volume).get("size") or 0))
    snapshot = ctx.naming.export_snapshot(volume, random_suffix(6))
    host, client = ctx.block_host(export=True)
    fmt = ctx.config["EXPORT_FILE_FORMAT"]
    ctx.event.update(volume=volume, snapshot=snapshot, host=host.name)
    with Rollback() as undo:
        ctx.sp.volume_snapshot(volume, snapshot, tags=ctx.tags.base())
        undo.push(f"delete {snapshot}", delete_snapshot, ctx.sp, snapshot)
        if fmt:
            out_format = "qcow2" if fmt in ("qcow", "qcow2") else "raw"
            staging_dir = ctx.config["STAGING_DIR"].rstrip("/") or "/"
            target = f"{staging_dir}/{snapshot}.{out_format}"
            host.run(["mkdir", "-p", host.path(staging_dir)])
            with attached(ctx.sp, snapshot, host, client, mode="ro", snapshot=True,
                          timeout=ctx.config["ATTACH_TIMEOUT"]) as device:
                extra = shlex.split(ctx.config["EXPORT_QEMU_IMG_ARGS"])
                host.run(["qemu-img", "convert", *extra, "-f", "raw", "-O", out_format,
                          device, host.path(target)], timeout=None)
            undo.push(f"remove {target}", host.run, ["rm", "-f", host.path(target)])
            delete_snapshot(ctx.sp, snapshot)
            location = target
            checksum_path = host.path(target)
        else:
            out_format = "raw"
            ctx.sp.attach(snapshot, client, mode="ro", snapshot=True,
                          timeout=ctx.config["ATTACH_TIMEOUT"])
            location = f"/dev/storpool/{snapshot}"
            checksum_path = host.wait_for_device(snapshot)
            ctx.event["created"] = [snapshot]  # export.delete removes it
        md5 = host.run(["md5sum", checksum_path], timeout=None).stdout.split()[0].decode()
    transport = ctx.config["EXPORT_TRANSPORT"]
    from onestorpool.config import remotes_dir

    remotes = os.environ.get("ONE_REMOTES") or str(remotes_dir())
    dispose = f"{remotes}/datastore/storpool/export.delete {host.name} {location}"
    ctx.event.update(location=location, format=out_format)
    return ("<IMPORT_INFO>"
            f"<IMPORT_SOURCE><![CDATA[{transport}://{host.name}:{location}]]></IMPORT_SOURCE>"
            f"<MD5><![CDATA[{md5}]]></MD5>"
            f"<SIZE><![CDATA[{size_mb}]]></SIZE>"
            f"<FORMAT><![CDATA[{out_format}]]></FORMAT>"
            "<DISPOSE>YES</DISPOSE>"
            f"<DISPOSE_CMD><![CDATA[{dispose}]]></DISPOSE_CMD>"
            "</IMPORT_INFO>")


ACTIONS = {
    "cp": cp, "mkfs": mkfs, "rm": rm, "stat": stat, "clone": clone,
    "snap_delete": snap_delete, "snap_revert": snap_revert, "snap_flatten": snap_flatten,
    "monitor": monitor, "export": export,
}


def unsupported(action: str) -> None:
    raise InputError(f"{action}: operation not supported by the StorPool datastore "
                     "(backups are taken by the TM prebackup/postbackup actions)")

