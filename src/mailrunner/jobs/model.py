"""Jobs and the facts about them that drivers, the service and the API exchange."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Headers = dict[str, list[str]]

MAX_DELAY = 30 * 24 * 3600
"""A job may wait at most 30 days: a longer delay is a mistake in seconds versus
milliseconds, or a way to park jobs (and their attachment folders) for ever."""


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Where a job goes and how it is served.

    `priority`: a lower number is served first; 0 means "the pipeline's priority" and the
    service replaces it before the job reaches a driver. `delay`: seconds before the job is
    due. `auto_ack`: the consumer acks on receipt, before the worker runs it.
    """

    pipeline: str
    priority: int = 0
    delay: float = 0.0
    auto_ack: bool = False


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work; `id` is unique within its pipeline (a re-push of an id is a no-op)."""

    id: str
    name: str
    payload: bytes = field(repr=False)
    options: JobOptions
    headers: Headers = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a driver's storage honours; the contract suite tests exactly what is declared.

    `max_payload` is the largest payload in bytes the broker takes (None: no limit of its own).
    """

    durable: bool
    idempotent_push: bool
    atomic_batch: bool
    priority: bool
    delay: bool
    peek: bool
    max_payload: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class QueueStat:
    """Counts from the driver: queued = due and not leased; reserved = leased."""

    queued: int
    delayed: int
    reserved: int
    failed: int


@dataclass(frozen=True, slots=True)
class FailedJob:
    """A job that used up its attempts or was nacked without requeue."""

    job: Job
    error: str
    attempts: int
    failed_at: float


@dataclass(frozen=True, slots=True)
class PipelineStat:
    """The one stat object the service, the API and `jobs stat --json` all return."""

    pipeline: str
    driver: str
    priority: int
    durable: bool
    paused: bool
    consuming: bool
    queued: int
    delayed: int
    reserved: int
    failed: int
    capabilities: Capabilities

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["capabilities"] = self.capabilities.to_dict()
        return data


@dataclass(frozen=True, slots=True)
class PushResult:
    """Per-job outcome of a non-atomic batch push; `error` is None when the job is stored."""

    id: str
    error: str | None = None
