"""The seam between the SMTP side and whatever receives events.

The handler sees only `Delivery.deliver(event) -> Outcome`; failures raise errors from
`mailrunner.errors` and the handler turns them into 451 in one place.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import ClassVar, Protocol

import structlog

from mailrunner.config import SmtpJobsConfig
from mailrunner.errors import BadAnswer, DeliveryTimeout, OutcomeUnknown
from mailrunner.events import EmailEvent
from mailrunner.jobs.deadline import PUSH_GRACE
from mailrunner.jobs.driver import VerdictListener, verdict_listener
from mailrunner.jobs.model import Job, JobOptions
from mailrunner.mime.attachments import TempfileStorage
from mailrunner.pool.pool import WorkerPool
from mailrunner.wire.protocol import EMAIL_JOB
from mailrunner.wire.smtp import CLOSE, CONTINUE, decode_decision

log = structlog.get_logger("mailrunner.smtp")


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

    ANSWERS: ClassVar[dict[str, Outcome]] = {
        CONTINUE: Outcome.ACCEPTED,
        CLOSE: Outcome.ACCEPTED_CLOSE,
    }

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self.destination = f"{pool.name} worker pool"

    async def deliver(self, event: EmailEvent) -> Outcome:
        context, body = await self._pool.exec(event.to_json())
        decision = decode_decision(context, body)
        if decision is None:
            raise BadAnswer(
                f"worker answered {context[:40]!r} with a {len(body)}-byte body,"
                " expected CONTINUE or CLOSE and an empty body"
            )
        return self.ANSWERS[decision]


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
            async with asyncio.timeout(timeout + PUSH_GRACE) as bound:
                with verdict_listener(_extender(bound)):
                    await self._rpc.push(email_job(event, self._settings), push_timeout=timeout)
        except TimeoutError:
            reason = f"no outcome within {timeout}s + {PUSH_GRACE}s"
            self._outcome_unknown(event, reason)
            raise DeliveryTimeout(f"push to {self._settings.pipeline} gave {reason}") from None
        except OutcomeUnknown as error:
            self._outcome_unknown(event, f"{type(error).__name__}: {error}")
            raise
        except Exception:
            await self._forget_attachments(event)
            raise
        log.debug(
            "email pushed to jobs", uuid=event.uuid, id=event.id, pipeline=self._settings.pipeline
        )
        return Outcome.ACCEPTED

    def _outcome_unknown(self, event: EmailEvent, reason: str) -> None:
        """The push may have stored the job, or may yet (the bound ran out without an answer,
        a broker holds an unconfirmed publish, a remote node's COMMIT outlasted the request):
        the client still gets 451 and sends the message again (at least once, never lost), and
        the files stay for the job that may exist (the folder, marked with the pipeline, goes
        with `destroy --purge` if the job never shows up)."""
        log.warning(
            "push outcome unknown: attachments kept",
            uuid=event.uuid,
            id=event.id,
            pipeline=self._settings.pipeline,
            reason=reason,
        )

    async def _forget_attachments(self, event: EmailEvent) -> None:
        """A refused message leaves no files behind: the client will send it again.

        Only when the push said it stored nothing (see `_outcome_unknown` otherwise)."""
        if self._attachments is not None and event.attachments:
            await asyncio.to_thread(self._attachments.remove, event.id)


def _extender(bound: asyncio.Timeout) -> VerdictListener:
    """A listener that pushes `bound` back to `PUSH_GRACE` after the instant a driver names
    for its outcome (never earlier than it already is, and not once it has fired): drivers
    answer by their deadline, or by that instant when storing that cannot be withdrawn is
    under way (a sqlite COMMIT); the bound catches one that does not, so 451 still comes."""
    loop = asyncio.get_running_loop()

    def extend(instant: float) -> None:
        when = loop.time() + (instant - time.monotonic()) + PUSH_GRACE
        current = bound.when()
        if current is not None and when > current and not bound.expired():
            bound.reschedule(when)

    return extend
