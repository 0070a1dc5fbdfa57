"""A job as an AMQP message and back: the job travels in the message's headers, so that every
copy (requeued, delayed, failed) is self-contained (docs/jobs.md#amqp)."""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage

from mailrunner.jobs.model import FailedJob, Headers, Job, JobOptions

log = structlog.get_logger("mailrunner.jobs")

MAX_DELAY_MS = 2**32 - 1
"""The largest `x-message-ttl` every RabbitMQ version takes (3.10 takes ten years)."""
_LEVELS = 128
"""Our priorities 0..127, each two of RabbitMQ's: its back (new jobs), its front (released)."""

_ID, _NAME, _HEADERS, _PRIORITY, _AUTO_ACK, _ATTEMPTS, _ERROR, _FAILED_AT = (
    f"mailrunner-{field}"
    for field in ("id", "name", "headers", "priority", "auto-ack", "attempts", "error", "failed-at")
)
"""`_ATTEMPTS` counts earlier deliveries: the attempt of the next delivery minus one."""


def broker_priority(priority: int) -> int:
    """Our priority (lower first, 0..127 honoured) as RabbitMQ's (higher first): the even
    numbers 254..0; the odd number above each is that priority's front."""
    return 2 * (_LEVELS - 1 - min(max(priority, 0), _LEVELS - 1))


def delay_ms(seconds: float) -> int:
    """A delay in whole ms (0: none), rounded UP to two significant digits: never early, at
    most ~10 % late, and few distinct values, since each one is a queue."""
    ms = math.ceil(seconds * 1000) if seconds > 0 else 0
    if ms < 100:
        return ms
    scale: int = 10 ** (len(str(ms)) - 2)
    return math.ceil(ms / scale) * scale


def settling_delay_ms(job: Job, delay: float) -> int:
    """The delay queue a job settled with `delay` goes to: one beyond the longest is cut to it
    (warned), as failing the nack would hand the job straight back, attempt after attempt."""
    ms = delay_ms(delay)
    if ms <= MAX_DELAY_MS:
        return ms
    log.warning(
        "amqp delay cut to the longest rabbitmq can hold",
        pipeline=job.options.pipeline,
        id=job.id,
        asked_ms=ms,
        max_ms=MAX_DELAY_MS,
    )
    return MAX_DELAY_MS


def job_message(
    job: Job, attempts: int, *, front: bool = False, failure: str | None = None
) -> aio_pika.Message:
    """A job as a persistent message with `attempts` earlier deliveries; `front` puts it ahead
    of its priority's queued jobs; `failure` (an error) makes it a failed-list entry."""
    options = job.options
    headers: dict[str, Any] = {_ID: job.id, _NAME: job.name, _HEADERS: json.dumps(job.headers)}
    headers |= {_PRIORITY: options.priority, _AUTO_ACK: options.auto_ack, _ATTEMPTS: attempts}
    if failure is not None:
        headers |= {_ERROR: failure, _FAILED_AT: round(time.time() * 1000)}
    return aio_pika.Message(
        body=job.payload,
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=broker_priority(options.priority) + int(front),
        message_id=uuid.uuid4().hex,
    )


def job_of(received: AbstractIncomingMessage, pipeline: str) -> tuple[Job, int]:
    """The job a message carries, and its count of earlier deliveries."""
    headers = received.headers or {}
    try:
        job_headers: Headers = json.loads(_text(headers.get(_HEADERS)) or "{}")
    except ValueError:
        job_headers = {}
    options = JobOptions(
        pipeline, priority=_int(headers.get(_PRIORITY)), auto_ack=bool(headers.get(_AUTO_ACK))
    )
    job_id = _text(headers.get(_ID)) or received.message_id or ""
    name = _text(headers.get(_NAME)) or received.type or ""
    return Job(job_id, name, received.body, options, job_headers), _int(headers.get(_ATTEMPTS))


def failed_job_of(received: AbstractIncomingMessage, pipeline: str) -> FailedJob:
    """The failed-list entry a message of `<queue>.failed` carries."""
    job, attempts = job_of(received, pipeline)
    headers = received.headers or {}
    failed_at = _int(headers.get(_FAILED_AT)) / 1000
    return FailedJob(job, _text(headers.get(_ERROR)), attempts, failed_at)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0
