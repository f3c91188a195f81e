"""StorPool calls per datastore action (issue 8 §6: a non-raw cp made 13, a raw one 6):
each call the sandbox served, by query name."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.drivers.frontend import ds_action, image_xml

IMPORT_CALLS = ["Volume", "VolumeCreate", "VolumesReassignWait", "VolumesReassignWait"]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_cp_creates_attaches_and_detaches_once(frontend, tmp_path, fmt):
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(1 << 20))
    if fmt != "raw":
        subprocess.run(["qemu-img", "convert", "-O", fmt, str(image), str(tmp_path / "d")],
                       check=True)
        image = tmp_path / "d"
    frontend.sandbox.api_calls.clear()
    result = frontend.run_ds("cp", ds_action(image_xml(5, path=str(image), size=1)), 5)
    assert result.returncode == 0, result.stderr
    # exists? (never overwrite), create, attach, detach: no staging volume
    assert frontend.sandbox.api_calls == IMPORT_CALLS


def test_stat_of_a_local_file_asks_storpool_nothing(frontend, tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\1" * 4096)
    frontend.sandbox.api_calls.clear()
    assert frontend.run_ds("stat", ds_action(image_xml(-1, path=str(image))), 0).stdout == "1\n"
    assert frontend.sandbox.api_calls == []
