"""The subscriber with the event log on a StorPool volume (``EVENT_LOG_VOLUME``, OpenNebula HA).

Every front-end runs the subscriber; only the leader has the log. The loop:

* standby: no log is open; it asks who leads every ``leader_every`` seconds and pings the
  systemd watchdog;
* it becomes leader: it takes the volume (:meth:`LogVolume.acquire`: forced exclusive attach,
  which fences the old leader, filesystem check, mount, log verified against the last
  checkpoint of an ``EVENT_LOG_ANCHOR`` volume tag) and only then runs the daemon, which
  reconciles before acting;
* it loses leadership (the daemon stops at its next leader check) or is told to stop: the
  daemon finishes the action in flight, then the volume is released (filesystem shut down,
  so a driver still writing gets an I/O error, unmounted, detached).

A failure to take the volume (missing, attach refused, a filesystem or log that does not
check) is one error on stderr, nothing is done, and it is tried again after a back-off.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from onestorpool.errors import AddonError
from onestorpool.eventlog.events import LogVolumeAcquired
from onestorpool.eventlog.store import HOST, EventLog
from onestorpool.eventlog.volume import LogVolume
from onestorpool.subscribers.notify import Notifier

ACQUIRED = LogVolumeAcquired.TYPE
RETRY_MAX = 30.0


class Standby:
    """What the metrics show between terms (the daemon's counters start again per term)."""

    counts: dict[str, int] = {}
    connected = False
    leading = False

    def lag(self) -> int:
        return 0


class TermNotifier(Notifier):
    """The daemon's notifier for one term: the end of a term is not the service stopping."""

    def __init__(self, service: Notifier):
        self.service = service

    def send(self, state: str) -> bool:
        return self.service.send(state)

    def watchdog(self, now: float | None = None) -> bool:
        return self.service.watchdog(now)

    def stopping(self) -> bool:
        return False


class Current:
    """The metrics' view of whichever daemon runs now."""

    def __init__(self) -> None:
        self.daemon: Any = Standby()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.daemon, name)


def volume_anchors(config: Any, sp: Any) -> list[tuple[int, bytes]]:
    """The head the last checkpoint published to the ``EVENT_LOG_ANCHOR`` volume tag, if
    any: a log cut or rewritten behind it is refused at take-over."""
    from onestorpool.eventlog.anchor import TAG, configured_target, parse_anchors

    _, tagged = configured_target(config["EVENT_LOG_ANCHOR"])
    if tagged is None:
        return []
    try:
        tags = sp.volume(tagged).get("tags") or {}
    except AddonError:
        return []  # no checkpoint published yet
    return parse_anchors([str(tags.get(TAG, ""))])


def run(config: Any, build: Callable[[EventLog, Notifier], Any], *, metrics_port: int = 0,
        leader: Callable[[], bool] | None = None, leader_every: float = 5.0,
        notifier: Notifier | None = None) -> int:
    """Serve until SIGTERM/SIGINT: each leadership term acquires the volume, runs the daemon
    ``build(log, notifier)`` makes, and releases the volume."""
    from onestorpool.storpool import StorPoolClient

    notifier = notifier or Notifier()
    current = Current()
    if metrics_port:
        from onestorpool.subscribers.metrics import serve

        serve(current, metrics_port)
    stopping = {"now": False}

    def stop(*_: object) -> None:
        stopping["now"] = True
        if not isinstance(current.daemon, Standby):
            current.daemon.stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    sp = StorPoolClient.from_config(config)
    volume = LogVolume.from_config(config, sp)
    writer = f"subscriber@{HOST}"
    failures, announced = 0, False
    try:
        while not stopping["now"]:
            if not _leading(leader):
                if not announced:
                    notifier.ready(f"standby: event log volume {volume.name} not here")
                    announced = True
                _wait(leader_every, stopping, notifier)
                continue
            try:
                summary = volume.acquire(anchors=volume_anchors(config, sp))
            except AddonError as exc:
                failures += 1
                delay = min(RETRY_MAX, 0.5 * 2 ** min(failures, 6))
                print(f"ERROR: subscriber: {exc}; nothing done, again in {delay:.1f}s",
                      file=sys.stderr, flush=True)
                status = f"cannot take the event log volume: {exc}"
                if not announced:  # running (and retrying): systemd must not time it out
                    notifier.ready(status)
                    announced = True
                notifier.status(status)
                _wait(delay, stopping, notifier)
                continue
            failures = 0
            print(f"subscriber: leader: event log volume {volume.name} mounted on "
                  f"{volume.directory}, {summary['records']} records verified in "
                  f"{summary['seconds']}s", flush=True)
            try:
                with EventLog(volume.path) as log:
                    log.append(LogVolumeAcquired.new(f"{writer}:{os.getpid()}", summary))
                    daemon = build(log, TermNotifier(notifier))
                    daemon.standby_exits = True
                    current.daemon = daemon
                    if stopping["now"]:
                        daemon.stop()
                    daemon.run()  # until stopped, or no longer the leader
                    if daemon.leading:  # it had the signal (its handler, during run)
                        stopping["now"] = True
                    announced = False
            except AddonError as exc:
                print(f"ERROR: subscriber: {exc}", file=sys.stderr, flush=True)
            finally:
                current.daemon = Standby()
                volume.release()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        notifier.stopping()
        sp.close()
    return 0


def _leading(leader: Callable[[], bool] | None) -> bool:
    if leader is None:
        return True
    try:
        return bool(leader())
    except Exception as exc:  # oned away: not leading, so the log is not taken blindly
        print(f"WARN: subscriber: raft status unknown: {exc}", file=sys.stderr)
        return False


def _wait(seconds: float, stopping: dict[str, bool], notifier: Notifier) -> None:
    deadline = time.monotonic() + seconds
    while not stopping["now"] and time.monotonic() < deadline:
        notifier.watchdog()
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
