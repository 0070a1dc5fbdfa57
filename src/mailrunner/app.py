"""Builds every component from the configuration, starts them in order, stops them in reverse.

The only module that installs signal handlers; nothing imports it but the CLI and tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from mailrunner.config import Config
from mailrunner.errors import ConfigError
from mailrunner.mime.attachments import (
    AttachmentStorage,
    CleanupTask,
    MemoryStorage,
    TempfileStorage,
)
from mailrunner.mime.build import EventBuilder
from mailrunner.mime.parse import ParseOptions
from mailrunner.pool.pool import WorkerPool
from mailrunner.smtp.delivery import Delivery, JsonLinesDelivery, PoolDelivery
from mailrunner.smtp.handler import HandlerSettings, SmtpHandler
from mailrunner.smtp.server import SmtpServer

log = structlog.get_logger("mailrunner.app")

PARSE_THREADS = 2


class App:
    """One mailrunner process: the SMTP server and the path its events take."""

    def __init__(self, config: Config, source: str, delivery: Delivery | None = None) -> None:
        self.config = config
        self.source = source
        self._parse_executor = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="parse")
        self._cleanup: CleanupTask | None = None
        self.smtp_pool: WorkerPool | None = None
        self.delivery = delivery or self._default_delivery()
        self.smtp = SmtpServer(config.smtp, self._handler(self._storage()))

    def _default_delivery(self) -> Delivery:
        smtp = self.config.smtp
        if smtp.use_jobs:
            return JsonLinesDelivery(self.config.data_dir / "events.jsonl")
        command = smtp.pool.command or self.config.server.command
        if not command:
            raise ConfigError(
                ["smtp.pool.command: required when smtp.use_jobs is false (or set server.command)"],
                self.source,
            )
        self.smtp_pool = WorkerPool("smtp", smtp.pool, command, self.config.server.env)
        return PoolDelivery(self.smtp_pool)

    def _storage(self) -> AttachmentStorage:
        storage_config = self.config.smtp.attachment_storage
        if storage_config.mode == "memory":
            return MemoryStorage()
        storage = TempfileStorage(self.config.attachments_dir)
        self._cleanup = CleanupTask(storage, storage_config.cleanup_after)
        return storage

    def _handler(self, storage: AttachmentStorage) -> SmtpHandler:
        smtp = self.config.smtp
        builder = EventBuilder(
            hostname=smtp.hostname,
            options=ParseOptions(max_depth=smtp.parse.max_depth),
            storage=storage,
            include_raw=smtp.include_raw,
            offload_bytes=smtp.parse.offload_bytes,
            executor=self._parse_executor,
        )
        settings = HandlerSettings(
            max_recipients=smtp.max_recipients, auth_capture=smtp.auth.mode == "capture"
        )
        return SmtpHandler(settings, builder, self.delivery)

    async def start(self) -> None:
        log.info("configuration loaded", source=self.source)
        if self._cleanup is not None:
            self._cleanup.start()
        if self.smtp_pool is not None:
            await self.smtp_pool.start()
        try:
            await self.smtp.start()
        except OSError:
            await self._stop_components()
            raise
        if isinstance(self.delivery, JsonLinesDelivery):
            log.info("events are appended as JSON lines", path=str(self.delivery.path))

    async def stop(self) -> None:
        await self.smtp.stop(self.config.smtp.shutdown_timeout)
        await self._stop_components()
        log.info("stopped")

    async def _stop_components(self) -> None:
        if self.smtp_pool is not None:
            await self.smtp_pool.stop()
        if self._cleanup is not None:
            await self._cleanup.stop()
        self._parse_executor.shutdown(wait=True)

    async def serve_until_signalled(self, pidfile: Path | None = None) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully."""
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
