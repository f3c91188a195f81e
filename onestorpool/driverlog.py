"""What a driver process writes to stderr, so that oned logs the diagnostics and shows the
user the reason of a failure, on every OpenNebula release.

oned's driver framework turns a failed script's stderr into the message the user sees
differently per release (reference opennebula-interfaces.md §2.2b, checked in upstream's
``src/mad/ruby/CommandManager.rb`` ``get_error_message`` and, from 7.0,
``src/mad/ruby/DriverExecHelper.rb`` ``get_info_from_execution``):

* up to 6.0: only the text between ``ERROR MESSAGE --8<------`` and
  ``ERROR MESSAGE ------>8--`` (``scripts_common.sh`` ``error_message``);
* 6.2 to 6.10: the whole of stderr, newlines made blanks;
* 7.0 on: every line that is not an ``ERROR:``/``INFO:``/``WARN:``/``DEBUG:`` log line.

The release comes from ``remotes/VERSION`` (installed by every release's ``install.sh``
beside the drivers), found from the executable's own path. Diagnostics (progress, retries,
warnings) go through :mod:`logging` and are held until the action ends, which costs oned
nothing (it reads stderr when the script exits): then they are written with their prefix,
unless the release would show them to the user (6.2-6.10 after a failure), where they go to
syslog only. Every line also goes to syslog (tag ``onestorpool-<kind>-<action>``) when the
host has one.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

Release = tuple[int, int]

MARK_OPEN = "ERROR MESSAGE --8<------"
MARK_CLOSE = "ERROR MESSAGE ------>8--"
PREFIXES = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN",
            logging.ERROR: "ERROR", logging.CRITICAL: "ERROR"}
VERSION_ENV = "ONESTORPOOL_ONE_VERSION"  # for remotes without a VERSION file


def one_release(script: str | None = None) -> Release | None:
    """The OpenNebula release whose remotes hold ``script`` (``argv[0]``); ``None`` when
    unknown. ``ONESTORPOOL_ONE_VERSION`` names it where ``remotes/VERSION`` is missing."""
    text = os.environ.get(VERSION_ENV, "")
    if not text:
        path = Path(script or sys.argv[0]).absolute()
        try:
            text = (path.parents[2] / "VERSION").read_text(encoding="utf-8")[:32]
        except (OSError, IndexError, UnicodeDecodeError):
            return None
    parts = text.strip().split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(self.format(record).split())
        self.lines.append(f"{PREFIXES.get(record.levelno, 'INFO')}: {message}")


class _Syslog(logging.Handler):
    """The host's syslog through the C ``syslog`` module (cheaper to import than
    ``logging.handlers``, which a driver would load for nothing on every run)."""

    def __init__(self, tag: str):
        import syslog

        super().__init__(logging.DEBUG)
        self.module = syslog
        syslog.openlog(tag, syslog.LOG_PID, syslog.LOG_DAEMON)

    def emit(self, record: logging.LogRecord) -> None:
        self.send(record.levelno, self.format(record))

    def send(self, level: int, message: str) -> None:
        priority = {logging.DEBUG: self.module.LOG_DEBUG, logging.INFO: self.module.LOG_INFO,
                    logging.WARNING: self.module.LOG_WARNING}.get(level, self.module.LOG_ERR)
        self.module.syslog(priority, " ".join(message.split()))

    def close(self) -> None:
        self.module.closelog()
        super().close()


class DriverLog:
    """The logging of one driver process; :meth:`succeeded` or :meth:`failed` ends it."""

    def __init__(self, tag: str, release: Release | None = None, *, syslog: bool = True):
        self.release = release
        self.held = _Held()
        self.logger = logging.getLogger("onestorpool")
        self.logger.handlers = [self.held]
        self.logger.setLevel(logging.DEBUG if os.environ.get("ONESTORPOOL_DEBUG")
                             else logging.INFO)
        self.logger.propagate = False  # never Python's default, unprefixed stderr handler
        self.syslog: _Syslog | None = None
        if syslog and os.path.exists("/dev/log"):
            self.syslog = _Syslog(tag)
            self.logger.addHandler(self.syslog)

    def succeeded(self) -> None:
        self._write(self.held.lines)
        self.close()

    def failed(self, reason: str) -> None:
        line = " ".join(reason.split()) or "failed"
        if line.startswith("-"):
            line = f"failed: {line}"  # oned drops a failure info that starts with '-'
        if self.syslog is not None:
            self.syslog.send(logging.ERROR, line)
        self._write(failure_lines(self.held.lines, line, self.release))
        self.close()

    def close(self) -> None:
        if self.syslog is not None:
            self.syslog.close()
        self.logger.handlers = []

    @staticmethod
    def _write(lines: list[str]) -> None:
        if lines:
            sys.stderr.write("".join(f"{line}\n" for line in lines))
            sys.stderr.flush()


def failure_lines(diagnostics: list[str], reason: str, release: Release | None) -> list[str]:
    """stderr of a failed action: the reason where ``release`` shows it to the user, the
    diagnostics where it only logs them."""
    if release is not None and (6, 2) <= release < (7, 0):
        return [reason]  # everything would be shown: diagnostics went to syslog
    if release is not None and release >= (7, 0):
        return [*diagnostics, f"ERROR: {reason}", reason]
    # up to 6.0, and an unknown release: the marked block is shown by every release
    return [*diagnostics, f"ERROR: {reason}", MARK_OPEN, reason, MARK_CLOSE]
