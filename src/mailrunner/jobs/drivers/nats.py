"""The NATS JetStream driver: a pipeline shared by many nodes through one stream.

Layout on the server (`stream` defaults to the pipeline's name, `subject` to
`mailrunner.jobs.<pipeline>`):

    <stream>         file storage, work-queue retention, subject <subject>: the jobs
    <stream>_failed  file storage, limits retention, subject <subject>.failed: the failed list
    consumer "mailrunner" on <stream>: durable pull, explicit ack, ack_wait = the pipeline's
                     visibility_timeout, max_deliver unlimited (the consumer of mailrunner,
                     not JetStream, enforces `retries`)

A job is one message: the payload is the job's payload, the `Mailrunner-Job` header holds
its id, name, headers, priority and auto_ack as ASCII JSON (NATS headers cannot carry
newlines), `Mailrunner-Attempts` the deliveries it had before this message (see nack), and
`Nats-Msg-Id` its id.

What it honours (the capabilities it declares):

- durable: yes. `push` returns after JetStream's PubAck, which a file-backed stream sends
  once the message is stored (JetStream syncs its files in the background; a whole-machine
  power loss can lose the last seconds, a killed nats-server does not).
- idempotent_push: declared false. `Nats-Msg-Id` = job id makes JetStream drop a re-push of
  an id within the stream's duplicate window (2 minutes), but not after it, so "the same id
  is stored once" holds only inside that window.
- atomic_batch: no. A batch is published one message at a time; when one fails, the ones
  already stored are deleted again before push raises, but a reader can see part of it.
- priority: no. JetStream serves in stream order; the job keeps its priority.
- delay: declared false. A job pushed with a delay carries `Mailrunner-Not-Before` and a
  reserve that meets it early gives it back with `nak(delay=remaining)`, so it is not served
  early, but until then `stat` counts it as queued, not delayed.
- peek: no. JetStream cannot list a consumer's messages in serving order without leasing.
- max_payload: the server's `max_payload` (from its INFO on connect) minus 8 KiB kept for the
  job's metadata headers, which share that limit with the payload.

Leases: a lease is one delivery (stream sequence + delivery count). `extend` is
`in_progress()` (+WPI), which restarts the server's ack_wait. This process remembers when each
of its leases expires, measured from before the pull request (so never later than the
server's own expiry); a lease past that instant, or whose message it has seen delivered again,
is stale and its ack, nack, extend and release do nothing: the job will run again, a duplicate
never a loss, and another consumer's lease is never disturbed. Leases are told apart by the
delivery's consumer sequence: after a killed server restarts, JetStream can deliver a message
a second time as if new (its consumer state on disk was behind); only the latest delivery is
a lease. Pulls run one at a time per driver, each on this process's own inbox; a message that
arrives after its pull gave up is given back at once with `nak()`, uncounted.

Attempts: attempt = `Mailrunner-Attempts` + the message's `num_delivered`, minus the
deliveries this process gave back uncounted (`release`, and skipping a not-yet-due message).
Those uncounted deliveries are remembered in this process only: a release by another node, or
before a restart, counts as an attempt.

nack: with requeue and no delay, or with new headers, the job is published again as a new
message (`Mailrunner-Attempts` = the attempts so far, new headers if given) and the original
acked after the copy's PubAck, so it is due at once and survives restarts as queued. With
requeue and a delay but no new headers it is `nak(delay=...)`: the original waits on the
server. With a delay and new headers, the copy carries `Mailrunner-Not-Before`. Without
requeue a copy goes to `<stream>_failed` with the error, attempts and time in headers, and the
original is terminated after that copy's PubAck. `release` is `nak()`: JetStream redelivers
it before newer messages, so it keeps its place.

stat: queued = the consumer's `num_pending` (never delivered) plus messages this process knows
are due again although still unacknowledged on the server (its expired leases, releases, and
nak delays that are over); delayed = this process's nak delays that are not over; reserved =
the rest of the consumer's `num_ack_pending`; failed = the failed stream's message count.
Exact for one process; with several nodes, or after a restart, a job waiting on the server for
redelivery (an expired lease, a nak delay) counts as reserved until it is delivered again.

No late delivery: the client is connected with `pending_size=0`, so nats-py refuses to buffer a
publish while disconnected or reconnecting (the push fails at once with DriverUnavailable
instead of being sent after the server returns). Before each message the deadline and the
connection are checked, and the PubAck is awaited up to the deadline plus `VERDICT_GRACE`
(`jobs/deadline.py`), to learn what to delete; a job whose PubAck comes after the deadline is
deleted again (by its sequence) before PushTimeout is raised. Each message also carries the
pusher's wall-clock deadline (`Mailrunner-Deadline`), and reserve terminates, unseen, a message
the server stored more than `config.max_clock_skew` (default 2 s) after it, so even a publish
whose PubAck never came is not delivered when it landed late. Every such job is logged ("job
dropped: stored after its push deadline", with its id and pipeline) and counted in
`dropped_late` (the metric `mailrunner_jobs_dropped_late_total{pipeline}`): a pusher whose
clock lags the server's by more than the skew shows up there instead of losing mail silently.
The skew is the tolerance for clocks that disagree: a push whose PubAck never came although the
server stored it within its deadline plus the skew may be delivered although push raised: a
duplicate after the SMTP client's retry, never a loss.

Connections: nats-py reconnects by itself (allow_reconnect, unlimited attempts); the durable
consumer and the pull inbox survive a server restart, so the same driver works again once the
server is back, without reopening. While it is down every call fails fast with
DriverUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from mailrunner.config import NatsPipelineConfig, mask_url
from mailrunner.errors import DriverError, DriverUnavailable, PushTimeout
from mailrunner.jobs.deadline import VERDICT_GRACE
from mailrunner.jobs.driver import Driver, DriverLease, Lease, LeaseKeeper, Nack
from mailrunner.jobs.drivers._common import (
    broker_capabilities,
    selection,
    selects_nothing,
    time_left,
)
from mailrunner.jobs.model import FailedJob, Job, JobOptions, QueueStat

log = structlog.get_logger("mailrunner.jobs")

CONSUMER = "mailrunner"
"""The durable consumer every node of a pipeline shares."""
_HEADER_ROOM = 8 * 1024
"""Bytes of the server's max_payload kept for a job's metadata headers."""
_CALL_TIMEOUT = 5
"""Seconds bounding every JetStream API call, acknowledgement and flush."""
_PULL_MARGIN = 0.25
"""Seconds a waiting pull listens past its expiry for the server's 408."""
_DUPLICATE_WINDOW = 120.0

_JOB = "Mailrunner-Job"
_ATTEMPTS = "Mailrunner-Attempts"
_DEADLINE = "Mailrunner-Deadline"
_NOT_BEFORE = "Mailrunner-Not-Before"
_ERROR = "Mailrunner-Error"
_FAILED_AT = "Mailrunner-Failed-At"
_MSG_ID = "Nats-Msg-Id"
_STATUS = "Status"


def _cancelled_by_caller() -> bool:
    """Whether a CancelledError is meant for the running task. nats-py lets cancellations of
    its own internal tasks escape from calls such as flush and close (nats.py issues #373,
    #469); those must become errors of the call, not stop the caller's task."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _token(name: str) -> str:
    """A pipeline name made fit for a stream name and a subject token (the defaults)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


def _msg_id(job_id: str) -> str:
    """The job id when it is a safe header value, else its hash (same id, same value)."""
    if job_id.isascii() and job_id.isprintable() and len(job_id) <= 200:
        return job_id
    return "sha256:" + hashlib.sha256(job_id.encode()).hexdigest()


def _encode(job: Job, attempts: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    meta = {
        "id": job.id,
        "name": job.name,
        "headers": job.headers,
        "priority": job.options.priority,
        "auto_ack": job.options.auto_ack,
    }
    headers = {_JOB: json.dumps(meta, ensure_ascii=True), _ATTEMPTS: str(attempts)}
    if extra:
        headers.update(extra)
    return headers


def _decode(msg_headers: dict[str, str] | None, payload: bytes, pipeline: str) -> Job:
    meta = json.loads((msg_headers or {})[_JOB])
    return Job(
        id=meta["id"],
        name=meta["name"],
        payload=payload,
        options=JobOptions(
            pipeline=pipeline, priority=int(meta["priority"]), auto_ack=bool(meta["auto_ack"])
        ),
        headers=meta["headers"],
    )


@dataclass(slots=True)
class _Held:
    """What this process knows about one unacknowledged message (by stream sequence).

    `delivery` is the consumer sequence of its latest delivery seen here (unique per
    delivery, unlike `num_delivered`, which a consumer restored after a crash can repeat).
    `state` leased: valid until `until`; released: due now; delayed: due at `until`.
    """

    delivery: int
    state: Literal["leased", "released", "delayed"]
    until: float


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A lease's handle: the pulled message, its stream sequence and its delivery number."""

    msg: Msg
    seq: int
    delivery: int


class NatsDriver(Driver, LeaseKeeper[_Delivery]):
    """One pipeline's jobs in one JetStream stream (`config.stream`) on `config.addr`."""

    def __init__(self, name: str, settings: NatsPipelineConfig, data_dir: Path) -> None:
        self.name = name
        self.visibility_timeout = float(settings.visibility_timeout)
        self.addr = mask_url(settings.config.addr)
        self._max_clock_skew = float(settings.config.max_clock_skew)
        self.capabilities = broker_capabilities(max_payload=None)
        """`max_payload` is filled in by `open()` from the server's INFO."""
        self._settings = settings.config
        self.stream = settings.config.stream or _token(name)
        self.subject = settings.config.subject or f"mailrunner.jobs.{_token(name)}"
        self.failed_stream = f"{self.stream}_failed"
        self.failed_subject = f"{self.subject}.failed"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: Subscription | None = None
        self._inbox = ""
        self._tokens = itertools.count(1)
        self._current: tuple[str, asyncio.Queue[Msg]] | None = None
        self._pull_lock = asyncio.Lock()
        self._held: dict[int, _Held] = {}
        self._uncounted: dict[int, int] = {}

    # --- connecting ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return

        async def quiet(error: Exception) -> None:
            log.debug("nats client error", pipeline=self.name, error=str(error))

        try:
            nc = await nats.connect(
                self._settings.addr,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                connect_timeout=_CALL_TIMEOUT,
                pending_size=0,  # never buffer a publish while disconnected: no late delivery
                error_cb=quiet,
            )
        except (nats.errors.Error, OSError) as error:
            raise DriverUnavailable(
                f"pipeline {self.name}: cannot reach nats at {self.addr}: {error}"
            ) from error
        try:
            js = nc.jetstream(timeout=_CALL_TIMEOUT)
            await self._declare(js)
            self._inbox = nc.new_inbox()
            self._sub = await nc.subscribe(self._inbox + ".*", cb=self._on_pulled)
        except (nats.errors.Error, OSError) as error:
            await nc.close()
            raise DriverUnavailable(
                f"pipeline {self.name}: cannot declare stream {self.stream} on {self.addr}: "
                + str(error)
            ) from error
        self.capabilities = broker_capabilities(max_payload=max(0, nc.max_payload - _HEADER_ROOM))
        self._nc, self._js = nc, js

    async def _declare(self, js: JetStreamContext) -> None:
        """Create the streams and the durable consumer unless they exist already."""
        for name, subject, retention in (
            (self.stream, self.subject, RetentionPolicy.WORK_QUEUE),
            (self.failed_stream, self.failed_subject, RetentionPolicy.LIMITS),
        ):
            try:
                await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                await js.add_stream(
                    StreamConfig(
                        name=name,
                        subjects=[subject],
                        retention=retention,
                        storage=StorageType.FILE,
                        duplicate_window=_DUPLICATE_WINDOW,
                    )
                )
        config = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.visibility_timeout,
            max_deliver=-1,
            max_ack_pending=-1,
            filter_subject=self.subject,
        )
        try:
            await js.consumer_info(self.stream, CONSUMER)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(self.stream, config)

    async def close(self) -> None:
        nc, self._nc, self._js, self._sub = self._nc, None, None, None
        self._held.clear()
        self._uncounted.clear()
        if nc is not None:
            try:
                await nc.close()
            except asyncio.CancelledError:
                if _cancelled_by_caller():
                    raise
            except Exception as error:
                log.debug("nats client close failed", pipeline=self.name, error=repr(error))

    def _client(self) -> tuple[Client, JetStreamContext]:
        if self._nc is None or self._js is None:
            raise DriverUnavailable(f"pipeline {self.name}: the nats driver is not open")
        if not self._nc.is_connected:
            raise DriverUnavailable(f"pipeline {self.name}: nats at {self.addr} is unreachable")
        return self._nc, self._js

    def _failure(self, error: BaseException, doing: str) -> DriverError:
        if isinstance(error, (nats.errors.TimeoutError, TimeoutError)):
            return DriverUnavailable(
                f"pipeline {self.name}: nats at {self.addr} did not answer while {doing}"
            )
        if isinstance(
            error,
            (
                nats.errors.ConnectionClosedError,
                nats.errors.OutboundBufferLimitError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,
                OSError,
            ),
        ):
            return DriverUnavailable(
                f"pipeline {self.name}: nats at {self.addr} unreachable while {doing}: "
                f"{type(error).__name__}"
            )
        return DriverError(f"pipeline {self.name}: nats failed while {doing}: {error!r}")

    # --- push ----------------------------------------------------------------------------

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        time_left(self.name, deadline)
        _nc, js = self._client()
        stored: list[int] = []
        try:
            await self._publish_jobs(jobs, deadline, stored)
        except BaseException as error:
            await self._unstore(js, stored)
            if isinstance(error, asyncio.CancelledError) and not _cancelled_by_caller():
                raise DriverUnavailable(
                    f"pipeline {self.name}: the nats client cancelled its own request"
                ) from None
            if isinstance(error, DriverError) or not isinstance(error, Exception):
                raise
            if isinstance(error, (nats.errors.TimeoutError, TimeoutError)):
                raise PushTimeout(
                    f"pipeline {self.name}: nats at {self.addr} did not confirm the push "
                    f"within {VERDICT_GRACE}s of its deadline"
                ) from None
            raise self._failure(error, "storing jobs") from error

    async def _publish_jobs(self, jobs: Sequence[Job], deadline: float, stored: list[int]) -> None:
        """Publish one job at a time, each only while connected and before the deadline,
        adding each new message's sequence to `stored` (for `_unstore`)."""
        wall_deadline = time.time() + (deadline - time.monotonic())
        for job in jobs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PushTimeout(f"pipeline {self.name}: push deadline passed while storing")
            extra = {_MSG_ID: _msg_id(job.id), _DEADLINE: repr(wall_deadline)}
            if job.options.delay > 0:
                extra[_NOT_BEFORE] = repr(time.time() + job.options.delay)
            _nc, js = self._client()  # disconnected: fail now, never buffer
            ack = await js.publish(
                self.subject,
                job.payload,
                timeout=remaining + VERDICT_GRACE,
                headers=_encode(job, 0, extra),
            )
            if not ack.duplicate:
                stored.append(ack.seq)
        if time.monotonic() > deadline:
            raise PushTimeout(
                f"pipeline {self.name}: nats at {self.addr} confirmed the push after its "
                "deadline; the jobs were deleted again"
            )

    async def _unstore(self, js: JetStreamContext, seqs: Sequence[int]) -> None:
        """Delete messages a failed or late push stored (best effort: reserve also drops
        a message stored after its deadline)."""
        for seq in seqs:
            with contextlib.suppress(Exception):
                await js.delete_msg(self.stream, seq)

    # --- pulling -------------------------------------------------------------------------

    async def _on_pulled(self, msg: Msg) -> None:
        """Route a pulled message to the pull waiting for it; one nobody waits for any more
        is given back at once, uncounted, instead of sitting leased until ack_wait.

        Pulls run one at a time (under `_pull_lock`), so a job message belongs to the pull
        in progress; a status message (404, 408) names its pull in its subject, so one that
        answers an earlier pull cannot end the current one."""
        current = self._current
        status = JetStreamContext.is_status_msg(msg)
        if current is not None and (status is None or msg.subject.endswith("." + current[0])):
            current[1].put_nowait(msg)
            return
        if status is not None or not msg.reply:
            return
        with contextlib.suppress(Exception):
            seq = msg.metadata.sequence.stream
            self._uncounted[seq] = self._uncounted.get(seq, 0) + 1
            await msg.nak()

    async def _pull(self, batch: int, expires: float | None) -> list[Msg]:
        """One pull request on this process's inbox: `no_wait` when `expires` is None."""
        nc, _js = self._client()
        token = str(next(self._tokens))
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._current = (token, queue)
        request: dict[str, Any] = {"batch": batch}
        if expires is None:
            request["no_wait"] = True
            listen: float = _CALL_TIMEOUT
        else:
            request["expires"] = max(1_000_000, int(expires * 1e9))
            listen = expires + _PULL_MARGIN
        msgs: list[Msg] = []
        try:
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{CONSUMER}",
                json.dumps(request).encode(),
                reply=f"{self._inbox}.{token}",
            )
            give_up = time.monotonic() + listen
            while len(msgs) < batch:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        msg = await queue.get()
                except TimeoutError:
                    break
                status = JetStreamContext.is_status_msg(msg)
                if status is None:
                    msgs.append(msg)
                elif status != "100":
                    break
        except Exception as error:
            raise self._failure(error, "reserving jobs") from error
        finally:
            self._current = None
            while not queue.empty():  # arrived with the terminating status: keep them
                msg = queue.get_nowait()
                if JetStreamContext.is_status_msg(msg) is None:
                    msgs.append(msg)
        return msgs

    def _late_by(self, msg: Msg) -> float | None:
        """Seconds by which the server stored `msg` after its push's deadline, beyond
        `max_clock_skew`; None when it came in time (or carries no deadline)."""
        deadline = (msg.headers or {}).get(_DEADLINE)
        if deadline is None:
            return None
        late_by = msg.metadata.timestamp.timestamp() - float(deadline) - self._max_clock_skew
        return late_by if late_by > 0 else None

    async def _drop_late(self, msg: Msg, late_by: float) -> None:
        """Discard, unseen, a message stored after its push gave up (the pusher raised, so
        the SMTP client got 451 and sends the mail again): logged and counted, never silent."""
        job = _decode(msg.headers, msg.data, self.name)
        self.dropped_late += 1
        log.warning(
            "job dropped: stored after its push deadline",
            pipeline=self.name,
            id=job.id,
            job=job.name,
            late_by=round(late_by, 3),
            max_clock_skew=self._max_clock_skew,
        )
        await self._quietly(msg.term())

    def _lease(self, msg: Msg, pulled_at: float) -> DriverLease[_Delivery]:
        """A lease for a pulled message, remembered as held by this process."""
        meta = msg.metadata
        seq, delivered, delivery = meta.sequence.stream, meta.num_delivered, meta.sequence.consumer
        headers = msg.headers or {}
        job = _decode(headers, msg.data, self.name)
        attempt = int(headers.get(_ATTEMPTS, "0")) + delivered - self._uncounted.get(seq, 0)
        self._held[seq] = _Held(delivery, "leased", pulled_at + self.visibility_timeout)
        return DriverLease(self, job, attempt, _Delivery(msg, seq, delivery))

    async def _take(self, msgs: list[Msg], pulled_at: float) -> list[Lease]:
        leases: list[DriverLease[_Delivery]] = []
        for msg in msgs:
            headers = msg.headers or {}
            try:
                late_by = self._late_by(msg)
                if late_by is not None:
                    await self._drop_late(msg, late_by)
                    continue
                lease = self._lease(msg, pulled_at)
            except (KeyError, ValueError, TypeError) as error:
                log.error("dropping a malformed nats message", pipeline=self.name, error=str(error))
                await self._quietly(msg.term())
                continue
            not_before = float(headers.get(_NOT_BEFORE, "0"))
            if not_before > time.time():
                remaining = not_before - time.time()
                self._uncounted[lease.handle.seq] = self._uncounted.get(lease.handle.seq, 0) + 1
                self._held[lease.handle.seq] = _Held(
                    lease.handle.delivery, "delayed", time.monotonic() + remaining
                )
                await self._quietly(msg.nak(delay=remaining))
                continue
            leases.append(lease)
        # After a crash JetStream can deliver one message twice in a row (its consumer
        # state was behind): only the latest delivery is a lease.
        return [
            lease
            for lease in leases
            if self._held[lease.handle.seq].delivery == lease.handle.delivery
        ]

    async def _quietly(self, call: Any) -> None:
        try:
            await call
        except Exception as error:
            raise self._failure(error, "acknowledging a message") from error

    async def reserve(self, limit: int, wait: float) -> list[Lease]:
        give_up = time.monotonic() + wait
        if limit <= 0:
            return []
        try:
            async with asyncio.timeout(max(0.0, wait) + _PULL_MARGIN):
                await self._pull_lock.acquire()
        except TimeoutError:
            return []
        try:
            while True:
                pulled_at = time.monotonic()
                msgs = await self._pull(limit, None)
                leases = await self._take(msgs, pulled_at)
                if leases:
                    return leases
                remaining = give_up - time.monotonic()
                if msgs and remaining > 0:
                    continue  # every message was skipped: look again
                if remaining <= 0.005:
                    return []
                pulled_at = time.monotonic()
                msgs = await self._pull(1, remaining)
                leases = await self._take(msgs, pulled_at)
                if leases:
                    if limit > 1:
                        pulled_at = time.monotonic()
                        more = await self._pull(limit - 1, None)
                        leases += await self._take(more, pulled_at)
                    return leases
                if time.monotonic() >= give_up:
                    return []
        finally:
            self._pull_lock.release()

    # --- leases --------------------------------------------------------------------------

    def _valid(self, lease: DriverLease[_Delivery]) -> bool:
        held = self._held.get(lease.handle.seq)
        return (
            self._nc is not None
            and held is not None
            and held.state == "leased"
            and held.delivery == lease.handle.delivery
            and time.monotonic() < held.until
        )

    def _forget(self, seq: int) -> None:
        self._held.pop(seq, None)
        self._uncounted.pop(seq, None)

    async def extend(self, lease: DriverLease[_Delivery]) -> None:
        if not self._valid(lease):
            return
        msg = lease.handle.msg
        started = time.monotonic()
        nc, _js = self._client()
        await self._quietly(msg.in_progress())
        await self._quietly(nc.flush(_CALL_TIMEOUT))
        held = self._held.get(lease.handle.seq)
        if held is not None and held.delivery == lease.handle.delivery:
            held.until = started + self.visibility_timeout

    async def ack(self, lease: DriverLease[_Delivery]) -> None:
        if not self._valid(lease):
            return
        msg = lease.handle.msg
        self._client()
        await self._quietly(msg.ack_sync(timeout=_CALL_TIMEOUT))
        self._forget(lease.handle.seq)

    async def release(self, lease: DriverLease[_Delivery]) -> None:
        if not self._valid(lease):
            return
        msg = lease.handle.msg
        nc, _js = self._client()
        await self._quietly(msg.nak())
        await self._quietly(nc.flush(_CALL_TIMEOUT))
        self._uncounted[lease.handle.seq] = self._uncounted.get(lease.handle.seq, 0) + 1
        self._held[lease.handle.seq] = _Held(lease.handle.delivery, "released", 0.0)

    async def nack(self, lease: DriverLease[_Delivery], nack: Nack) -> None:
        if not self._valid(lease):
            return
        msg = lease.handle.msg
        nc, js = self._client()
        job = lease.job
        if nack.headers is not None:
            job = replace(job, headers=nack.headers)
        if not nack.requeue:
            why = {_ERROR: json.dumps(nack.error, ensure_ascii=True), _FAILED_AT: repr(time.time())}
            await self._publish(js, self.failed_subject, job, lease.attempt, why)
            await self._quietly(msg.term())
            await self._quietly(nc.flush(_CALL_TIMEOUT))
            self._forget(lease.handle.seq)
        elif nack.delay > 0 and nack.headers is None:
            await self._quietly(msg.nak(delay=nack.delay))
            await self._quietly(nc.flush(_CALL_TIMEOUT))
            self._held[lease.handle.seq] = _Held(
                lease.handle.delivery, "delayed", time.monotonic() + nack.delay
            )
        else:
            extra = {_NOT_BEFORE: repr(time.time() + nack.delay)} if nack.delay > 0 else None
            await self._publish(js, self.subject, job, lease.attempt, extra)
            await self._quietly(msg.ack_sync(timeout=_CALL_TIMEOUT))
            self._forget(lease.handle.seq)

    async def _publish(
        self,
        js: JetStreamContext,
        subject: str,
        job: Job,
        attempts: int,
        extra: dict[str, str] | None,
    ) -> int:
        """Publish a copy of a job (requeue, failed list, retry) and wait for its PubAck."""
        try:
            ack = await js.publish(
                subject, job.payload, timeout=_CALL_TIMEOUT, headers=_encode(job, attempts, extra)
            )
        except Exception as error:
            raise self._failure(error, f"storing a copy of job {job.id}") from error
        return ack.seq

    # --- inspection and the failed list --------------------------------------------------

    async def stat(self) -> QueueStat:
        _nc, js = self._client()
        try:
            consumer = await js.consumer_info(self.stream, CONSUMER)
            failed = await js.stream_info(self.failed_stream)
        except Exception as error:
            raise self._failure(error, "counting jobs") from error
        now = time.monotonic()
        due = delayed = 0
        for held in self._held.values():
            if held.state == "delayed" and now < held.until:
                delayed += 1
            elif held.state != "leased" or now >= held.until:
                due += 1
        ack_pending = consumer.num_ack_pending or 0
        delayed = min(delayed, ack_pending)
        due = min(due, ack_pending - delayed)
        return QueueStat(
            queued=(consumer.num_pending or 0) + due,
            delayed=delayed,
            reserved=ack_pending - delayed - due,
            failed=failed.state.messages,
        )

    async def peek(self, limit: int) -> list[Job]:
        raise DriverError(f"pipeline {self.name}: the nats driver cannot peek")

    async def _failed_messages(self) -> list[tuple[int, FailedJob]]:
        """Every message of the failed stream, oldest first, with its sequence."""
        _nc, js = self._client()
        entries: list[tuple[int, FailedJob]] = []
        try:
            info = await js.stream_info(self.failed_stream)
            seq = info.state.first_seq
            while info.state.messages and seq <= info.state.last_seq:
                try:
                    raw = await js.get_msg(
                        self.failed_stream, seq, subject=self.failed_subject, next=True
                    )
                except nats.js.errors.NotFoundError:
                    break
                if raw.seq is None:
                    break
                headers = raw.headers or {}
                job = _decode(headers, raw.data or b"", self.name)
                entries.append(
                    (
                        raw.seq,
                        FailedJob(
                            job=job,
                            error=json.loads(headers.get(_ERROR, '""')),
                            attempts=int(headers.get(_ATTEMPTS, "0")),
                            failed_at=float(headers.get(_FAILED_AT, "0")),
                        ),
                    )
                )
                seq = raw.seq + 1
        except DriverError:
            raise
        except Exception as error:
            raise self._failure(error, "listing failed jobs") from error
        return entries

    async def failed(self, limit: int) -> list[FailedJob]:
        if limit <= 0:
            return []
        return [entry for _seq, entry in (await self._failed_messages())[:limit]]

    async def retry_failed(self, ids: Sequence[str] | None = None) -> int:
        if selects_nothing(ids):
            return 0
        _nc, js = self._client()
        chosen = selection(ids)
        count = 0
        for seq, entry in await self._failed_messages():
            if not chosen(entry.job.id):
                continue
            await self._publish(js, self.subject, entry.job, 0, None)
            await self._delete_failed(js, seq)
            count += 1
        return count

    async def purge_failed(self, ids: Sequence[str] | None = None) -> list[str]:
        if selects_nothing(ids):
            return []
        _nc, js = self._client()
        chosen = selection(ids)
        removed: dict[str, None] = {}  # ordered and each once: a failed list may repeat an id
        for seq, entry in await self._failed_messages():
            if chosen(entry.job.id):
                await self._delete_failed(js, seq)
                removed[entry.job.id] = None
        return list(removed)

    async def _delete_failed(self, js: JetStreamContext, seq: int) -> None:
        try:
            await js.delete_msg(self.failed_stream, seq)
        except nats.js.errors.NotFoundError:
            pass
        except Exception as error:
            raise self._failure(error, "deleting a failed job") from error

    async def destroy(self) -> None:
        """Delete the consumer, empty both streams, and declare the consumer again."""
        _nc, js = self._client()
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(self.stream, CONSUMER)
            await js.purge_stream(self.stream)
            await js.purge_stream(self.failed_stream)
            await self._declare(js)
        except Exception as error:
            raise self._failure(error, "deleting the pipeline's jobs") from error
        self._held.clear()
        self._uncounted.clear()
