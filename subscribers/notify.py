"""systemd's service notification protocol (``sd_notify(3)``): readiness, watchdog, stopping.

The protocol is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace). It is written here rather
than taken from PyPI: ``sdnotify`` (pure Python) has had no release since 2017, and the
maintained bindings (``cysystemd``, ``systemd-python``) are compiled wrappers of libsystemd,
a build dependency on every front-end and in both packages for a dozen lines of socket code.
Without ``$NOTIFY_SOCKET`` (not run by systemd, or ``Type=simple``) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # ping at half the period, as sd_watchdog_enabled(3) advises
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._last_ping = 0.0

    def send(self, state: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as out:
                out.connect(self.address)
                out.sendall(state.encode())
        except OSError:
            return False  # systemd gone (a shutdown): nothing to tell
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self, now: float | None = None) -> bool:
        """``WATCHDOG=1`` when half the watchdog period passed since the last ping."""
        if self.watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_interval:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")


_current: Notifier | None = None


def install(notifier: Notifier) -> None:
    """Make ``notifier`` the one :func:`alive` pings (the daemon's)."""
    global _current
    _current = notifier


def alive() -> None:
    """A long step (a backup being confirmed) tells systemd's watchdog it is not stuck."""
    if _current is not None:
        _current.watchdog()
