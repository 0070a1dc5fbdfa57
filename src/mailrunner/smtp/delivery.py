"""The seam between the SMTP side and whatever receives events.

The handler sees only `Delivery.deliver(event) -> Outcome`; failures raise errors from
`mailrunner.errors` and the handler turns them into 451 in one place.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import ClassVar, Protocol

import orjson
import structlog

from mailrunner.config import SmtpJobsConfig
from mailrunner.errors import BadAnswer, DeliveryTimeout, OutcomeUnknown
from mailrunner.events import EmailEvent
from mailrunner.jobs.deadline import PUSH_GRACE
from mailrunner.jobs.driver import verdict_listener
from mailrunner.jobs.model import Job, JobOptions
from mailrunner.mime.attachments import TempfileStorage
from mailrunner.pool.pool import WorkerPool
from mailrunner.wire.errors import BadVerdict
from mailrunner.wire.hooks import Reply
from mailrunner.wire.protocol import EMAIL_JOB
from mailrunner.wire.smtp import CLOSE, CONTINUE, decode_delivery_answer

log = structlog.get_logger("mailrunner.smtp")


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    ACCEPTED_CLOSE = "accepted_close"


class Delivery(Protocol):
    """Hands one event on; returns only once the event is safe where it went."""

    destination: str
    """Where accepted messages go, as the "message accepted" log line names it."""

    async def deliver(self, event: EmailEvent) -> Outcome | Reply:
        """How it went; a `Reply` when the receiving code refused the message (it is then
        nowhere, and the client gets that reply)."""


class PoolDelivery:
    """The legacy path: the session waits while a worker process handles the event, which
    may refuse it with a reply of its own instead of CONTINUE / CLOSE."""

    ANSWERS: ClassVar[dict[str, Outcome]] = {
        CONTINUE: Outcome.ACCEPTED,
        CLOSE: Outcome.ACCEPTED_CLOSE,
    }

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self.destination = f"{pool.name} worker pool"

    async def deliver(self, event: EmailEvent) -> Outcome | Reply:
        context, body = await self._pool.exec(event.to_json())
        try:
            decision = decode_delivery_answer(context, body)
        except BadVerdict as error:
            raise BadAnswer(
                f"worker answered {context[:40]!r} with a {len(body)}-byte body,"
                f" expected CONTINUE, CLOSE or a 4xx/5xx reply and an empty body: {error}"
            ) from None
        return decision if isinstance(decision, Reply) else self.ANSWERS[decision]


class JobsRpc(Protocol):
    """The one Jobs RPC call the SMTP side makes: the in-process service or a remote API."""

    async def push(self, job: Job, *, push_timeout: float) -> None: ...


def email_job(
    event: EmailEvent,
    settings: SmtpJobsConfig,
    *,
    pipeline: str | None = None,
    payload: bytes | None = None,
    delay: float | None = None,
) -> Job:
    """An accepted email as a job: name `smtp.email`, id = event id, payload = event JSON
    (`payload` when the caller built it already), for `pipeline` (default: the shorthand's),
    due after `delay` (default: `smtp.jobs.delay`)."""
    target = pipeline or settings.pipeline
    if target is None:
        raise ValueError("email_job: no pipeline named (smtp.jobs.pipelines lists several)")
    return Job(
        id=event.id,
        name=EMAIL_JOB,
        payload=event.to_json() if payload is None else payload,
        options=JobOptions(
            pipeline=target,
            priority=settings.priority,
            delay=settings.delay if delay is None else delay,
            auto_ack=settings.auto_ack,
        ),
        headers={"uuid": [event.uuid], "email_id": [event.id]},
    )


def event_payloads(event: EmailEvent, include_raw: bool) -> tuple[bytes, bytes]:
    """The event JSON for the pipelines (raw bytes, or a claim-checked `raw_path`, only with
    `include_raw`) and for the inbox (always with them): one dict, dumped once more only when
    the two differ."""
    data = event.to_dict()
    with_raw = orjson.dumps(data)
    if include_raw or not _RAW_FIELDS & data["message"].keys():
        return with_raw, with_raw
    for name in _RAW_FIELDS:
        data["message"].pop(name, None)
    return orjson.dumps(data), with_raw


_RAW_FIELDS = frozenset({"raw", "raw_path"})


TOO_BIG_FOR_PIPELINE = Reply(552, "5.3.4", "Message too big for the pipeline")
"""A claim-checked message whose event still outgrows a pipeline's max_payload (its text
bodies stay in the event): every retry would fail the same way, so it is refused for good."""


@dataclass(frozen=True, slots=True)
class JsonOffload:
    """The event of a message over `over_bytes` (`smtp.parse.offload_bytes`) is turned into
    JSON on `executor` (the parse threads), not on the event loop: a 10 MB message's event
    with its attachment inline took 64-110 ms to dump, all of it time no session was served;
    on a thread the loop waits only while one C call (orjson, base64) holds the GIL, 20-42 ms
    at most."""

    over_bytes: int
    executor: Executor | None


class JobsDelivery:
    """The Jobs path: every pipeline of `smtp.jobs.pipelines`, then the inbox's, each push
    after the previous one stored its job; 250 only once all have.

    The inbox comes last so that a message whose client got 451 is never in it. A push that
    fails after others stored theirs leaves those jobs (the client's retry may duplicate them:
    at least once, as everywhere) and their attachment files, marked for them alone.
    """

    def __init__(
        self,
        rpc: JobsRpc,
        settings: SmtpJobsConfig,
        *,
        include_raw: bool = False,
        inbox: str | None = None,
        attachments: TempfileStorage | None = None,
        json_offload: JsonOffload | None = None,
    ) -> None:
        self._rpc = rpc
        self._json_offload = json_offload
        self._settings = settings
        self._include_raw = include_raw
        self._attachments = attachments
        self._pipelines = settings.targets
        self._inbox = inbox
        self._payload_limit: int | None = None
        self._bounds: _Bounds | None = None
        names = [*self._pipelines, *([inbox] if inbox is not None else [])]
        self.destination = f"jobs pipeline{'s' if len(names) > 1 else ''} {', '.join(names)}"

    def limit_payload(self, limit: int) -> None:
        """Refuse (552) a message whose event is over `limit` bytes before any push: with
        claim-check SIZE stays as configured, and only a message with large text bodies can
        still make a job bigger than a pipeline carries."""
        self._payload_limit = limit

    async def deliver(self, event: EmailEvent) -> Outcome | Reply:
        # without other pipelines, the one dump the inbox needs is all
        include_raw = self._include_raw or not self._pipelines
        offload = self._json_offload
        if offload is not None and event.envelope.size > offload.over_bytes:
            loop = asyncio.get_running_loop()
            dumped = loop.run_in_executor(offload.executor, event_payloads, event, include_raw)
            payload, inbox_payload = await dumped
        else:
            payload, inbox_payload = event_payloads(event, include_raw)
        if self._payload_limit is not None and len(payload) > self._payload_limit:
            return TOO_BIG_FOR_PIPELINE
        stored: list[str] = []
        try:
            for pipeline in self._pipelines:
                await self._push(event, payload, pipeline)
                stored.append(pipeline)
            if self._inbox is not None:
                # at once: smtp.jobs.delay is for the user's consumers, not the inbox
                await self._push(event, inbox_payload, self._inbox, delay=0.0)
                stored.append(self._inbox)
        except OutcomeUnknown:
            raise
        except Exception:
            await self._keep_attachments_for(event, stored)
            raise
        log.debug("email pushed to jobs", uuid=event.uuid, id=event.id, pipelines=stored)
        return Outcome.ACCEPTED

    async def _push(
        self, event: EmailEvent, payload: bytes, pipeline: str, delay: float | None = None
    ) -> None:
        timeout = self._settings.push_timeout
        job = email_job(event, self._settings, pipeline=pipeline, payload=payload, delay=delay)
        loop = asyncio.get_running_loop()
        if self._bounds is None or self._bounds.loop is not loop:
            self._bounds = _Bounds(loop)
        bound = self._bounds.start(timeout + PUSH_GRACE)
        expired = False
        try:
            try:
                with verdict_listener(bound.extend):
                    await self._rpc.push(job, push_timeout=timeout)
            finally:
                expired = bound.finish()
        except (TimeoutError, asyncio.CancelledError) as error:
            if isinstance(error, asyncio.CancelledError) and not expired:
                raise
            reason = f"no outcome within {timeout}s + {PUSH_GRACE}s"
            self._outcome_unknown(event, pipeline, reason)
            raise DeliveryTimeout(f"push to {pipeline} gave {reason}") from None
        except OutcomeUnknown as error:
            self._outcome_unknown(event, pipeline, f"{type(error).__name__}: {error}")
            raise

    def _outcome_unknown(self, event: EmailEvent, pipeline: str, reason: str) -> None:
        """The push may have stored the job, or may yet (the bound ran out without an answer,
        a broker holds an unconfirmed publish, a remote node's COMMIT outlasted the request):
        the client still gets 451 and sends the message again (at least once, never lost), and
        the files stay for the job that may exist (the folder, marked with every pipeline,
        goes with `destroy --purge` if the jobs never show up)."""
        log.warning(
            "push outcome unknown: attachments kept",
            uuid=event.uuid,
            id=event.id,
            pipeline=pipeline,
            reason=reason,
        )

    async def _keep_attachments_for(self, event: EmailEvent, stored: list[str]) -> None:
        """A refused message keeps its files only for the pipelines that stored its job (none:
        the folder goes, the client will send the message again).

        Only when the push said it stored nothing (see `_outcome_unknown` otherwise)."""
        if self._attachments is not None and event.has_files:
            await asyncio.to_thread(self._attachments.keep_for, event.id, stored)


class _Bound:
    """The 451 bound of one push: `asyncio.timeout` semantics (the task is cancelled when it
    passes, and that cancellation alone becomes a timeout), held by `_Bounds` under one timer
    for all pushes instead of a timer handle per push and a new one per extension."""

    __slots__ = ("_bounds", "_cancelling", "_task", "expired", "finished", "queued", "when")

    def __init__(self, bounds: _Bounds, task: asyncio.Task[object], when: float) -> None:
        self._bounds = bounds
        self._task = task
        self._cancelling = task.cancelling()
        self.when = when
        self.queued = when
        self.expired = False
        self.finished = False

    def extend(self, instant: float) -> None:
        """The verdict listener: push the bound back to `PUSH_GRACE` after the instant a
        driver names for its outcome (never earlier than it already is, and not once it has
        passed): drivers answer by their deadline, or by that instant when storing that
        cannot be withdrawn is under way (a sqlite COMMIT); the bound catches one that does
        not, so 451 still comes. Only the instant is kept: the timer looks at it when due."""
        if self.expired or self.finished:
            return
        loop = self._bounds.loop
        when = loop.time() + (instant - time.monotonic()) + PUSH_GRACE
        self.when = max(self.when, when)

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def finish(self) -> bool:
        """Leave the bound; True when its expiry is what cancelled the task (as
        `asyncio.Timeout.__aexit__` decides it)."""
        self.finished = True
        self._bounds.forget(self)
        return self.expired and self._task.uncancel() <= self._cancelling


class _Bounds:
    """Every push's bound on one loop, under one timer handle. Pushes come in the order of
    their first bounds (one push_timeout for all), so the live ones are a dict in that order
    and the timer waits for the first; a bound extended past its first instant waits in a
    heap. Per push a dict entry, not a uvloop timer started and stopped (and started again
    at the extension every sqlite commit sends): the bound cost 11-14 us a push, now 3-7."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._live: dict[_Bound, None] = {}
        self._late: list[tuple[float, int, _Bound]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        self._last = 0.0
        """The first instant of the newest bound in `_live`."""

    def start(self, delay: float) -> _Bound:
        task = asyncio.current_task(self.loop)
        assert task is not None, "a push's bound is for the task that pushes"
        bound = _Bound(self, task, self.loop.time() + delay)
        if bound.when >= self._last:
            self._live[bound] = None
            self._last = bound.when
        else:  # a shorter push_timeout than the pushes before (a reload)
            heapq.heappush(self._late, (bound.when, next(self._order), bound))
        self._arm(bound.when)
        return bound

    def forget(self, bound: _Bound) -> None:
        self._live.pop(bound, None)

    def _arm(self, when: float) -> None:
        if self._timer is not None and self._armed <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._sweep)
        self._armed = when

    def _sweep(self) -> None:
        self._timer = None
        # the loop may run a timer up to its clock's resolution early (asyncio's rule)
        now = self.loop.time() + _TIMER_SLACK
        for bound in list(itertools.takewhile(lambda b: b.queued <= now, self._live)):
            del self._live[bound]
            self._due(bound, now)
        late = self._late
        while late and late[0][0] <= now:
            self._due(heapq.heappop(late)[2], now)
        firsts = [late[0][0]] if late else []
        firsts += [bound.queued for bound in itertools.islice(self._live, 1)]
        if firsts:
            self._arm(min(firsts))

    def _due(self, bound: _Bound, now: float) -> None:
        if bound.finished:
            return
        if bound.when <= now:
            bound.expire()
            return
        bound.queued = bound.when
        heapq.heappush(self._late, (bound.when, next(self._order), bound))


_TIMER_SLACK = 0.001
"""Seconds a timer may fire before its instant (uvloop counts in milliseconds)."""
