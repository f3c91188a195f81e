"""The real StorPool datastore driver failing under each OpenNebula release the oned sandbox
emulates: the user's message (the pyone error, the image's ERROR) is the reason alone, never
log lines (issue 8 §2; the per-release rules: src/mad/ruby/CommandManager.rb and, from 7.0,
src/mad/ruby/DriverExecHelper.rb, as the sandbox's error_info follows them)."""

from __future__ import annotations

import subprocess

import pyone
import pytest

pytest_plugins = ["tests.sandbox.conftest_oned"]  # fixtures: world, make_world, subscriber

RELEASES = ["5.12", "6.0", "6.10", "7.0"]


def storpool_image_datastore(w) -> int:
    """The add-on's image datastore (its TM the real one; these tests never run a TM)."""
    return w.oned.create_datastore("storpool", DS_MAD="storpool", TM_MAD="storpool",
                                   DISK_TYPE="BLOCK", SAFE_DIRS=str(w.tmp), RESTRICTED_DIRS="/")


@pytest.mark.parametrize("release", RELEASES)
def test_refused_path_in_image_allocate(make_world, release):
    w = make_world(one_version=release)
    image_ds = storpool_image_datastore(w)
    with pytest.raises(pyone.OneException) as caught:
        w.srv.image.allocate('NAME="token"\nPATH="/etc/hostname"', image_ds)
    assert str(caught.value).endswith(
        "Cannot parse image SIZE: Not allowed to copy image from /etc/hostname, check "
        "RESTRICTED_DIRS in your datastore")


@pytest.mark.parametrize("release", RELEASES)
def test_truncated_image_puts_the_reason_in_the_image_error(make_world, release):
    w = make_world(one_version=release)
    image_ds = storpool_image_datastore(w)
    disk = w.tmp / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-o", "preallocation=metadata",
                    str(disk), "8M"], check=True, capture_output=True)
    disk.write_bytes(disk.read_bytes()[:200_000])
    image_id = w.srv.image.allocate(f'NAME="cut"\nPATH="{disk}"', image_ds)
    assert w.oned.wait_image(image_id, {"READY", "ERROR"}) == "ERROR"
    error = w.srv.image.info(image_id).TEMPLATE["ERROR"].split(" : ", 1)[1]
    assert error.startswith("Error copying image in the datastore: the qcow2 image is "
                            "corrupt or truncated"), error
    assert "INFO: " not in error and "ERROR MESSAGE" not in error
    assert not w.frontend.sp.volume_exists(f"one-img-{image_id}")
