"""Drivers import the writer on every start: it must stay light."""

from __future__ import annotations

import subprocess
import sys

# Heavy or daemon-only: never on a driver's path.
FORBIDDEN = ("zmq", "pyone", "lxml", "tenacity")
# Standard modules the writer avoids on purpose (each costs milliseconds at start-up);
# the interpreter's own start-up (site, the editable-install finder) may load some.
AVOIDED = ("dataclasses", "inspect", "socket", "re", "json", "argparse", "urllib.parse",
           "onestorpool.eventlog.cli", "onestorpool.eventlog.verify")

CODE = f"""
import sys
before = set(sys.modules)
import onestorpool.eventlog
from onestorpool.eventlog import append_event, Event, EventLog
loaded = set(sys.modules) - before
print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))
print(sorted(m for m in {AVOIDED!r} if m in loaded))
"""


def test_the_writer_imports_only_what_it_needs():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         check=True)
    assert out.stdout.splitlines() == ["[]", "[]"] and out.stderr == ""
