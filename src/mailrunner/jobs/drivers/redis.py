"""The Redis driver: a pipeline shared by many nodes, every state change one atomic Lua script.

Keys, deadlines (Redis's clock decides), durability and restarts: docs/jobs.md#redis.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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
from mailrunner.jobs.drivers import _common
from mailrunner.jobs.model import FailedJob, Job, QueueStat

log = structlog.get_logger("mailrunner.jobs")

_CLOCK_RESYNC = 60.0
"""Seconds between measurements of Redis's clock against ours."""
_DEFAULT_MAX_BULK = 512 * 1024 * 1024
"""Redis's default `proto-max-bulk-len`, used when the server will not tell."""
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def _lua(name: str) -> str:
    """`redis_<name>.lua` beside this module (its arguments and answer: its top comment)."""
    return (resources.files(__package__) / f"redis_{name}.lua").read_text(encoding="utf-8")


_SCRIPTS = {
    **{name: (name,) for name in ("push", "reserve", "stat", "peek", "failed", "destroy")},
    **{name: ("lease_check", name) for name in ("extend", "ack", "release", "nack")},
    **{name: ("failed_selection", name) for name in ("retry_failed", "purge_failed")},
    "reclaim": ("reclaim",),
}
"""Each script's parts, after `redis_prelude.lua`."""


def _register(client: Redis) -> dict[str, AsyncScript]:
    """The driver's scripts by name (redis-py loads each again after a restart forgot it)."""
    prelude = _lua("prelude")
    return {
        name: client.register_script(prelude + "".join(map(_lua, parts)))
        for name, parts in _SCRIPTS.items()
    }


@dataclass(frozen=True, slots=True)
class _ServerClock:
    """Our monotonic clock on Redis's `TIME`, `offset_ms` early by half the round trip."""

    offset_ms: float
    measured_at: float

    def server_ms(self, instant: float) -> int:
        """The latest Redis time (unix ms) that surely comes before `instant` here."""
        return math.floor(instant * 1000 + self.offset_ms)


async def _measure_clock(client: Redis) -> _ServerClock:
    """The quicker of two `TIME` round trips (the first may include connecting)."""
    samples = []
    for _ in range(2):
        sent = time.monotonic()
        seconds, micros = await client.time()
        received = time.monotonic()
        error_ms = (received - sent) * 500
        offset_ms = seconds * 1000 + micros / 1000 - (sent + received) * 500 - error_ms
        samples.append((error_ms, _ServerClock(offset_ms, received)))
    return min(samples, key=lambda sample: sample[0])[1]


async def _storage(client: Redis) -> tuple[str, int]:
    """Why a write may not be on disk before Redis answers it ("" if it is), and the largest
    value the server takes (`proto-max-bulk-len`)."""
    try:
        settings = await client.config_get("append*")
        settings |= await client.config_get("proto-max-bulk-len")
    except ResponseError as error:
        why = f"CONFIG GET was refused ({error}), so appendonly cannot be checked"
        return why, _DEFAULT_MAX_BULK
    appendonly, appendfsync = settings.get("appendonly"), settings.get("appendfsync")
    bulk = str(settings.get("proto-max-bulk-len"))
    why = f"the server runs with appendonly {appendonly} and appendfsync {appendfsync}; jobs"
    why += " are durable only with appendonly yes and appendfsync always"
    durable = appendonly == "yes" and appendfsync == "always"
    return "" if durable else why, int(bulk) if bulk.isdigit() else _DEFAULT_MAX_BULK


def _chosen(ids: Sequence[str] | None) -> list[str]:
    """A failed-list script's selection: every failed job, or those in `ids`."""
    return ["all"] if ids is None else ["ids", *ids]


class RedisDriver(_common.WaitingReserve, Driver, LeaseKeeper[str]):
    """One pipeline's jobs in one Redis database (`config.addr`), keyed by `stream`."""

    idle_poll = 0.05
    """How often a waiting reserve asks Redis again: pushes from other nodes cannot wake it."""

    def __init__(self, name: str, settings: RedisPipelineConfig, data_dir: Path) -> None:
        self.name = name
        self.visibility_timeout = settings.visibility_timeout
        self.addr = mask_url(settings.config.addr)
        self._where = f"pipeline {name}: redis at {self.addr}"
        self._errors = functools.partial(
            _common.broker_errors, self._where, unreachable=_UNREACHABLE, failed=RedisError
        )
        self.capabilities = _common.store_capabilities(durable=False)
        """Provisional until `open()` has asked the server how it stores."""
        self._settings = settings.config
        self._data_dir = data_dir
        self._node = ""  # `_common.node_id`, read by `open()`
        base = f"{settings.config.key_prefix}:{{{settings.config.stream or name}}}:"
        self._job_prefix = base + "job:"  # then the keys every script gets (redis_prelude.lua):
        self._keys = [base + key for key in ("queue", "delayed", "leased", "failed", "seq")]
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._clock: _ServerClock | None = None
        self._changed = asyncio.Event()

    # --- connecting ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        self._node = self._node or await asyncio.to_thread(_common.node_id, self._data_dir)
        timeout = self._settings.timeout
        try:  # a client that fails instead of waiting: no retries, every call bounded
            client = Redis.from_url(
                self._settings.addr,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as error:
            raise DriverUnavailable(f"pipeline {self.name}: bad redis address: {error}") from None
        scripts = _register(client)
        try:
            with self._errors("connecting", unreachable=(RedisError, OSError)):
                clock = await _measure_clock(client)
                why_not, max_payload = await _storage(client)
                reclaimed = await scripts["reclaim"](
                    keys=self._keys,
                    args=[self._job_prefix, f"{self._node}/", _common.lease_prefix(self._node)],
                )
        except BaseException:
            await client.aclose()
            raise
        _common.log_reclaimed("redis", self.name, reclaimed)
        if why_not:
            log.warning(
                "redis pipeline is not durable", pipeline=self.name, addr=self.addr, reason=why_not
            )
        self.capabilities = _common.store_capabilities(durable=not why_not, max_payload=max_payload)
        self._client, self._scripts, self._clock = client, scripts, clock

    async def close(self) -> None:
        client, self._client, self._scripts = self._client, None, {}
        if client is not None:
            await client.aclose()

    async def _run(self, script: str, args: Sequence[str | int | bytes], doing: str) -> Any:
        if not self._scripts:
            raise _common.not_open(self.name, "redis")
        with self._errors(doing):
            return await self._scripts[script](keys=self._keys, args=[self._job_prefix, *args])

    # --- push ----------------------------------------------------------------------------

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        remaining = _common.time_left(self.name, deadline)
        client, clock = self._client, self._clock
        if client is None or clock is None:
            raise _common.not_open(self.name, "redis")
        try:
            async with asyncio.timeout(remaining + VERDICT_GRACE):
                if time.monotonic() - clock.measured_at > _CLOCK_RESYNC:
                    with self._errors("measuring its clock", unreachable=(RedisError, OSError)):
                        self._clock = clock = await _measure_clock(client)
                args: list[str | int | bytes] = [clock.server_ms(deadline)]  # rounded down
                for job in jobs:  # seven per job
                    args += (*_common.stored_fields(job), round(job.options.delay * 1000))
                stored = await self._run("push", args, "storing jobs")
        except TimeoutError:
            raise PushOutcomeUnknown(
                f"{self._where} did not answer the push "
                f"within {VERDICT_GRACE}s of its deadline; it may be stored"
            ) from None
        if stored < 0:
            raise PushTimeout(f"{self._where} got the push after its deadline and stored nothing")
        if stored:
            self._changed.set()

    # --- reserve and leases --------------------------------------------------------------

    async def _take(self, limit: int) -> tuple[list[Lease], float | None]:
        """One reserve script: the leases, and seconds until the next job is due (or None)."""
        visibility_ms = max(1, round(self.visibility_timeout * 1000))
        token_base = _common.lease_prefix(self._node) + uuid.uuid4().hex  # the script numbers each
        args: list[str | int] = [max(0, limit), visibility_ms, token_base]
        rows, next_due_ms = await self._run("reserve", args, "reserving jobs")
        leases: list[Lease] = []
        for *fields, attempt, token in rows:
            job = _common.stored_job(self.name, fields)
            leases.append(DriverLease(self, job, int(attempt), token.decode()))
        return leases, None if next_due_ms < 0 else next_due_ms / 1000

    async def _on_lease(self, action: str, lease: DriverLease[str], *args: str | int) -> None:
        """A lease's script: a no-op unless its token is still the job's current one."""
        job_id = lease.job.id
        changed = await self._run(action, [job_id, lease.handle, *args], f"{action} of {job_id}")
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
        return QueueStat(*await self._run("stat", [], "counting jobs"))

    async def _peek(self, limit: int) -> list[Job]:
        rows = await self._run("peek", [limit], "peeking at jobs")
        return [_common.stored_job(self.name, row) for row in rows]

    async def _failed(self, limit: int) -> list[FailedJob]:
        rows = await self._run("failed", [limit], "listing failed jobs")
        failed: list[FailedJob] = []
        for *fields, error, tries, at in rows:
            job = _common.stored_job(self.name, fields)
            failed.append(
                FailedJob(job, (error or b"").decode(), int(tries or 0), int(at or 0) / 1000)
            )
        return failed

    async def _retry_failed(self, ids: Sequence[str] | None) -> int:
        count = int(await self._run("retry_failed", _chosen(ids), "retrying failed jobs"))
        if count:
            self._changed.set()
        return count

    async def _purge_failed(self, ids: Sequence[str] | None) -> list[str]:
        removed = await self._run("purge_failed", _chosen(ids), "purging failed jobs")
        return [job_id.decode() for job_id in removed]

    async def destroy(self) -> None:
        await self._run("destroy", [], "deleting the pipeline's jobs")
