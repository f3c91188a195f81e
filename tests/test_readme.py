"""The README's commands run as written (issue 8 §5): the sandbox walk-through, from the
clone's virtualenv, in a fresh directory instead of /tmp/cloud."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _block(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, heading
    return match[1]


@pytest.mark.skipif(not (REPO / ".venv/bin/onestorpool").exists(),
                    reason="the README's commands use the clone's .venv")
def test_try_it_runs_as_written(tmp_path):
    script = _block("Try it before a real cloud").replace("/tmp/cloud", str(tmp_path / "cloud"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONE_", "ONESTORPOOL_"))}
    result = subprocess.run(["bash", "-e", "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:  # never leave the sandbox running
        subprocess.run([str(REPO / ".venv/bin/onestorpool"), "sandbox", "down", "--dir",
                        str(tmp_path / "cloud")], capture_output=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "OpenNebula 6.10.0" in result.stdout
    assert "image 0 one-ds-100/one-img-0\n" in result.stdout
    assert re.search(r"^\s+\d+ \S+Z ds\.mkfs\s+image=0 ds=100", result.stdout, re.MULTILINE)
    assert "stopped" in result.stdout


def test_the_walk_through_uses_the_virtualenv():
    script = _block("Try it before a real cloud")
    commands = [line.split()[0] for line in script.splitlines()
                if line and not line[0].isspace() and line.split()[0] not in ("source",)
                and "=" not in line.split()[0] and not line.startswith(("import", "print",
                                                                         "one", "ds", "image",
                                                                         "while", "EOF"))]
    assert commands and all(c.startswith(".venv/bin/") for c in commands), commands
