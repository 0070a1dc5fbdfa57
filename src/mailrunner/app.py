"""Builds every component from the configuration, starts them in order, stops them in reverse.

The only module that installs signal handlers; nothing imports it but the CLI and tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
from functools import partial
from pathlib import Path

import structlog

from mailrunner.allocator import release_large_buffers
from mailrunner.api.client import ApiClient
from mailrunner.api.http import ApiServer
from mailrunner.api.trust import DeclarePolicy
from mailrunner.config import Config, PoolConfig
from mailrunner.errors import ConfigError
from mailrunner.files import create_directories
from mailrunner.jobs.consumer import Consumers
from mailrunner.jobs.service import JobHooks, JobsService
from mailrunner.metrics import DroppedLate, Metrics, UnwithdrawnPublishes
from mailrunner.mime.attachments import (
    AttachmentStorage,
    CleanupTask,
    MemoryStorage,
    TempfileStorage,
)
from mailrunner.mime.build import EventBuilder
from mailrunner.mime.parse import ParseOptions
from mailrunner.mime.parse_threads import ParseThreads
from mailrunner.pool.pool import WorkerPool
from mailrunner.smtp.delivery import Delivery, JobsDelivery, JobsRpc, PoolDelivery
from mailrunner.smtp.handler import HandlerSettings, SmtpHandler
from mailrunner.smtp.server import SmtpServer
from mailrunner.wire.protocol import JOBS_MODE, SMTP_MODE

log = structlog.get_logger("mailrunner.app")

PARSE_THREADS = 2
EVENT_GROWTH = 2.0
"""An event's JSON is at most about twice its message: bodies as text plus base64 attachments."""
RAW_GROWTH = 1.34
"""`smtp.include_raw` adds the whole message again, base64-encoded."""
MIN_MESSAGE_SIZE = 64 * 1024
_BASE64_GROWTH = 4 / 3
"""A remote push carries the event as payload_base64 (a JSON string of it could double)."""


class App:
    """One mailrunner process: the SMTP server and the path its events take.

    Built top to bottom, each part from the ones above it; nothing is wired in afterwards.
    `delivery` replaces the configured SMTP delivery (tests record events with it).
    """

    def __init__(self, config: Config, source: str, delivery: Delivery | None = None) -> None:
        self.config = config
        self.source = source
        smtp = config.smtp
        self.metrics = Metrics()
        self._parse_executor = ParseThreads(PARSE_THREADS)
        storage = _attachment_storage(config)
        self._cleanup = _age_cleanup(config, storage)
        hooks = _job_hooks(config, storage)
        self.jobs_pool = _pool(config, config.jobs.pool, JOBS_MODE) if config.jobs.consume else None
        self.consumers = (
            Consumers(self.jobs_pool, config.jobs.shutdown_timeout, hooks.job_removed)
            if self.jobs_pool is not None
            else None
        )
        self.jobs = JobsService(config, self.metrics, consumers=self.consumers, hooks=hooks)
        self.metrics.registry.register(UnwithdrawnPublishes(self.jobs.unwithdrawn_publishes))
        self.metrics.registry.register(DroppedLate(self.jobs.dropped_late))
        rpc = smtp.jobs.rpc if delivery is None and smtp.use_jobs else None
        self.remote_jobs = ApiClient(rpc.url, rpc.token) if rpc is not None else None
        self.smtp_pool = (
            _pool(config, smtp.pool, SMTP_MODE) if delivery is None and not smtp.use_jobs else None
        )
        self.delivery = delivery or _delivery(
            config, self.remote_jobs or self.jobs, self.smtp_pool, storage
        )
        handler = SmtpHandler(
            HandlerSettings(max_recipients=smtp.max_recipients),
            _event_builder(config, storage, self._parse_executor),
            self.delivery,
            self.metrics,
        )
        self.smtp = SmtpServer(smtp, handler, self.metrics)
        pools = {pool.name: pool for pool in (self.smtp_pool, self.jobs_pool) if pool is not None}
        self.api = ApiServer(
            config.rpc,
            jobs=self.jobs,
            smtp=self.smtp,
            pools=pools,
            metrics=self.metrics,
            consumed=list(config.jobs.consume),
            max_request=_request_limit(config.smtp.max_message_size),
            declare_policy=DeclarePolicy(config),
        )

    async def start(self) -> None:
        log.info("configuration loaded", source=self.source)
        # before any driver or storage makes it under the umask: jobs hold mail and credentials
        await asyncio.to_thread(create_directories, self.config.data_dir)
        if self._cleanup is not None:
            self._cleanup.start()
        try:
            await self.jobs.start()
            for pool in (self.smtp_pool, self.jobs_pool):
                if pool is not None:
                    await pool.start()
            self._start_consumers()
            self._fit_message_size()
            await self.smtp.start()
            await self.api.start()
        except BaseException:
            await self.smtp.stop(0)
            await self.api.stop()
            await self._stop_components()
            raise

    def _fit_message_size(self) -> None:
        """Never accept a message whose event the pipeline cannot carry (it would get 451
        forever): lower the advertised SIZE to what the driver's max_payload allows."""
        smtp = self.config.smtp
        if not smtp.use_jobs or smtp.jobs.rpc is not None:
            return
        max_payload = self.jobs.pipeline(smtp.jobs.pipeline).driver.capabilities.max_payload
        if max_payload is None:
            return
        growth = EVENT_GROWTH + (RAW_GROWTH if smtp.include_raw else 0.0)
        fits = int(max_payload / growth)
        current = self.smtp.max_message_size
        if current and current <= fits:
            return
        if fits < MIN_MESSAGE_SIZE:
            raise ConfigError(
                [
                    f"smtp.jobs.pipeline: pipeline {smtp.jobs.pipeline!r} carries at most"
                    f" {max_payload} bytes per job, too small for email events"
                ],
                self.source,
            )
        log.warning(
            "SIZE lowered to what the pipeline can carry",
            pipeline=smtp.jobs.pipeline,
            max_payload=max_payload,
            configured=current or "unlimited",
            advertised=fits,
        )
        self.smtp.limit_message_size(fits)

    def _start_consumers(self) -> None:
        if self.consumers is None:
            if self.jobs.list_pipelines():
                log.info(
                    "no consumer configured: jobs stay stored",
                    hint="see them with: mailrunner jobs peek " + self.jobs.list_pipelines()[0],
                )
            return
        for name in self.config.jobs.consume:
            self.consumers.consume(self.jobs.pipeline(name))

    async def stop(self) -> None:
        await self.smtp.stop(self.config.smtp.shutdown_timeout)
        await self.api.stop()
        await self._stop_components()
        log.info("stopped")

    async def _stop_components(self) -> None:
        if self.remote_jobs is not None:
            await self.remote_jobs.close()
        if self.consumers is not None:
            await self.consumers.stop()
        for pool in (self.jobs_pool, self.smtp_pool):
            if pool is not None:
                await pool.stop()
        await self.jobs.stop()
        if self._cleanup is not None:
            await self._cleanup.stop()
        await self._parse_executor.stop(self.config.smtp.shutdown_timeout)

    async def serve_until_signalled(self, pidfile: Path | None = None) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully. Owns the process, so it also
        tunes the allocator for large messages (`allocator`)."""
        release_large_buffers()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        if pidfile is not None:
            await asyncio.to_thread(pidfile.write_text, f"{os.getpid()}\n")
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.stop()
            if pidfile is not None:
                await asyncio.to_thread(pidfile.unlink, missing_ok=True)


def _pool(config: Config, pool: PoolConfig, mode: str) -> WorkerPool:
    """A worker pool running the pool's own command, else server.command (the config
    ensures one is set)."""
    command = pool.command or config.server.command
    assert command, "Config._pool_commands lets no pool without a command through"
    return WorkerPool(mode, pool, command, config.server.env)


def _attachment_storage(config: Config) -> AttachmentStorage:
    storage = config.smtp.attachment_storage
    if storage.mode == "memory":
        return MemoryStorage()
    smtp = config.smtp
    pipeline = smtp.jobs.pipeline if smtp.use_jobs else None
    return TempfileStorage(config.attachments_dir, pipeline, file_mode=storage.file_mode)


def _age_cleanup(config: Config, storage: AttachmentStorage) -> CleanupTask | None:
    """Without Jobs nothing tells when a worker is done with attachment files, so they go
    after `cleanup_after`; with Jobs they live until their job is gone (`_job_hooks`)."""
    if config.smtp.use_jobs or not isinstance(storage, TempfileStorage):
        return None
    return CleanupTask(storage, config.smtp.attachment_storage.cleanup_after)


def _job_hooks(config: Config, storage: AttachmentStorage) -> JobHooks:
    if not config.smtp.use_jobs or not isinstance(storage, TempfileStorage):
        return JobHooks()
    return JobHooks(
        job_removed=partial(_remove_email_attachments, storage),
        pipeline_purged=partial(_remove_pipeline_attachments, storage),
    )


def _delivery(
    config: Config, jobs: JobsRpc, smtp_pool: WorkerPool | None, storage: AttachmentStorage
) -> Delivery:
    """Where accepted email goes: a job pushed (here or to another node), else the pool."""
    if smtp_pool is not None:
        return PoolDelivery(smtp_pool)
    tempfiles = storage if isinstance(storage, TempfileStorage) else None
    return JobsDelivery(jobs, config.smtp.jobs, tempfiles)


def _event_builder(
    config: Config, storage: AttachmentStorage, executor: ParseThreads
) -> EventBuilder:
    smtp = config.smtp
    return EventBuilder(
        hostname=smtp.hostname,
        options=ParseOptions(
            max_depth=smtp.parse.max_depth,
            max_parts=smtp.parse.max_parts,
            max_header_bytes=smtp.parse.max_header_bytes,
        ),
        storage=storage,
        include_raw=smtp.include_raw,
        offload_bytes=smtp.parse.offload_bytes,
        executor=executor,
    )


async def _remove_email_attachments(storage: TempfileStorage, job_id: str) -> None:
    """With Jobs, attachment files live until their email's job is acked or purged.

    Called for every removed job whoever pushed it; the id alone decides, through the
    storage's marker rule, so a job named `smtp.email` with a hostile id deletes nothing.
    """
    await asyncio.to_thread(storage.remove, job_id)


async def _remove_pipeline_attachments(storage: TempfileStorage, pipeline: str) -> None:
    removed = await asyncio.to_thread(storage.remove_pipeline, pipeline)
    if removed:
        log.info("attachments removed", pipeline=pipeline, folders=removed)


UNSIZED_REQUEST_LIMIT = 64 * 1024 * 1024
"""The API's request limit when SIZE is unlimited (`max_message_size: 0`): aiohttp holds a
whole body in memory, so a request must not be able to ask for gigabytes."""


def _request_limit(max_message_size: int) -> int:
    """API requests carry whole events, so the limit follows SIZE: room for an ingress
    that sets include_raw (which this node cannot know), base64 and the job's other fields.
    Only a body JSON-escaping inflates beyond twice its size (control characters become
    six-byte escapes) can still exceed it: the ingress then answers 451 and logs the 413."""
    if max_message_size == 0:
        return UNSIZED_REQUEST_LIMIT
    event = max_message_size * (EVENT_GROWTH + RAW_GROWTH)
    return max(1024 * 1024, int(event * _BASE64_GROWTH) + 64 * 1024)
