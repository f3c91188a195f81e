"""The add-on's exception tree and the one error boundary every process runs under.

Drivers, the subscriber and the CLI call :func:`run_main`; it turns our exceptions into one
``ERROR: ...`` line on stderr and an exit code, so oned shows the user a single clear line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class AddonError(Exception):
    """Base of every error the add-on raises on purpose. ``str()`` is the user-facing line."""

    exit_code = 1


class ConfigError(AddonError):
    """A configuration file or attribute is missing, malformed or has an unknown value."""


class InputError(AddonError):
    """Input from outside (argv, driver XML, a hook message) is missing or malformed."""


class StorPoolError(AddonError):
    """Base of every failure talking to a StorPool cluster."""

    transient = False


def run_main(main: Callable[[list[str]], int | None], argv: list[str] | None = None,
             report: Callable[[str], None] | None = None) -> int:
    """Run ``main(argv)`` under the process-wide error boundary and return the exit code.

    An :class:`AddonError` becomes one line for ``report`` (default: one ``ERROR:`` line on
    stderr; drivers pass :meth:`onestorpool.driverlog.DriverLog.failed`); anything else is a
    bug and also becomes one line, with the traceback only when ``ONESTORPOOL_DEBUG`` is set.
    """
    args = sys.argv[1:] if argv is None else argv
    _report = report or _report_line
    try:
        return int(main(args) or 0)
    except AddonError as exc:
        _report(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _report("interrupted")
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the boundary: one line for oned, the traceback only on request
        if os.environ.get("ONESTORPOOL_DEBUG"):
            import traceback

            traceback.print_exc()
        _report(f"internal error: {type(exc).__name__}: {exc}")
        return 1


def _report_line(message: str) -> None:
    line = " ".join(message.split())  # one line, always
    sys.stderr.write(f"ERROR: {line}\n")
    sys.stderr.flush()
