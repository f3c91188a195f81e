"""Image import as an attacker tries it (issue 8 §1): paths the datastore does not let
users read, images that make qemu-img read another file, corrupt and truncated images,
compressed sources. One test per trick; every refusal is one ERROR line, leaves nothing in
StorPool and is on the record. Images are made with the real qemu-img."""

from __future__ import annotations

import bz2
import gzip
import http.server
import lzma
import os
import subprocess
import threading
from functools import partial
from pathlib import Path

import pytest

from tests.drivers.frontend import datastore_xml, ds_action, image_xml

MIB = 1 << 20
UPSTREAM_REFUSAL = "Not allowed to copy image from {path}, check RESTRICTED_DIRS in your datastore"


def qemu_img(*args: str) -> None:
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def payload_file(directory: Path, size: int = 2 * MIB, name: str = "payload.raw") -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def refused(frontend, path: str, message: str, action: str = "cp",
            datastore: str | None = None) -> None:
    """``action`` on ``path`` fails with ``message`` as its one ERROR line, leaving nothing."""
    before = frontend.storpool_names()
    image_id = 9 if action == "cp" else -1
    result = frontend.run_ds(action, ds_action(image_xml(image_id, path=path, size=4),
                                               datastore), max(image_id, 0))
    assert result.returncode != 0
    assert len(result.error_lines) == 1, result.stderr
    assert message in result.error_lines[0], result.stderr
    assert frontend.storpool_names() == before
    assert frontend.sp.attachments_list() == []
    assert frontend.events()[-1].type == f"ds.{action}.failed"


def imported(frontend, path: Path, image_id: int = 7, datastore: str | None = None) -> bytes:
    """Import ``path`` (stat first, as oned does) and return the volume's bytes."""
    stat = frontend.run_ds("stat", ds_action(image_xml(-1, path=str(path)), datastore), 0)
    assert stat.returncode == 0, stat.stderr
    result = frontend.run_ds("cp", ds_action(image_xml(image_id, path=str(path),
                                                       size=int(stat.stdout)), datastore),
                             image_id)
    assert result.returncode == 0, result.stderr
    volume = f"one-img-{image_id}"
    frontend.sp.attach(volume, 3, mode="ro")
    try:
        return frontend.device("node1", volume).read_bytes()
    finally:
        frontend.sp.detach(volume, [3])


# -- RESTRICTED_DIRS / SAFE_DIRS (upstream libfs.sh check_restricted) ------------------------


@pytest.mark.parametrize("action", ["cp", "stat"])
def test_oned_defaults_refuse_everything_outside_var_tmp(frontend, tmp_path, action):
    secret = payload_file(tmp_path, name="storpool.conf")
    # a datastore created by oned without SAFE_DIRS/RESTRICTED_DIRS gets SAFE_DIRS=/var/tmp
    # and RESTRICTED_DIRS=/ (src/datastore/Datastore.cc, Datastore::insert)
    ds = datastore_xml(SAFE_DIRS="/var/tmp", RESTRICTED_DIRS="/")
    refused(frontend, str(secret), UPSTREAM_REFUSAL.format(path=secret), action, ds)


def test_datastore_without_either_setting_gets_oneds_defaults(frontend, tmp_path):
    secret = payload_file(tmp_path)
    ds = datastore_xml(SAFE_DIRS="", RESTRICTED_DIRS="")
    refused(frontend, str(secret), UPSTREAM_REFUSAL.format(path=secret), "cp", ds)


def test_symlink_in_a_safe_dir_to_a_restricted_file(frontend, tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    secret = payload_file(private, name="token")
    safe = tmp_path / "safe"
    safe.mkdir()
    (safe / "disk.img").symlink_to(secret)
    ds = datastore_xml(SAFE_DIRS=str(safe), RESTRICTED_DIRS="/")
    refused(frontend, str(safe / "disk.img"),
            UPSTREAM_REFUSAL.format(path=safe / "disk.img"), "cp", ds)
    refused(frontend, f"{safe}/../private/token",
            UPSTREAM_REFUSAL.format(path=f"{safe}/../private/token"), "cp", ds)


def test_oneadmin_home_and_one_location_are_always_restricted(frontend, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    secret = payload_file(home, name="one_auth")
    frontend.env["HOME"] = str(home)
    ds = datastore_xml(SAFE_DIRS="", RESTRICTED_DIRS="/nothing-here")
    refused(frontend, str(secret), UPSTREAM_REFUSAL.format(path=secret), "cp", ds)
    frontend.env["HOME"] = "/root"
    frontend.env["ONE_LOCATION"] = str(tmp_path / "one")
    etc = tmp_path / "one" / "etc"
    etc.mkdir(parents=True)
    conf = payload_file(etc, name="oned.conf")
    refused(frontend, str(conf), UPSTREAM_REFUSAL.format(path=conf), "cp", ds)


def test_safe_dirs_win_over_restricted_dirs(frontend, tmp_path):
    image = payload_file(tmp_path)
    ds = datastore_xml(SAFE_DIRS=str(tmp_path), RESTRICTED_DIRS="/")
    assert imported(frontend, image, datastore=ds)[:len(image.read_bytes())] == \
        image.read_bytes()


def test_devices_and_fifos_are_not_images(frontend, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(frontend, str(fifo), f"{fifo} is not a regular file")  # and does not hang
    ds = datastore_xml(SAFE_DIRS="/", RESTRICTED_DIRS="")
    refused(frontend, "/dev/zero", "/dev/zero is not a regular file", "stat", ds)


# -- images that name another file -------------------------------------------------------------


def descriptor(directory: Path, extent: str, name: str = "evil.vmdk",
               kind: str = "FLAT") -> Path:
    path = directory / name
    path.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n# Extent description\n'
        f'RW 4096 {kind} "{extent}" 0\n\n# The Disk Data Base\n#DDB\n'
        'ddb.adapterType = "ide"\nddb.virtualHWVersion = "4"\n')
    return path


@pytest.mark.parametrize("extent", [
    "/etc/passwd",                                        # absolute
    "../outside/secret.raw",                              # relative, out of the directory
    'json:{"driver":"file","filename":"/etc/passwd"}',    # a json: file name
    "nbd://127.0.0.1:10809/export",                       # a protocol
])
def test_vmdk_extent_outside_its_directory(frontend, tmp_path, extent):
    (tmp_path / "outside").mkdir()
    payload_file(tmp_path / "outside", name="secret.raw")
    images = tmp_path / "images"
    images.mkdir()
    vmdk = descriptor(images, extent.replace('"', '\\"') if extent.startswith("json") else extent)
    for action in ("stat", "cp"):
        refused(frontend, str(vmdk), "names an extent outside its directory", action)


def test_vmdk_extent_symlinked_out_of_the_directory(frontend, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "flat.raw").symlink_to("/etc/passwd")
    refused(frontend, str(descriptor(images, "flat.raw")), "names an extent outside")


def test_vmdk_extent_that_is_a_fifo(frontend, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    refused(frontend, str(descriptor(tmp_path, "pipe")), "not a plain file")


def test_vmdk_extent_in_a_restricted_subdirectory_of_a_safe_one(frontend, tmp_path):
    vmdk = descriptor(tmp_path, "flat.raw")
    payload_file(tmp_path, name="flat.raw")
    ds = datastore_xml(SAFE_DIRS=str(vmdk), RESTRICTED_DIRS="/")  # only the descriptor
    refused(frontend, str(vmdk), "names an extent outside", "cp", ds)


def test_sparse_vmdk_with_an_embedded_descriptor_naming_another_file(frontend, tmp_path):
    """A KDMV file with capacity 0 is read as a descriptor (qemu's vmdk_open_vmdk4):
    only qemu-img's view of the extents shows it."""
    vmdk = tmp_path / "sparse.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicSparse", str(vmdk), "1M")
    data = bytearray(vmdk.read_bytes())
    offset = int.from_bytes(data[28:36], "little") * 512  # descriptor offset (sectors)
    size = int.from_bytes(data[36:44], "little") * 512
    text = data[offset:offset + size].split(b"\0", 1)[0].decode()
    evil = "\n".join('RW 2048 FLAT "/etc/passwd" 0' if line.startswith("RW ") else line
                     for line in text.splitlines()) + "\n"
    evil = evil.replace('createType="monolithicSparse"', 'createType="monolithicFlat"')
    data[offset:offset + size] = evil.encode().ljust(size, b"\0")
    data[12:20] = (0).to_bytes(8, "little")  # capacity 0: "use the descriptor"
    vmdk.write_bytes(bytes(data))
    refused(frontend, str(vmdk), "names an extent outside")


def test_multi_file_vmdk_beside_its_descriptor_imports(frontend, tmp_path):
    raw = payload_file(tmp_path, size=3 * MIB)
    images = tmp_path / "images"
    images.mkdir()
    vmdk = images / "split.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=twoGbMaxExtentFlat",
             str(raw), str(vmdk))
    assert len(list(images.iterdir())) == 2  # the descriptor and its flat extent
    assert imported(frontend, vmdk)[:3 * MIB] == raw.read_bytes()


def test_qcow2_backing_file(frontend, tmp_path):
    secret = payload_file(tmp_path, name="secret.raw")
    image = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(image))
    refused(frontend, str(image), "names a backing file")


def test_qcow2_json_backing_file(frontend, tmp_path):
    image = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-F", "raw", "-b",
             'json:{"driver":"file","filename":"/etc/passwd"}', str(image), "1M")
    refused(frontend, str(image), "names a backing file")


def test_qcow2_external_data_file(frontend, tmp_path):
    data = payload_file(tmp_path, name="data.raw")
    image = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data},data_file_raw=on",
             str(image), "2M")
    refused(frontend, str(image), "names an external data file")


@pytest.mark.parametrize("fmt", ["qed", "vmdk", "qcow"])
def test_backing_file_of_other_formats(frontend, tmp_path, fmt):
    secret = payload_file(tmp_path, name="secret.raw")
    base_fmt = "vmdk" if fmt == "vmdk" else "qcow2"  # a VMDK's parent is a VMDK
    base = tmp_path / f"base.{base_fmt}"
    qemu_img("convert", "-f", "raw", "-O", base_fmt, str(secret), str(base))
    image = tmp_path / f"evil.{fmt}"
    qemu_img("create", "-f", fmt, "-F", base_fmt, "-b", str(base), str(image))
    refused(frontend, str(image), "names a backing file")


def test_formats_nobody_checked_are_refused(frontend, tmp_path):
    image = tmp_path / "disk.luks"
    for _ in range(5):  # qemu's key-stretching benchmark at times cannot measure ("Unable
        done = subprocess.run(  # to get accurate CPU usage"): it only needs another try
            ["qemu-img", "create", "--object", "secret,id=s0,data=pw", "-f", "luks", "-o",
             "key-secret=s0,iter-time=200", str(image), "1M"], capture_output=True, text=True)
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr
    refused(frontend, str(image), "image format 'luks' is not supported")


# -- corrupt and truncated images -------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "message"), [
    ("qcow2", "corrupt or truncated"),  # qemu-img check finds it
    ("vmdk", "corrupt or truncated"),
    ("vdi", "truncated: its data reaches byte"),  # check passes; the map shows it
    ("vhdx", "qemu-img info"),  # not even readable
])
def test_truncated_images(frontend, tmp_path, fmt, message):
    raw = payload_file(tmp_path, size=4 * MIB)
    image = tmp_path / f"disk.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, str(raw), str(image))
    data = image.read_bytes()
    image.write_bytes(data[:len(data) // 2])
    refused(frontend, str(image), message)


def test_download_shorter_than_announced(frontend, tmp_path):
    class Liar(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(4 * MIB))
            self.end_headers()
            self.wfile.write(b"\1" * MIB)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refused(frontend, f"http://127.0.0.1:{server.server_address[1]}/x.raw", "cp: ")
    finally:
        server.shutdown()


# -- compressed sources (upstream downloader.sh) -----------------------------------------------

COMPRESSORS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_compressed_sources_are_decompressed(frontend, tmp_path, suffix, fmt):
    raw = payload_file(tmp_path, size=3 * MIB)
    image = raw
    if fmt == "qcow2":
        image = tmp_path / "disk.qcow2"
        qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
        qemu_img("resize", "-f", "qcow2", str(image), "20M")
    packed = tmp_path / f"{image.name}.{suffix}"
    packed.write_bytes(COMPRESSORS[suffix](image.read_bytes()))
    stat = frontend.run_ds("stat", ds_action(image_xml(-1, path=str(packed))), 0)
    assert stat.stdout == ("20\n" if fmt == "qcow2" else "3\n"), stat.stderr
    data = imported(frontend, packed)
    assert data[:3 * MIB] == raw.read_bytes()
    assert frontend.events()[-1].payload["compression"] == {"gz": "gzip", "bz2": "bzip2",
                                                            "xz": "xz"}[suffix]


def test_no_decompress_imports_the_bytes_as_they_are(frontend, tmp_path):
    packed = tmp_path / "disk.raw.gz"
    packed.write_bytes(gzip.compress(os.urandom(MIB)))
    ds = datastore_xml(NO_DECOMPRESS="yes")
    data = imported(frontend, packed, datastore=ds)
    assert data[:packed.stat().st_size] == packed.read_bytes()


def test_corrupt_compressed_source(frontend, tmp_path):
    packed = tmp_path / "disk.raw.gz"
    packed.write_bytes(gzip.compress(os.urandom(MIB))[:5000])
    refused(frontend, str(packed), "cannot decompress")


def test_stat_over_http_reports_the_virtual_size(frontend, tmp_path):
    raw = payload_file(tmp_path, size=15 * MIB)
    image = tmp_path / "web.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    qemu_img("resize", "-f", "qcow2", str(image), "20M")
    (tmp_path / "web.qcow2.xz").write_bytes(lzma.compress(image.read_bytes()))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for name in ("web.qcow2", "web.qcow2.xz"):
            stat = frontend.run_ds("stat", ds_action(image_xml(-1, path=f"{base}/{name}")), 0)
            assert stat.stdout == "20\n", stat.stderr
        assert frontend.run_ds("stat", ds_action(image_xml(-1, path=f"{base}/payload.raw")),
                               0).stdout == "15\n"
    finally:
        server.shutdown()
