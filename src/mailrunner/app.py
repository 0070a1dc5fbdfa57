"""Builds every component from the configuration, starts them in order, stops them in reverse.

The only module that installs signal handlers; nothing imports it but the CLI and tests.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import structlog

from mailrunner.allocator import keep_heap_slack, release_large_buffers, trim_heap
from mailrunner.api.client import ApiClient
from mailrunner.api.http import ApiServer
from mailrunner.api.trust import DeclarePolicy
from mailrunner.config import Config, PoolConfig
from mailrunner.errors import ConfigError
from mailrunner.files import create_directories
from mailrunner.inbox.consumer import InboxConsumer
from mailrunner.inbox.service import Inbox
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
from mailrunner.mime.parse_processes import ParseProcesses, child_count
from mailrunner.mime.parse_threads import ParseThreads
from mailrunner.pool.hooks import HookRunner
from mailrunner.pool.pool import WorkerPool
from mailrunner.smtp import replies
from mailrunner.smtp.authenticators import auth_checks
from mailrunner.smtp.delivery import (
    Delivery,
    JobsDelivery,
    JobsRpc,
    JsonOffload,
    PoolDelivery,
)
from mailrunner.smtp.faults import FaultBook
from mailrunner.smtp.handler import HandlerSettings, SmtpHandler
from mailrunner.smtp.hooks import SessionHooks
from mailrunner.smtp.server import SmtpServer
from mailrunner.smtp.spool import Spool
from mailrunner.wire.protocol import JOBS_MODE, SMTP_MODE

log = structlog.get_logger("mailrunner.app")

PARSE_THREADS = 2
GC_YOUNG_THRESHOLD = 10_000
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
        self._owns_process = False
        """Set by `serve_until_signalled`: process-wide tuning is this server's to do."""
        smtp = config.smtp
        self.metrics = Metrics()
        self._parse_executor = ParseThreads(PARSE_THREADS)
        self.parse_children = ParseProcesses(
            child_count(smtp.parse.processes), _parse_options(config)
        )
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
        self.inbox = Inbox(config.inbox, config.inbox_path) if config.runs_inbox else None
        self._inbox_consumer: InboxConsumer | None = None
        self._free_inbox_only_files = _inbox_only_files(config, storage)
        # claim-checked raw files, also those written in `auto` before a restart in `tempfile`
        self._raw_files = storage if isinstance(storage, TempfileStorage) else None
        self.metrics.registry.register(UnwithdrawnPublishes(self.jobs.unwithdrawn_publishes))
        self.metrics.registry.register(DroppedLate(self.jobs.dropped_late))
        rpc = smtp.jobs.rpc if delivery is None and smtp.use_jobs else None
        self.remote_jobs = ApiClient(rpc.url, rpc.token) if rpc is not None else None
        # the SMTP pool delivers on the legacy path and answers hooks on either path
        self.smtp_pool = (
            _pool(config, smtp.pool, SMTP_MODE)
            if smtp.hook_stages or (delivery is None and not smtp.use_jobs)
            else None
        )
        self.delivery = delivery or _delivery(
            config, self.remote_jobs or self.jobs, self.smtp_pool, storage, self._parse_executor
        )
        self.faults = FaultBook(smtp.faults)
        self.spool = Spool(config.data_dir, smtp.spool_bytes)
        session_hooks = _session_hooks(config, self.smtp_pool)
        handler = SmtpHandler(
            HandlerSettings(max_recipients=smtp.max_recipients),
            _event_builder(config, storage, self._parse_executor, self.parse_children),
            self.delivery,
            self.metrics,
            hooks=session_hooks,
        )
        self.smtp = SmtpServer(
            smtp,
            handler,
            self.metrics,
            self.faults,
            spool=self.spool,
            auth=auth_checks(smtp, session_hooks),
            on_idle=self._went_idle,
        )
        pools = {pool.name: pool for pool in (self.smtp_pool, self.jobs_pool) if pool is not None}
        self.api = ApiServer(
            config.rpc,
            jobs=self.jobs,
            smtp=self.smtp,
            pools=pools,
            metrics=self.metrics,
            consumed=[*config.jobs.consume, *([config.inbox.pipeline] if self.inbox else [])],
            max_request=_request_limit(config.smtp.max_message_size),
            declare_policy=DeclarePolicy(config),
            inbox=self.inbox,
            faults=self.faults if smtp.faults_api or smtp.faults else None,
        )

    async def start(self) -> None:
        log.info("configuration loaded", source=self.source)
        # before any driver or storage makes it under the umask: jobs hold mail and credentials
        await asyncio.to_thread(create_directories, self.config.data_dir)
        await asyncio.to_thread(self.spool.prepare)
        _warn_unless_storage_is_shared(self.config)
        if self._cleanup is not None:
            self._cleanup.start()
        try:
            await self.jobs.start()
            await self._start_inbox()
            for pool in (self.smtp_pool, self.jobs_pool):
                if pool is not None:
                    await pool.start()
            self._start_consumers()
            self._fit_message_size()
            await self.smtp.start()
            await self.api.start()
        except BaseException:
            await self.smtp.stop(0)
            await self._stop_inbox()
            await self.api.stop()
            await self._stop_components()
            raise

    async def _start_inbox(self) -> None:
        """Open the inbox and start storing its pipeline's jobs, before SMTP accepts any."""
        if self.inbox is None:
            if not self.config.smtp.use_jobs:
                log.info("inbox off: smtp.use_jobs is false, email goes to the worker pool")
            return
        await self.inbox.open()
        self._inbox_consumer = InboxConsumer(
            self.jobs.pipeline(self.config.inbox.pipeline),
            self.inbox,
            _parse_options(self.config),
            self._free_inbox_only_files,
            raw_files=self._raw_files,
        )
        self._inbox_consumer.start()

    def _fit_message_size(self) -> None:
        """Never accept a message whose event a pipeline cannot carry (it would get 451
        forever): lower the advertised SIZE to what the smallest max_payload allows; the
        inbox's jobs always carry the raw message."""
        smtp = self.config.smtp
        if not smtp.use_jobs or smtp.jobs.rpc is not None:
            return
        if smtp.attachment_storage.mode == "auto" and isinstance(self.delivery, JobsDelivery):
            self._limit_claim_checked_payloads()
            return
        limits = [
            (fits, name)
            for name, with_raw in self._pushed_to()
            if (fits := self._fits(name, with_raw)) is not None
        ]
        if not limits:
            return
        fits, pipeline = min(limits)
        current = self.smtp.max_message_size
        if current and current <= fits:
            return
        max_payload = self.jobs.pipeline(pipeline).driver.capabilities.max_payload
        if fits < MIN_MESSAGE_SIZE:
            raise ConfigError(
                [
                    f"smtp.jobs.pipelines: pipeline {pipeline!r} carries at most"
                    f" {max_payload} bytes per job, too small for email events"
                ],
                self.source,
            )
        log.warning(
            "SIZE lowered to what the pipeline can carry",
            pipeline=pipeline,
            max_payload=max_payload,
            configured=current or "unlimited",
            advertised=fits,
        )
        self.smtp.limit_message_size(fits)

    def _limit_claim_checked_payloads(self) -> None:
        """With claim-check a big message is a small job (attachments and raw bytes are
        paths), so SIZE stays; only text bodies still grow a job, and a message whose event
        outgrows the smallest max_payload is refused (552) by itself instead of lowering
        SIZE for all."""
        assert isinstance(self.delivery, JobsDelivery)
        payloads = [
            (max_payload, name)
            for name in self.config.smtp.jobs.targets
            if (max_payload := self.jobs.pipeline(name).driver.capabilities.max_payload) is not None
        ]
        if payloads:
            max_payload, pipeline = min(payloads)
            self.delivery.limit_payload(max_payload)
            log.info(
                "SIZE kept with claim-check: events over max_payload are refused",
                pipeline=pipeline,
                max_payload=max_payload,
            )

    def _pushed_to(self) -> list[tuple[str, bool]]:
        """Every pipeline accepted email goes to here, and whether its jobs carry raw bytes."""
        include_raw = self.config.smtp.include_raw
        pushed = [(name, include_raw) for name in self.config.smtp.jobs.targets]
        return pushed + ([(self.config.inbox.pipeline, True)] if self.inbox else [])

    def _fits(self, pipeline: str, with_raw: bool) -> int | None:
        """The largest message whose event `pipeline` can carry; None: no limit."""
        max_payload = self.jobs.pipeline(pipeline).driver.capabilities.max_payload
        if max_payload is None:
            return None
        return int(max_payload / (EVENT_GROWTH + (RAW_GROWTH if with_raw else 0.0)))

    def _start_consumers(self) -> None:
        if self.consumers is None:
            unconsumed = [
                name
                for name in self.jobs.list_pipelines()
                if not self.jobs.pipeline(name).consuming
            ]
            if unconsumed:
                log.info(
                    "no consumer configured: jobs stay stored",
                    hint="see them with: mailrunner jobs peek " + unconsumed[0],
                )
            return
        for name in self.config.jobs.consume:
            self.consumers.consume(self.jobs.pipeline(name))

    async def stop(self) -> None:
        await self.smtp.stop(self.config.smtp.shutdown_timeout)
        await self.spool.stop()
        await self._stop_inbox()
        await self.api.stop()
        await self._stop_components()
        log.info("stopped")

    async def _stop_inbox(self) -> None:
        """Stop storing, then close the inbox, which ends its /events streams at once."""
        if self._inbox_consumer is not None:
            await self._inbox_consumer.stop()
            self._inbox_consumer = None
        if self.inbox is not None:
            await self.inbox.close()

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
        await self.parse_children.stop()

    def _went_idle(self) -> None:
        """The last connection closed: a server that owns its process gives its heaps' free
        pages back (`trim_heap`), at once, while no session waits for the loop."""
        if self._owns_process:
            started = time.perf_counter()
            trim_heap()
            log.debug("heap trimmed", ms=round((time.perf_counter() - started) * 1000, 2))

    async def serve_until_signalled(self, pidfile: Path | None = None) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully. Owns the process, so it also
        tunes the allocator for large messages (`allocator`) and, once started, freezes what
        start-up made (modules, models, routes: some 80,000 objects) out of the garbage
        collector's reach: a full collection walked them all, a 40-195 ms pause every few
        seconds under load that set the p99 of the 250 reply. The youngest generation is then
        collected every `GC_YOUNG_THRESHOLD` allocations, not 700: a message's objects go by
        reference counting, and the default's 824 collections in 20,000 1 KB messages cost
        120 ms of the event loop's thread (3 %)."""
        self._owns_process = True
        release_large_buffers()
        keep_heap_slack()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
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
    """With `auto`, the inbox's pipeline holds a claim-checked message's folder too: its job
    carries `raw_path` instead of the raw bytes, so the folder waits for it."""
    storage = config.smtp.attachment_storage
    if storage.mode == "memory":
        return MemoryStorage()
    smtp = config.smtp
    auto = storage.mode == "auto"
    inbox = [config.inbox.pipeline] if auto and _pushes_to_inbox(config) else []
    pipelines = [*smtp.jobs.targets, *inbox] if smtp.use_jobs else None
    return TempfileStorage(
        config.attachments_dir,
        pipelines,
        file_mode=storage.file_mode,
        claim_check_bytes=storage.claim_check_bytes if auto else None,
    )


_REMOTE_DRIVERS = frozenset({"redis", "amqp", "nats"})


def _warn_unless_storage_is_shared(config: Config) -> None:
    """Events that carry paths reach consumers on other hosts through a broker or another
    node: those consumers must see `temp_dir` (the same path, mounted), said once at start."""
    smtp = config.smtp
    if smtp.attachment_storage.mode == "memory" or not smtp.use_jobs:
        return
    remote = sorted(
        name
        for name in smtp.jobs.targets
        if (pipeline := config.pipelines.get(name)) is not None
        and pipeline.driver in _REMOTE_DRIVERS
    )
    if not remote and smtp.jobs.rpc is None:
        return
    log.warning(
        "events carry file paths: consumers must see temp_dir",
        mode=smtp.attachment_storage.mode,
        temp_dir=str(config.attachments_dir),
        pipelines=remote or None,
        rpc=str(smtp.jobs.rpc.url) if smtp.jobs.rpc is not None else None,
    )


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
        job_removed=partial(_release_email_attachments, storage),
        pipeline_purged=partial(_remove_pipeline_attachments, storage),
    )


def _session_hooks(config: Config, smtp_pool: WorkerPool | None) -> SessionHooks | None:
    """`smtp.hooks` asked of the SMTP pool (which runs whenever hooks are configured), and
    the `auth` stage in `smtp.auth.mode: hook`."""
    smtp = config.smtp
    stages = smtp.hook_stages
    if not stages:
        return None
    assert smtp_pool is not None, "the SMTP pool runs whenever smtp.hooks or auth hooks are set"
    on_error = None if smtp.hooks_on_error == "accept" else replies.TEMPORARY_FAILURE
    return SessionHooks(HookRunner(smtp_pool, stages, smtp.hooks_timeout, on_error))


def _delivery(
    config: Config,
    jobs: JobsRpc,
    smtp_pool: WorkerPool | None,
    storage: AttachmentStorage,
    executor: ParseThreads,
) -> Delivery:
    """Where accepted email goes: a job pushed (here or to another node), else the pool."""
    if smtp_pool is not None and not config.smtp.use_jobs:
        return PoolDelivery(smtp_pool)
    smtp = config.smtp
    return JobsDelivery(
        jobs,
        smtp.jobs,
        include_raw=smtp.include_raw,
        inbox=config.inbox.pipeline if _pushes_to_inbox(config) else None,
        attachments=storage if isinstance(storage, TempfileStorage) else None,
        json_offload=JsonOffload(smtp.parse.offload_bytes, executor),
    )


def _pushes_to_inbox(config: Config) -> bool:
    """Accepted email goes to the inbox's pipeline, here or on `smtp.jobs.rpc`'s node."""
    return config.inbox.enabled and config.smtp.use_jobs


def _inbox_only_files(
    config: Config, storage: AttachmentStorage
) -> Callable[[str, str], Awaitable[None]] | None:
    """Attachment files no pipeline but the inbox's got go once the inbox consumer has read
    them (a retry of its job takes them from the raw message); with other pipelines they go
    with those pipelines' jobs. With `auto` the inbox's pipeline is one of those the folder
    waits for (`_attachment_storage`), and its consumer releases it like the others; a folder
    whose mark does not name it (`tempfile`) does not count its release (`release`), so
    that it also frees folders written in `auto` before a restart in `tempfile` mode."""
    if not isinstance(storage, TempfileStorage):
        return None
    return partial(_release_email_attachments, storage)


def _parse_options(config: Config) -> ParseOptions:
    parse = config.smtp.parse
    return ParseOptions(
        max_depth=parse.max_depth,
        max_parts=parse.max_parts,
        max_header_bytes=parse.max_header_bytes,
    )


def _event_builder(
    config: Config, storage: AttachmentStorage, executor: ParseThreads, children: ParseProcesses
) -> EventBuilder:
    smtp = config.smtp
    return EventBuilder(
        hostname=smtp.hostname,
        options=_parse_options(config),
        storage=storage,
        include_raw=smtp.include_raw or _pushes_to_inbox(config),
        offload_bytes=smtp.parse.offload_bytes,
        executor=executor,
        children=children,
    )


async def _release_email_attachments(storage: TempfileStorage, job_id: str, pipeline: str) -> None:
    """With Jobs, attachment files live until the last of their email's jobs is acked or
    purged (the inbox's aside, see `TempfileStorage.release`).

    Called for every removed job whoever pushed it; the id alone decides, through the
    storage's marker rule, so a job named `smtp.email` with a hostile id deletes nothing.
    """
    await asyncio.to_thread(storage.release, job_id, pipeline)


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
