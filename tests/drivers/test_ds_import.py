"""Datastore ``cp`` (image import) and ``stat``: raw, qcow2, VMDK and VHDX made with the
real qemu-img from a known payload; the data read back through the StorPool device."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import threading
from functools import partial
from pathlib import Path

import pytest

from tests.drivers.frontend import ds_action, image_xml

MIB = 1 << 20
FORMATS = ["raw", "qcow2", "vmdk", "vhdx"]


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(3 * MIB + 4096)  # not a MiB multiple on purpose


def make_image(directory: Path, payload: bytes, fmt: str) -> Path:
    raw = directory / "payload.raw"
    raw.write_bytes(payload)
    if fmt == "raw":
        return raw
    target = directory / f"payload.{fmt}"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(target)],
                   check=True)
    return target


def read_volume(frontend, volume: str, length: int) -> bytes:
    frontend.sp.attach(volume, 3, mode="ro")
    try:
        with frontend.device("node1", volume).open("rb") as dev:
            return dev.read(length)
    finally:
        frontend.sp.detach(volume, [3])


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_any_format_reads_back_the_payload(frontend, tmp_path, payload, fmt):
    image = make_image(tmp_path, payload, fmt)
    stat = frontend.run_ds("stat", ds_action(image_xml(-1, path=str(image))), 0)
    assert stat.returncode == 0, stat.stderr
    size_mb = int(stat.stdout.strip())
    assert size_mb == 4  # virtual size rounded up to whole MiB
    result = frontend.run_ds("cp", ds_action(image_xml(7, path=str(image), size=size_mb,
                                                       template={"MD5": hashlib.md5(
                                                           image.read_bytes()).hexdigest()}
                                                       if fmt == "raw" else None)), 7)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one-ds-100/one-img-7 raw\n"
    volume = frontend.sp.volume("one-img-7")
    assert volume["templateName"] == "one-ds-100" and volume["size"] >= len(payload)
    assert volume["tags"] == {"virt": "one", "nloc": "one"}
    assert read_volume(frontend, "one-img-7", len(payload)) == payload
    assert frontend.storpool_names() == {"one-img-7"}  # no staging volume left
    assert frontend.sp.attachments_list() == []
    (event,) = [e for e in frontend.events() if e.type.startswith("ds.cp")]
    assert event.type == "ds.cp" and event.image == 7 and event.datastore == 100
    assert event.payload["format"] == fmt and event.payload["created"] == ["one-img-7"]


def test_import_over_http_with_bridge_and_qos(frontend, tmp_path, payload):
    image = make_image(tmp_path, payload, "qcow2")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{image.name}"
    try:
        xml = ds_action(image_xml(8, path=url, size=4, template={"SP_QOSCLASS": "gold"}),
                        datastore=_ds(BRIDGE_LIST="bridge1"))
        result = frontend.run_ds("cp", xml, 8, convention="argv")
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert frontend.sp.volume("one-img-8")["tags"]["qc"] == "gold"
    assert read_volume(frontend, "one-img-8", len(payload)) == payload
    assert frontend.events()[-1].payload["host"] == "bridge1"


def _ds(**attributes):
    from tests.drivers.frontend import datastore_xml

    return datastore_xml(**attributes)


@pytest.mark.parametrize(("case", "build", "message"), [
    ("missing file", lambda d: image_xml(9, path=str(d / "missing.img"), size=4),
     "(No such file or directory)"),
    ("relative path", lambda d: image_xml(9, path="disk.img", size=4), "absolute path"),
    ("checksum", lambda d: image_xml(9, path=str(d / "payload.raw"), size=4,
                                     template={"MD5": "0" * 32}), "MD5 mismatch"),
    ("unreachable URL", lambda d: image_xml(9, path="http://127.0.0.1:9/x.img", size=4),
     "cannot download"),
])
def test_failed_import_leaves_nothing_behind(frontend, tmp_path, payload, case, build,
                                             message):
    make_image(tmp_path, payload, "raw")
    before = frontend.storpool_names()
    result = frontend.run_ds("cp", ds_action(build(tmp_path)), 9)
    assert result.returncode != 0
    assert len(result.error_lines) == 1 and message in result.error_lines[0]
    assert frontend.storpool_names() == before
    assert frontend.sp.attachments_list() == []
    (event,) = frontend.events()
    assert event.type == "ds.cp.failed" and message in event.payload["error"]


def test_import_refuses_to_overwrite(frontend, tmp_path, payload):
    frontend.sp.volume_create("one-img-5", size=MIB)
    image = make_image(tmp_path, payload, "raw")
    result = frontend.run_ds("cp", ds_action(image_xml(5, path=str(image), size=4)), 5)
    assert result.returncode == 1 and "already exists" in result.stderr
    assert frontend.sp.volume("one-img-5")["size"] == MIB


def test_import_from_storpool_snapshot(frontend):
    frontend.sp.volume_create("golden", size=2 * MIB)
    frontend.sp.volume_snapshot("golden", "golden-snap")
    xml = ds_action(image_xml(11, path="SPSNAPSHOT:golden-snap", size=2))
    assert frontend.run_ds("stat", xml, 0).stdout == "2\n"
    result = frontend.run_ds("cp", xml, 11)
    assert result.returncode == 0, result.stderr
    assert frontend.sp.volume("one-img-11")["parentName"] == "golden-snap"


def test_stat_errors(frontend, tmp_path):
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    result = frontend.run_ds("stat", ds_action(image_xml(-1, path=str(empty))), 0)
    assert result.returncode != 0 and f"Cannot determine size for {empty}" in result.stderr


@pytest.mark.parametrize("convention", ["stdin", "dash", "argv"])
def test_every_calling_convention(frontend, tmp_path, payload, convention):
    image = make_image(tmp_path, payload, "raw")
    result = frontend.run_ds("stat", ds_action(image_xml(-1, path=str(image))), 0,
                             convention=convention)
    assert (result.returncode, result.stdout) == (0, "4\n")


@pytest.mark.parametrize(("stdin", "message"), [
    ("not base64 !!", "not valid base64"),
    ("PGZvby8+", "expected DS_DRIVER_ACTION_DATA"),  # <foo/>
    ("PCFET0NUWVBFIHg+PHg+PC94Pg==", "DOCTYPE"),  # <!DOCTYPE x><x></x>
    ("PERTX0RSSVZFUl9BQ1RJT05fREFUQT48L0RTX0RSSVZFUl9BQ1RJT05fREFUQT4=",
     "DATASTORE: missing"),
])
def test_bad_driver_input_is_one_clear_line(frontend, stdin, message):
    import subprocess as sp
    import sys

    from tests.drivers.frontend import REMOTES

    result = sp.run([sys.executable, str(REMOTES / "datastore/storpool/cp"), "3"],
                    input=stdin, capture_output=True, text=True, env=frontend.env)
    assert result.returncode == 1
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert message in error
    assert frontend.storpool_names() == set()
    (event,) = frontend.events()  # even unreadable input is on the record
    assert event.type == "ds.cp.failed" and message in event.payload["error"]


def test_images_pointing_at_other_files_are_refused(frontend, tmp_path):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"top secret" * 1000)
    image = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(secret),
                    str(image)], check=True, capture_output=True)
    result = frontend.run_ds("cp", ds_action(image_xml(12, path=str(image), size=1)), 12)
    assert result.returncode == 1 and "names a backing file" in result.error_lines[0]
    assert frontend.storpool_names() == set()
