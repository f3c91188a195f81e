"""Putting the add-on's driver executables where oned runs them.

The executables shipped in the package (``onestorpool/drivers/remotes/...``, package data)
start with ``#!/usr/bin/env python3``, which on a front-end may be an interpreter without the
add-on (EL9's platform Python is 3.9). Installed copies name the interpreter the add-on was
installed for instead. Used by the installer and by the oned sandbox for its remotes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHEBANG = b"#!/usr/bin/env python3"


def shipped_remotes() -> Path:
    """The driver executables as the package ships them."""
    return Path(__file__).resolve().parent / "remotes"


def install_remotes(target: Path, python: str | None = None) -> list[Path]:
    """Copy every shipped driver under ``target`` (oned's remotes directory), Python
    executables with ``python`` (default: this interpreter) as their interpreter. Each file
    is replaced atomically: oned may be running one of them meanwhile."""
    interpreter = (python or sys.executable).encode()
    source_root = shipped_remotes()
    installed = []
    for source in sorted(source_root.rglob("*")):
        if not source.is_file() or "__pycache__" in source.parts:
            continue
        destination = target / source.relative_to(source_root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        if data.startswith(SHEBANG + b"\n"):
            data = b"#!" + interpreter + data[len(SHEBANG):]
        temporary = destination.with_name(f".{destination.name}.new")
        temporary.write_bytes(data)
        temporary.chmod(source.stat().st_mode & 0o777)
        os.replace(temporary, destination)
        installed.append(destination)
    return installed
