"""What drivers do the same way, written once: ways of meeting the contract (`jobs/driver.py`)
that a driver may use or not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import structlog

from mailrunner.errors import DriverError, DriverUnavailable, PushTimeout
from mailrunner.files import create_directories, write_new_file
from mailrunner.jobs.driver import Lease
from mailrunner.jobs.model import Capabilities, Job, JobOptions

log = structlog.get_logger("mailrunner.jobs")


def store_capabilities(*, durable: bool, max_payload: int | None = None) -> Capabilities:
    """A driver that owns its storage (memory, sqlite, redis) has every feature; whether it
    outlives the process and its largest payload vary."""
    return Capabilities(durable, True, True, True, True, True, max_payload)


def broker_capabilities(
    *, priority: bool = False, delay: bool = False, max_payload: int | None
) -> Capabilities:
    """A broker (amqp, nats) is durable, but a publish cannot be checked against earlier ones,
    taken back as a batch, or looked at unleased; ordering features are the broker's."""
    return Capabilities(True, False, False, priority, delay, False, max_payload)


Raised = type[BaseException] | tuple[type[BaseException], ...]
"""The exception classes of a broker's client library that one `broker_errors` turns into ours."""


def not_open(pipeline: str, driver: str) -> DriverUnavailable:
    """What a call on a driver that is not open (or closed) raises."""
    return DriverUnavailable(f"pipeline {pipeline}: the {driver} driver is not open")


@contextlib.contextmanager
def broker_errors(
    where: str, doing: str, *, unreachable: Raised, failed: Raised = ()
) -> Iterator[None]:
    """A client library's exceptions as ours, with context (`where`: "pipeline q: redis at
    host:6379", `doing`: the call): `unreachable` (not asked, or no answer in time) as
    DriverUnavailable, `failed` (an error answer) as DriverError. Ours pass unchanged."""
    try:
        yield
    except DriverError:
        raise
    except unreachable as error:
        raise DriverUnavailable(f"{where} unreachable while {doing}: {error!r}") from error
    except failed as error:
        raise DriverError(f"{where} failed while {doing}: {error!r}") from error


def time_left(pipeline: str, deadline: float, doing: str = "storing") -> float:
    """Seconds until a push's `deadline`; PushTimeout when none are left, so a job whose
    storing has not begun by its deadline is never stored (the SMTP side answered 451)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PushTimeout(f"pipeline {pipeline}: push deadline passed before {doing}")
    return remaining


def selection(ids: Sequence[str] | None) -> Callable[[str], bool]:
    """Whether a failed job's id is chosen by `ids` (`None`: every one)."""
    if ids is None:
        return lambda _job_id: True
    return frozenset(ids).__contains__


class WaitingReserve(ABC):
    """`Driver.reserve` for a driver that leases in one call (`_take`): take until something is
    leased or `wait` seconds have passed, sleeping in between until `_changed` is set (a push
    or a give-back here), the next job is due, or `idle_poll` seconds pass (what other nodes
    push cannot set `_changed`)."""

    idle_poll: ClassVar[float]
    _changed: asyncio.Event

    @abstractmethod
    async def _take(self, limit: int) -> tuple[list[Lease], float | None]:
        """One attempt at leasing: the leases, and seconds until the next job is due (None:
        none is waiting, or the driver cannot tell)."""

    async def reserve(self, limit: int, wait: float) -> list[Lease]:
        give_up = time.monotonic() + wait
        while True:
            self._changed.clear()
            leases, next_due = await self._take(limit)
            remaining = give_up - time.monotonic()
            if leases or remaining <= 0:
                return leases
            pause = min(remaining, self.idle_poll)
            if next_due is not None:
                pause = min(pause, next_due + 0.001)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._changed.wait()


def stored_fields(job: Job) -> tuple[str, str, bytes, str, int, int]:
    """A job as a store keeps it (sqlite columns, redis hash fields): id, name, payload,
    headers as JSON, priority, auto_ack as 0 or 1."""
    headers = json.dumps(job.headers)
    return job.id, job.name, job.payload, headers, job.options.priority, int(job.options.auto_ack)


def stored_job(pipeline: str, fields: Sequence[Any]) -> Job:
    """`stored_fields` read back, typed as sqlite gives them or all bytes as redis does."""
    job_id, name, payload, headers, priority, auto_ack = fields
    options = JobOptions(pipeline, priority=int(priority), auto_ack=int(auto_ack) == 1)
    return Job(_text(job_id), _text(name), bytes(payload), options, json.loads(headers))


def _text(value: str | bytes) -> str:
    """A stored string: sqlite gives str, redis UTF-8 bytes."""
    return value if isinstance(value, str) else value.decode("utf-8")


NODE_ID_FILE = "node-id"


def node_id(data_dir: Path) -> str:
    """This node's name, in its lease tokens: the same for every process on `data_dir`, so two
    must not run at once (docs/jobs.md#redis). Blocking: call through `asyncio.to_thread`."""
    create_directories(data_dir)
    path = data_dir / NODE_ID_FILE
    with contextlib.suppress(FileExistsError):
        write_new_file(path, uuid.uuid4().hex.encode())
    return path.read_text(encoding="ascii").strip()


PROCESS = uuid.uuid4().hex[:12]
"""This process among the runs of one node."""


def lease_prefix(node: str) -> str:
    """How this process's lease tokens begin: `open()` gives back at once the leases whose
    token begins with `<node>/` but not with this (an earlier run's)."""
    return f"{node}/{PROCESS}:"


def log_reclaimed(driver: str, pipeline: str, jobs: int) -> None:
    if jobs:
        log.info(
            f"{driver} leases of this node's last run given back", pipeline=pipeline, jobs=jobs
        )
