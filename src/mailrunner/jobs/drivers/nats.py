"""The NATS JetStream driver: a pipeline shared by many nodes through one stream and one durable
consumer. Leases, attempts, deadlines and restarts: docs/jobs.md#nats."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from mailrunner.config import NatsPipelineConfig, mask_url
from mailrunner.errors import DriverError, DriverUnavailable, PushTimeout
from mailrunner.jobs.deadline import VERDICT_GRACE
from mailrunner.jobs.driver import Driver, DriverLease, Lease, LeaseKeeper, Nack
from mailrunner.jobs.drivers import _common
from mailrunner.jobs.drivers import _nats_wire as wire
from mailrunner.jobs.drivers._nats_leases import Holdings
from mailrunner.jobs.drivers._nats_pull import PULL_MARGIN, Puller
from mailrunner.jobs.model import FailedJob, Job, QueueStat

log = structlog.get_logger("mailrunner.jobs")

CONSUMER = "mailrunner"
"""The durable consumer every node of a pipeline shares."""
_HEADER_ROOM = 8 * 1024
"""Bytes of the server's max_payload kept for a job's headers, which share that limit."""
_CALL_TIMEOUT = 5
"""Seconds bounding every JetStream API call, acknowledgement and flush."""
_DUPLICATE_WINDOW = 120.0

_UNREACHABLE = (  # nats-py's TimeoutError is a TimeoutError, which is an OSError
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    OSError,
)
_OPENING = (nats.errors.Error, OSError)
"""What `open` raises as DriverUnavailable: any nats error then leaves the pipeline unusable."""


def _cancelled_by_caller() -> bool:
    """Whether a CancelledError is meant for the running task: nats-py lets its own internal
    tasks' escape from flush and close (nats.py #373, #469), which are errors of the call."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _token(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


class NatsDriver(Driver, LeaseKeeper[Msg]):
    """One pipeline's jobs in one JetStream stream (`config.stream`) on `config.addr`."""

    def __init__(self, name: str, settings: NatsPipelineConfig, data_dir: Path) -> None:
        self.name = name
        self.visibility_timeout = float(settings.visibility_timeout)
        self.addr = mask_url(settings.config.addr)
        self._where = f"pipeline {name}: nats at {self.addr}"
        self._errors = functools.partial(
            _common.broker_errors, self._where, unreachable=_UNREACHABLE, failed=Exception
        )
        self.capabilities = _common.broker_capabilities(max_payload=None)  # open() sets max_payload
        self._settings = settings.config
        self.stream = settings.config.stream or _token(name)
        self.subject = settings.config.subject or f"mailrunner.jobs.{_token(name)}"
        self.failed_stream = f"{self.stream}_failed"
        self.failed_subject = f"{self.subject}.failed"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._holdings = Holdings(data_dir / f"nats-leases.{self.stream}.json")
        self._puller = Puller(self.stream, CONSUMER, _CALL_TIMEOUT, self._holdings.count_out)

    # --- connecting ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return

        async def quiet(error: Exception) -> None:
            log.debug("nats client error", pipeline=self.name, error=str(error))

        with self._errors("connecting", unreachable=_OPENING, failed=()):
            nc = await nats.connect(
                self._settings.addr,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                connect_timeout=_CALL_TIMEOUT,
                pending_size=0,  # never buffer a publish while disconnected: no late delivery
                error_cb=quiet,
            )
        try:
            with self._errors(f"setting up stream {self.stream}", unreachable=_OPENING, failed=()):
                js = nc.jetstream(timeout=_CALL_TIMEOUT)
                await self._declare(js)
                await self._puller.start(nc)
                for reply in await self._holdings.left_behind():
                    await nc.publish(reply, b"-NAK")
                await nc.flush(_CALL_TIMEOUT)
        except DriverUnavailable:
            await nc.close()
            raise
        self.capabilities = _common.broker_capabilities(
            max_payload=max(0, nc.max_payload - _HEADER_ROOM)
        )
        self._nc, self._js = nc, js
        self._holdings.start()

    async def _declare(self, js: JetStreamContext) -> None:
        for name, subject, retention in (
            (self.stream, self.subject, api.RetentionPolicy.WORK_QUEUE),
            (self.failed_stream, self.failed_subject, api.RetentionPolicy.LIMITS),
        ):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.stream_info(name)
                continue
            await js.add_stream(
                name=name,
                subjects=[subject],
                retention=retention,
                storage=api.StorageType.FILE,
                duplicate_window=_DUPLICATE_WINDOW,
            )
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.consumer_info(self.stream, CONSUMER)
            return
        await js.add_consumer(
            self.stream,
            durable_name=CONSUMER,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.visibility_timeout,
            max_deliver=-1,
            max_ack_pending=-1,
            filter_subject=self.subject,
        )

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        await self._puller.stop()
        await self._holdings.stop()
        self._holdings.clear()
        if nc is None:
            return
        try:
            await nc.close()
        except asyncio.CancelledError:
            if _cancelled_by_caller():
                raise
        except Exception as error:
            log.debug("nats client close failed", pipeline=self.name, error=repr(error))

    def _client(self) -> tuple[Client, JetStreamContext]:
        if self._nc is None or self._js is None:
            raise _common.not_open(self.name, "nats")
        if not self._nc.is_connected:
            raise DriverUnavailable(f"{self._where} is unreachable")
        return self._nc, self._js

    # --- push ----------------------------------------------------------------------------

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        _common.time_left(self.name, deadline)
        _nc, js = self._client()
        stored: list[int] = []
        try:
            with self._errors("storing jobs"):
                try:
                    await self._publish_jobs(jobs, deadline, stored)
                except TimeoutError:
                    raise PushTimeout(
                        f"{self._where} did not confirm the push "
                        f"within {VERDICT_GRACE}s of its deadline"
                    ) from None
        except BaseException as error:
            for seq in stored:  # best effort: reserve also drops what was stored late
                with contextlib.suppress(Exception):
                    await js.delete_msg(self.stream, seq)
            if isinstance(error, asyncio.CancelledError) and not _cancelled_by_caller():
                raise DriverUnavailable(
                    f"pipeline {self.name}: the nats client cancelled its own request"
                ) from None
            raise

    async def _publish_jobs(self, jobs: Sequence[Job], deadline: float, stored: list[int]) -> None:
        """Publish each job only while connected and before the deadline, adding its sequence
        to `stored` (deleted again if the push fails)."""
        wall_deadline = time.time() + (deadline - time.monotonic())
        for job in jobs:
            remaining = _common.time_left(self.name, deadline, f"storing job {job.id}")
            headers = wire.encode(job, 0, delay=job.options.delay, deadline=wall_deadline)
            _nc, js = self._client()  # disconnected: fail now, never buffer
            timeout = remaining + VERDICT_GRACE
            ack = await js.publish(self.subject, job.payload, timeout=timeout, headers=headers)
            if not ack.duplicate:
                stored.append(ack.seq)
        if time.monotonic() > deadline:
            raise PushTimeout(
                f"{self._where} confirmed the push after its deadline; the jobs were deleted again"
            )

    # --- pulling -------------------------------------------------------------------------

    async def _pull(self, batch: int, expires: float | None) -> tuple[list[Msg], list[Lease]]:
        pulled_at = time.monotonic()
        nc, _js = self._client()
        with self._errors("reserving jobs"):
            msgs = await self._puller.pull(nc, batch, expires)
        return msgs, await self._take(msgs, pulled_at)

    async def _drop_if_late(self, msg: Msg) -> bool:
        """Terminate, unseen, a message stored more than `max_clock_skew` after its deadline."""
        deadline = (msg.headers or {}).get(wire.DEADLINE)
        if deadline is None:
            return False
        skew = float(self._settings.max_clock_skew)
        late_by = msg.metadata.timestamp.timestamp() - float(deadline) - skew
        if late_by <= 0:
            return False
        job = wire.decode(msg.headers, msg.data, self.name)
        self.dropped_late += 1
        log.warning(
            "job dropped: stored after its push deadline",
            pipeline=self.name,
            id=job.id,
            job=job.name,
            late_by=round(late_by, 3),
            max_clock_skew=skew,
        )
        await self._quietly(msg.term())
        return True

    async def _take(self, msgs: list[Msg], pulled_at: float) -> list[Lease]:
        leases: list[DriverLease[Msg]] = []
        for msg in msgs:
            try:
                if await self._drop_if_late(msg):
                    continue
                job = wire.decode(msg.headers, msg.data, self.name)
                delivered = msg.metadata.num_delivered - self._holdings.uncounted(msg)
                self._holdings.hold(msg, "leased", pulled_at + self.visibility_timeout)
                lease = DriverLease(self, job, wire.attempts(msg.headers) + delivered, msg)
            except (KeyError, ValueError, TypeError) as error:
                log.error("dropping a malformed nats message", pipeline=self.name, error=str(error))
                await self._quietly(msg.term())
                continue
            remaining = wire.due_in(msg.headers)
            if remaining > 0:
                self._holdings.hold(msg, "delayed", time.monotonic() + remaining, counted=False)
                await self._quietly(msg.nak(delay=remaining))
                continue
            leases.append(lease)
        # After a crash JetStream can deliver one message twice in a row (its consumer
        # state was behind): only the latest delivery is a lease.
        return [lease for lease in leases if self._holdings.current(lease.handle)]

    async def _quietly(self, call: Awaitable[Any]) -> None:
        with self._errors("acknowledging a message"):
            await call

    async def reserve(self, limit: int, wait: float) -> list[Lease]:
        give_up = time.monotonic() + wait
        if limit <= 0:
            return []
        try:
            async with asyncio.timeout(max(0.0, wait) + PULL_MARGIN):
                await self._puller.lock.acquire()
        except TimeoutError:
            return []
        try:
            while True:
                msgs, leases = await self._pull(limit, None)
                if leases:
                    return leases
                remaining = give_up - time.monotonic()
                if msgs and remaining > 0:
                    continue  # every message was skipped: look again
                if remaining <= 0.005:
                    return []
                _msgs, leases = await self._pull(1, remaining)
                if leases and limit > 1:
                    leases += (await self._pull(limit - 1, None))[1]
                if leases or time.monotonic() >= give_up:
                    return leases
        finally:
            self._puller.lock.release()

    # --- leases --------------------------------------------------------------------------

    def _valid(self, lease: DriverLease[Msg]) -> bool:
        held = self._holdings.current(lease.handle)
        leased = held is not None and held.state == "leased" and time.monotonic() < held.until
        return self._nc is not None and leased

    async def _answer(self, call: Callable[[], Awaitable[Any]]) -> None:
        """Answer a delivery (nak, in_progress, term) and flush it, only while connected."""
        nc, _js = self._client()
        await self._quietly(call())
        await self._quietly(nc.flush(_CALL_TIMEOUT))

    async def extend(self, lease: DriverLease[Msg]) -> None:
        if not self._valid(lease):
            return
        started = time.monotonic()
        await self._answer(lease.handle.in_progress)
        held = self._holdings.current(lease.handle)
        if held is not None:
            self._holdings.extended(held, started + self.visibility_timeout)

    async def ack(self, lease: DriverLease[Msg]) -> None:
        if self._valid(lease):
            self._client()
            await self._quietly(lease.handle.ack_sync(timeout=_CALL_TIMEOUT))
            self._holdings.forget(lease.handle)

    async def release(self, lease: DriverLease[Msg]) -> None:
        if self._valid(lease):
            msg = lease.handle
            await self._answer(msg.nak)
            self._holdings.hold(msg, "released", 0.0, counted=False)

    async def nack(self, lease: DriverLease[Msg], nack: Nack) -> None:
        if not self._valid(lease):
            return
        msg = lease.handle
        job = lease.job if nack.headers is None else replace(lease.job, headers=nack.headers)
        if not nack.requeue:
            failure = wire.encode(job, lease.attempt, error=nack.error)
            await self._publish(self.failed_subject, job, failure)
            await self._answer(msg.term)
            self._holdings.forget(msg)
        elif nack.delay > 0 and nack.headers is None:
            await self._answer(lambda: msg.nak(delay=nack.delay))
            self._holdings.hold(msg, "delayed", time.monotonic() + nack.delay)
        else:
            copy = wire.encode(job, lease.attempt, delay=nack.delay)
            await self._publish(self.subject, job, copy)
            await self._quietly(msg.ack_sync(timeout=_CALL_TIMEOUT))
            self._holdings.forget(msg)

    async def _publish(self, subject: str, job: Job, headers: wire.Headers) -> None:
        _nc, js = self._client()
        with self._errors(f"storing a copy of job {job.id}"):
            await js.publish(subject, job.payload, timeout=_CALL_TIMEOUT, headers=headers)

    # --- inspection and the failed list --------------------------------------------------

    async def stat(self) -> QueueStat:
        """queued = `num_pending` + what this process knows is due again though unacked, delayed =
        its nak delays not over, reserved = the rest of `num_ack_pending` (docs/jobs.md#nats)."""
        _nc, js = self._client()
        with self._errors("counting jobs"):
            consumer = await js.consumer_info(self.stream, CONSUMER)
            failed = await js.stream_info(self.failed_stream)
        now = time.monotonic()
        due = delayed = 0
        for held in self._holdings.held.values():
            if held.state == "delayed" and now < held.until:
                delayed += 1
            elif held.state != "leased" or now >= held.until:
                due += 1
        ack_pending = consumer.num_ack_pending or 0
        delayed = min(delayed, ack_pending)
        due = min(due, ack_pending - delayed)
        queued = (consumer.num_pending or 0) + due
        return QueueStat(queued, delayed, ack_pending - delayed - due, failed.state.messages)

    async def _peek(self, limit: int) -> list[Job]:
        raise DriverError(f"pipeline {self.name}: the nats driver cannot peek")

    async def _failed_messages(
        self, ids: Sequence[str] | None = None
    ) -> list[tuple[int, FailedJob]]:
        """The failed stream's messages `ids` chooses, oldest first, with their sequences."""
        _nc, js = self._client()
        chosen = _common.selection(ids)
        entries: list[tuple[int, FailedJob]] = []
        with self._errors("listing failed jobs"):
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
                entry = wire.decode_failed(raw.headers, raw.data or b"", self.name)
                if chosen(entry.job.id):
                    entries.append((raw.seq, entry))
                seq = raw.seq + 1
        return entries

    async def _failed(self, limit: int) -> list[FailedJob]:
        return [entry for _seq, entry in (await self._failed_messages())[:limit]]

    async def _retry_failed(self, ids: Sequence[str] | None) -> int:
        chosen = await self._failed_messages(ids)
        for seq, entry in chosen:
            await self._publish(self.subject, entry.job, wire.encode(entry.job, 0))
            await self._delete_failed(seq)
        return len(chosen)

    async def _purge_failed(self, ids: Sequence[str] | None) -> list[str]:
        chosen = await self._failed_messages(ids)
        for seq, _entry in chosen:
            await self._delete_failed(seq)
        return [entry.job.id for _seq, entry in chosen]

    async def _delete_failed(self, seq: int) -> None:
        _nc, js = self._client()
        with (
            self._errors("deleting a failed job"),
            contextlib.suppress(nats.js.errors.NotFoundError),
        ):
            await js.delete_msg(self.failed_stream, seq)

    async def destroy(self) -> None:
        _nc, js = self._client()
        with self._errors("deleting the pipeline's jobs"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(self.stream, CONSUMER)
            await js.purge_stream(self.stream)
            await js.purge_stream(self.failed_stream)
            await self._declare(js)
        self._holdings.clear()
