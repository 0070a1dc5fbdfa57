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

Connections: redis-py reconnects on the next command after a broken connection; the driver
turns off redis-py's retries and bounds connecting and every command by `config.timeout`, so
while Redis is down each call fails fast with DriverUnavailable and nothing is buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
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

from mailrunner.config import RedisPipeline, mask_url
from mailrunner.errors import DriverError, DriverUnavailable, PushOutcomeUnknown, PushTimeout
from mailrunner.jobs.deadline import VERDICT_GRACE
from mailrunner.jobs.driver import Driver, Lease
from mailrunner.jobs.model import Capabilities, FailedJob, Headers, Job, JobOptions, QueueStat

log = structlog.get_logger("mailrunner.jobs")

_IDLE_POLL = 0.05
"""How often a waiting reserve asks Redis again: pushes from other nodes cannot wake it."""
_CLOCK_RESYNC = 60.0
"""Seconds between measurements of Redis's clock against ours."""
_DEFAULT_MAX_BULK = 512 * 1024 * 1024
"""Redis's default `proto-max-bulk-len`, used when the server will not tell."""

# Every script gets KEYS = queue, delayed, leased, failed, seq and ARGV[1] = the job key
# prefix; job hashes are named from it (they share the hash tag, so a cluster agrees).
_PRELUDE = """
local queue, delayed, leased, failed, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_prefix = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function promote(zset, now)
  local due = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  for _, id in ipairs(due) do
    local rank = redis.call('HGET', job_prefix .. id, 'rank')
    if rank then redis.call('ZADD', queue, rank, id) end
  end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', zset, '-inf', now) end
end

local function unqueue(id)
  redis.call('ZREM', queue, id)
  redis.call('ZREM', delayed, id)
  redis.call('ZREM', leased, id)
end

local function fields(key, ...)
  return redis.call('HMGET', key, 'name', 'payload', 'headers', 'priority', 'auto_ack', ...)
end
"""

# ARGV: prefix, deadline (Redis unix ms), then per job: id, name, payload, headers,
# priority, auto_ack, delay (ms). Returns how many were new, or -1 when refused as late.
_PUSH = """
local deadline = tonumber(ARGV[2])
local now = now_ms()
if now > deadline then return -1 end
local stored = {}
for i = 3, #ARGV, 7 do
  local id = ARGV[i]
  local key = job_prefix .. id
  if redis.call('EXISTS', key) == 0 then
    local priority = math.min(tonumber(ARGV[i + 4]), 8191)
    local rank = string.format('%.0f', priority * 1099511627776 + redis.call('INCR', seq))
    redis.call('HSET', key, 'name', ARGV[i + 1], 'payload', ARGV[i + 2],
      'headers', ARGV[i + 3], 'priority', ARGV[i + 4], 'auto_ack', ARGV[i + 5],
      'attempts', 0, 'rank', rank, 'created', now)
    local delay = tonumber(ARGV[i + 6])
    if delay > 0 then
      redis.call('ZADD', delayed, now + delay, id)
    else
      redis.call('ZADD', queue, rank, id)
    end
    stored[#stored + 1] = id
  end
end
if now_ms() > deadline then
  for _, id in ipairs(stored) do
    redis.call('DEL', job_prefix .. id)
    redis.call('ZREM', queue, id)
    redis.call('ZREM', delayed, id)
  end
  return -1
end
return #stored
"""

# ARGV: prefix, limit, visibility (ms), token base.
# Returns {leases, ms until the next job is due or -1}; a lease is
# {id, name, payload, headers, priority, auto_ack, attempt, token}.
_RESERVE = """
local limit, visibility, token_base = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
promote(delayed, now)
promote(leased, now)
local leases = {}
local popped = redis.call('ZPOPMIN', queue, limit)
for i = 1, #popped, 2 do
  local id = popped[i]
  local key = job_prefix .. id
  if redis.call('EXISTS', key) == 1 then
    local token = token_base .. '.' .. i
    local attempt = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'token', token)
    redis.call('ZADD', leased, now + visibility, id)
    local f = fields(key)
    leases[#leases + 1] = {id, f[1], f[2], f[3], f[4], f[5], attempt, token}
  end
end
local next_due = -1
if redis.call('ZCARD', queue) > 0 then
  next_due = 0
else
  for _, zset in ipairs({delayed, leased}) do
    local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
    if first[2] then
      local wait = tonumber(first[2]) - now
      if next_due < 0 or wait < next_due then next_due = wait end
    end
  end
end
return {leases, next_due}
"""

# Lease scripts: ARGV = prefix, id, token, ...; a token that is not the job's current lease
# (acked, nacked, released, or leased again after expiry) makes them a no-op returning 0.
_LEASE_CHECK = """
local id = ARGV[2]
local key = job_prefix .. id
if redis.call('HGET', key, 'token') ~= ARGV[3] then return 0 end
"""

_ACK = """
unqueue(id)
redis.call('DEL', key)
return 1
"""

# ARGV[4] = visibility (ms).
_EXTEND = """
unqueue(id)
redis.call('ZADD', leased, now_ms() + tonumber(ARGV[4]), id)
return 1
"""

_RELEASE = """
unqueue(id)
redis.call('HINCRBY', key, 'attempts', -1)
redis.call('HDEL', key, 'token')
redis.call('ZADD', queue, redis.call('HGET', key, 'rank'), id)
return 1
"""

# ARGV[4] = '1' to requeue, ARGV[5] = delay (ms), ARGV[6] = error, ARGV[7] = new headers.
_NACK = """
unqueue(id)
redis.call('HDEL', key, 'token')
redis.call('HSET', key, 'error', ARGV[6])
if ARGV[7] then redis.call('HSET', key, 'headers', ARGV[7]) end
local now = now_ms()
if ARGV[4] ~= '1' then
  redis.call('HSET', key, 'failed_at', now)
  redis.call('ZADD', failed, redis.call('INCR', seq), id)
elseif tonumber(ARGV[5]) > 0 then
  redis.call('ZADD', delayed, now + tonumber(ARGV[5]), id)
else
  redis.call('ZADD', queue, redis.call('HGET', key, 'rank'), id)
end
return 1
"""

_STAT = """
local now = now_ms()
local due_delayed = redis.call('ZCOUNT', delayed, '-inf', now)
local expired = redis.call('ZCOUNT', leased, '-inf', now)
return {
  redis.call('ZCARD', queue) + due_delayed + expired,
  redis.call('ZCARD', delayed) - due_delayed,
  redis.call('ZCARD', leased) - expired,
  redis.call('ZCARD', failed),
}
"""

# ARGV[2] = limit. Returns {id, name, payload, headers, priority, auto_ack} per job.
_PEEK = """
local limit = tonumber(ARGV[2])
local now = now_ms()
promote(delayed, now)
promote(leased, now)
local ids = redis.call('ZRANGE', queue, 0, limit - 1)
if #ids < limit then
  for _, id in ipairs(redis.call('ZRANGE', delayed, 0, limit - #ids - 1)) do
    ids[#ids + 1] = id
  end
end
local jobs = {}
for _, id in ipairs(ids) do
  local f = fields(job_prefix .. id)
  jobs[#jobs + 1] = {id, f[1], f[2], f[3], f[4], f[5]}
end
return jobs
"""

# ARGV[2] = limit. Returns {id, name, payload, headers, priority, auto_ack, error, attempts,
# failed_at} per job, oldest failure first.
_FAILED = """
local jobs = {}
for _, id in ipairs(redis.call('ZRANGE', failed, 0, tonumber(ARGV[2]) - 1)) do
  local f = fields(job_prefix .. id, 'error', 'attempts', 'failed_at')
  jobs[#jobs + 1] = {id, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]}
end
return jobs
"""

# ARGV[2] = 'all' or 'ids', then the ids; `chosen` = the failed ones among them, each once.
_FAILED_SELECTION = """
local chosen = {}
if ARGV[2] == 'all' then
  chosen = redis.call('ZRANGE', failed, 0, -1)
else
  local seen = {}
  for i = 3, #ARGV do
    local id = ARGV[i]
    if not seen[id] and redis.call('ZSCORE', failed, id) then
      chosen[#chosen + 1] = id
      seen[id] = true
    end
  end
end
"""

# Returns how many failed jobs were made due again.

_RETRY_FAILED = """
for _, id in ipairs(chosen) do
  local key = job_prefix .. id
  redis.call('ZREM', failed, id)
  redis.call('HSET', key, 'attempts', 0)
  redis.call('HDEL', key, 'failed_at')
  redis.call('ZADD', queue, redis.call('HGET', key, 'rank'), id)
end
return #chosen
"""

# Returns the ids of the jobs deleted.
_PURGE_FAILED = """
for _, id in ipairs(chosen) do
  redis.call('ZREM', failed, id)
  redis.call('DEL', job_prefix .. id)
end
return chosen
"""

_DESTROY = """
for _, zset in ipairs({queue, delayed, leased, failed}) do
  for _, id in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
    redis.call('DEL', job_prefix .. id)
  end
end
redis.call('DEL', queue, delayed, leased, failed, seq)
return 1
"""


class _Scripts:
    """The driver's Lua scripts, registered on one client (redis-py loads them on first use,
    and again after a server restart forgot them)."""

    def __init__(self, client: Redis) -> None:
        def register(*parts: str) -> AsyncScript:
            return client.register_script(_PRELUDE + "".join(parts))

        self.push = register(_PUSH)
        self.reserve = register(_RESERVE)
        self.ack = register(_LEASE_CHECK, _ACK)
        self.extend = register(_LEASE_CHECK, _EXTEND)
        self.release = register(_LEASE_CHECK, _RELEASE)
        self.nack = register(_LEASE_CHECK, _NACK)
        self.stat = register(_STAT)
        self.peek = register(_PEEK)
        self.failed = register(_FAILED)
        self.retry_failed = register(_FAILED_SELECTION, _RETRY_FAILED)
        self.purge_failed = register(_FAILED_SELECTION, _PURGE_FAILED)
        self.destroy = register(_DESTROY)


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


def _capabilities(*, durable: bool, max_payload: int | None) -> Capabilities:
    return Capabilities(
        durable=durable,
        idempotent_push=True,
        atomic_batch=True,
        priority=True,
        delay=True,
        peek=True,
        max_payload=max_payload,
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8")


LeaseAction = Literal["extend", "ack", "release", "nack"]
"""The lease scripts, by their attribute name on `_Scripts`."""


class RedisLease(Lease):
    """A lease identified by its token: a stale token makes every call a no-op."""

    def __init__(self, driver: RedisDriver, job: Job, attempt: int, token: str) -> None:
        self._driver = driver
        self._token = token
        self.job = job
        self.attempt = attempt

    async def extend(self) -> None:
        visibility_ms = round(self._driver.visibility_timeout * 1000)
        await self._driver.on_lease("extend", self.job.id, self._token, visibility_ms)

    async def ack(self) -> None:
        await self._driver.on_lease("ack", self.job.id, self._token)

    async def release(self) -> None:
        await self._driver.on_lease("release", self.job.id, self._token)

    async def nack(
        self, *, requeue: bool, delay: float = 0.0, error: str = "", headers: Headers | None = None
    ) -> None:
        args: list[str | int] = [int(requeue), round(delay * 1000), error]
        if headers is not None:
            args.append(json.dumps(headers))
        await self._driver.on_lease("nack", self.job.id, self._token, *args)


class RedisDriver(Driver):
    """One pipeline's jobs in one Redis database (`config.addr`), shared by every node that
    names the same `stream`."""

    def __init__(self, name: str, settings: RedisPipeline, data_dir: Path) -> None:
        self.name = name
        self.visibility_timeout = settings.visibility_timeout
        self.addr = mask_url(settings.config.addr)
        self.capabilities = _capabilities(durable=False, max_payload=None)
        """Provisional until `open()` has asked the server how it stores."""
        self._settings = settings.config
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
        client = self._connect()
        try:
            clock = await _measure_clock(client)
            durable, why_not = await _durability(client)
            max_payload = await _max_payload(client)
        except (RedisError, OSError) as error:
            await client.aclose()
            raise DriverUnavailable(
                f"pipeline {self.name}: cannot reach redis at {self.addr}: {error}"
            ) from error
        if not durable:
            log.warning(
                "redis pipeline is not durable",
                pipeline=self.name,
                addr=self.addr,
                reason=why_not,
            )
        self.capabilities = _capabilities(durable=durable, max_payload=max_payload)
        self._client, self._scripts, self._clock = client, _Scripts(client), clock

    async def close(self) -> None:
        client, self._client, self._scripts = self._client, None, None
        if client is not None:
            await client.aclose()

    async def _run(self, script: AsyncScript, args: Sequence[str | int | bytes], doing: str) -> Any:
        """Run one script on this pipeline's keys; Redis's failures become DriverErrors."""
        if self._client is None:
            raise DriverUnavailable(f"pipeline {self.name}: the redis driver is not open")
        try:
            return await script(keys=self._keys.fixed, args=[self._keys.job_prefix, *args])
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise DriverUnavailable(
                f"pipeline {self.name}: redis at {self.addr} unreachable while {doing}: {error}"
            ) from error
        except RedisError as error:
            raise DriverError(
                f"pipeline {self.name}: redis at {self.addr} failed while {doing}: {error}"
            ) from error

    def _open_scripts(self) -> _Scripts:
        if self._scripts is None:
            raise DriverUnavailable(f"pipeline {self.name}: the redis driver is not open")
        return self._scripts

    # --- push ----------------------------------------------------------------------------

    async def _server_deadline(self, deadline: float) -> int:
        """The caller's deadline on Redis's clock (unix ms), rounded towards earlier."""
        if self._client is None:
            raise DriverUnavailable(f"pipeline {self.name}: the redis driver is not open")
        if self._clock is None or self._clock.stale():
            try:
                self._clock = await _measure_clock(self._client)
            except (RedisError, OSError) as error:
                raise DriverUnavailable(
                    f"pipeline {self.name}: redis at {self.addr} unreachable: {error}"
                ) from error
        return self._clock.server_ms(deadline)

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PushTimeout(f"pipeline {self.name}: push deadline passed before storing")
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
        token_base = uuid.uuid4().hex
        rows, next_due_ms = await self._run(
            self._open_scripts().reserve,
            [max(0, limit), visibility_ms, token_base],
            "reserving jobs",
        )
        leases: list[Lease] = [
            RedisLease(self, self._job(row[:6]), int(row[6]), _text(row[7])) for row in rows
        ]
        return leases, None if next_due_ms < 0 else next_due_ms / 1000

    async def reserve(self, limit: int, wait: float) -> list[Lease]:
        give_up = time.monotonic() + wait
        while True:
            self._changed.clear()
            leases, next_due = await self._lease(limit)
            remaining = give_up - time.monotonic()
            if leases or remaining <= 0:
                return leases
            pause = min(remaining, _IDLE_POLL)
            if next_due is not None:
                pause = min(pause, next_due + 0.001)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._changed.wait()

    async def on_lease(
        self, action: LeaseAction, job_id: str, token: str, *args: str | int
    ) -> None:
        """Extend, ack, release or nack a lease, if it is still the job's current one."""
        script: AsyncScript = getattr(self._open_scripts(), action)
        changed = await self._run(script, [job_id, token, *args], f"{action} of job {job_id}")
        if changed and action in ("release", "nack"):
            self._changed.set()

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
        if ids is not None and not ids:
            return 0
        count = int(await self._change_failed(self._open_scripts().retry_failed, ids, "retrying"))
        if count:
            self._changed.set()
        return count

    async def purge_failed(self, ids: Sequence[str] | None = None) -> list[str]:
        if ids is not None and not ids:
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
        args += (
            job.id,
            job.name,
            job.payload,
            json.dumps(job.headers),
            job.options.priority,
            int(job.options.auto_ack),
            round(job.options.delay * 1000),
        )
    return args
