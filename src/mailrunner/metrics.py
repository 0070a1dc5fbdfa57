"""Prometheus metrics: counters fed as things happen, gauges from a snapshot taken at scrape.

Each App owns its own registry, so two servers in one process (tests) never share counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
QUEUE_STATES = ("queued", "delayed", "reserved", "failed")
WORKER_STATES = ("ready", "working", "starting", "stopping")
"""Always shown for a pool, at 0 when no worker is in them, so its series never vanish."""


def worker_counts(states: Iterable[str]) -> dict[str, int]:
    """Workers per state, from each worker's state."""
    counts = dict.fromkeys(WORKER_STATES, 0)
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return counts


@dataclass(frozen=True)
class GaugeSnapshot:
    """What the gauges show, as read by the /metrics handler just before a scrape: reading
    it needs async network I/O (a driver's stat), which a Prometheus collector, called
    synchronously, cannot do."""

    connections: int = 0
    """Open SMTP connections."""
    queues: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Per pipeline: jobs per state (queued, delayed, reserved, failed)."""
    workers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Per pool: worker processes per state."""


class _Gauges(Collector):
    """The gauges of the last GaugeSnapshot; a pipeline or pool gone since is gone here."""

    def __init__(self) -> None:
        self.snapshot = GaugeSnapshot()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self.snapshot
        yield GaugeMetricFamily(
            "mailrunner_smtp_connections", "Open SMTP connections", value=snapshot.connections
        )
        yield _family(
            "mailrunner_jobs_queue",
            "Jobs per pipeline and state (queued, delayed, reserved, failed)",
            "pipeline",
            snapshot.queues,
        )
        yield _family(
            "mailrunner_workers", "Worker processes by pool and state", "pool", snapshot.workers
        )


def _family(
    name: str, documentation: str, owner: str, counts: Mapping[str, Mapping[str, int]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[owner, "state"])
    for label, states in sorted(counts.items()):
        for state, count in states.items():
            family.add_metric([label, state], count)
    return family


class Metrics:
    """Every metric mailrunner exports, on one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter = partial(Counter, registry=self.registry)
        self.smtp_messages = counter(
            "mailrunner_smtp_messages",
            "SMTP messages by result (accepted, rejected) and reason (the reply code)",
            ["result", "reason"],
        )
        self.smtp_bytes = counter("mailrunner_smtp_bytes", "Bytes of accepted messages")
        self.smtp_delivery = Histogram(
            "mailrunner_smtp_delivery_seconds",
            "Time from the end of DATA to the 250 reply",
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.jobs_push = counter(
            "mailrunner_jobs_push",
            "Jobs pushed, by pipeline and result (ok, error)",
            ["pipeline", "result"],
        )
        self.smtp_faults = counter(
            "mailrunner_smtp_faults_injected",
            "Fault rules that acted, by stage and action (docs/faults.md)",
            ["stage", "action"],
        )
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        self._accepted = self.smtp_messages.labels("accepted", "250")

    def accepted(self, size: int, seconds: float) -> None:
        self._accepted.inc()
        self.smtp_bytes.inc(size)
        self.smtp_delivery.observe(seconds)

    def rejected(self, reply: str) -> None:
        self.smtp_messages.labels("rejected", reply[:3]).inc()

    def exposition(self, snapshot: GaugeSnapshot) -> bytes:
        """The text a scrape answers, with the gauges as `snapshot` has them."""
        self._gauges.snapshot = snapshot
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
