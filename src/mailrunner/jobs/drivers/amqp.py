"""The RabbitMQ (AMQP 0-9-1) driver: a pipeline shared by many nodes through one durable queue.

RabbitMQ is a message broker, not a job store, so several parts of the contract are built by
the driver on top of it. What it honours (the capabilities it declares):

- durable: yes. Every queue is durable, every message persistent (delivery mode 2), and a
  push returns only after the broker's publisher confirm, which RabbitMQ sends once a
  persistent message is on disk. Publishes are `mandatory`: a message no queue takes
  (unroutable, e.g. a binding someone removed) comes back and fails the push.
- priority: yes, for priorities 0..127 exactly. The queue is declared with
  `x-max-priority: 255` and RabbitMQ serves HIGHER numbers first, so a job's priority p is
  sent as `2 * (127 - min(p, 127))`: priorities above 127 are served like 127; the job keeps
  its real priority in a header. The odd number just above is the front of that priority,
  where `release()` puts a job back. Equal priorities are served in publish order (FIFO).
- delay: yes, without plugins. RabbitMQ has no per-message delay, and a per-message TTL only
  expires at the head of a queue, so each delay value gets its own queue
  `<queue>.delay.<ms>` with `x-message-ttl: ms` and a dead-letter route back to the main
  queue, created on demand. Delays are rounded UP to two significant digits (at most ~10 %
  late, never early) to bound the number of such queues. Their names are recorded in
  `<queue>.delays` so that `stat`, `destroy` and a new driver instance can find them. Delay
  queues are declared, counted and deleted on channels of their own: RabbitMQ answers a
  refused declare (PRECONDITION_FAILED, e.g. a queue of that name with other arguments) by
  closing the channel, which must not be the one holding this driver's leases and
  publishes. The longest delay is 2^32 - 1 ms (about 49.7 days, the largest TTL every
  RabbitMQ version takes; the API allows 30 days): a push with a longer one fails before
  anything is sent, and a nack asking for a longer one is held that long (with a warning).
- peek: NO. AMQP cannot read a queue without taking its messages (basic.get leases them and
  counts as a delivery for `redelivered`), so the driver declares `peek: false`.
- idempotent_push: NO. RabbitMQ does not deduplicate; a re-pushed id is stored twice.
- atomic_batch: NO. A batch is published message by message (no AMQP transaction: they are
  slow and do not mix with confirms); a failed batch may be stored in part.
- max_payload: 128 MiB, RabbitMQ's default `max_message_size` (AMQP cannot ask the broker
  for its setting; a smaller configured limit makes such pushes fail).

Leases: a reserved job is an unacked `basic.get` delivery on the driver's channel, so it is
invisible to every other consumer until it is settled. RabbitMQ cannot expire a delivery
(it takes it back only when the channel or connection closes, or after its
`consumer_timeout`), so the visibility timeout is enforced by the driver: a timer per lease,
pushed forward by `extend()`, which on expiry republishes a copy with attempt + 1 and then
acks the original. The driver takes at most `limit` jobs per `reserve` (the consumer bounds
its unacked jobs by free slots plus `prefetch`); QoS does not apply to basic.get.

Attempts: classic queues only have a `redelivered` flag, so the count of earlier deliveries
travels in a message header. Every nack with requeue and every lease expiry publishes a copy
with the new count (and the new headers, for RoadRunner's requeue), waits for its confirm,
and only THEN acks the original: at-least-once, a crash in between makes a duplicate, never a
loss. A requeued copy goes to the back of its priority. `release()` republishes a copy with
the count unchanged at the FRONT of its priority (the odd RabbitMQ priority above it), so it
is served next, as if never taken (several released jobs of one priority are served among
themselves in release order). It does not use basic.nack with requeue, which would keep the
exact place: basic.nack has no reply, and RabbitMQ answers the queue.declare behind `stat`
ahead of pending requeues, so a stat right after it could miss the job. A delivery RabbitMQ
hands out again with `redelivered` set (after a crashed or disconnected consumer, or a
failed requeue) counts one attempt more than its header, however often that happened. After
a consumer crash the broker takes the lease back at once, not at its expiry (RabbitMQ's
doing).

close(): leases still held are not just dropped (RabbitMQ would redeliver them at once):
each is republished, with attempt + 1, into the delay queue for the rest of its visibility
timeout, then acked, so it comes back when its lease would have expired. Until then it counts
as delayed, not reserved.

The failed list is the durable queue `<queue>.failed`, the job with its error, attempts and
failure time in headers. `failed()` reads it with basic.get on a channel of its own and
closes that channel, which puts every message back in its place; `retry_failed` republishes
the chosen jobs to the main queue with attempts reset (confirmed, then acked) and
`purge_failed` acks them away. While one of these runs, the messages it holds are missing
from `stat`'s failed count.

stat: queued and failed are the queues' ready counts, delayed the sum over the delay queues,
reserved the leases this driver instance holds (leases held by other nodes are not visible
through AMQP; their jobs are counted nowhere until settled).

Pushes and deadlines ("No late delivery"): a push whose deadline has passed sends nothing and
raises PushTimeout. Otherwise its messages are sent and their confirms awaited up to
`VERDICT_GRACE` past the deadline (as the Redis driver does; the SMTP side allows `PUSH_GRACE`
for it, see `jobs/deadline.py`): a confirm in that grace returns success, although the broker
may have stored the job a little after the deadline. A publish not yet written when the grace
ends is withdrawn (never sent), but a publish already sent CANNOT be withdrawn: when its
confirm is missing at the end of the grace the push raises PushOutcomeUnknown (a PushTimeout
that may be stored: the SMTP side keeps the email's attachment files) and the job may still be
stored (under a resource alarm RabbitMQ blocks publishers and confirms late). Each such case is
logged as "amqp push may be stored after its deadline" with a running count
(`AmqpDriver.unwithdrawn_publishes`, exported as the metric
`mailrunner_jobs_unwithdrawn_publishes_total`); the SMTP client's retry then makes a duplicate.

Connections: `aio_pika.connect_robust` reconnects after a broker restart and re-declares the
queues. While the connection is down every call fails at once with DriverUnavailable, never
waiting for the reconnect and never buffering a publish; leases held when it dropped are
gone (RabbitMQ requeued them) and their ack, nack and extend become no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

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
from mailrunner.jobs.drivers._common import (
    broker_capabilities,
    reserve_until,
    selection,
    selects_nothing,
    time_left,
)
from mailrunner.jobs.model import FailedJob, Headers, Job, JobOptions, QueueStat

log = structlog.get_logger("mailrunner.jobs")

_MAX_PRIORITY = 255
"""RabbitMQ's largest `x-max-priority`."""
_LEVELS = 128
"""Our priorities 0..127, each two of RabbitMQ's: its back (new jobs) and its front
(released jobs)."""
_MAX_PAYLOAD = 128 * 1024 * 1024
"""RabbitMQ's default `max_message_size` (3.8 to 3.13); AMQP cannot ask for the real one."""
_IDLE_POLL = 0.05
"""How often a waiting reserve asks again: basic.get cannot wait, and pushes from other
nodes cannot wake it."""
_RECONNECT_INTERVAL = 1.0
"""Seconds between attempts to reconnect after the broker went away."""
_MAX_DELAY_MS = 2**32 - 1
"""The longest delay a delay queue is declared for: the largest `x-message-ttl` every
RabbitMQ version takes (older ones refuse more; 3.10 takes up to ten years)."""
_CLOSE_BUDGET = 5.0
"""Seconds close() spends moving held leases to the delay queue before it gives up on them
(RabbitMQ then redelivers them at once, counted by `redelivered`)."""

# Message headers: the job travels in them, so that every copy is self-contained.
_ID = "mailrunner-id"
_NAME = "mailrunner-name"
_HEADERS = "mailrunner-headers"
_PRIORITY = "mailrunner-priority"
_AUTO_ACK = "mailrunner-auto-ack"
_ATTEMPTS = "mailrunner-attempts"
"""Earlier deliveries of the job: the attempt of the next delivery minus one."""
_ERROR = "mailrunner-error"
_FAILED_AT = "mailrunner-failed-at"

_T = TypeVar("_T")


def broker_priority(priority: int) -> int:
    """Our priority (lower first, 0..127 honoured) as RabbitMQ's (higher first): the even
    numbers 254..0. The odd number above each is the front of that priority, for released
    jobs."""
    return 2 * (_LEVELS - 1 - min(max(priority, 0), _LEVELS - 1))


def delay_ms(seconds: float) -> int:
    """A delay in whole ms, rounded UP to two significant digits: never early, at most ~10 %
    late, and few distinct values, since each one is a queue."""
    ms = max(1, math.ceil(seconds * 1000))
    if ms < 100:
        return ms
    scale: int = 10 ** (len(str(ms)) - 2)
    return math.ceil(ms / scale) * scale


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _job_headers(job: Job, attempts: int) -> dict[str, Any]:
    return {
        _ID: job.id,
        _NAME: job.name,
        _HEADERS: json.dumps(job.headers),
        _PRIORITY: job.options.priority,
        _AUTO_ACK: job.options.auto_ack,
        _ATTEMPTS: attempts,
    }


def _message(
    job: Job, attempts: int, *, front: bool = False, extra: dict[str, Any] | None = None
) -> aio_pika.Message:
    """A job as a persistent message; `front` puts it ahead of its priority's queued jobs."""
    return aio_pika.Message(
        body=job.payload,
        headers={**_job_headers(job, attempts), **(extra or {})},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=broker_priority(job.options.priority) + int(front),
        message_id=uuid.uuid4().hex,
    )


@dataclass(slots=True)
class _Delivery:
    """A lease's handle: one unacked delivery and its expiry timer. The first of ack, nack,
    release or expiry settles it (`forget`); every later call is a no-op, so a delivery tag is
    never settled twice (RabbitMQ would close the channel for that)."""

    message: AbstractIncomingMessage
    expires_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


class AmqpDriver(Driver, LeaseKeeper[_Delivery]):
    """One pipeline's jobs in one RabbitMQ queue (`config.queue`), shared by every node that
    names the same queue."""

    def __init__(self, name: str, settings: AmqpPipelineConfig, data_dir: Path) -> None:
        config = settings.config
        self.name = name
        self.visibility_timeout = settings.visibility_timeout
        self.addr = mask_url(config.addr)
        self.capabilities = broker_capabilities(priority=True, delay=True, max_payload=_MAX_PAYLOAD)
        self.queue_name = config.queue or f"mailrunner.{name}"
        self.exchange_name = config.exchange or self.queue_name
        self.routing_key = config.routing_key or self.queue_name
        self.failed_name = f"{self.queue_name}.failed"
        self.catalog_name = f"{self.queue_name}.delays"
        self.unwithdrawn_publishes = 0
        """Publishes sent before a push's deadline whose confirm was missing after it: they
        cannot be withdrawn and may be stored although the push raised PushOutcomeUnknown."""
        self._addr = config.addr
        self._timeout = config.timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queues: dict[str, AbstractQueue] = {}
        """The queues declared on the driver's channel: main, failed list, catalog."""
        self._delays: set[int] = set()
        """Every delay value in use on this queue (from the catalog, or declared here)."""
        self._declared_delays: set[int] = set()
        """Delay values whose queue this instance has declared since it opened."""
        self._leases: set[DriverLease[_Delivery]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._closing = False

    # --- connecting and declaring -----------------------------------------------------------

    async def open(self) -> None:
        if self._connection is not None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                connection = await aio_pika.connect_robust(
                    self._addr, timeout=self._timeout, reconnect_interval=_RECONNECT_INTERVAL
                )
        except (TimeoutError, AMQPError, OSError) as error:
            raise DriverUnavailable(
                f"pipeline {self.name}: cannot reach rabbitmq at {self.addr}: {error!r}"
            ) from None
        self._connection = connection
        try:
            async with asyncio.timeout(self._timeout * 3):
                channel = await connection.channel(on_return_raises=True)
                self._channel = channel
                self._exchange = await channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
                )
                main = await self._declare(self.queue_name, {"x-max-priority": _MAX_PRIORITY})
                await main.bind(self._exchange, self.routing_key)
                await self._declare(self.failed_name)
                await self._declare(self.catalog_name)
                await self._read_catalog()
        except (TimeoutError, AMQPError, OSError) as error:
            await self.close()
            raise DriverUnavailable(
                f"pipeline {self.name}: rabbitmq at {self.addr} refused the queues: {error!r}"
            ) from None

    async def _declare(self, name: str, arguments: dict[str, Any] | None = None) -> AbstractQueue:
        queue = await self._open_channel().declare_queue(name, durable=True, arguments=arguments)
        self._queues[name] = queue
        return queue

    def _delay_name(self, ms: int) -> str:
        return f"{self.queue_name}.delay.{ms}"

    async def _declare_delay(self, ms: int) -> None:
        """The delay queue for `ms` (its messages expire into the main queue after ms),
        declared on a channel of its own and recorded in the catalog."""
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
            await self._call("recording a delay", self._publish(entry, "", self.catalog_name))
            self._delays.add(ms)

    async def _read_catalog(self) -> None:
        """Learn the delay values any node ever used on this queue (their queues may hold
        jobs)."""
        bodies = await self._browse(self.catalog_name, None, lambda message: None)
        found = {_int(body.decode("ascii", "replace"), -1) for body in bodies}
        self._delays.update(ms for ms in found if ms > 0)

    @contextlib.asynccontextmanager
    async def _own_channel(self) -> AsyncIterator[AbstractChannel]:
        """A channel for one operation, closed after it. RabbitMQ answers a refused declare or
        a passive declare of a missing queue by closing the channel it came on: on the
        driver's channel that would drop every lease it holds (their deliveries go back) and
        the confirms of publishes in flight. Closing it also puts back what was taken on it."""
        connection = self._connection
        self._open_channel()
        assert connection is not None
        channel = await self._call("opening a channel", connection.channel())
        try:
            yield channel
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        connection = self._connection
        if connection is None or self._closing:
            return
        self._closing = True
        leases = list(self._leases)
        for lease in leases:
            if lease.handle.timer is not None:
                lease.handle.timer.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_BUDGET):
                for lease in leases:
                    if self.forget(lease):
                        remaining = max(0.0, lease.handle.expires_at - time.monotonic())
                        await self._move_now(lease, lease.job, lease.attempt, remaining)
        self._connection, self._closing = None, False
        for task in list(self._tasks):
            task.cancel()
        self._leases.clear()
        self._channel, self._exchange = None, None
        self._queues.clear()
        self._declared_delays.clear()
        with contextlib.suppress(Exception):
            await connection.close()

    def _open_channel(self) -> AbstractChannel:
        connection, channel = self._connection, self._channel
        if connection is None or channel is None:
            raise DriverUnavailable(f"pipeline {self.name}: the amqp driver is not open")
        if not connection.connected.is_set() or channel.is_closed:
            raise DriverUnavailable(
                f"pipeline {self.name}: the connection to rabbitmq at {self.addr} is down"
            )
        return channel

    async def _call(self, doing: str, call: Awaitable[_T]) -> _T:
        """One broker call, bounded by `config.timeout`; failures become DriverErrors."""
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except (TimeoutError, aiormq.exceptions.ConnectionClosed, OSError) as error:
            raise DriverUnavailable(
                f"pipeline {self.name}: rabbitmq at {self.addr} unreachable while {doing}: "
                f"{error!r}"
            ) from None
        except (AMQPError, RuntimeError) as error:
            raise DriverError(
                f"pipeline {self.name}: rabbitmq at {self.addr} failed while {doing}: {error!r}"
            ) from None

    async def _publish(
        self, message: aio_pika.Message, exchange: str | None, routing_key: str
    ) -> None:
        """Publish one message and wait for its confirm; unroutable or nacked raises."""
        channel = self._open_channel()
        if exchange is None:
            target = self._exchange
            assert target is not None
        else:
            target = channel.default_exchange
        try:
            await target.publish(message, routing_key, mandatory=True)
        except PublishError as error:
            raise DriverError(
                f"pipeline {self.name}: rabbitmq at {self.addr} returned a message for "
                f"{routing_key!r} as unroutable: {error!r}"
            ) from None
        except DeliveryError as error:
            raise DriverError(
                f"pipeline {self.name}: rabbitmq at {self.addr} refused a message: {error!r}"
            ) from None

    # --- push ----------------------------------------------------------------------------

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        time_left(self.name, deadline, "publishing")
        self._open_channel()
        if not jobs:
            return
        delays = {delay_ms(job.options.delay) for job in jobs if job.options.delay > 0}
        if delays and max(delays) > _MAX_DELAY_MS:
            raise DriverError(
                f"pipeline {self.name}: a delay of {max(delays)} ms is beyond the longest the"
                f" amqp driver holds ({_MAX_DELAY_MS} ms, about 49.7 days); nothing was sent"
            )
        for ms in sorted(delays):
            await self._declare_delay(ms)
        time_left(self.name, deadline, "publishing")
        # Tasks in job order: aiormq writes publishes in the order they take its channel lock.
        tasks = [asyncio.create_task(self._publish_job(job)) for job in jobs]
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
                f"pipeline {self.name}: rabbitmq at {self.addr} did not confirm the push within "
                f"{VERDICT_GRACE}s of its deadline; what was sent may still be stored"
            )
        self._changed.set()
        for result in results:
            if isinstance(result, BaseException):
                raise self._push_error(result)

    def _push_error(self, error: BaseException) -> DriverError:
        """What a failed publish of a push raises."""
        if isinstance(error, DriverError):
            return error
        if isinstance(error, aiormq.exceptions.ConnectionClosed | OSError):
            return DriverUnavailable(
                f"pipeline {self.name}: rabbitmq at {self.addr} unreachable while pushing: "
                f"{error!r}"
            )
        return DriverError(
            f"pipeline {self.name}: rabbitmq at {self.addr} failed while pushing: {error!r}"
        )

    async def _publish_job(self, job: Job) -> None:
        if job.options.delay > 0:
            ms = delay_ms(job.options.delay)
            await self._publish(_message(job, 0), "", self._delay_name(ms))
        else:
            await self._publish(_message(job, 0), None, self.routing_key)

    # --- reserve and leases --------------------------------------------------------------

    async def reserve(self, limit: int, wait: float) -> list[Lease]:
        return await reserve_until(lambda: self._take(limit), self._changed, wait, _IDLE_POLL)

    async def _take(self, limit: int) -> tuple[list[Lease], None]:
        """Up to `limit` deliveries, got one at a time (RabbitMQ cannot tell when a delayed
        job is due: the delay queues hold them)."""
        queue = self._queues.get(self.queue_name)
        self._open_channel()
        assert queue is not None
        leases: list[Lease] = []
        while len(leases) < limit:
            message = await self._call(
                "reserving jobs", queue.get(no_ack=False, fail=False, timeout=self._timeout)
            )
            if message is None:
                break
            leases.append(self._lease(message))
        return leases, None

    def _lease(self, message: AbstractIncomingMessage) -> DriverLease[_Delivery]:
        job, earlier = self._job(message)
        attempt = earlier + 1
        if message.redelivered:
            attempt += 1  # a crashed or disconnected consumer's delivery came back
        lease = DriverLease(self, job, attempt, _Delivery(message))
        self._leases.add(lease)
        self.arm(lease)
        return lease

    async def extend(self, lease: DriverLease[_Delivery]) -> None:
        self.arm(lease)

    async def ack(self, lease: DriverLease[_Delivery]) -> None:
        if self.forget(lease):
            await self.settle(lease.handle.message, "ack")

    async def release(self, lease: DriverLease[_Delivery]) -> None:
        if self.forget(lease):
            await self.move(lease, lease.job, lease.attempt - 1, 0.0, front=True)

    async def nack(self, lease: DriverLease[_Delivery], nack: Nack) -> None:
        if not self.forget(lease):
            return
        job = lease.job if nack.headers is None else replace(lease.job, headers=nack.headers)
        if nack.requeue:
            await self.move(lease, job, lease.attempt, nack.delay, front=False)
        else:
            await self.move_to_failed(lease, job, nack.error)

    def arm(self, lease: DriverLease[_Delivery]) -> None:
        """(Re)start a held lease's expiry timer a full visibility timeout from now."""
        if lease not in self._leases:
            return
        if lease.handle.timer is not None:
            lease.handle.timer.cancel()
        lease.handle.expires_at = time.monotonic() + self.visibility_timeout
        loop = asyncio.get_running_loop()
        lease.handle.timer = loop.call_at(
            loop.time() + self.visibility_timeout, self._expired, lease
        )

    def forget(self, lease: DriverLease[_Delivery]) -> bool:
        """Claim a held lease for settling; False when something settled it already."""
        if lease not in self._leases:
            return False
        self._leases.discard(lease)
        if lease.handle.timer is not None:
            lease.handle.timer.cancel()
        return True

    def _expired(self, lease: DriverLease[_Delivery]) -> None:
        """The visibility timeout ran out: claim the lease at once (an extend() arriving
        after this instant is too late), then requeue the job with one attempt more."""
        if self.forget(lease):
            task = asyncio.get_running_loop().create_task(self._expire(lease))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _expire(self, lease: DriverLease[_Delivery]) -> None:
        try:
            await self._move_now(lease, lease.job, lease.attempt, 0.0)
        except Exception as error:  # logged: a timer has no caller to raise to
            log.warning(
                "amqp lease expiry could not requeue the job; rabbitmq redelivers it when "
                "the channel closes",
                pipeline=self.name,
                job_id=lease.job.id,
                error=repr(error),
            )

    async def settle(
        self, message: AbstractIncomingMessage, how: Literal["ack", "requeue"]
    ) -> None:
        """Ack or requeue a claimed delivery. A delivery whose channel is gone was already
        requeued by RabbitMQ, so that is not an error."""
        try:
            async with asyncio.timeout(self._timeout):
                if how == "ack":
                    await message.ack()
                else:
                    await message.nack(requeue=True)
        except (aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.ConnectionClosed):
            return
        except (TimeoutError, AMQPError, OSError) as error:
            raise DriverUnavailable(
                f"pipeline {self.name}: rabbitmq at {self.addr} unreachable while settling "
                f"job: {error!r}"
            ) from None
        if how == "requeue":
            self._changed.set()

    async def _move_now(
        self,
        lease: DriverLease[_Delivery],
        job: Job,
        attempt: int,
        delay: float,
        *,
        front: bool = False,
    ) -> None:
        """Publish a copy with `attempt` earlier deliveries, due after `delay`, then ack the
        original; if the copy is not confirmed, the original goes back instead."""
        try:
            message = _message(job, attempt, front=front)
            if delay > 0:
                ms = self._settling_delay_ms(job, delay)
                await self._declare_delay(ms)
                await self._call(
                    "requeueing a job", self._publish(message, "", self._delay_name(ms))
                )
            else:
                await self._call("requeueing a job", self._publish(message, None, self.routing_key))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.settle(lease.handle.message, "requeue")
            raise
        await self.settle(lease.handle.message, "ack")
        self._changed.set()

    def _settling_delay_ms(self, job: Job, delay: float) -> int:
        """The delay queue a job settled with `delay` goes to. A worker may ask for any delay;
        one beyond the longest is cut to it (the job comes back then, with a warning) rather
        than failing the nack, which would hand the job straight back, attempt after attempt."""
        ms = delay_ms(delay)
        if ms <= _MAX_DELAY_MS:
            return ms
        log.warning(
            "amqp delay cut to the longest rabbitmq can hold",
            pipeline=self.name,
            id=job.id,
            asked_ms=ms,
            max_ms=_MAX_DELAY_MS,
        )
        return _MAX_DELAY_MS

    async def move(
        self, lease: DriverLease[_Delivery], job: Job, attempt: int, delay: float, *, front: bool
    ) -> None:
        await self._move_now(lease, job, attempt, delay, front=front)

    async def move_to_failed(self, lease: DriverLease[_Delivery], job: Job, error: str) -> None:
        failure = {_ERROR: error, _FAILED_AT: round(time.time() * 1000)}
        message = _message(job, lease.attempt, extra=failure)
        try:
            await self._call("failing a job", self._publish(message, "", self.failed_name))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.settle(lease.handle.message, "requeue")
            raise
        await self.settle(lease.handle.message, "ack")

    # --- inspection and the failed list --------------------------------------------------

    async def _count(self, name: str) -> int:
        queue = self._queues.get(name)
        if queue is None:
            return 0
        self._open_channel()
        result = await self._call(f"counting {name}", queue.declare(timeout=self._timeout))
        return int(result.message_count or 0)

    async def _count_delay_queue(self, ms: int) -> int:
        """Jobs waiting in the delay queue for `ms`, asked on a channel of its own: another
        node's destroy may have deleted the queue, and asking for a missing one closes the
        channel."""
        name = self._delay_name(ms)

        async def count(channel: AbstractChannel) -> int:
            try:
                queue = await channel.declare_queue(name, durable=True, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return 0
            return int(queue.declaration_result.message_count or 0)

        async with self._own_channel() as channel:
            return await self._call(f"counting {name}", count(channel))

    async def stat(self) -> QueueStat:
        queued = await self._count(self.queue_name)
        delayed = 0
        for ms in sorted(self._delays):
            delayed += await self._count_delay_queue(ms)
        failed = await self._count(self.failed_name)
        return QueueStat(queued=queued, delayed=delayed, reserved=len(self._leases), failed=failed)

    async def peek(self, limit: int) -> list[Job]:
        raise DriverError(
            f"pipeline {self.name}: the amqp driver cannot peek: AMQP cannot read a queue "
            "without leasing its messages"
        )

    async def _browse(
        self,
        name: str,
        limit: int | None,
        pick: Callable[[AbstractIncomingMessage], Awaitable[None] | None],
    ) -> list[bytes]:
        """Take up to `limit` messages of queue `name` on a channel of its own, let `pick`
        act on each (it may ack), then close the channel: RabbitMQ puts every message not
        acked back in its place."""
        bodies: list[bytes] = []
        async with self._own_channel() as channel:
            queue = await self._call(
                f"reading {name}", channel.declare_queue(name, durable=True, passive=True)
            )
            while limit is None or len(bodies) < limit:
                message = await self._call(
                    f"reading {name}", queue.get(no_ack=False, fail=False, timeout=self._timeout)
                )
                if message is None:
                    break
                bodies.append(message.body)
                outcome = pick(message)
                if outcome is not None:
                    await self._call(f"changing {name}", outcome)
        return bodies

    async def failed(self, limit: int) -> list[FailedJob]:
        if limit <= 0:
            return []
        entries: list[FailedJob] = []

        def pick(message: AbstractIncomingMessage) -> None:
            job, attempts = self._job(message)
            headers = message.headers or {}
            entries.append(
                FailedJob(
                    job=job,
                    error=_text(headers.get(_ERROR)),
                    attempts=attempts,
                    failed_at=_int(headers.get(_FAILED_AT)) / 1000,
                )
            )

        await self._browse(self.failed_name, limit, pick)
        return entries

    async def retry_failed(self, ids: Sequence[str] | None = None) -> int:
        if selects_nothing(ids):
            return 0
        wanted = selection(ids)
        count = 0

        async def retry(message: AbstractIncomingMessage) -> None:
            nonlocal count
            job, _ = self._job(message)
            await self._publish(_message(job, 0), None, self.routing_key)
            await message.ack()
            count += 1

        def pick(message: AbstractIncomingMessage) -> Awaitable[None] | None:
            job, _ = self._job(message)
            return retry(message) if wanted(job.id) else None

        await self._browse(self.failed_name, None, pick)
        if count:
            self._changed.set()
        return count

    async def purge_failed(self, ids: Sequence[str] | None = None) -> list[str]:
        if selects_nothing(ids):
            return []
        wanted = selection(ids)
        removed: dict[str, None] = {}  # ordered and each once: a failed list may repeat an id

        async def drop(message: AbstractIncomingMessage, job_id: str) -> None:
            await message.ack()
            removed[job_id] = None

        def pick(message: AbstractIncomingMessage) -> Awaitable[None] | None:
            job, _ = self._job(message)
            return drop(message, job.id) if wanted(job.id) else None

        await self._browse(self.failed_name, None, pick)
        return list(removed)

    async def destroy(self) -> None:
        """Delete the queues (jobs, delays, failed list, catalog) and declare them afresh;
        leases held here are dropped without settling (their deliveries are gone)."""
        for lease in list(self._leases):
            self.forget(lease)
        async with self._own_channel() as channel:
            for name in [self._delay_name(ms) for ms in sorted(self._delays)]:
                await self._call(f"deleting {name}", channel.queue_delete(name))
        for name in (self.queue_name, self.failed_name, self.catalog_name):
            queue = self._queues.pop(name, None)
            if queue is not None:
                await self._call(f"deleting {name}", queue.delete(if_unused=False, if_empty=False))
        self._delays.clear()
        self._declared_delays.clear()
        main = await self._call(
            "declaring the queue", self._declare(self.queue_name, {"x-max-priority": _MAX_PRIORITY})
        )
        assert self._exchange is not None
        self._open_channel()
        await self._call("binding the queue", main.bind(self._exchange, self.routing_key))
        await self._call("declaring the failed queue", self._declare(self.failed_name))
        await self._call("declaring the delay catalog", self._declare(self.catalog_name))

    def _job(self, message: AbstractIncomingMessage) -> tuple[Job, int]:
        """The job a message carries, and its count of earlier deliveries."""
        headers = message.headers or {}
        raw_headers = headers.get(_HEADERS)
        try:
            job_headers: Headers = json.loads(_text(raw_headers)) if raw_headers else {}
        except ValueError:
            job_headers = {}
        job = Job(
            id=_text(headers.get(_ID)) or message.message_id or "",
            name=_text(headers.get(_NAME)) or message.type or "",
            payload=message.body,
            options=JobOptions(
                pipeline=self.name,
                priority=_int(headers.get(_PRIORITY)),
                auto_ack=bool(headers.get(_AUTO_ACK)),
            ),
            headers=job_headers,
        )
        return job, _int(headers.get(_ATTEMPTS))
