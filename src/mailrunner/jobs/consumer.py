"""Consumers: lease jobs from consumed pipelines and run them on the jobs worker pool.

Per pipeline, at most `prefetch` jobs are leased at a time (running or waiting for a free
worker), and every lease is extended every third of the visibility timeout until the job is
answered, so a long job is never handed to a second worker. The attempt limit and auto_ack
are applied here, not in drivers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import structlog

from mailrunner.errors import DriverError, NoFreeWorker, PoolError
from mailrunner.jobs.driver import Lease
from mailrunner.jobs.service import Pipeline
from mailrunner.pool.pool import WorkerPool
from mailrunner.tasks import cancel_and_wait
from mailrunner.wire.jobs import Answer, JobContext, decode_answer, encode_context

log = structlog.get_logger("mailrunner.jobs")

RESERVE_WAIT = 1.0
DRIVER_RETRY_DELAY = 1.0
GIVE_BACK_TIME = 1.0
"""The end of `shutdown_timeout` kept for giving back the jobs still running (at most half)."""


class PipelineConsumer:
    """Keeps up to `prefetch` jobs of one pipeline in flight on the jobs pool.

    `job_removed` is told the id (and pipeline) of every job gone for good (acked, or
    auto-acked and run), so what the job pointed at can be freed (see `JobHooks`).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        pool: WorkerPool,
        shutdown_timeout: float,
        job_removed: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.pipeline = pipeline
        self._job_removed = job_removed
        self._pool = pool
        self._shutdown_timeout = shutdown_timeout
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._give_back_by: float | None = None  # set by stop()

    def start(self) -> None:
        self.pipeline.consuming = True
        self._loop_task = asyncio.create_task(
            self._reserve_loop(), name=f"consume-{self.pipeline.name}"
        )

    async def stop(self, deadline: float | None = None) -> None:
        """Stop leasing; let running jobs finish, give back the rest, and have the driver's
        close done, all by `deadline` (`time.monotonic()`; default: shutdown_timeout from
        now), so a silent broker cannot hold up a stopping server."""
        if deadline is None:
            deadline = time.monotonic() + self._shutdown_timeout
        self.pipeline.consuming = False
        self._stopping = True
        self._give_back_by = self.pipeline.driver.close_by = deadline
        if self._loop_task is not None:
            await cancel_and_wait(self._loop_task, f"consumer of {self.pipeline.name}")
        if self._in_flight:
            running = deadline - min(GIVE_BACK_TIME, self._shutdown_timeout / 2) - time.monotonic()
            _, unfinished = await asyncio.wait(set(self._in_flight), timeout=max(0.0, running))
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _reserve_loop(self) -> None:
        """Runs until cancelled; the flag also ends it should a library swallow the cancel
        (Python 3.11's `asyncio.wait_for` can, when what it waits for finishes just then)."""
        while not self._stopping:
            await self.pipeline.resumed.wait()
            free = self.pipeline.settings.prefetch - len(self._in_flight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                leases = await self.pipeline.driver.reserve(free, RESERVE_WAIT)
            except DriverError as error:
                log.error("cannot reserve jobs", pipeline=self.pipeline.name, error=str(error))
                await asyncio.sleep(DRIVER_RETRY_DELAY)
                continue
            if self.pipeline.paused:
                await asyncio.gather(*(lease.release() for lease in leases))
                continue
            for lease in leases:
                self._track(self._handle(lease), f"job-{lease.job.id}")

    def _track(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slot_freed.set()

    async def _handle(self, lease: Lease) -> None:
        extender = asyncio.create_task(self._keep_extended(lease))
        try:
            await self._run(lease)
        except asyncio.CancelledError:
            reason = "consumer stopped before the job finished"
            await asyncio.shield(_give_back(lease, reason, self._give_back_by))
            raise
        except DriverError as error:
            log.error(
                "cannot settle job", pipeline=self.pipeline.name, id=lease.job.id, error=str(error)
            )
        except Exception as error:
            log.exception("job handling failed", pipeline=self.pipeline.name, id=lease.job.id)
            reason = f"internal error while handling the job: {error!r}"
            await _give_back(lease, reason)
        finally:
            extender.cancel()

    async def _keep_extended(self, lease: Lease) -> None:
        interval = self.pipeline.settings.visibility_timeout / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await lease.extend()
            except DriverError as error:
                log.warning("cannot extend lease", id=lease.job.id, error=str(error))

    async def _run(self, lease: Lease) -> None:
        job = lease.job
        retries = self.pipeline.settings.retries
        if lease.attempt > retries:
            await self._fail(
                lease, f"attempts exhausted: delivered {lease.attempt} times, retries is {retries}"
            )
            return
        if job.options.auto_ack:
            await lease.ack()
        try:
            _, body = await self._pool.exec(self._context(lease), job.payload)
        except NoFreeWorker as error:
            if job.options.auto_ack:
                await self._settle(lease, Answer(ack=False, message=str(error)))
                return
            log.warning("no free worker: job given back", pipeline=self.pipeline.name, id=job.id)
            await lease.release()  # no worker saw it: not an attempt
            return
        except PoolError as error:
            await self._settle(lease, Answer(ack=False, message=str(error)))
            return
        await self._settle(lease, decode_answer(body))

    def _context(self, lease: Lease) -> bytes:
        job = lease.job
        context = JobContext(
            id=job.id,
            job=job.name,
            pipeline=self.pipeline.name,
            driver=self.pipeline.settings.driver,
            headers=job.headers,
            attempts=lease.attempt,
        )
        return encode_context(context)

    async def _settle(self, lease: Lease, answer: Answer) -> None:
        job = lease.job
        if job.options.auto_ack:
            await self._job_removed(job.id, self.pipeline.name)
            if not answer.ack:
                log.warning(
                    "auto-acked job failed",
                    pipeline=self.pipeline.name,
                    id=job.id,
                    error=answer.message,
                )
            return
        if answer.ack:
            await lease.ack()
            await self._job_removed(job.id, self.pipeline.name)
            log.debug("job done", pipeline=self.pipeline.name, id=job.id, attempt=lease.attempt)
        elif answer.requeue and lease.attempt < self.pipeline.settings.retries:
            await lease.nack(
                requeue=True, delay=answer.delay, error=answer.message, headers=answer.headers
            )
            log.info(
                "job requeued",
                pipeline=self.pipeline.name,
                id=job.id,
                attempt=lease.attempt,
                reason=answer.message,
            )
        else:
            await self._fail(lease, answer.message)

    async def _fail(self, lease: Lease, message: str) -> None:
        await lease.nack(requeue=False, error=message)
        log.warning(
            "job failed",
            pipeline=self.pipeline.name,
            id=lease.job.id,
            attempts=lease.attempt,
            error=message,
        )


async def _give_back(lease: Lease, reason: str, deadline: float | None = None) -> None:
    """Requeue a job not answered; one not given back by `deadline` comes back on its lease's
    expiry (or the broker's redelivery)."""
    try:
        async with asyncio.timeout(None if deadline is None else deadline - time.monotonic()):
            await lease.nack(requeue=True, error=reason)
    except (DriverError, TimeoutError) as error:
        log.warning("job not given back", id=lease.job.id, reason=reason, error=repr(error))


class Consumers:
    """Every pipeline consumer of this process; the service asks it to add or drop one
    (it is made first and handed to `JobsService`, which it never needs to know)."""

    def __init__(
        self,
        pool: WorkerPool,
        shutdown_timeout: float,
        job_removed: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._shutdown_timeout = shutdown_timeout
        self._consumer_of = partial(
            PipelineConsumer, pool=pool, shutdown_timeout=shutdown_timeout, job_removed=job_removed
        )
        self._consumers: dict[str, PipelineConsumer] = {}

    def consume(self, pipeline: Pipeline) -> None:
        consumer = self._consumer_of(pipeline)
        self._consumers[pipeline.name] = consumer
        consumer.start()
        log.info("consuming", pipeline=pipeline.name)

    async def release(self, pipeline: Pipeline) -> None:
        consumer = self._consumers.pop(pipeline.name, None)
        if consumer is not None:
            await consumer.stop()

    async def stop(self) -> None:
        deadline = time.monotonic() + self._shutdown_timeout
        await asyncio.gather(*(c.stop(deadline) for c in self._consumers.values()))
        self._consumers.clear()
