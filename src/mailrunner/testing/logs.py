"""Where an in-process server's log lines go: into the host program's own logging.

`mailrunner.logs.configure` owns the root logger, which is right for `mailrunner serve` and
wrong inside someone's test run. Here the root logger is never touched. While a server runs,
and only if the program has not configured structlog itself, structlog is set to hand each
line to the stdlib logger named as the module (`mailrunner.app`, ...): pytest captures those
records and shows them with a failing test, and `--log-level` or
`logging.getLogger("mailrunner")` tune them. When the last server stops, structlog is left
unconfigured again. A program that configured structlog keeps its setup throughout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

# the serving process's own names for these, so the two setups cannot drift apart
from mailrunner.logs import AIOSMTPD_LOGGER, mask_urls


class _Routing:
    """The one process-wide setup its servers share: made as the first starts, undone as
    the last stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers = 0
        self._owns_structlog = False
        self._aiosmtpd_level = logging.NOTSET

    def enter(self) -> None:
        with self._lock:
            self._servers += 1
            if self._servers > 1:
                return
            aiosmtpd = logging.getLogger(AIOSMTPD_LOGGER)
            self._aiosmtpd_level = aiosmtpd.level
            if aiosmtpd.level == logging.NOTSET:
                aiosmtpd.setLevel(logging.ERROR)
            self._owns_structlog = not structlog.is_configured()
            if self._owns_structlog:
                _configure_structlog()

    def leave(self) -> None:
        with self._lock:
            self._servers -= 1
            if self._servers > 0:
                return
            logging.getLogger(AIOSMTPD_LOGGER).setLevel(self._aiosmtpd_level)
            if self._owns_structlog:
                structlog.reset_defaults()


_ROUTING = _Routing()


@contextmanager
def routed_to_stdlib() -> Iterator[None]:
    """For the block: the server's lines as stdlib records, unless the program configured
    structlog; aiosmtpd's command log (AUTH included) held at ERROR unless its level is set."""
    _ROUTING.enter()
    try:
        yield
    finally:
        _ROUTING.leave()


def _configure_structlog() -> None:
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.format_exc_info,
            mask_urls,
            structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, sort_keys=False),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
