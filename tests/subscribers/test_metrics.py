"""The subscriber's Prometheus metrics, scraped over HTTP while a real PUB socket feeds it:
messages received, handled and malformed, reconciliations, lag, connected, leading."""

from __future__ import annotations

import socket
import urllib.request

import zmq

from onestorpool.eventlog import Event, EventLog
from onestorpool.subscribers.daemon import Daemon
from onestorpool.subscribers.metrics import serve
from onestorpool.subscribers.notify import Notifier
from tests.subscribers.conftest import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines()
             if line.startswith("onestorpool_subscriber_"))}


def test_metrics_follow_the_daemon(tmp_path):
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    bus = pub.bind_to_random_port("tcp://127.0.0.1")
    with EventLog(tmp_path / "events.db") as log:
        daemon = Daemon(f"tcp://127.0.0.1:{bus}", log, reconcile=lambda log, why: {},
                        reconcile_every=3600, checkpoint_every=0, notifier=Notifier({}),
                        context=context, leader=None)
        daemon.connect()
        port = free_port()
        server = serve(daemon, port)
        try:
            wait_for(lambda: daemon.step(0.1) or daemon.connected, "connected", 10)
            before = scrape(port)
            assert before["onestorpool_subscriber_connected"] == 1
            assert before["onestorpool_subscriber_reconciliations_total"] == 1
            assert before["onestorpool_subscriber_received_total"] == 0

            def sent() -> bool:  # past PUB/SUB's slow joiner: send until one arrives
                pub.send_multipart([b"EVENT API one.image.delete 1", b"!!! not base64"])
                daemon.step(0.1)
                return daemon.counts["received"] > 0

            wait_for(sent, "a message through the bus", 10)
            log.append(Event("ds.rm", "test", {}))  # a record the daemon has not looked at
            after = scrape(port)
            assert after["onestorpool_subscriber_received_total"] >= 1
            assert after["onestorpool_subscriber_malformed_total"] >= 1
            assert after["onestorpool_subscriber_handled_total"] == 0
            assert after["onestorpool_subscriber_lag_records"] >= 1
            assert after["onestorpool_subscriber_leading"] == 0  # no leader check: unknown
        finally:
            if isinstance(server, tuple):
                server[0].shutdown()
            daemon.close()
            pub.close()
            context.term()
