"""A release that installs (issue 8 §3): the wheel built from the repository carries the
driver executables, and an installation from it, in a fresh virtualenv and away from the
source tree, imports an image through ``onestorpool sandbox up``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.installed_import import import_script

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info",
                              ".hypothesis", ".ruff_cache", "demo-run")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "opennebula-storpool"
    shutil.copytree(REPO, source, ignore=SKIP, symlinks=True)
    dist = source / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=600)
    (built,) = dist.glob("*.whl")
    return built


def test_the_wheel_carries_every_driver_executable(wheel):
    shipped = {str(p.relative_to(REPO / "drivers")) for p in (REPO / "drivers/remotes").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped  # the datastore driver at least
    with zipfile.ZipFile(wheel) as archive:
        entries = {info.filename.removeprefix("onestorpool/drivers/"): info
                   for info in archive.infolist()}
    for name in shipped:
        assert name in entries, f"{name} missing from {wheel.name}"
        mode = entries[name].external_attr >> 16
        if (REPO / "drivers" / name).stat().st_mode & 0o100:
            assert mode & 0o100, f"{name} lost its executable bit"


def test_an_installed_wheel_imports_an_image_through_the_sandbox(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=900)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ONESTORPOOL_", "ONE_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    sandbox = tmp_path / "sandbox"
    run = partial_run(env, cwd=tmp_path)
    run([str(venv / "bin" / "onestorpool"), "sandbox", "up", "--dir", str(sandbox)])
    try:
        images = tmp_path / "images"
        images.mkdir()
        subprocess.run(["qemu-img", "create", "-f", "qcow2", str(images / "disk.qcow2"), "5M"],
                       check=True, capture_output=True)
        script = import_script(images)
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in (sandbox / "sandbox.env").read_text().splitlines())
        done = run([str(python), "-c", script], extra=exports)
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["state"] == 1, result["error"]
        assert result["source"].endswith("/one-img-0")
        assert str(venv) in result["file"]  # the installed package, not the source tree
        installed = sandbox / "remotes" / "datastore" / "storpool" / "cp"
        assert installed.read_text().splitlines()[0] == f"#!{python}"
    finally:
        run([str(venv / "bin" / "onestorpool"), "sandbox", "down", "--dir", str(sandbox)])


def partial_run(env: dict[str, str], cwd: Path):
    def run(argv: list[str], extra: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, env={**env, **(extra or {})}, cwd=cwd, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (argv[:3], done.stdout[-2000:], done.stderr[-2000:])
        return done

    return run
