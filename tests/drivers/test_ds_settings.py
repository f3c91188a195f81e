"""Settings of addon-storpoolrc and of the datastore template that the datastore driver
honours, each shown changing what the real driver executable does (issue 8 §4)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
