"""The driver contract: one pipeline's storage, in two small abstract classes.

A driver only stores, leases and acknowledges. Pause and resume, the attempt limit,
auto_ack, metrics and logs live in the service and the consumer, so every driver behaves the
same above this line. `tests/jobs/contract.py` is the executable form of these docstrings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mailrunner.jobs.model import Capabilities, FailedJob, Headers, Job, QueueStat

VerdictListener = Callable[[float], None]
"""Told a `time.monotonic()` instant: the push's outcome comes by then, after its deadline."""

_verdict_listener: ContextVar[VerdictListener | None] = ContextVar(
    "mailrunner_verdict_listener", default=None
)


class verdict_listener:
    """Pushes awaited inside this block (in this task) tell `listener` when their outcome will
    come after their deadline: a caller that bounds its wait with a timeout of its own (the SMTP
    side) extends it then, instead of reporting a failure for a job that is stored a moment
    later. Once the block is left, late news is ignored.

    A class, not a `@contextmanager` generator: it runs for every message pushed, and the
    generator's block cost 1.07 us against this one's 0.43 us."""

    __slots__ = ("_active", "_listener", "_token")

    def __init__(self, listener: VerdictListener) -> None:
        self._listener = listener
        self._active = False

    def _relay(self, instant: float) -> None:
        if self._active:
            self._listener(instant)

    def __enter__(self) -> None:
        self._active = True
        self._token = _verdict_listener.set(self._relay)

    def __exit__(self, *exc_info: object) -> None:
        self._active = False
        _verdict_listener.reset(self._token)


def current_verdict_listener() -> VerdictListener | None:
    """For a driver's `push`: whom to tell that its outcome comes after the deadline."""
    return _verdict_listener.get()


class Lease(ABC):
    """One delivery of a job to one consumer, valid until the visibility timeout runs out.

    Once a lease has expired, its job may be delivered again; ack, nack and extend on an
    expired lease whose job was delivered again are no-ops (at-least-once: a duplicate run,
    never a lost job).
    """

    job: Job
    attempt: int
    """1 on the first delivery; each nack with requeue or lease expiry adds one."""

    @abstractmethod
    async def extend(self) -> None:
        """Push the lease's expiry a full visibility timeout forward from now."""

    @abstractmethod
    async def ack(self) -> None:
        """Remove the job for good. Idempotent."""

    @abstractmethod
    async def release(self) -> None:
        """Give the job back untouched, due now, as if this delivery never happened (the
        attempt is not counted): for jobs leased just as their pipeline was paused."""

    @abstractmethod
    async def nack(
        self, *, requeue: bool, delay: float = 0.0, error: str = "", headers: Headers | None = None
    ) -> None:
        """Give the job back: due again after `delay` seconds, or, without `requeue`, moved
        to the failed list with `error` and its attempt count. `headers`, when given,
        replace the job's headers (RoadRunner's requeue)."""


@dataclass(frozen=True, slots=True)
class Nack:
    """The arguments of one `Lease.nack`, passed whole from the lease to its driver."""

    requeue: bool
    delay: float
    error: str
    headers: Headers | None


H = TypeVar("H")
"""What a driver needs to find one delivery again: a token, a broker message, ..."""


class LeaseKeeper(ABC, Generic[H]):
    """The driver side of `DriverLease`: settles the leases it handed out. Each call gets the
    lease (its job, attempt and handle) and follows `Lease`'s rules, stale leases included."""

    @abstractmethod
    async def extend(self, lease: DriverLease[H]) -> None:
        """`Lease.extend`."""

    @abstractmethod
    async def ack(self, lease: DriverLease[H]) -> None:
        """`Lease.ack`."""

    async def ack_many(self, leases: Sequence[DriverLease[H]]) -> None:
        """`Lease.ack` for each; a driver that can settle them in one round trip (one
        transaction, one sync to disk) does so."""
        for lease in leases:
            await self.ack(lease)

    @abstractmethod
    async def release(self, lease: DriverLease[H]) -> None:
        """`Lease.release`."""

    @abstractmethod
    async def nack(self, lease: DriverLease[H], nack: Nack) -> None:
        """`Lease.nack`."""


class DriverLease(Lease, Generic[H]):
    """The one `Lease` the drivers hand out: the job, the attempt and the driver's `handle`
    for this delivery, every call passed to the driver that made it, so the rules of a lease
    live in one place per driver."""

    def __init__(self, keeper: LeaseKeeper[H], job: Job, attempt: int, handle: H) -> None:
        self.job = job
        self.attempt = attempt
        self.handle = handle
        self.keeper = keeper

    async def extend(self) -> None:
        await self.keeper.extend(self)

    async def ack(self) -> None:
        await self.keeper.ack(self)

    async def release(self) -> None:
        await self.keeper.release(self)

    async def nack(
        self, *, requeue: bool, delay: float = 0.0, error: str = "", headers: Headers | None = None
    ) -> None:
        await self.keeper.nack(self, Nack(requeue, delay, error, headers))


async def ack_all(leases: Sequence[Lease]) -> None:
    """Ack every lease, those of one driver together (`LeaseKeeper.ack_many`): a consumer that
    settles a batch (the inbox's) pays one transaction for it on sqlite, not one a job."""
    by_keeper: dict[LeaseKeeper[Any], list[DriverLease[Any]]] = {}
    for lease in leases:
        if isinstance(lease, DriverLease):
            by_keeper.setdefault(lease.keeper, []).append(lease)
        else:
            await lease.ack()
    for keeper, group in by_keeper.items():
        await keeper.ack_many(group)


class Driver(ABC):
    """Storage for one pipeline. Built with its settings; `open` connects."""

    capabilities: Capabilities
    unwithdrawn_publishes: int = 0
    """Pushes that raised PushTimeout although their message had already gone to a broker
    that cannot take it back (amqp): they may be stored. Exported as a metric."""
    dropped_late: int = 0
    """Jobs `reserve` discarded unseen because the broker stored them after their push's
    deadline (nats): their push raised, so serving them would deliver mail after a 451. Each
    is logged with its id and pipeline; exported as a metric."""
    close_by: float | None = None
    """When (`time.monotonic()`) a stopping server needs `close` done, set by the consumers'
    stop: a driver whose close may wait on a broker (amqp) keeps to it. None: no hurry."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, declare what the broker needs, and make expired leases available again."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect. Idempotent; unacked leases stay recoverable after their expiry."""

    @abstractmethod
    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        """Store `jobs` (all or nothing) and return only when they are durable.

        `deadline` is a `time.monotonic()` instant: a job whose storing has not begun by then
        is never stored afterwards, and PushTimeout is raised. Storing that has begun and cannot
        be withdrawn (a sqlite COMMIT in flight) is waited for, past the deadline, and push
        reports what really happened: it first tells `current_verdict_listener()`, if any, by
        when the outcome will be known, so that no caller gives up on a job that is then
        stored. A job id already stored is not stored twice when
        `capabilities.idempotent_push`. Concurrent calls may share a transaction.
        """

    @abstractmethod
    async def reserve(self, limit: int, wait: float) -> list[Lease]:
        """Lease up to `limit` due jobs, lowest priority number first, then oldest first.

        Waits up to `wait` seconds for a job to become due; returns [] then, never later.
        """

    @abstractmethod
    async def stat(self) -> QueueStat:
        """Counts of queued (due, not leased), delayed, reserved and failed jobs."""

    # peek, failed, retry_failed and purge_failed answer an empty request (a limit of 0, ids
    # []) here, without asking the store, so that every driver answers it alike and at once.

    async def peek(self, limit: int) -> list[Job]:
        """Up to `limit` stored jobs in the order they would be served, without leasing."""
        return await self._peek(limit) if limit > 0 else []

    async def failed(self, limit: int) -> list[FailedJob]:
        """Up to `limit` jobs of the failed list, oldest failure first."""
        return await self._failed(limit) if limit > 0 else []

    async def retry_failed(self, ids: Sequence[str] | None = None) -> int:
        """Make failed jobs (all, or those in `ids`) due again with attempts reset; how many."""
        return 0 if ids is not None and not ids else await self._retry_failed(ids)

    async def purge_failed(self, ids: Sequence[str] | None = None) -> list[str]:
        """Delete failed jobs (all, or those in `ids`); returns the ids of the jobs that went,
        each once, so that what they point at (attachment folders) can be freed by id without
        reading their payloads first. Ids that were not failed are not returned."""
        if ids is not None and not ids:
            return []
        return list(dict.fromkeys(await self._purge_failed(ids)))  # a failed list may repeat ids

    @abstractmethod
    async def _peek(self, limit: int) -> list[Job]:
        """`peek`, asked only for a `limit` of 1 or more."""

    @abstractmethod
    async def _failed(self, limit: int) -> list[FailedJob]:
        """`failed`, asked only for a `limit` of 1 or more."""

    @abstractmethod
    async def _retry_failed(self, ids: Sequence[str] | None) -> int:
        """`retry_failed`, asked only for every failed job (None) or for some (`ids` not empty)."""

    @abstractmethod
    async def _purge_failed(self, ids: Sequence[str] | None) -> list[str]:
        """`purge_failed`, asked like `_retry_failed`; it may name an id more than once."""

    @abstractmethod
    async def destroy(self) -> None:
        """Delete every job of this pipeline, the failed list included."""
