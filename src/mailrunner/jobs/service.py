"""The Jobs RPC interface: pipelines and every call made on them, in process.

The SMTP side pushes through this, the management API exposes it 1:1, and consumers read
pause state from it. Drivers only store; validation, the pipeline's default priority and
pause/resume live here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import structlog

from mailrunner.config import Config, PipelineConfig, SqlitePipelineConfig
from mailrunner.errors import (
    DriverError,
    InvalidJob,
    InvalidPipeline,
    PipelineConflict,
    PipelineNotFound,
)
from mailrunner.jobs.deadline import DEFAULT_PUSH_TIMEOUT
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.drivers import build_driver
from mailrunner.jobs.model import MAX_DELAY, FailedJob, Job, PipelineStat, PushResult
from mailrunner.metrics import Metrics

log = structlog.get_logger("mailrunner.jobs")


@dataclass(eq=False)
class Pipeline:
    """A named queue: its settings, its open driver, and whether it is paused or consumed."""

    name: str
    settings: PipelineConfig
    driver: Driver
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    consuming: bool = False

    @property
    def paused(self) -> bool:
        return not self.resumed.is_set()


class ConsumerControl(Protocol):
    """What the service asks of the consumers when pipelines come and go at run time."""

    def consume(self, pipeline: Pipeline) -> None: ...

    async def release(self, pipeline: Pipeline) -> None: ...


class InboxPipeline(PipelineConflict):
    """The inbox's pipeline was asked to go: it cannot while the inbox runs (409)."""


async def _nothing_to_free(*_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class JobHooks:
    """What frees the things jobs point at (attachment files) once they are gone for good.

    `job_removed` gets a job's id and pipeline when the job was acked or purged; only those:
    they are all a purge knows without reading payloads, and a job's name or payload came
    from whoever pushed it, so nothing else may decide. `pipeline_purged` gets a pipeline's
    name once it was destroyed together with its jobs, for the same reason.
    """

    job_removed: Callable[[str, str], Awaitable[None]] = _nothing_to_free
    pipeline_purged: Callable[[str], Awaitable[None]] = _nothing_to_free


class JobsService:
    """Push, PushBatch, Pause, Resume, List, Declare, Destroy, Stat, Peek and the failed list.

    `consumers` is None on a server without a jobs worker pool: it stores jobs, never runs them.
    """

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        *,
        consumers: ConsumerControl | None = None,
        hooks: JobHooks = JobHooks(),
    ) -> None:
        self._metrics = metrics or Metrics()
        self._data_dir = config.data_dir
        self._configured = config.pipelines
        self._inbox = config.inbox.pipeline if config.runs_inbox else None
        self._inbox_holds_files = config.smtp.attachment_storage.mode == "auto"
        """With claim-check the inbox's jobs hold their email's folder too (its raw_path)."""
        self._pipelines: dict[str, Pipeline] = {}
        self._consumers = consumers
        self._hooks = hooks

    async def start(self) -> None:
        """Open the pipelines of the configuration; a driver that cannot open stops start-up."""
        for name, settings in self._configured.items():
            await self._attach(name, settings)

    async def stop(self) -> None:
        for pipeline in list(self._pipelines.values()):
            await pipeline.driver.close()
        self._pipelines.clear()

    async def _attach(self, name: str, settings: PipelineConfig) -> Pipeline:
        driver = build_driver(name, settings, self._data_dir)
        await driver.open()
        pipeline = Pipeline(name, settings, driver)
        pipeline.resumed.set()
        self._pipelines[name] = pipeline
        log.info("pipeline ready", pipeline=name, driver=settings.driver)
        return pipeline

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self._pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self._pipelines)) or "none"
            raise PipelineNotFound(f"unknown pipeline {name!r} (declared: {known})") from None

    # --- push --------------------------------------------------------------------------------

    def _prepared(self, job: Job, pipeline: Pipeline) -> Job:
        """Check a job and give it the pipeline's priority when it has none."""
        problems = []
        if not job.id:
            problems.append("id must not be empty")
        if not job.name:
            problems.append("job name must not be empty")
        if job.options.priority < 0:
            problems.append("priority must be >= 0")
        if not 0 <= job.options.delay <= MAX_DELAY:
            problems.append(f"delay must be from 0 to {MAX_DELAY} seconds (30 days)")
        limit = pipeline.driver.capabilities.max_payload
        if limit is not None and len(job.payload) > limit:
            problems.append(f"payload of {len(job.payload)} bytes is over the driver's {limit}")
        if problems:
            raise InvalidJob(f"job {job.id!r}: {'; '.join(problems)}")
        if job.options.priority:
            return job
        return replace(job, options=replace(job.options, priority=pipeline.settings.priority))

    async def push(self, job: Job, *, push_timeout: float = DEFAULT_PUSH_TIMEOUT) -> None:
        """Return once the job is stored (durably where the driver is); raise otherwise."""
        pipeline = self.pipeline(job.options.pipeline)
        prepared = self._prepared(job, pipeline)
        pushed = self._metrics.jobs_push
        try:
            await pipeline.driver.push([prepared], deadline=time.monotonic() + push_timeout)
        except BaseException:
            pushed.labels(pipeline.name, "error").inc()
            raise
        pushed.labels(pipeline.name, "ok").inc()

    async def push_batch(
        self, jobs: Sequence[Job], *, push_timeout: float = DEFAULT_PUSH_TIMEOUT
    ) -> list[PushResult]:
        """All or nothing per pipeline where the driver batches atomically, else per job."""
        deadline = time.monotonic() + push_timeout
        by_pipeline: dict[str, list[Job]] = {}
        for job in jobs:
            pipeline = self.pipeline(job.options.pipeline)
            by_pipeline.setdefault(pipeline.name, []).append(self._prepared(job, pipeline))
        results: list[PushResult] = []
        for name, group in by_pipeline.items():
            driver = self._pipelines[name].driver
            if driver.capabilities.atomic_batch:
                await driver.push(group, deadline=deadline)
                results += [PushResult(job.id) for job in group]
            else:
                results += await asyncio.gather(*(_push_one(driver, j, deadline) for j in group))
        return results

    # --- pipelines ---------------------------------------------------------------------------

    def unwithdrawn_publishes(self) -> dict[str, int]:
        """Per pipeline, pushes that timed out but may be stored (see Driver)."""
        return {name: p.driver.unwithdrawn_publishes for name, p in self._pipelines.items()}

    def dropped_late(self) -> dict[str, int]:
        """Per pipeline, jobs discarded because they were stored after their push gave up."""
        return {name: p.driver.dropped_late for name, p in self._pipelines.items()}

    def list_pipelines(self) -> list[str]:
        return sorted(self._pipelines)

    async def pause(self, name: str) -> None:
        self.pipeline(name).resumed.clear()
        log.info("pipeline paused", pipeline=name)

    async def resume(self, name: str) -> None:
        self.pipeline(name).resumed.set()
        log.info("pipeline resumed", pipeline=name)

    async def declare(self, name: str, settings: PipelineConfig, *, consume: bool = False) -> bool:
        """Add a pipeline at run time (not persisted); True if it was new.

        The same settings again succeed; other settings for an existing name conflict.
        """
        if consume and self._consumers is None:
            raise InvalidPipeline(
                f"pipeline {name!r}: this server has no jobs worker pool to consume it with"
                " (start it with jobs.consume and a command, or declare without consume)"
            )
        existing = self._pipelines.get(name)
        if existing is not None:
            if existing.settings != settings:
                raise PipelineConflict(f"pipeline {name!r} exists with other settings")
            new = False
            pipeline = existing
        else:
            self._check_runtime_path(name, settings)
            pipeline = await self._attach(name, settings)
            new = True
        if consume and not pipeline.consuming and self._consumers is not None:
            self._consumers.consume(pipeline)
        return new

    def _check_runtime_path(self, name: str, settings: PipelineConfig) -> None:
        if not isinstance(settings, SqlitePipelineConfig) or settings.config.path is None:
            return
        data_dir = self._data_dir.resolve()
        path = Path(settings.config.path).resolve()
        if not path.is_relative_to(data_dir):
            raise InvalidPipeline(
                f"pipeline {name!r}: a sqlite path declared at run time must lie under"
                f" data_dir ({data_dir}), not {path}"
            )

    async def destroy(self, name: str, *, purge: bool = False) -> None:
        """Detach a pipeline; its stored jobs stay unless `purge`. Not the inbox's: every
        accepted email is pushed to it."""
        pipeline = self.pipeline(name)
        if name == self._inbox:
            raise InboxPipeline(f"pipeline {name!r} is the inbox's: it cannot be destroyed")
        if pipeline.consuming and self._consumers is not None:
            await self._consumers.release(pipeline)
        del self._pipelines[name]
        try:
            if purge:
                await pipeline.driver.destroy()
        finally:
            await pipeline.driver.close()
        log.info("pipeline destroyed", pipeline=name, purged=purge)
        if purge:
            await self._hooks.pipeline_purged(name)

    # --- inspection --------------------------------------------------------------------------

    async def stat(self, name: str) -> PipelineStat:
        pipeline = self.pipeline(name)
        counts = await pipeline.driver.stat()
        capabilities = pipeline.driver.capabilities
        return PipelineStat(
            pipeline=name,
            driver=pipeline.settings.driver,
            priority=pipeline.settings.priority,
            durable=capabilities.durable,
            paused=pipeline.paused,
            consuming=pipeline.consuming,
            capabilities=capabilities,
            **asdict(counts),
        )

    async def peek(self, name: str, limit: int = 10) -> list[Job]:
        pipeline = self.pipeline(name)
        if not pipeline.driver.capabilities.peek:
            raise InvalidPipeline(
                f"pipeline {name!r}: the {pipeline.settings.driver} driver cannot peek"
            )
        return await pipeline.driver.peek(limit)

    async def list_failed(self, name: str, limit: int = 100) -> list[FailedJob]:
        return await self.pipeline(name).driver.failed(limit)

    async def retry_failed(self, name: str, ids: Sequence[str] | None = None) -> int:
        return await self.pipeline(name).driver.retry_failed(ids)

    async def purge_failed(self, name: str, ids: Sequence[str] | None = None) -> list[str]:
        """Delete failed jobs (all, or those in `ids`); the ids of those that went. The
        inbox's jobs hold on to attachment files only with claim-check (`auto`): otherwise
        it keeps its own copy."""
        removed = await self.pipeline(name).driver.purge_failed(ids)
        if name != self._inbox or self._inbox_holds_files:
            for job_id in removed:
                await self._hooks.job_removed(job_id, name)
        return removed


async def _push_one(driver: Driver, job: Job, deadline: float) -> PushResult:
    try:
        await driver.push([job], deadline=deadline)
    except DriverError as error:
        return PushResult(job.id, str(error))
    return PushResult(job.id)
