"""Settings of addon-storpoolrc and of the datastore template that the datastore driver
honours, each shown changing what the real driver executable does (issue 8 §4)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from onestorpool.eventlog import EventLog
from tests.drivers.frontend import datastore_xml, ds_action, image_xml

MIB = 1 << 20


def _raw_image(directory: Path) -> Path:
    image = directory / "disk.raw"
    image.write_bytes(os.urandom(MIB + 512))
    return image


def test_ds_cp_report_format_off_prints_the_source_alone(frontend, tmp_path):
    image = _raw_image(tmp_path)
    default = frontend.run_ds("cp", ds_action(image_xml(40, path=str(image), size=2)), 40)
    assert default.stdout == "one-ds-100/one-img-40 raw\n", default.stderr
    frontend.write_rc("ONE_PX=one\nDS_CP_REPORT_FORMAT=0\n")
    result = frontend.run_ds("cp", ds_action(image_xml(41, path=str(image), size=2)), 41)
    assert (result.returncode, result.stdout) == (0, "one-ds-100/one-img-41\n"), result.stderr


def test_copy_cmd_dd_bs_is_the_block_size_of_the_import(frontend, tmp_path):
    # A dd on PATH that records its arguments and hands over to the real one.
    shims = tmp_path / "shims"
    shims.mkdir()
    record = tmp_path / "dd.args"
    real = next(Path(d) / "dd" for d in os.environ["PATH"].split(":")
                if (Path(d) / "dd").is_file())
    shim = shims / "dd"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {record}\nexec {real} "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    frontend.env["PATH"] = f"{shims}:{frontend.env['PATH']}"
    frontend.write_rc("ONE_PX=one\nCOPY_CMD_DD_BS=64K\n")
    image = _raw_image(tmp_path)
    result = frontend.run_ds("cp", ds_action(image_xml(42, path=str(image), size=2)), 42)
    assert result.returncode == 0, result.stderr
    assert "bs=64K" in record.read_text().split(), record.read_text()


def test_copy_cmd_dd_bs_that_dd_would_refuse_is_a_config_error(frontend, tmp_path):
    frontend.write_rc("ONE_PX=one\nCOPY_CMD_DD_BS=lots\n")
    image = _raw_image(tmp_path)
    result = frontend.run_ds("cp", ds_action(image_xml(43, path=str(image), size=2)), 43)
    assert result.returncode != 0
    assert "COPY_CMD_DD_BS" in result.stderr and "dd block size" in result.stderr
    assert frontend.storpool_names() == set()


def test_sp_skip_monitor_leaves_the_datastore_unasked(frontend):
    # Datastore 101 has no StorPool template: monitoring it fails unless it is skipped.
    asked = frontend.run_ds("monitor", ds_action(None, datastore_xml(101)), 101)
    assert asked.returncode != 0
    skipped = frontend.run_ds(
        "monitor", ds_action(None, datastore_xml(101, SP_SKIP_MONITOR="YES")), 101)
    assert (skipped.returncode, skipped.stdout) == (0, ""), skipped.stderr
    event = frontend.events()[-1]
    assert event.type == "ds.monitor" and event.payload["skipped"] == "SP_SKIP_MONITOR"


def test_event_log_setting_moves_the_log(frontend, tmp_path):
    elsewhere = tmp_path / "audit" / "addon-events.db"
    elsewhere.parent.mkdir()
    default = Path(frontend.env.pop("ONESTORPOOL_EVENTLOG"))
    frontend.write_rc(f"ONE_PX=one\nEVENT_LOG={elsewhere}\n")
    result = frontend.run_ds("monitor", ds_action(None), 100)
    assert result.returncode == 0, result.stderr
    with EventLog(elsewhere, readonly=True) as log:
        assert [r.type for r in log.read()] == ["ds.monitor"]
    assert not default.exists()
    # and nowhere under the root's default location either
    assert not (frontend.root / "var/lib/one/onestorpool/events.db").exists()


def test_a_datastore_without_its_storpool_template_says_how_to_make_it(frontend):
    result = frontend.run_ds("mkfs", ds_action(image_xml(44, size=2), datastore_xml(102)), 44)
    assert result.returncode != 0
    (line,) = result.error_lines
    assert "StorPool template one-ds-102 does not exist: create it with 'storpool template " \
           "one-ds-102 replication 3" in line


# -- the settings the driver already read, each shown changing its behaviour --------------------


def _source(image_id: int) -> str:
    return f"one-ds-100/one-img-{image_id}"


def test_loc_tag_and_default_qosclass_tag_new_volumes(frontend):
    frontend.write_rc("ONE_PX=one\nLOC_TAG=site\nLOC_TAG_VAL=east\nDEFAULT_QOSCLASS=tier2\n")
    result = frontend.run_ds("mkfs", ds_action(image_xml(45, size=1)), 45)
    assert result.returncode == 0, result.stderr
    assert frontend.sp.volume("one-img-45")["tags"] == {"virt": "one", "site": "east",
                                                        "qc": "tier2"}


def test_no_volume_template_decides_the_template_of_clones(frontend):
    frontend.sp.volume_create("one-img-46", size=MIB)  # a parent without a template
    xml = ds_action(image_xml(47, path=_source(46), size=1))
    assert frontend.run_ds("clone", xml, 47).returncode == 0
    assert not frontend.sp.volume("one-img-47").get("templateName")  # inherited: none
    frontend.write_rc("ONE_PX=one\nNO_VOLUME_TEMPLATE=0\n")
    xml = ds_action(image_xml(48, path=_source(46), size=1))
    assert frontend.run_ds("clone", xml, 48).returncode == 0
    assert frontend.sp.volume("one-img-48")["templateName"] == "one-ds-100"


@pytest.mark.parametrize(("rc", "kept"), [
    ("", set()),
    ("VMSNAPSHOT_DELETE_ON_TERMINATE=0\n", {"one-img-49-ONESNAP-1-1700000000"}),
    ("VMSNAPSHOT_TAG=VMSNAP\n", {"one-img-49-ONESNAP-1-1700000000"}),
])
def test_vm_snapshot_settings_decide_what_rm_deletes(frontend, rc, kept):
    frontend.write_rc("ONE_PX=one\n" + rc)
    frontend.sp.volume_create("one-img-49", size=MIB, template="one-ds-100")
    frontend.sp.volume_snapshot("one-img-49", "one-img-49-ONESNAP-1-1700000000")
    result = frontend.run_ds("rm", ds_action(image_xml(49, source=_source(49))), 49)
    assert result.returncode == 0, result.stderr
    named = {s["name"] for s in frontend.sp.snapshots_list()
             if not s.get("deleted") and not s.get("autoName")}
    assert named == kept


def test_export_settings_shape_the_export(frontend, tmp_path):
    frontend.write_rc(f"ONE_PX=one\nEXPORT_FILE_FORMAT=qcow2\nSTAGING_DIR={tmp_path}/stage\n"
                      "EXPORT_TRANSPORT=rsync\nEXPORT_BRIDGE_LIST=bridge1\n"
                      "EXPORT_QEMU_IMG_ARGS='-o cluster_size=4096'\n")
    frontend.sp.volume_create("one-img-62", size=2 * MIB)
    result = frontend.run_ds("export", ds_action(image_xml(62, source=_source(62))), 62)
    assert result.returncode == 0, result.stderr
    assert f"<IMPORT_SOURCE><![CDATA[rsync://bridge1:{tmp_path}/stage/" in result.stdout
    (exported,) = (frontend.host_dir("bridge1") / str(tmp_path).lstrip("/") / "stage").glob(
        "*.qcow2")
    info = subprocess.run(["qemu-img", "info", "--output=json", str(exported)],
                          capture_output=True, text=True, check=True).stdout
    assert json.loads(info)["cluster-size"] == 4096


@pytest.mark.parametrize(("rc", "ok"), [("", True), ("STORPOOL_RETRIES=1\n", False),
                                        ("SP_API_RETRY_DEADLINE=0\n", False)])
def test_storpool_retry_settings_decide_whether_a_transient_error_is_survived(frontend, rc,
                                                                              ok):
    frontend.write_rc("ONE_PX=one\n" + rc)
    frontend.sandbox.inject_faults(transient=2, queries={"VolumeCreate"})
    result = frontend.run_ds("mkfs", ds_action(image_xml(63, size=1)), 63)
    assert (result.returncode == 0) == ok, result.stderr
    frontend.sandbox.clear_faults()


def test_sp_api_timeout_bounds_a_call(frontend):
    frontend.write_rc("ONE_PX=one\nSP_API_TIMEOUT=0.3\nSTORPOOL_RETRIES=1\n")
    frontend.sandbox.inject_faults(latency=2, queries={"VolumeCreate"})
    started = time.monotonic()
    result = frontend.run_ds("mkfs", ds_action(image_xml(64, size=1)), 64)
    assert result.returncode != 0 and time.monotonic() - started < 1.9
    frontend.sandbox.clear_faults()
