"""A checkpoint on StorPool in the Bash add-on's format (``oneCheckpointSave``): the file as
a tar member, compressed with ``SP_COMPRESSION``, written on ``<px>-sys-<VM>-checkpoint``
from its first byte; read back and checked (size, SHA-256) before the file may go, and
brought back (checked against the volume's tags) before a restore. Used by the subscriber's
relocation (:mod:`onestorpool.subscribers.checkpoint`) and the ``restore`` local action.

A relocation and a restore of one VM never overlap: both hold the VM's lock file beside the
event log on the front-end, where the subscriber and oned's local actions run.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from onestorpool import hosts
from onestorpool.errors import AddonError, InputError
from onestorpool.one import Vm, VmState

CHECKPOINT_TYPE = "CHKPNT"  # the ``type`` tag, as the Bash add-on's
MIB = 1 << 20

# first bytes of a compressed stream -> the command that decompresses it (read by magic: a
# volume written with another SP_COMPRESSION, or by the Bash add-on, still reads); then
# ``stream_ok STATUS ERRFILE`` judges the decompressor. The volume goes on after the
# archive: lz4 then exits 1 without a word, and says "Error" when the data is damaged
# (content checksum); the other tools' complaints about the bytes after are not told apart
# from damage, so only tar judges their archive (and our own copies are checked by SHA-256).
_DECOMPRESS = """
magic=$(head -c 4 "$dev" | od -An -tx1 | tr -d ' \\n')
case $magic in
    04224d18) kind=lz4 decompress="lz4 -dc" ;;
    28b52ffd) kind=zstd decompress="zstd -dcq" ;;
    1f8b*) kind=gzip decompress="gzip -dc" ;;
    fd377a58) kind=xz decompress="xz -dc" ;;
    425a68*) kind=bzip2 decompress="bzip2 -dc" ;;
    *) echo "$dev holds no compressed checkpoint archive (starts with ${magic:-nothing})" >&2
       exit 3 ;;
esac
stream_ok() {
    if [ "$kind" = lz4 ] && { [ "$1" -gt 1 ] || grep -q Error "$2"; }; then
        echo "$dev: the archive is damaged ($(grep -m1 . "$2"))" >&2
        return 1
    fi
}
work=$(mktemp -d) || exit 1
trap 'rm -rf "$work"' EXIT
"""

# size and SHA-256 of a file, or "absent"
_INSPECT = """set -eu
f=$1
if [ ! -f "$f" ]; then echo absent; exit 0; fi
size=$(stat -c %s -- "$f")
sum=$(sha256sum < "$f" | cut -d' ' -f1)
echo "$size $sum"
"""

# the file as a tar member (path relative to root), compressed, to stdout; and that stream
# onto the device from its first byte (never truncated: a device, or a sandbox volume file)
_ARCHIVE = """set -eu -o pipefail
root=$1 member=$2 compress=$3
tar -C "$root" -cf - -- "$member" | "$compress" -c"""
_ONTO_DEVICE_FROM_ARCHIVE = """ | dd of="$4" bs=1M conv=notrunc,fsync status=none
"""
_ONTO_DEVICE = """set -eu
dd of="$1" bs=1M conv=notrunc,fsync status=none
"""

# size and SHA-256 of the archive's content, in one pass; tar says whether the archive was
# whole (a truncated one is "Unexpected EOF")
_READ_BACK = """set -u
dev=$1
""" + _DECOMPRESS + """
mkfifo "$work/fifo"
sha256sum < "$work/fifo" | cut -d' ' -f1 > "$work/sum" &
summer=$!
size=$($decompress < "$dev" 2>"$work/err" | tar -xOf - | tee "$work/fifo" | wc -c
       echo "${PIPESTATUS[0]} ${PIPESTATUS[1]}" > "$work/status")
wait "$summer"
read -r decompressed untarred < "$work/status"
[ "$untarred" = 0 ] || { echo "$dev: not a whole archive" >&2; exit 4; }
stream_ok "$decompressed" "$work/err" || exit 5
echo "$size $(cat "$work/sum")"
"""

# the archive's content into "$dst.restoring" (renamed once verified); its size and SHA-256
_EXTRACT = """set -u
dev=$1 dst=$2
""" + _DECOMPRESS + """
mkdir -p -- "$(dirname -- "$dst")"
$decompress < "$dev" 2>"$work/err" | tar -xOf - > "$dst.restoring"
status=("${PIPESTATUS[@]}")
if [ "${status[1]}" != 0 ]; then
    rm -f -- "$dst.restoring"; echo "$dev: not a whole archive" >&2; exit 4
fi
stream_ok "${status[0]}" "$work/err" || { rm -f -- "$dst.restoring"; exit 5; }
size=$(stat -c %s -- "$dst.restoring")
sum=$(sha256sum < "$dst.restoring" | cut -d' ' -f1)
echo "$size $sum"
"""


class CheckpointError(AddonError):
    """A checkpoint cannot be moved or brought back; nothing was removed."""


@dataclass(frozen=True)
class Facts:
    """What identifies a checkpoint's bytes."""

    size: int
    sha256: str

    @classmethod
    def parse(cls, line: str, where: str) -> Facts:
        words = line.split()
        if (len(words) != 2 or not words[0].isdigit() or len(words[1]) != 64
                or any(c not in "0123456789abcdef" for c in words[1])):
            raise CheckpointError(f"{where}: unexpected output {line[:100]!r}")
        return cls(int(words[0]), words[1])

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Facts | None:
        """Recorded on a volume we wrote; ``None`` for one the Bash add-on wrote."""
        try:
            return cls.parse(f"{tags['bytes']} {tags['sha256']}", "tags")
        except (KeyError, CheckpointError):
            return None

    def tags(self) -> dict[str, str]:
        return {"bytes": str(self.size), "sha256": self.sha256}


@dataclass(frozen=True)
class Place:
    """Where a checkpoint file is: a host and the absolute path on it."""

    host: hosts.Host
    path: str

    def __str__(self) -> str:
        return f"{self.host.name}:{self.path}"


# -- the lock shared with the restore action ------------------------------------------------


def locked(vm_id: int) -> contextlib.AbstractContextManager[None]:
    """One relocation or restore of ``vm_id`` at a time on this front-end."""
    from onestorpool.config import event_log_path
    from onestorpool.eventlog.store import lock_beside_log

    return lock_beside_log(str(event_log_path()), f"checkpoint-{int(vm_id)}")


# -- host side ------------------------------------------------------------------------------


def _bash(host: hosts.Host, script: str, *args: str, timeout: float = 3600,
          stdin: Any = None) -> str:
    """``script`` run by bash on the host with ``args``; its stdout. A checkpoint of many GiB
    takes minutes: the subscriber's watchdog is fed meanwhile."""
    import subprocess

    process = host.popen(["bash", "-c", script, "checkpoint", *args],
                         stdin=subprocess.DEVNULL if stdin is None else stdin,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return _finish(process, host, timeout).decode("utf-8", "replace").strip()


def _finish(process: Any, host: hosts.Host, timeout: float) -> bytes:
    """Wait for ``process`` (run on ``host``) feeding the watchdog; its output, or one
    error naming the host and its last complaint."""
    import subprocess
    import time

    from onestorpool.subscribers import notify

    deadline = time.monotonic() + timeout
    while True:
        try:
            out, err = process.communicate(timeout=2)
            break
        except subprocess.TimeoutExpired:
            notify.alive()
            if time.monotonic() > deadline:
                process.kill()
                process.communicate()
                raise CheckpointError(f"{host.name}: no end after {timeout:.0f}s") from None
    if process.returncode != 0:
        lines = [line.strip() for line in (err or b"").decode("utf-8", "replace").splitlines()
                 if line.strip()]
        raise CheckpointError(f"{host.name}: {lines[-1] if lines else 'failed'} "
                              f"(exit {process.returncode})")
    return out or b""


def inspect_file(place: Place) -> Facts | None:
    """Size and checksum of the checkpoint file, ``None`` when there is none."""
    output = _bash(place.host, _INSPECT, place.host.path(place.path))
    return None if output == "absent" else Facts.parse(output, str(place))


def write_archive(place: Place, device: str, compressor: str,
                  writer: hosts.Host | None = None) -> None:
    """The archive of the file at ``place`` onto ``device``: on the file's own host, in one
    command; or, given another ``writer`` (the file's host is no StorPool client), streamed
    from the file's host to ``writer``, where the device is."""
    import subprocess

    root, member = place.host.path("/"), place.path.lstrip("/")
    if writer is None or writer.name == place.host.name:
        _bash(place.host, _ARCHIVE + _ONTO_DEVICE_FROM_ARCHIVE, root, member, compressor,
              device)
        return
    source = place.host.popen(["bash", "-c", _ARCHIVE, "checkpoint", root, member, compressor],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert source.stdout is not None and source.stderr is not None
    try:
        _bash(writer, _ONTO_DEVICE, device, stdin=source.stdout)
    finally:
        source.stdout.close()  # the writer had its copy; a writer that died ends the source
        complaint = source.stderr.read().decode("utf-8", "replace").strip()
        source.stderr.close()
        code = source.wait(timeout=60)
    if code != 0:  # dd wrote what came: a source that failed leaves no good copy
        reason = complaint.splitlines()[-1] if complaint else "failed"
        raise CheckpointError(f"{place.host.name}: {reason} (exit {code})")


def read_back(host: hosts.Host, device: str) -> Facts:
    return Facts.parse(_bash(host, _READ_BACK, device), f"{host.name}:{device}")


@contextlib.contextmanager
def _attached(sp: Any, volume: str, host: hosts.Host, client: int, mode: str,
              timeout: int) -> Iterator[str]:
    """``volume`` attached to ``host`` only (a host a crashed run left it on is forced off)
    for the block; detached after it."""
    from onestorpool.drivers.storage import detach_all

    sp.volumes_reassign_wait([{"volume": volume, "detach": "all", "force": True},
                              {"volume": volume, mode: [client]}], attach_timeout=timeout)
    try:
        yield host.wait_for_device(volume, timeout=max(timeout, 5))
    finally:
        detach_all(sp, volume)


# -- where the file is ------------------------------------------------------------------------


def folder(vm: Vm, base_path: str) -> str:
    """The VM folder on the system datastore (``<BASE_PATH>/<VM>``, oned's
    ``DATASTORE_LOCATION/<DS>/<VM>`` of ``History::non_persistent_data``)."""
    if not base_path.startswith("/") or ".." in base_path.split("/"):
        raise InputError(f"system datastore BASE_PATH {base_path!r} is not an absolute path")
    return posixpath.join(posixpath.normpath(base_path), str(vm.id))  # oned writes "//"


def saved_place(vm: Vm, base_path: str, system_mode: str) -> Place:
    """A STOPPED VM's folder went to the front-end with ``SP_SYSTEM=ssh``; otherwise the
    checkpoint is on the VM's last host (a shared folder is seen there too)."""
    path = posixpath.join(folder(vm, base_path), "checkpoint")
    if vm.state == VmState.STOPPED and system_mode == "ssh":
        return Place(hosts.frontend(), path)
    if not vm.hostname:
        raise InputError(f"VM {vm.id} has no host in its history")
    return Place(hosts.get(vm.hostname), path)


# -- the volume -------------------------------------------------------------------------------


def volume_size(size: int) -> int:
    """Twice the file, in whole MiB, as the Bash add-on sized it (at least 1 MiB: the
    archive's headers need room even for an empty file)."""
    return max(1, -(-2 * size // MIB)) * MIB


def _ours(volume: dict[str, Any], config: Any, vm_id: int) -> bool:
    """The volume belongs to this ONE instance's VM (a volume of another instance sharing
    the cluster and prefix is never touched)."""
    tags = volume.get("tags") or {}
    loc, vm_tag = config["LOC_TAG"], config["VM_TAG"]
    if tags.get(loc) not in (None, config.loc_tag_value):
        return False
    return not (vm_tag and tags.get(vm_tag) not in (None, str(vm_id)))


def _existing(sp: Any, name: str, config: Any, vm_id: int) -> dict[str, Any] | None:
    from onestorpool.storpool import NotFound

    try:
        volume = sp.volume(name)
    except NotFound:
        return None
    if not _ours(volume, config, vm_id):
        raise CheckpointError(f"{name} exists with the tags of another OpenNebula instance "
                              f"({volume.get('tags')}); it is left alone")
    return volume


def writer_for(place: Place, config: Any, relay: str) -> tuple[hosts.Host, int]:
    """The host the volume is attached to while it is written and read back: the file's,
    or, when that is a front-end that is no StorPool client, ``relay`` (the VM's last host,
    a client: the Bash add-on archived a stopped VM's checkpoint there, before the folder
    left it)."""
    from onestorpool.errors import ConfigError

    try:
        return place.host, hosts.client_id(place.host, config)
    except ConfigError:
        if not relay or relay == place.host.name:
            raise
    writer = hosts.get(relay)
    return writer, hosts.client_id(writer, config)


def store(sp: Any, config: Any, vm: Vm, datastore_id: int, place: Place,
          relay: str = "") -> dict[str, Any]:
    """The checkpoint file at ``place`` copied onto the VM's volume and verified (``relay``:
    a StorPool client to write through if the file's host is none). Returns what was
    done; the caller removes the file."""
    from onestorpool.drivers.storage import Tags, create_volume, delete_volume

    naming = config.naming()
    name = naming.checkpoint(vm.id)
    outcome: dict[str, Any] = {"vm": vm.id, "volume": name, "file": str(place)}
    facts = inspect_file(place)
    existing = _existing(sp, name, config, vm.id)
    if facts is None:
        if existing is not None:
            return {**outcome, "note": "relocated already (no file, the volume is there)"}
        return {**outcome, "skipped": "no checkpoint file"}
    writer, client = writer_for(place, config, relay)
    timeout = config["ATTACH_TIMEOUT"]
    if existing is not None:  # an earlier run died: its copy counts only if it verifies
        with _attached(sp, name, writer, client, "ro", timeout) as device:
            try:
                copy: Facts | None = read_back(writer, device)
            except CheckpointError:
                copy = None
        if copy == facts:
            outcome["note"] = "verified the copy of an earlier run"
        else:
            delete_volume(sp, name)
            existing = None
    if existing is None:
        tags = {**Tags.from_config(config).for_vm(vm.id, None, CHECKPOINT_TYPE),
                **facts.tags()}
        create_volume(sp, name, size=volume_size(facts.size),
                      template=naming.template(datastore_id), tags=tags)
        with _attached(sp, name, writer, client, "rw", timeout) as device:
            write_archive(place, device, config["SP_COMPRESSION"], writer)
            try:
                copy = read_back(writer, device)
                problem = "" if copy == facts else f"reads back as {copy}, not {facts}"
            except CheckpointError as exc:
                problem = str(exc)
        if problem:  # no copy that cannot be trusted is kept
            delete_volume(sp, name)
            raise CheckpointError(f"the copy of {place} on {name} failed its check, the file "
                                  f"stays: {problem}")
        outcome["volume_size"] = volume_size(facts.size)
    if writer.name != place.host.name:
        outcome["written_on"] = writer.name
    return {**outcome, "bytes": facts.size, "sha256": facts.sha256,
            "compression": config["SP_COMPRESSION"]}


def bring_back(sp: Any, config: Any, vm_id: int, place: Place) -> dict[str, Any]:
    """Before a restore: the checkpoint file at ``place`` as it was saved. A file that is
    there is the checkpoint; else the volume's archive is extracted beside it, verified
    (against the size and checksum the volume records; a Bash add-on volume records none:
    a whole archive is its check) and renamed into place. Neither file nor volume: one
    clear error."""
    if not place.path.startswith("/") or ".." in place.path.split("/"):
        raise InputError(f"restore: the checkpoint path {place.path!r} is not absolute")
    name = config.naming().checkpoint(vm_id)
    if inspect_file(place) is not None:
        return {"checkpoint": "file"}
    volume = _existing(sp, name, config, vm_id)
    if volume is None:
        raise CheckpointError(f"VM {vm_id} has no checkpoint: no volume {name} and no file "
                              f"{place}")  # oned shows 100 characters: the gist first
    expected = Facts.from_tags(volume.get("tags") or {})
    client = hosts.client_id(place.host, config)
    target = place.host.path(place.path)
    with _attached(sp, name, place.host, client, "ro", config["ATTACH_TIMEOUT"]) as device:
        got = Facts.parse(_bash(place.host, _EXTRACT, device, target), str(place))
    if expected is not None and got != expected:
        place.host.run(["rm", "-f", "--", f"{target}.restoring"], check=False)
        raise CheckpointError(f"{name} reads back as {got}, it recorded {expected}: "
                              "the checkpoint is damaged; the volume is kept")
    place.host.run(["mv", "-f", "--", f"{target}.restoring", target])
    return {"checkpoint": "volume", "volume": name, "bytes": got.size, "sha256": got.sha256,
            "verified": expected is not None}


def forget(sp: Any, config: Any, vm_id: int) -> str | None:
    """After a restore that succeeded: the VM's checkpoint volume removed (at once: memory
    of a VM that runs again is nobody's data). Returns its name if there was one."""
    from onestorpool.drivers.storage import delete_volume

    name = config.naming().checkpoint(vm_id)
    if _existing(sp, name, config, vm_id) is None:
        return None
    delete_volume(sp, name)
    return name
