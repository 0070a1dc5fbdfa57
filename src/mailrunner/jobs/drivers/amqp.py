"""The RabbitMQ (AMQP 0-9-1) driver: one durable queue shared by every node that names it, and
on top what a broker lacks (delay queues, lease timers, attempts): see docs/jobs.md#amqp."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, DeliveryError, PublishError

from mailrunner.config import AmqpPipelineConfig, mask_url
from mailrunner.errors import DriverError, DriverUnavailable, PushOutcomeUnknown
from mailrunner.jobs.deadline import VERDICT_GRACE
from mailrunner.jobs.driver import Driver, DriverLease, Lease, LeaseKeeper, Nack
from mailrunner.jobs.drivers import _amqp_message as wire
from mailrunner.jobs.drivers import _common
from mailrunner.jobs.model import FailedJob, Job, QueueStat

log = structlog.get_logger("mailrunner.jobs")

_MAX_PRIORITY = 255
"""RabbitMQ's largest `x-max-priority`."""
_MAX_PAYLOAD = 128 * 1024 * 1024
"""RabbitMQ's default `max_message_size` (3.8 to 3.13); AMQP cannot ask for the real one."""
_RECONNECT_INTERVAL = 1.0
_CLOSE_SLICE = 0.2
"""Seconds closing the connection gets at least: enough to send Close and shut the socket."""
_UNREACHABLE = (TimeoutError, aiormq.exceptions.ConnectionClosed, OSError)
_GONE = (aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.ConnectionClosed)
"""A delivery's channel or connection is gone: RabbitMQ requeued it, settling it is moot."""
_FAILED = (AMQPError, RuntimeError)

_T = TypeVar("_T")
_Pick = Callable[[AbstractIncomingMessage], Awaitable[None] | None]


@dataclass(slots=True)
class _Delivery:
    """A lease's handle: one unacked delivery and its expiry timer. Only the first settling
    counts (`forget`): RabbitMQ closes the channel of a delivery tag settled twice."""

    message: AbstractIncomingMessage
    expires_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


class AmqpDriver(_common.WaitingReserve, Driver, LeaseKeeper[_Delivery]):
    """One pipeline's jobs in one RabbitMQ queue (`config.queue`)."""

    idle_poll = 0.05
    """How often a waiting reserve asks again: basic.get cannot wait, other nodes cannot wake it."""

    def __init__(self, name: str, settings: AmqpPipelineConfig, data_dir: Path) -> None:
        config = settings.config
        self.name = name
        self.visibility_timeout = settings.visibility_timeout
        self.addr = mask_url(config.addr)
        self._where = f"pipeline {name}: rabbitmq at {self.addr}"
        self._errors = functools.partial(
            _common.broker_errors, self._where, unreachable=_UNREACHABLE, failed=_FAILED
        )
        self.capabilities = _common.broker_capabilities(
            priority=True, delay=True, max_payload=_MAX_PAYLOAD
        )
        self.queue_name = config.queue or f"mailrunner.{name}"
        self.exchange_name = config.exchange or self.queue_name
        self.routing_key = config.routing_key or self.queue_name
        self.failed_name = f"{self.queue_name}.failed"
        self.catalog_name = f"{self.queue_name}.delays"
        self._addr = config.addr
        self._timeout = config.timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queues: dict[str, AbstractQueue] = {}  # main, failed list, catalog
        self._delays: set[int] = set()
        """Every delay value in use on this queue (from the catalog, or declared here)."""
        self._declared_delays: set[int] = set()  # declared by this instance since it opened
        self._leases: set[DriverLease[_Delivery]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._stalled = False  # a call awaiting an answer timed out: the broker may be silent
        self._closing = False

    # --- connecting and declaring -----------------------------------------------------------

    async def open(self) -> None:
        if self._connection is not None:
            return
        try:
            with self._errors("connecting", unreachable=(*_UNREACHABLE, AMQPError)):
                async with asyncio.timeout(self._timeout):
                    self._connection = await aio_pika.connect_robust(
                        self._addr, timeout=self._timeout, reconnect_interval=_RECONNECT_INTERVAL
                    )
                async with asyncio.timeout(self._timeout * 3):
                    self._channel = await self._connection.channel(on_return_raises=True)
                    self._exchange = await self._channel.declare_exchange(
                        self.exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
                    )
                    await self._declare_queues()
                    catalog = await self._browse(self.catalog_name, None)
        except BaseException:
            await self.close()
            raise
        self._delays.update(int(m.body) for m in catalog if m.body.isdigit() and int(m.body) > 0)

    async def _declare_queues(self) -> None:
        priority: dict[str, Any] = {"x-max-priority": _MAX_PRIORITY}
        for name in (self.queue_name, self.failed_name, self.catalog_name):
            arguments = priority if name == self.queue_name else {}
            declaring = self._open_channel().declare_queue(name, durable=True, arguments=arguments)
            self._queues[name] = await self._call(f"declaring {name}", declaring)
        assert self._exchange is not None
        main = self._queues[self.queue_name]
        await self._call("binding the queue", main.bind(self._exchange, self.routing_key))

    def _delay_name(self, ms: int) -> str:
        return f"{self.queue_name}.delay.{ms}"

    async def _declare_delay(self, ms: int) -> None:
        """The delay queue for `ms` (dead-lettered to the main queue), recorded in the catalog."""
        if ms in self._declared_delays:
            return
        name = self._delay_name(ms)
        arguments: dict[str, Any] = {
            "x-message-ttl": ms,
            "x-dead-letter-exchange": self.exchange_name,
            "x-dead-letter-routing-key": self.routing_key,
        }
        async with self._own_channel() as channel:
            declaring = channel.declare_queue(name, durable=True, arguments=arguments)
            await self._call(f"declaring {name}", declaring)
        self._declared_delays.add(ms)
        if ms not in self._delays:
            entry = aio_pika.Message(
                str(ms).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            await self._call("recording a delay", self._publish(entry, self.catalog_name))
            self._delays.add(ms)

    @contextlib.asynccontextmanager
    async def _own_channel(self) -> AsyncIterator[AbstractChannel]:
        """A channel for one operation, closed after it (putting back what was taken on it):
        RabbitMQ closes the channel of a refused declare, on ours dropping leases and confirms."""
        self._open_channel()
        assert self._connection is not None
        channel = await self._call("opening a channel", self._connection.channel())
        try:
            yield channel
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        connection = self._connection
        if connection is None or self._closing:
            return
        self._closing, closing_by = True, time.monotonic() + self._timeout
        closing_by = min(closing_by, self.close_by or closing_by)
        leases = [lease for lease in list(self._leases) if self.forget(lease)]
        with contextlib.suppress(Exception):  # RabbitMQ redelivers what is not moved in time
            async with asyncio.timeout(closing_by - time.monotonic()):
                for lease in [] if self._stalled else leases:
                    remaining = max(0.0, lease.handle.expires_at - time.monotonic())
                    await self._replace(lease, lease.job, lease.attempt, remaining)
        for task in list(self._tasks):
            task.cancel()
        stalled, self._stalled, self._closing = self._stalled, False, False
        self._connection, self._channel, self._exchange = None, None, None
        self._queues.clear()
        self._declared_delays.clear()
        # aiormq waits up to 2 s for the broker's Close-Ok, then shuts the socket (also when
        # cancelled): a broker that stopped answering gets only the time to send Close.
        budget = _CLOSE_SLICE if stalled else max(_CLOSE_SLICE, closing_by - time.monotonic())
        with contextlib.suppress(Exception):
            async with asyncio.timeout(budget):
                await connection.close()

    def _open_channel(self) -> AbstractChannel:
        connection, channel = self._connection, self._channel
        if connection is None or channel is None:
            raise _common.not_open(self.name, "amqp")
        if not connection.connected.is_set() or channel.is_closed:
            raise DriverUnavailable(
                f"pipeline {self.name}: the connection to rabbitmq at {self.addr} is down"
            )
        return channel

    async def _call(self, doing: str, call: Awaitable[_T]) -> _T:
        """One broker call, bounded by `config.timeout`; failures become DriverErrors."""
        with self._errors(doing):
            try:
                async with asyncio.timeout(self._timeout):
                    result = await call
            except TimeoutError:
                self._stalled = True
                raise
            self._stalled = False
            return result

    async def _publish(self, message: aio_pika.Message, queue: str | None = None) -> None:
        """Publish to the exchange, or straight to `queue`, and wait for the confirm."""
        channel = self._open_channel()
        target = channel.default_exchange if queue else self._exchange
        assert target is not None
        try:
            await target.publish(message, queue or self.routing_key, mandatory=True)
        except (PublishError, DeliveryError) as error:
            raise DriverError(
                f"{self._where} refused a message for "
                f"{queue or self.routing_key!r} or returned it as unroutable: {error!r}"
            ) from None

    def _route(self, ms: int) -> str | None:
        """Where a job due in `ms` goes: its delay queue, or (0) the exchange."""
        return self._delay_name(ms) if ms else None

    # --- push ----------------------------------------------------------------------------

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        _common.time_left(self.name, deadline, "publishing")
        self._open_channel()
        if not jobs:
            return
        delays = {wire.delay_ms(job.options.delay) for job in jobs} - {0}
        if delays and max(delays) > wire.MAX_DELAY_MS:
            raise DriverError(
                f"pipeline {self.name}: a delay of {max(delays)} ms is beyond the longest the"
                f" amqp driver holds ({wire.MAX_DELAY_MS} ms, about 49.7 days); nothing was sent"
            )
        for ms in sorted(delays):
            await self._declare_delay(ms)
        _common.time_left(self.name, deadline, "publishing")
        # Tasks in job order: aiormq writes publishes in the order they take its channel lock.
        tasks = [
            asyncio.create_task(
                self._publish(
                    wire.job_message(job, 0), self._route(wire.delay_ms(job.options.delay))
                )
            )
            for job in jobs
        ]
        _, pending = await asyncio.wait(
            tasks, timeout=max(0.0, deadline - time.monotonic()) + VERDICT_GRACE
        )
        for task in pending:
            task.cancel()  # an unsent publish is withdrawn; a sent one cannot be
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if pending:
            unconfirmed = sum(isinstance(result, asyncio.CancelledError) for result in results)
            self.unwithdrawn_publishes += unconfirmed
            log.warning(
                "amqp push may be stored after its deadline",
                pipeline=self.name,
                addr=self.addr,
                unconfirmed=unconfirmed,
                total=self.unwithdrawn_publishes,
            )
            raise PushOutcomeUnknown(
                f"{self._where} did not confirm the push within "
                f"{VERDICT_GRACE}s of its deadline; what was sent may still be stored"
            )
        self._changed.set()
        for error in [result for result in results if isinstance(result, BaseException)][:1]:
            with self._errors("pushing", unreachable=_UNREACHABLE[1:], failed=Exception):
                raise error

    # --- reserve and leases --------------------------------------------------------------

    async def _take(self, limit: int) -> tuple[list[Lease], None]:
        """Up to `limit` deliveries; AMQP cannot tell when a delayed job is due."""
        self._open_channel()
        queue, leases = self._queues[self.queue_name], list[Lease]()
        while len(leases) < limit:
            message = await self._call(
                "reserving jobs", queue.get(no_ack=False, fail=False, timeout=self._timeout)
            )
            if message is None:
                break
            job, earlier = wire.job_of(message, self.name)
            lease = DriverLease(
                self, job, earlier + 1 + int(bool(message.redelivered)), _Delivery(message)
            )
            self._leases.add(lease)
            await self.extend(lease)
            leases.append(lease)
        return leases, None

    async def ack(self, lease: DriverLease[_Delivery]) -> None:
        if self.forget(lease):
            await self.settle(lease.handle.message, requeue=False)

    async def release(self, lease: DriverLease[_Delivery]) -> None:
        if self.forget(lease):
            await self._replace(lease, lease.job, lease.attempt - 1, 0.0, front=True)

    async def nack(self, lease: DriverLease[_Delivery], nack: Nack) -> None:
        if not self.forget(lease):
            return
        job = lease.job if nack.headers is None else replace(lease.job, headers=nack.headers)
        failure = None if nack.requeue else nack.error
        await self._replace(lease, job, lease.attempt, nack.delay, failure=failure)

    async def extend(self, lease: DriverLease[_Delivery]) -> None:
        """(Re)start a held lease's expiry timer a full visibility timeout from now."""
        if lease not in self._leases:
            return
        if lease.handle.timer is not None:
            lease.handle.timer.cancel()
        lease.handle.expires_at = time.monotonic() + self.visibility_timeout
        loop = asyncio.get_running_loop()
        lease.handle.timer = loop.call_later(self.visibility_timeout, self._expired, lease)

    def forget(self, lease: DriverLease[_Delivery]) -> bool:
        """Claim a held lease for settling; False when something settled it already."""
        if lease not in self._leases:
            return False
        self._leases.discard(lease)
        if lease.handle.timer is not None:
            lease.handle.timer.cancel()
        return True

    def _expired(self, lease: DriverLease[_Delivery]) -> None:
        """Claim the expired lease at once (a later extend() is too late), then requeue it."""
        if self.forget(lease):
            task = asyncio.get_running_loop().create_task(self._expire(lease))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _expire(self, lease: DriverLease[_Delivery]) -> None:
        try:
            await self._replace(lease, lease.job, lease.attempt, 0.0)
        except Exception as error:  # logged: a timer has no caller to raise to
            log.warning(
                "amqp lease expiry could not requeue the job; rabbitmq redelivers it when "
                "the channel closes",
                pipeline=self.name,
                job_id=lease.job.id,
                error=repr(error),
            )

    async def settle(self, message: AbstractIncomingMessage, *, requeue: bool) -> None:
        """Ack a claimed delivery, or give it back (one whose channel is gone is back already)."""
        with self._errors("settling a job"), contextlib.suppress(*_GONE):
            async with asyncio.timeout(self._timeout):  # not `_call`: RabbitMQ does not answer
                await (message.nack() if requeue else message.ack())
        if requeue:
            self._changed.set()

    async def _replace(
        self,
        lease: DriverLease[_Delivery],
        job: Job,
        attempts: int,
        delay: float = 0.0,
        *,
        front: bool = False,
        failure: str | None = None,
    ) -> None:
        """Publish a copy (due after `delay`, or failed with `failure`), then ack the original;
        if the copy is not confirmed, give the original back."""
        try:
            if failure is not None:
                message = wire.job_message(job, attempts, failure=failure)
                await self._call("failing a job", self._publish(message, self.failed_name))
            else:
                ms = wire.settling_delay_ms(job, delay)
                if ms:
                    await self._declare_delay(ms)
                message = wire.job_message(job, attempts, front=front)
                await self._call("requeueing a job", self._publish(message, self._route(ms)))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.settle(lease.handle.message, requeue=True)
            raise
        await self.settle(lease.handle.message, requeue=False)
        self._changed.set()

    # --- inspection and the failed list --------------------------------------------------

    async def _count(self, name: str) -> int:
        """On a channel of its own: another node may have deleted the queue (see _own_channel)."""

        async def count(channel: AbstractChannel) -> int:
            try:
                queue = await channel.declare_queue(name, durable=True, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return 0
            return int(queue.declaration_result.message_count or 0)

        async with self._own_channel() as channel:
            return await self._call(f"counting {name}", count(channel))

    async def stat(self) -> QueueStat:
        queued, failed = await self._count(self.queue_name), await self._count(self.failed_name)
        delayed = sum([await self._count(self._delay_name(ms)) for ms in sorted(self._delays)])
        return QueueStat(queued=queued, delayed=delayed, reserved=len(self._leases), failed=failed)

    async def _peek(self, limit: int) -> list[Job]:
        raise DriverError(f"pipeline {self.name}: the amqp driver cannot peek (AMQP cannot)")

    async def _browse(
        self, name: str, limit: int | None, pick: _Pick | None = None
    ) -> list[AbstractIncomingMessage]:
        """Up to `limit` messages of `name`, `pick` acting on each (it may ack), taken on a channel
        of its own: closing it puts back in place what was not acked."""
        messages: list[AbstractIncomingMessage] = []
        async with self._own_channel() as channel:
            declaring = channel.declare_queue(name, durable=True, passive=True)
            queue = await self._call(f"reading {name}", declaring)
            while limit is None or len(messages) < limit:
                getting = queue.get(no_ack=False, fail=False, timeout=self._timeout)
                message = await self._call(f"reading {name}", getting)
                if message is None:
                    break
                messages.append(message)
                outcome = None if pick is None else pick(message)
                if outcome is not None:
                    await self._call(f"changing {name}", outcome)
        return messages

    async def _failed(self, limit: int) -> list[FailedJob]:
        messages = await self._browse(self.failed_name, limit)
        return [wire.failed_job_of(message, self.name) for message in messages]

    async def _take_failed(
        self, ids: Sequence[str] | None, act: Callable[[Job], Awaitable[None]] | None = None
    ) -> list[str]:
        """Ack away the failed jobs `ids` chooses, after `act` on each; their ids, in order."""
        wanted, taken = _common.selection(ids), list[str]()

        async def take(message: AbstractIncomingMessage, job: Job) -> None:
            if act is not None:
                await act(job)
            await message.ack()
            taken.append(job.id)

        def pick(message: AbstractIncomingMessage) -> Awaitable[None] | None:
            job, _ = wire.job_of(message, self.name)
            return take(message, job) if wanted(job.id) else None

        await self._browse(self.failed_name, None, pick)
        return taken

    async def _retry_failed(self, ids: Sequence[str] | None) -> int:
        async def retry(job: Job) -> None:
            await self._publish(wire.job_message(job, 0))
            self._changed.set()

        return len(await self._take_failed(ids, retry))

    async def _purge_failed(self, ids: Sequence[str] | None) -> list[str]:
        return await self._take_failed(ids)

    async def destroy(self) -> None:
        """Delete every queue and declare them afresh; leases held here are gone unsettled."""
        for lease in list(self._leases):
            self.forget(lease)
        async with self._own_channel() as channel:
            for name in [self._delay_name(ms) for ms in sorted(self._delays)]:
                await self._call(f"deleting {name}", channel.queue_delete(name))
        for name, queue in list(self._queues.items()):
            await self._call(f"deleting {name}", queue.delete(if_unused=False, if_empty=False))
        self._queues.clear()
        self._delays.clear()
        self._declared_delays.clear()
        await self._declare_queues()
