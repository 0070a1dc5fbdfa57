"""Structured logging for people (console) or machines (json), through structlog.

aiosmtpd logs every command line, AUTH included, at INFO on its `mail.log` logger, and its
debug output shows credentials; that logger is held at ERROR so no secret reaches a log.
Broker URLs can carry credentials in their userinfo (`nats://TOKEN@host`), inside any value
or error text, so every string of every log line passes through `mask_urls_in`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from mailrunner.config import LogsConfig, mask_urls_in

AIOSMTPD_LOGGER = "mail.log"


def mask_urls(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: no URL userinfo in any string value of the line."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = mask_urls_in(value)
    return event


def configure(config: LogsConfig, stream: Any = None) -> None:
    """Install the process-wide logging setup; called once by the app or the CLI."""
    level = getattr(logging, config.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_urls,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger(AIOSMTPD_LOGGER).setLevel(max(level, logging.ERROR))
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
