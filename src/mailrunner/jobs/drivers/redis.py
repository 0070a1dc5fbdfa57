"""The Redis driver: a pipeline shared by many nodes, every state change one atomic Lua script.

What it honours (the capabilities it declares):

- priority: yes, a lower number first, then push order (FIFO among equal priorities, a whole
  batch in its order). Priorities above 8191 are served as 8191 (the ordering score has to
  stay exact in a double); the job keeps its real priority.
- delay: yes, with millisecond precision by Redis's clock; a waiting reserve polls, so a
  delayed job is served within about 50 ms of being due.
- idempotent_push: an id already stored (queued, delayed, leased or failed) is not stored
  again and not replaced, also within one batch.
- atomic_batch: a batch is stored by one script: all of it or none of it.
- peek: yes, in serving order (due jobs first, then delayed ones by due time).
- durable: decided on `open()`. Only when the server runs with `appendonly yes` and
  `appendfsync always` does a script's write reach the disk before its reply, so only then is
  a push durable when it returns. Otherwise (or when `CONFIG GET` is refused, as on some
  managed services) the driver logs a warning saying why and reports `durable: false`.
  Replication is not waited for: a failover to a replica can lose the newest jobs.
- max_payload: the server's `proto-max-bulk-len` (512 MiB by default).

Keys, all sharing the hash tag `{stream}`, so that they hash to one slot and a sharding proxy
or a cluster keeps them together for the scripts (the driver itself talks to one server;
`stream` defaults to the pipeline's name, `prefix` is `config.key_prefix`):

    <prefix>:{<stream>}:job:<id>   HASH   name, payload, headers (JSON), priority, auto_ack,
                                          attempts, rank, token (current lease), error,
                                          failed_at (unix ms), created (unix ms)
    <prefix>:{<stream>}:queue      ZSET   due jobs by rank = min(priority, 8191) * 2^40 + seq
    <prefix>:{<stream>}:delayed    ZSET   jobs waiting for their delay, by due time (unix ms)
    <prefix>:{<stream>}:leased     ZSET   leased jobs, by lease expiry (unix ms)
    <prefix>:{<stream>}:failed     ZSET   the failed list, by failure order
    <prefix>:{<stream>}:seq        STRING the counter behind push order and failure order

A job is in exactly one of the four sets. A job keeps its rank for life, so a job coming back
(lease expiry, nack, release, retry) takes its original place among equal priorities. Every
script reads the time with `TIME`, so all clients agree on delays and lease expiries; due
delayed jobs and expired leases move back to the queue whenever a script reserves or peeks,
and `stat` counts them as queued without moving them.

Pushes and deadlines: Redis decides, atomically, whether a push was in time. The caller's
`time.monotonic()` deadline is translated onto Redis's clock (measured on open and every minute
after; half the measuring round trip is taken off as its error) and handed to the push script,
which stores nothing when Redis's time has passed it: checked before storing and again after,
undoing its writes, unseen by anyone, when the second check fails. The driver then waits for
that verdict, up to `VERDICT_GRACE` past the deadline, because with `appendfsync always` the
reply comes only after the fsync: a push that returns may return that much after its deadline
(the SMTP side allows `PUSH_GRACE` for it, see `jobs/deadline.py`), one refused as late or
without a verdict by then raises PushTimeout. So a job is never stored once its deadline has
passed on Redis's clock, and a push that raised PushTimeout stored nothing. When the verdict
takes longer than the grace (a stalled disk or network) the push raises PushOutcomeUnknown: the
job may be stored, so the SMTP side keeps its attachment files, and the client's retry makes a
duplicate, never a loss. A push cancelled by its caller after it was sent may still be stored:
Redis cannot withdraw it.

Restarts: a lease token begins with this node's name (`_common.node_id`, stable across
restarts on one data_dir) and this process's, so `open()` gives back at once the jobs an
earlier process of this node still held (killed, or stopped with leases unsettled), as their
lease expiry would (the attempt stays counted), instead of leaving them unserved for
`visibility_timeout`. Leases of this process (a driver closed and opened again) expire as the
contract says.

Connections: redis-py reconnects on the next command after a broken connection; the driver
turns off redis-py's retries and bounds connecting and every command by `config.timeout`, so
while Redis is down each call fails fast with DriverUnavailable and nothing is buffered.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mailrunner.config import RedisPipelineConfig, mask_url
from mailrunner.errors import DriverUnavailable, PushOutcomeUnknown, PushTimeout
from mailrunner.jobs.deadline import VERDICT_GRACE
from mailrunner.jobs.driver import Driver, DriverLease, Lease, LeaseKeeper, Nack
from mailrunner.jobs.drivers._common import (
    Raised,
    broker_errors,
    node_id,
    not_open,
    reserve_until,
    selects_nothing,
    store_capabilities,
    stored_fields,
    time_left,
)
from mailrunner.jobs.model import FailedJob, Job, JobOptions, QueueStat

log = structlog.get_logger("mailrunner.jobs")

_IDLE_POLL = 0.05
"""How often a waiting reserve asks Redis again: pushes from other nodes cannot wake it."""
_CLOCK_RESYNC = 60.0
"""Seconds between measurements of Redis's clock against ours."""
_DEFAULT_MAX_BULK = 512 * 1024 * 1024
"""Redis's default `proto-max-bulk-len`, used when the server will not tell."""
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_PROCESS = uuid.uuid4().hex[:12]
"""This process among the runs of one node, in its lease tokens."""


def _lua(name: str) -> str:
    """One script's source, from `redis_<name>.lua` beside this module: there an editor
    reads it as Lua, and each script's arguments and answer are the comment at its top."""
    return (resources.files(__package__) / f"redis_{name}.lua").read_text(encoding="utf-8")


class _Scripts:
    """The driver's Lua scripts, registered on one client (redis-py loads them on first use,
    and again after a server restart forgot them)."""

    def __init__(self, client: Redis) -> None:
        prelude = _lua("prelude")

        def register(*names: str) -> AsyncScript:
            return client.register_script(prelude + "".join(_lua(name) for name in names))

        self.push = register("push")
        self.reserve = register("reserve")
        self.ack = register("lease_check", "ack")
        self.extend = register("lease_check", "extend")
        self.release = register("lease_check", "release")
        self.nack = register("lease_check", "nack")
        self.stat = register("stat")
        self.peek = register("peek")
        self.failed = register("failed")
        self.retry_failed = register("failed_selection", "retry_failed")
        self.purge_failed = register("failed_selection", "purge_failed")
        self.destroy = register("destroy")
        self.reclaim = register("reclaim")


@dataclass(frozen=True, slots=True)
class _Keys:
    """The names of one pipeline's keys; every one carries the hash tag `{stream}`."""

    job_prefix: str
    fixed: tuple[str, str, str, str, str]

    @classmethod
    def of(cls, key_prefix: str, stream: str) -> _Keys:
        base = f"{key_prefix}:{{{stream}}}:"
        names = ("queue", "delayed", "leased", "failed", "seq")
        queue, delayed, leased, failed, seq = (base + name for name in names)
        return cls(job_prefix=base + "job:", fixed=(queue, delayed, leased, failed, seq))


@dataclass(frozen=True, slots=True)
class _ServerClock:
    """This process's monotonic clock mapped onto Redis's `TIME`, so deadlines can be judged
    by Redis itself. `error_ms` is half the round trip of the measurement."""

    monotonic_at: float
    server_ms_at: float
    error_ms: float

    def server_ms(self, instant: float) -> int:
        """The latest Redis time (unix ms) that surely comes before `instant` here."""
        elapsed_ms = (instant - self.monotonic_at) * 1000
        return math.floor(self.server_ms_at + elapsed_ms - self.error_ms)

    def stale(self) -> bool:
        return time.monotonic() - self.monotonic_at > _CLOCK_RESYNC


async def _measure_clock(client: Redis) -> _ServerClock:
    """Take the quicker of two `TIME` round trips (the first may include connecting)."""
    samples = [await _clock_sample(client) for _ in range(2)]
    return min(samples, key=lambda sample: sample.error_ms)


async def _clock_sample(client: Redis) -> _ServerClock:
    sent = time.monotonic()
    seconds, micros = await client.time()
    received = time.monotonic()
    return _ServerClock(
        monotonic_at=(sent + received) / 2,
        server_ms_at=seconds * 1000 + micros / 1000,
        error_ms=(received - sent) * 500,
    )


async def _durability(client: Redis) -> tuple[bool, str]:
    """Whether a write is on disk before Redis answers it, and if not, why not."""
    try:
        settings = await client.config_get("append*")
    except ResponseError as error:
        return False, f"CONFIG GET was refused ({error}), so appendonly cannot be checked"
    appendonly, appendfsync = settings.get("appendonly"), settings.get("appendfsync")
    if appendonly == "yes" and appendfsync == "always":
        return True, ""
    return False, (
        f"the server runs with appendonly {appendonly} and appendfsync {appendfsync}; "
        "jobs are durable only with appendonly yes and appendfsync always"
    )


async def _max_payload(client: Redis) -> int:
    """The largest single value the server accepts: `proto-max-bulk-len`."""
    try:
        settings = await client.config_get("proto-max-bulk-len")
    except ResponseError:
        return _DEFAULT_MAX_BULK
    value = settings.get("proto-max-bulk-len")
    return int(value) if value and value.isdigit() else _DEFAULT_MAX_BULK


def _text(value: bytes) -> str:
    return value.decode("utf-8")


LeaseAction = Literal["extend", "ack", "release", "nack"]
"""The lease scripts, by their attribute name on `_Scripts`."""


class RedisDriver(Driver, LeaseKeeper[str]):
    """One pipeline's jobs in one Redis database (`config.addr`), shared by every node that
    names the same `stream`."""

    def __init__(self, name: str, settings: RedisPipelineConfig, data_dir: Path) -> None:
        self.name = name
        self.visibility_timeout = settings.visibility_timeout
        self.addr = mask_url(settings.config.addr)
        self.capabilities = store_capabilities(durable=False)
        """Provisional until `open()` has asked the server how it stores."""
        self._settings = settings.config
        self._data_dir = data_dir
        self._node = ""
        """This node's name (`node_id`), the start of its lease tokens; set by `open()`."""
        self._keys = _Keys.of(settings.config.key_prefix, settings.config.stream or name)
        self._client: Redis | None = None
        self._scripts: _Scripts | None = None
        self._clock: _ServerClock | None = None
        self._changed = asyncio.Event()

    # --- connecting ----------------------------------------------------------------------

    def _connect(self) -> Redis:
        """A client that fails instead of waiting: no retries, every call bounded."""
        timeout = self._settings.timeout
        try:
            return Redis.from_url(
                self._settings.addr,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as error:
            raise DriverUnavailable(f"pipeline {self.name}: bad redis address: {error}") from None

    async def open(self) -> None:
        if self._client is not None:
            return
        self._node = self._node or await asyncio.to_thread(node_id, self._data_dir)
        client = self._connect()
        scripts = _Scripts(client)
        try:
            with self._errors("connecting", unreachable=(RedisError, OSError)):
                clock = await _measure_clock(client)
                durable, why_not = await _durability(client)
                max_payload = await _max_payload(client)
                reclaimed = await scripts.reclaim(
                    keys=self._keys.fixed,
                    args=[self._keys.job_prefix, f"{self._node}/", f"{self._node}/{_PROCESS}:"],
                )
        except BaseException:
            await client.aclose()
            raise
        if reclaimed:
            log.info(
                "redis leases of this node's last run given back",
                pipeline=self.name,
                jobs=reclaimed,
            )
        if not durable:
            log.warning(
                "redis pipeline is not durable",
                pipeline=self.name,
                addr=self.addr,
                reason=why_not,
            )
        self.capabilities = store_capabilities(durable=durable, max_payload=max_payload)
        self._client, self._scripts, self._clock = client, scripts, clock

    async def close(self) -> None:
        client, self._client, self._scripts = self._client, None, None
        if client is not None:
            await client.aclose()

    def _errors(
        self, doing: str, unreachable: Raised = _UNREACHABLE
    ) -> AbstractContextManager[None]:
        where = f"pipeline {self.name}: redis at {self.addr}"
        return broker_errors(where, doing, unreachable=unreachable, failed=RedisError)

    async def _run(self, script: AsyncScript, args: Sequence[str | int | bytes], doing: str) -> Any:
        """Run one script on this pipeline's keys; Redis's failures become DriverErrors."""
        if self._client is None:
            raise not_open(self.name, "redis")
        with self._errors(doing):
            return await script(keys=self._keys.fixed, args=[self._keys.job_prefix, *args])

    def _open_scripts(self) -> _Scripts:
        if self._scripts is None:
            raise not_open(self.name, "redis")
        return self._scripts

    # --- push ----------------------------------------------------------------------------

    async def _server_deadline(self, deadline: float) -> int:
        """The caller's deadline on Redis's clock (unix ms), rounded towards earlier."""
        if self._client is None:
            raise not_open(self.name, "redis")
        if self._clock is None or self._clock.stale():
            with self._errors("measuring its clock", unreachable=(RedisError, OSError)):
                self._clock = await _measure_clock(self._client)
        return self._clock.server_ms(deadline)

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        remaining = time_left(self.name, deadline)
        scripts = self._open_scripts()
        try:
            async with asyncio.timeout(remaining + VERDICT_GRACE):
                args = [await self._server_deadline(deadline), *_push_args(jobs)]
                stored = await self._run(scripts.push, args, "storing jobs")
        except TimeoutError:
            raise PushOutcomeUnknown(
                f"pipeline {self.name}: redis at {self.addr} did not answer the push "
                f"within {VERDICT_GRACE}s of its deadline; it may be stored"
            ) from None
        if stored < 0:
            raise PushTimeout(
                f"pipeline {self.name}: redis at {self.addr} got the push after its deadline "
                "and stored nothing"
            )
        if stored:
            self._changed.set()

    # --- reserve and leases --------------------------------------------------------------

    async def _lease(self, limit: int) -> tuple[list[Lease], float | None]:
        """One reserve script: the leases, and seconds until the next job is due (or None)."""
        visibility_ms = max(1, round(self.visibility_timeout * 1000))
        token_base = f"{self._node}/{_PROCESS}:{uuid.uuid4().hex}"
        rows, next_due_ms = await self._run(
            self._open_scripts().reserve,
            [max(0, limit), visibility_ms, token_base],
            "reserving jobs",
        )
        leases: list[Lease] = [
            DriverLease(self, self._job(row[:6]), int(row[6]), _text(row[7])) for row in rows
        ]
        return leases, None if next_due_ms < 0 else next_due_ms / 1000

    async def reserve(self, limit: int, wait: float) -> list[Lease]:
        return await reserve_until(lambda: self._lease(limit), self._changed, wait, _IDLE_POLL)

    async def _on_lease(
        self, action: LeaseAction, lease: DriverLease[str], *args: str | int
    ) -> None:
        """Extend, ack, release or nack a lease, if its token is still the job's current one
        (a stale token makes the script a no-op)."""
        job_id = lease.job.id
        script: AsyncScript = getattr(self._open_scripts(), action)
        changed = await self._run(
            script, [job_id, lease.handle, *args], f"{action} of job {job_id}"
        )
        if changed and action in ("release", "nack"):
            self._changed.set()

    async def extend(self, lease: DriverLease[str]) -> None:
        await self._on_lease("extend", lease, round(self.visibility_timeout * 1000))

    async def ack(self, lease: DriverLease[str]) -> None:
        await self._on_lease("ack", lease)

    async def release(self, lease: DriverLease[str]) -> None:
        await self._on_lease("release", lease)

    async def nack(self, lease: DriverLease[str], nack: Nack) -> None:
        args: list[str | int] = [int(nack.requeue), round(nack.delay * 1000), nack.error]
        if nack.headers is not None:
            args.append(json.dumps(nack.headers))
        await self._on_lease("nack", lease, *args)

    # --- inspection and the failed list --------------------------------------------------

    async def stat(self) -> QueueStat:
        queued, delayed, reserved, failed = await self._run(
            self._open_scripts().stat, [], "counting jobs"
        )
        return QueueStat(queued=queued, delayed=delayed, reserved=reserved, failed=failed)

    async def peek(self, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        rows = await self._run(self._open_scripts().peek, [limit], "peeking at jobs")
        return [self._job(row) for row in rows]

    async def failed(self, limit: int) -> list[FailedJob]:
        if limit <= 0:
            return []
        rows = await self._run(self._open_scripts().failed, [limit], "listing failed jobs")
        return [
            FailedJob(
                job=self._job(row[:6]),
                error=_text(row[6] or b""),
                attempts=int(row[7] or 0),
                failed_at=int(row[8] or 0) / 1000,
            )
            for row in rows
        ]

    async def retry_failed(self, ids: Sequence[str] | None = None) -> int:
        if selects_nothing(ids):
            return 0
        count = int(await self._change_failed(self._open_scripts().retry_failed, ids, "retrying"))
        if count:
            self._changed.set()
        return count

    async def purge_failed(self, ids: Sequence[str] | None = None) -> list[str]:
        if selects_nothing(ids):
            return []
        removed = await self._change_failed(self._open_scripts().purge_failed, ids, "purging")
        return [_text(job_id) for job_id in removed]

    async def _change_failed(
        self, script: AsyncScript, ids: Sequence[str] | None, doing: str
    ) -> Any:
        """Run a failed-list script on every failed job, or on those in `ids`."""
        selection = ["all"] if ids is None else ["ids", *ids]
        return await self._run(script, selection, f"{doing} failed jobs")

    async def destroy(self) -> None:
        await self._run(self._open_scripts().destroy, [], "deleting the pipeline's jobs")

    def _job(self, row: Sequence[bytes]) -> Job:
        job_id, name, payload, headers, priority, auto_ack = row
        return Job(
            id=_text(job_id),
            name=_text(name),
            payload=payload,
            options=JobOptions(
                pipeline=self.name, priority=int(priority), auto_ack=auto_ack == b"1"
            ),
            headers=json.loads(headers),
        )


def _push_args(jobs: Sequence[Job]) -> list[str | int | bytes]:
    """The push script's per-job arguments, seven per job."""
    args: list[str | int | bytes] = []
    for job in jobs:
        args += (*stored_fields(job), round(job.options.delay * 1000))
    return args
