"""A driver executable ends its process without the interpreter's finalization
(drivers/runtime.py ``end_process``): what it printed still arrives whole, with its exit code,
even into files (block-buffered, unlike oned's pipes); called in-process it returns."""

from __future__ import annotations

import base64
import subprocess
import sys

from drivers.runtime import run_tm_action
from tests.drivers.frontend import REMOTES, ds_action, image_xml


def run_into_files(tmp_path, argv: list[str], stdin: bytes, env: dict[str, str]
                   ) -> tuple[int, str, str]:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        code = subprocess.run([sys.executable, *argv], input=stdin, stdout=stdout,
                              stderr=stderr, env=env, timeout=60).returncode
    return code, out.read_text(), err.read_text()


def test_a_successful_action_prints_all_of_its_answer(frontend, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * (3 << 20))
    payload = base64.b64encode(ds_action(image_xml(-1, path=str(disk))).encode())
    code, stdout, stderr = run_into_files(
        tmp_path, [str(REMOTES / "datastore/storpool/stat"), "0"], payload, frontend.env)
    assert (code, stdout) == (0, "3\n"), stderr


def test_a_failing_action_shows_its_reason_and_exit_code(frontend, tmp_path):
    code, stdout, stderr = run_into_files(
        tmp_path, [str(REMOTES / "tm/storpool/clone"), "only-one-argument"], b"",
        frontend.env)
    assert (code, stdout) == (1, "")
    reason = "ds_id must be an integer, got 'only-one-argument'"
    assert stderr == f"ERROR: {reason}\nERROR MESSAGE --8<------\n{reason}\n" \
                     "ERROR MESSAGE ------>8--\n"


def test_called_in_process_the_runtime_returns(frontend, monkeypatch):
    for name, value in frontend.env.items():
        monkeypatch.setenv(name, value)
    assert run_tm_action("no-such-action", argv=["0", "1"]) == 1
