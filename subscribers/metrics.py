"""The subscriber's metrics in Prometheus' format on a local port (``--metrics-port`` or
``SUBSCRIBER_METRICS_PORT``; 0: none), through the maintained ``prometheus_client``.

Values are read from the daemon when scraped (its ``counts`` and state), so nothing is
counted twice: messages received, handled, failed, malformed; reconciliations; the lag (log
records requested since the daemon last looked for effects); whether it is connected to
the bus and leads the zone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PREFIX = "onestorpool_subscriber"
COUNTERS = {
    "received": "hook-bus messages received",
    "handled": "messages whose handler ran",
    "failed": "messages whose handler failed (recorded, retried by reconciliation)",
    "malformed": "messages that could not be decoded (recorded, skipped)",
    "reconciliations": "reconciliations run (start, reconnect, periodic)",
}


class DaemonCollector:
    """A ``prometheus_client`` collector over a :class:`~subscribers.daemon.Daemon`."""

    def __init__(self, daemon: Any):
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, text in COUNTERS.items():
            family = CounterMetricFamily(f"{PREFIX}_{name}", text)
            family.add_metric([], self.daemon.counts.get(name, 0))
            yield family
        lag = GaugeMetricFamily(f"{PREFIX}_lag_records",
                                "event-log records appended since the daemon last looked "
                                "for requested effects")
        lag.add_metric([], self.daemon.lag())
        yield lag
        for name, text, value in (
                ("connected", "1 while connected to the hook bus", self.daemon.connected),
                ("leading", "1 while this front-end leads (acts)", self.daemon.leading)):
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", text)
            gauge.add_metric([], 1.0 if value else 0.0)
            yield gauge


def serve(daemon: Any, port: int, address: str = "127.0.0.1") -> Any:
    """Start the HTTP endpoint (a thread); returns what ``start_http_server`` returns."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=True)
    registry.register(DaemonCollector(daemon))
    return start_http_server(port, addr=address, registry=registry)
