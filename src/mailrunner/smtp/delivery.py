"""The seam between the SMTP side and whatever receives events.

The handler sees only `Delivery.deliver(event) -> Outcome`; failures raise errors from
`mailrunner.errors` and the handler turns them into 451 in one place.
"""

from __future__ import annotations

import asyncio
import enum
from typing import ClassVar, Protocol

import structlog

from mailrunner.config import SmtpJobsConfig
from mailrunner.errors import BadAnswer, DeliveryTimeout
from mailrunner.events import EmailEvent
from mailrunner.jobs.model import Job, JobOptions
from mailrunner.mime.attachments import TempfileStorage
from mailrunner.pool.pool import WorkerPool
from mailrunner.worker.jobs import EMAIL_JOB

log = structlog.get_logger("mailrunner.smtp")

_PUSH_GRACE = 1.0
"""Drivers answer by their deadline; this bounds a driver that does not, so 451 still comes."""


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    ACCEPTED_CLOSE = "accepted_close"


class Delivery(Protocol):
    """Hands one event on; returns only once the event is safe where it went."""

    destination: str
    """Where accepted messages go, as the "message accepted" log line names it."""

    async def deliver(self, event: EmailEvent) -> Outcome: ...


class PoolDelivery:
    """The legacy path: the session waits while a worker process handles the event."""

    ANSWERS: ClassVar[dict[bytes, Outcome]] = {
        b"CONTINUE": Outcome.ACCEPTED,
        b"CLOSE": Outcome.ACCEPTED_CLOSE,
    }

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self.destination = f"{pool.name} worker pool"

    async def deliver(self, event: EmailEvent) -> Outcome:
        context, body = await self._pool.exec(event.to_json())
        outcome = self.ANSWERS.get(context)
        if outcome is None or body:
            raise BadAnswer(
                f"worker answered {context[:40]!r} with a {len(body)}-byte body,"
                " expected CONTINUE or CLOSE and an empty body"
            )
        return outcome


class JobsRpc(Protocol):
    """The one Jobs RPC call the SMTP side makes: the in-process service or a remote API."""

    async def push(self, job: Job, *, push_timeout: float) -> None: ...


def email_job(event: EmailEvent, settings: SmtpJobsConfig) -> Job:
    """An accepted email as a job: name `smtp.email`, id = event id, payload = event JSON."""
    return Job(
        id=event.id,
        name=EMAIL_JOB,
        payload=event.to_json(),
        options=JobOptions(
            pipeline=settings.pipeline,
            priority=settings.priority,
            delay=settings.delay,
            auto_ack=settings.auto_ack,
        ),
        headers={"uuid": [event.uuid], "email_id": [event.id]},
    )


class JobsDelivery:
    """The Jobs path: 250 only after the pipeline has stored the job."""

    def __init__(
        self, rpc: JobsRpc, settings: SmtpJobsConfig, attachments: TempfileStorage | None = None
    ) -> None:
        self._rpc = rpc
        self._settings = settings
        self._attachments = attachments
        self.destination = f"jobs pipeline {settings.pipeline}"

    async def deliver(self, event: EmailEvent) -> Outcome:
        timeout = self._settings.push_timeout
        try:
            async with asyncio.timeout(timeout + _PUSH_GRACE):
                await self._rpc.push(email_job(event, self._settings), push_timeout=timeout)
        except TimeoutError:
            await self._forget_attachments(event)
            raise DeliveryTimeout(
                f"push to {self._settings.pipeline} took over {timeout}s"
            ) from None
        except Exception:
            await self._forget_attachments(event)
            raise
        log.debug(
            "email pushed to jobs", uuid=event.uuid, id=event.id, pipeline=self._settings.pipeline
        )
        return Outcome.ACCEPTED

    async def _forget_attachments(self, event: EmailEvent) -> None:
        """A refused message leaves no files behind: the client will send it again."""
        if self._attachments is not None and event.attachments:
            await asyncio.to_thread(self._attachments.remove, event.id)
