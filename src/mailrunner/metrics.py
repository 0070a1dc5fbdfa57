"""Prometheus metrics: counters fed as things happen, gauges read from components at scrape.

Each App owns its own registry, so two servers in one process (tests) never share counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric mailrunner exports, on one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.smtp_messages = Counter(
            "mailrunner_smtp_messages",
            "SMTP messages by result (accepted, rejected) and reason (the reply code)",
            ["result", "reason"],
            registry=self.registry,
        )
        self.smtp_bytes = Counter(
            "mailrunner_smtp_bytes", "Bytes of accepted messages", registry=self.registry
        )
        self.smtp_delivery = Histogram(
            "mailrunner_smtp_delivery_seconds",
            "Time from the end of DATA to the 250 reply",
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.smtp_connections = Gauge(
            "mailrunner_smtp_connections", "Open SMTP connections", registry=self.registry
        )
        self.jobs_push = Counter(
            "mailrunner_jobs_push",
            "Jobs pushed, by pipeline and result (ok, error)",
            ["pipeline", "result"],
            registry=self.registry,
        )
        self.jobs_queue = Gauge(
            "mailrunner_jobs_queue",
            "Jobs per pipeline and state (queued, delayed, reserved, failed)",
            ["pipeline", "state"],
            registry=self.registry,
        )
        self.workers = Gauge(
            "mailrunner_workers",
            "Worker processes by pool and state",
            ["pool", "state"],
            registry=self.registry,
        )

        self._accepted = self.smtp_messages.labels("accepted", "250")

    def accepted(self, size: int, seconds: float) -> None:
        self._accepted.inc()
        self.smtp_bytes.inc(size)
        self.smtp_delivery.observe(seconds)

    def rejected(self, reply: str) -> None:
        self.smtp_messages.labels("rejected", reply[:3]).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _DriverCounter(Collector):
    """A per-pipeline counter that drivers keep as a plain int, read at scrape time (drivers
    import only the jobs model, the driver seam, config and errors)."""

    name = ""
    documentation = ""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["pipeline"])
        for pipeline, count in sorted(self._counts().items()):
            family.add_metric([pipeline], count)
        yield family


class UnwithdrawnPublishes(_DriverCounter):
    """`mailrunner_jobs_unwithdrawn_publishes_total`: the one case where a 451 does not rule
    out that the message was stored (DESIGN's "No late delivery"), so operators can see how
    often it happens."""

    name = "mailrunner_jobs_unwithdrawn_publishes"
    documentation = (
        "Pushes that timed out after their message reached a broker that cannot withdraw"
        " it: possibly stored although the push failed"
    )


class DroppedLate(_DriverCounter):
    """`mailrunner_jobs_dropped_late_total`: jobs a consumer discarded because the broker
    stored them after their push had given up (the SMTP client got 451 and retries). Each one
    is also logged; a rising count with few 451s points at pushers whose clocks lag the
    broker's by more than `max_clock_skew`."""

    name = "mailrunner_jobs_dropped_late"
    documentation = "Jobs discarded unseen because the broker stored them after their push deadline"
