"""The event loop a server runs on, chosen by `server.loop` and made by a loop factory.

- `auto` (the default): uvloop when it can be imported, else asyncio's own loop. uvloop is a
  default dependency on Linux/CPython; elsewhere (Windows, PyPy) `auto` quietly means asyncio.
- `uvloop`: uvloop or nothing; when it is not installed, start-up stops with a ConfigError
  naming the pip line, because a server asked for the fast loop should not run slow unnoticed.
- `asyncio`: the standard library's loop even where uvloop is installed (to rule it out).

The choice reaches only the loops this module makes, through `asyncio.Runner(loop_factory=...)`
for `mailrunner serve` and `new_event_loop()` for a server on a thread of its own (the testing
server). It never installs an event-loop policy (`uvloop.install()`,
`asyncio.set_event_loop_policy`): a policy is process-wide, and the process may be a test run
whose pytest plugins and pytest-asyncio make loops of their own that must stay what they were.
The loop's kind is logged once as it is made (`event loop`, loop="uvloop"), read from the loop
itself, not from the setting.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import structlog

from mailrunner.config import LoopChoice
from mailrunner.errors import ConfigError

UVLOOP_REQUIREMENT = "uvloop>=0.19"
"""What to install for `server.loop: uvloop`; the same line as in pyproject's dependencies."""

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

log = structlog.get_logger("mailrunner.loops")


def _asyncio_loop() -> asyncio.AbstractEventLoop:
    """asyncio's default loop for this platform, made directly: `asyncio.new_event_loop()`
    would ask the process's policy, which someone else may have pointed at uvloop."""
    if sys.platform == "win32":
        return asyncio.ProactorEventLoop()
    return asyncio.SelectorEventLoop()


def _uvloop_factory(choice: LoopChoice) -> LoopFactory | None:
    """uvloop's factory, None when it is missing and `choice` lets asyncio stand in."""
    try:
        import uvloop  # noqa: PLC0415 (optional: only a server that may use it imports it)
    except ImportError:
        if choice == "uvloop":
            problem = f"server.loop: uvloop is not installed (pip install '{UVLOOP_REQUIREMENT}')"
            raise ConfigError([problem]) from None
        return None
    return uvloop.new_event_loop


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`: which implementation `loop` is, as the start-up log names it."""
    return "uvloop" if type(loop).__module__.partition(".")[0] == "uvloop" else "asyncio"


def loop_factory(choice: LoopChoice) -> LoopFactory:
    """A factory of loops of the configured kind, each logged as it is made.

    Raises ConfigError for `uvloop` when uvloop cannot be imported.
    """
    make = (None if choice == "asyncio" else _uvloop_factory(choice)) or _asyncio_loop

    def new_loop() -> asyncio.AbstractEventLoop:
        loop = make()
        log.info("event loop", loop=loop_kind(loop))
        return loop

    return new_loop


def new_event_loop(choice: LoopChoice) -> asyncio.AbstractEventLoop:
    """One loop of the configured kind, for a server run on a thread of its own."""
    return loop_factory(choice)()
