"""A pusher of the tests' own for nats pipelines: it publishes a job straight to the stream in
the nats driver's wire format (`_nats_wire`), with a push deadline of its choosing, as the
driver of another node whose clock is behind the server's would. Shared by the driver and the
security tests."""

from __future__ import annotations

import time

import nats

from mailrunner.config import DEFAULT_PRIORITY
from mailrunner.jobs.drivers import _nats_wire
from mailrunner.jobs.model import Job, JobOptions


async def publish_as_lagging_pusher(
    addr: str, subject: str, job_id: str, *, expired_ago: float, payload: bytes = b"{}"
) -> None:
    """Store a job whose push deadline, by the server's clock, passed `expired_ago` seconds
    before the server stored it (negative: still that far ahead). That is what a pusher whose
    clock runs `expired_ago + push_timeout` seconds behind sends for a push that met its own
    deadline. Returns once the server has stored it (PubAck)."""
    job = Job(job_id, "test.job", payload, JobOptions(subject, DEFAULT_PRIORITY))
    headers = _nats_wire.encode(job, 0, deadline=time.time() - expired_ago)
    connection = await nats.connect(addr, connect_timeout=5)
    try:
        await connection.jetstream().publish(subject, payload, headers=headers, timeout=5)
    finally:
        await connection.close()
