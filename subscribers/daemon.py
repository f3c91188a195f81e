"""``onestorpool subscriber run``: the side effects of oned's state changes, from its hook bus.

A ZeroMQ SUB socket connects to one_hm's PUB socket (``HOOK_ENDPOINT``, ``$ONE_ZMQ`` wins,
``--endpoint`` wins over both) and subscribes only to the keys a route needs
(the routes of :mod:`onestorpool.subscribers.composition`). The loop, in the kombu consumer's shape:

* polls the socket (and its monitor) with a one-second timeout, so a stop request, a due
  reconciliation or checkpoint and the systemd watchdog are noticed;
* drains what arrived, decodes each message (two frames, base64, forgiving XML for API
  messages); a malformed one is logged and recorded (``hook.malformed``) and skipped;
* appends every message it routes (``hook.received``) in one batch *before* acting on it,
  then runs the route's action; the action's decisions and outcomes are records too;
* follows the event log itself: an effect a driver requested (``remote_backup`` from
  ``rm``/``delete``) is run within a second even if no bus message announced it (oned
  publishes nothing when an image's ``rm`` has finished);
* reconciles (:mod:`onestorpool.subscribers.reconcile`) on start, after every reconnect
  (the socket monitor reports it) and every ``SUBSCRIBER_RECONCILE_INTERVAL``;
* checkpoints the log every ``SUBSCRIBER_CHECKPOINT_INTERVAL`` (``EVENT_LOG_ANCHOR``);
* SIGTERM/SIGINT set ``should_stop``: the action in flight finishes, nothing is cut.

Readiness (after the first reconciliation), status, watchdog pings and stopping go to
systemd (:mod:`onestorpool.subscribers.notify`). ZeroMQ reconnects by itself (every
``RECONNECT_IVL`` up to ``RECONNECT_IVL_MAX``) and ZMTP heartbeats detect a silent peer, so
an oned restart is a disconnect, a reconnect and a reconciliation. An error in an action is
recorded and the loop goes on; an error of the loop itself (the log unwritable) backs off
and retries, so the daemon never crash-loops.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from onestorpool.errors import AddonError
from onestorpool.eventlog.events import (
    EffectRequested,
    HookMalformed,
    HookReceived,
    SubscriberConnected,
    SubscriberDisconnected,
    SubscriberFailed,
    SubscriberLeader,
    SubscriberStandby,
    SubscriberStarted,
    SubscriberStopped,
)
from onestorpool.eventlog.store import HOST, Event, EventLog
from onestorpool.one import HookEvent, parse_hook_message
from onestorpool.subscribers.notify import Notifier
from onestorpool.subscribers.routes import Route, api_object_id

RECEIVED = HookReceived.TYPE
MALFORMED = HookMalformed.TYPE
BATCH = 1000  # messages appended per transaction at most


PRUNE_PATIENCE = 600.0  # seconds a busy VM is waited for; reconciliation takes over then


def cleanup_vm(log: EventLog, vm_id: int, seq: int, runner: str = "subscriber") -> None:
    """The add-on's snapshots of a VM that is DONE."""
    from onestorpool import config as config_module
    from onestorpool.storpool import StorPoolClient
    from onestorpool.subscribers.cleanup import Owners, cleanup

    config = config_module.load()
    if not config["CLEANUP_ORPHAN_SNAPSHOTS"]:
        return
    with StorPoolClient.from_config(config) as sp:
        cleanup(log, sp, config.naming(), (config["LOC_TAG"], config.loc_tag_value),
                Owners(gone_vm=vm_id), position=seq, runner=runner)


REQUESTED = EffectRequested.TYPE


def request_effect(log: EventLog, effect: dict[str, Any], seq: int, writer: str,
                   **subjects: Any) -> int:
    """Append the request of ``effect`` (``type`` and idempotency ``key`` required) made on
    the message recorded at ``seq``."""
    if not effect.get("type") or not effect.get("key"):
        raise ValueError(f"an effect needs a type and a key: {effect!r}")
    return log.append(EffectRequested.new(writer, effect=effect, request_seq=seq,
                            **subjects))


def raft_leader() -> bool:
    """Whether this front-end's oned leads its zone (``one.zone.raftstatus``: SOLO 0 or
    LEADER 3; a solo oned may report either). With OpenNebula HA the subscriber runs on every
    front-end and acts only on the leader."""
    from onestorpool import oneapi
    from onestorpool.one import parse_xml

    status = parse_xml(oneapi.one_call("one.zone.raftstatus"), "RAFT")
    return (status.findtext("STATE") or "").strip() in ("0", "3")


def ip_is_local(address: str) -> bool:
    """Whether ``address`` is one of this machine's (the Bash add-on asked ``ip route get``
    for ``local``): binding to it works only then."""
    import ipaddress
    import socket

    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 \
            else socket.AF_INET
    except ValueError:
        raise AddonError(f"RAFT_LEADER_IP: not an IP address: {address!r}") from None
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def leader_check(config: Any) -> Callable[[], bool] | None:
    """``RAFT_LEADER_IP``: ``disabled`` acts always, an address acts while it is local (the
    HA floating IP of the leader, as the Bash add-on's periodic jobs did), empty asks oned
    (:func:`raft_leader`)."""
    address = str(config["RAFT_LEADER_IP"]).strip()
    if address == "disabled":
        return None
    if address:
        ip_is_local(address)  # a wrong value is one error at start, not a warning every 5s
        return lambda: ip_is_local(address)
    return raft_leader


def endpoint(config: Any, given: str | None = None) -> str:
    if given:
        return given
    if os.environ.get("ONE_ZMQ", "").strip():
        return os.environ["ONE_ZMQ"].strip()
    return str(config["HOOK_ENDPOINT"])


class Daemon:
    def __init__(self, endpoint: str, log: EventLog, *, reconcile_every: float = 300,
                 checkpoint_every: float = 3600, routes: tuple[Route, ...] | None = None,
                 notifier: Notifier | None = None, effects_every: float = 1.0,
                 reconcile: Callable[..., dict[str, Any]] | None = None,
                 context: zmq.Context | None = None,
                 leader: Callable[[], bool] | None = raft_leader, leader_every: float = 5.0):
        if routes is None:
            from onestorpool.subscribers.composition import ROUTES as routes
        self.endpoint, self.log, self.routes = endpoint, log, routes
        self.reconcile_every, self.checkpoint_every = reconcile_every, checkpoint_every
        self.effects_every = effects_every
        self.notifier = notifier or Notifier()
        self.context = context or zmq.Context.instance()
        self._reconcile = reconcile
        self.should_stop = False
        self.writer = f"subscriber@{HOST}:{os.getpid()}"
        self.counts = {"received": 0, "handled": 0, "malformed": 0, "failed": 0,
                       "reconciliations": 0}
        self._cursor = log.head()[0]  # effects requested after this are picked up live
        self._next_effects = 0.0
        self._soon: list[float] = []
        self._next_reconcile = 0.0
        self._reconcile_why = "start"
        self._connected = self._ever_connected = False
        self._prune: dict[int, tuple[int, float]] = {}  # VM -> (position, give up at)
        self._leader_check, self.leader_every = leader, leader_every
        self.leading: bool | None = None  # unknown until asked
        self.standby_exits = False  # set by the HA loop: a follower has no log to write
        self._next_leader = 0.0
        self._next_prune = 0.0
        self.socket: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None

    # -- the socket ---------------------------------------------------------------------

    def connect(self) -> None:
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)  # read fast, queue here rather than at one_hm
        sub.setsockopt(zmq.RECONNECT_IVL, 100)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        sub.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
        for route in self.routes:
            sub.setsockopt(zmq.SUBSCRIBE, route.prefix)
        self.monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sub.connect(self.endpoint)
        self.socket = sub

    def close(self) -> None:
        if self.socket is not None:
            self.socket.disable_monitor()
            self.socket.close()
        if self.monitor is not None:
            self.monitor.close()
        self.socket = self.monitor = None

    def _on_monitor(self) -> None:
        assert self.monitor is not None
        while self.monitor.poll(0):
            message = recv_monitor_message(self.monitor)
            if message["event"] == zmq.EVENT_CONNECTED:
                revived = not self._connected and self._ever_connected
                self._connected = self._ever_connected = True
                self.log.append(SubscriberConnected.new(self.writer, endpoint=self.endpoint))
                if revived:  # on_revived: what was published meanwhile is lost
                    self._reconcile_why, self._next_reconcile = "reconnected", 0.0
            elif message["event"] == zmq.EVENT_DISCONNECTED and self._connected:
                self._connected = False  # on_connection_error: ZeroMQ reconnects by itself
                self.log.append(SubscriberDisconnected.new(self.writer,
                                                           endpoint=self.endpoint))
                print(f"WARN: hook bus {self.endpoint}: disconnected; reconnecting",
                      file=sys.stderr)

    # -- messages -----------------------------------------------------------------------

    def receive(self) -> list[tuple[Route, HookEvent, int]]:
        """Drain the socket (up to :data:`BATCH`), decode and route; append the batch."""
        assert self.socket is not None
        routed: list[tuple[Route, HookEvent, Event]] = []
        records: list[Event] = []
        while len(records) < BATCH and self.socket.poll(0):
            frames = self.socket.recv_multipart()
            self.counts["received"] += 1
            try:
                event = parse_hook_message(frames)
            except Exception as exc:  # bad framing, base64, XML: log and skip
                self.counts["malformed"] += 1
                key = frames[0][:120].decode("ascii", "replace") if frames else ""
                print(f"WARN: hook bus: skipped a malformed message {key!r}: {exc}",
                      file=sys.stderr)
                records.append(HookMalformed.new(self.writer, key=key, frames=len(frames),
                                                 error=str(exc)[:300]))
                continue
            route = next((r for r in self.routes if r.matches(event)), None)
            if route is None:
                continue  # a prefix over-match (another key sharing the prefix)
            record = self._record(route, event)
            records.append(record)
            routed.append((route, event, record))
        seqs = self.log.append_batch(records) if records else []
        by_record = dict(zip((id(r) for r in records), seqs, strict=True))
        return [(route, event, by_record[id(record)]) for route, event, record in routed]

    def _record(self, route: Route, event: HookEvent) -> Event:
        payload: dict[str, Any] = {"route": route.name, "key": event.key.strip(),
                                   "kind": event.kind}
        vm = image = None
        if event.kind == "API":
            payload.update(method=event.method, success=event.success)
            object_id = api_object_id(event)
            if event.method.startswith("one.image."):
                image = object_id
            elif event.method.startswith("one.vm."):
                vm = object_id
        else:
            payload.update(object=event.object, state=event.state, lcm_state=event.lcm_state,
                           remote_host=event.remote_host)
            if event.object == "VM":
                vm = event.object_id
            elif event.object == "IMAGE":
                image = event.object_id
        return HookReceived.new(self.writer, payload, vm=vm, image=image)

    def dispatch(self, routed: list[tuple[Route, HookEvent, int]]) -> None:
        """Each routed message's action (``seq``: its ``hook.received`` record)."""
        for route, event, seq in routed:
            try:
                route.action(self, event, seq)
                self.counts["handled"] += 1
            except Exception as exc:
                self.counts["failed"] += 1
                print(f"WARN: {route.name} ({event.key.strip()}): {exc}", file=sys.stderr)
                self.log.append(SubscriberFailed.new(
                    self.writer, route=route.name, key=event.key.strip(), request_seq=seq,
                    error=f"{type(exc).__name__}: {exc}"))

    # -- actions ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def lag(self) -> int:
        """Log records appended since the daemon last looked for requested effects."""
        return max(0, self.log.head()[0] - self._cursor)

    def run_effects(self) -> None:
        """The effects requested since the last look (new records only: the failed ones
        wait for reconciliation, their retry)."""
        from onestorpool.subscribers.reconcile import run_pending

        head = self.log.head()[0]
        if head > self._cursor:
            counts = run_pending(self.log, self._cursor, stop=lambda: self.should_stop)
            if not counts.get("left"):
                self._cursor = head

    def request_effect(self, effect: dict[str, Any], seq: int, **subjects: Any) -> None:
        """Ask for ``effect`` (its ``key`` makes it happen once, whoever asks how often);
        the next look at the log runs it, a failure is retried by reconciliation."""
        request_effect(self.log, effect, seq, self.writer, **subjects)
        self._soon.append(time.monotonic())

    def scan_soon(self) -> None:
        now = time.monotonic()
        self._soon.extend(now + delay for delay in (0.5, 2, 5, 15))

    def cleanup_vm(self, vm_id: int, seq: int) -> None:
        cleanup_vm(self.log, vm_id, seq)

    def prune_later(self, vm_id: int, position: int) -> None:
        self._prune.setdefault(vm_id, (position, time.monotonic() + PRUNE_PATIENCE))

    def prune_due(self) -> None:
        """One request per queued VM: oned runs one snapshot operation per VM at a time."""
        if not self._prune or time.monotonic() < self._next_prune:
            return
        from onestorpool import config as config_module
        from onestorpool.subscribers.prune import Pruner

        self._next_prune = time.monotonic() + 0.5
        pruner = Pruner(self.log, config_module.load())
        for vm_id, (position, give_up) in list(self._prune.items()):
            try:
                result = pruner.prune(vm_id, position)
            except Exception as exc:  # the VM is gone, oned unreachable: next pass
                result = "failed"
                print(f"WARN: prune VM {vm_id}: {exc}", file=sys.stderr)
            if result in ("nothing", "failed") or time.monotonic() > give_up:
                del self._prune[vm_id]

    def _queue_prune_all(self, position: int) -> None:
        """Every VM with disk snapshots (retention by age needs no message)."""
        from onestorpool import oneapi
        from onestorpool.one import iter_vm_pool

        try:
            for vm in iter_vm_pool(oneapi.one_call("one.vmpool.infoextended", -2, -1, -1, -1)):
                if any(d.snapshot_ids for d in vm.disks):
                    self.prune_later(vm.id, position)
        except Exception as exc:
            print(f"WARN: reconcile: no pruning, oned's VM pool unreadable: {exc}",
                  file=sys.stderr)

    def reconcile(self, why: str) -> None:
        from onestorpool.subscribers import reconcile

        try:
            if self._reconcile is not None:
                summary = self._reconcile(self.log, why=why)
            else:
                summary = reconcile.reconcile(self.log, why=why, stop=lambda: self.should_stop)
        finally:
            self.counts["reconciliations"] += 1
            self._next_reconcile = time.monotonic() + self.reconcile_every
        self._cursor = max(self._cursor, self.log.head()[0])
        if self._reconcile is None:
            self._queue_prune_all(self._cursor)
        self.notifier.status(f"reconciled ({why}): {summary}")

    def checkpoint(self) -> None:
        from onestorpool import config as config_module
        from onestorpool.eventlog.anchor import checkpoint, checkpoint_due, configured_target

        if self.checkpoint_every <= 0 or not checkpoint_due(self.log, self.checkpoint_every):
            return
        config = config_module.load()
        file, volume = configured_target(config["EVENT_LOG_ANCHOR"])
        if volume is not None:
            from onestorpool.storpool import StorPoolClient

            with StorPoolClient.from_config(config) as sp:
                checkpoint(self.log, volume=volume, client=sp)
        else:
            from pathlib import Path

            checkpoint(self.log, file=None if file is None else Path(file))

    # -- the loop -----------------------------------------------------------------------

    def check_leader(self, now: float) -> bool:
        """Ask oned every ``leader_every`` seconds; a new leader reconciles before acting (the
        old one may have missed or half-done anything), a follower only drains the bus."""
        if self._leader_check is None:
            return True
        if now >= self._next_leader:
            self._next_leader = now + self.leader_every
            try:
                leading = bool(self._leader_check())
            except Exception as exc:  # oned away: keep the last answer
                print(f"WARN: subscriber: raft status unknown: {exc}", file=sys.stderr)
                leading = bool(self.leading)
            if leading != self.leading:
                if not leading and self.standby_exits:
                    self.should_stop = True  # the HA loop releases the log volume (ha.py)
                change = SubscriberLeader if leading else SubscriberStandby
                self.log.append(change.new(self.writer, endpoint=self.endpoint))
                if leading and self.leading is not None:
                    self._reconcile_why, self._next_reconcile = "leader", 0.0
                self.leading = leading
        return bool(self.leading)

    def drain(self) -> int:
        """A follower's turn: read and drop what arrived (the leader acts on it)."""
        assert self.socket is not None
        dropped = 0
        while self.socket.poll(0):
            self.socket.recv_multipart()
            dropped += 1
        self.counts["received"] += dropped
        return dropped

    def stop(self, *_: object) -> None:
        self.should_stop = True

    def step(self, timeout: float = 1.0) -> None:
        """One turn of the loop (tests drive it directly)."""
        assert self.socket is not None and self.monitor is not None
        self.notifier.watchdog()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        ready = dict(poller.poll(int(timeout * 1000)))
        if self.monitor in ready:
            self._on_monitor()
        now = time.monotonic()
        if not self.check_leader(now):
            if self.socket in ready:
                self.drain()
            return
        if now >= self._next_reconcile:  # a new leader reconciles before acting
            self.reconcile(self._reconcile_why)
            self._reconcile_why = "periodic"
        if self.socket in ready:
            self.dispatch(self.receive())
        now = time.monotonic()
        if self.should_stop:
            return
        due = [t for t in self._soon if t <= now]
        if now >= self._next_effects or due:
            self._soon = [t for t in self._soon if t > now]
            self.run_effects()
            self._next_effects = now + self.effects_every
        self.prune_due()
        self.checkpoint()

    def run(self) -> int:
        import faulthandler

        faulthandler.register(signal.SIGUSR1)  # kill -USR1: where is it stuck?
        from onestorpool.subscribers import notify

        notify.install(self.notifier)
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        self.connect()
        self.log.append(SubscriberStarted.new(
            self.writer, endpoint=self.endpoint,
            subscriptions=[r.prefix.decode() for r in self.routes]))
        failures = 0
        try:
            if self.check_leader(time.monotonic()):
                self.reconcile("start")
            self.notifier.ready(f"listening on {self.endpoint}"
                                + ("" if self.leading is not False else " (standby)"))
            while not self.should_stop:
                try:
                    self.step()
                    failures = 0
                except Exception as exc:
                    # the log or a peer failing (or a bug): back off, never crash-loop
                    failures += 1
                    delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                    if not isinstance(exc, (AddonError, OSError, zmq.ZMQError)):
                        import traceback

                        traceback.print_exc(file=sys.stderr)
                    print(f"WARN: subscriber: {exc}; again in {delay:.1f}s", file=sys.stderr)
                    deadline = time.monotonic() + delay
                    while not self.should_stop and time.monotonic() < deadline:
                        self.notifier.watchdog()
                        time.sleep(0.2)
        finally:
            self.notifier.stopping()
            self.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            try:
                self.log.append(SubscriberStopped.new(self.writer, dict(self.counts)))
            except AddonError as exc:
                print(f"WARN: subscriber: the stop was not recorded: {exc}", file=sys.stderr)
        return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="oned's hook bus (default: $ONE_ZMQ, else "
                                           "HOOK_ENDPOINT of the configuration)")
    parser.add_argument("--log", help="event log database (default: the configured one)")
    parser.add_argument("--reconcile-interval", type=float, metavar="SECONDS",
                        help="default: SUBSCRIBER_RECONCILE_INTERVAL")
    parser.add_argument("--checkpoint-interval", type=float, metavar="SECONDS",
                        help="default: SUBSCRIBER_CHECKPOINT_INTERVAL (0: never)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="Prometheus metrics on 127.0.0.1:PORT (default: "
                             "SUBSCRIBER_METRICS_PORT; 0: none)")
    parser.add_argument("--once", action="store_true",
                        help="reconcile once and exit (no bus): a timer's or an admin's run")
    parser.set_defaults(run=run)


def build(config: Any, args: argparse.Namespace, log: EventLog,
          leader: Callable[[], bool] | None, notifier: Notifier | None = None) -> Daemon:
    return Daemon(
        endpoint(config, args.endpoint), log,
        reconcile_every=args.reconcile_interval if args.reconcile_interval is not None
        else config["SUBSCRIBER_RECONCILE_INTERVAL"],
        checkpoint_every=args.checkpoint_interval if args.checkpoint_interval is not None
        else config["SUBSCRIBER_CHECKPOINT_INTERVAL"],
        leader=leader, notifier=notifier)


def run(args: argparse.Namespace) -> int:
    from onestorpool import config as config_module

    config = config_module.load()
    port = (args.metrics_port if args.metrics_port is not None
            else config["SUBSCRIBER_METRICS_PORT"])
    if config["EVENT_LOG_VOLUME"] and not args.once and not args.log:
        from onestorpool.subscribers import ha

        leader = leader_check(config)
        return ha.run(config, lambda log, notifier: build(config, args, log, leader, notifier),
                      metrics_port=port, leader=leader)
    with EventLog.open(args.log) as log:
        if args.once:
            from onestorpool.subscribers.reconcile import reconcile

            print(reconcile(log, why="once"))
            return 0
        daemon = build(config, args, log, leader_check(config))
        if port:
            from onestorpool.subscribers.metrics import serve

            serve(daemon, port)
        print(f"subscriber: listening on {daemon.endpoint}, log {log.path}"
              + (f", metrics on 127.0.0.1:{port}" if port else ""), flush=True)
        return daemon.run()
