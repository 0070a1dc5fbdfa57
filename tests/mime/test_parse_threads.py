"""Parse threads are daemons and a stop never waits for them beyond its grace (issue #11)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from mailrunner.mime.parse import ParsedMessage
from mailrunner.mime.parse_threads import ParseThreads

GRACE = 0.4


class StuckParse:
    """A parse that blocks until released: what a pathological message looks like from
    outside (a parse cannot be interrupted)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any) -> ParsedMessage:
        self.entered.set()
        self.release.wait(60)
        return ParsedMessage()


@pytest.fixture
def stuck() -> Iterator[StuckParse]:
    parse = StuckParse()
    yield parse
    parse.release.set()


async def timed_stop(threads: ParseThreads) -> float:
    started = time.monotonic()
    await threads.stop(GRACE)
    return time.monotonic() - started


def test_stop_waits_its_grace_for_an_awaited_parse_then_leaves_it_to_a_daemon(
    stuck: StuckParse,
) -> None:
    async def main() -> None:
        threads = ParseThreads(2)
        awaited = asyncio.get_running_loop().run_in_executor(threads, stuck)
        await asyncio.to_thread(stuck.entered.wait, 10)
        with capture_logs() as logs:
            elapsed = await timed_stop(threads)
        assert GRACE * 0.9 <= elapsed < GRACE + 1.5, f"stop took {elapsed:.2f} s"
        assert not awaited.done()
        assert [entry["count"] for entry in logs if entry["log_level"] == "warning"] == [1]
        (thread,) = [t for t in threading.enumerate() if t.name.startswith("parse-")]
        assert thread.daemon, "a running parse must not keep the process alive"
        stuck.release.set()
        assert isinstance(await awaited, ParsedMessage)

    asyncio.run(main())


def test_a_parse_whose_caller_gave_up_does_not_hold_up_stop(stuck: StuckParse) -> None:
    async def main() -> None:
        threads = ParseThreads(2)
        abandoned = asyncio.get_running_loop().run_in_executor(threads, stuck)
        await asyncio.to_thread(stuck.entered.wait, 10)
        abandoned.cancel()  # what aborting its SMTP session does to the awaiting handler
        await asyncio.sleep(0)  # the cancel reaches the parse's future in a loop callback
        assert await timed_stop(threads) < GRACE / 2

    asyncio.run(main())


def test_a_parse_that_ends_within_the_grace_is_awaited_and_queued_ones_are_dropped() -> None:
    async def main() -> None:
        threads = ParseThreads(1)
        release = threading.Event()
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(threads, release.wait, 10)
        queued = loop.run_in_executor(threads, time.sleep, 0)
        loop.call_later(GRACE / 4, release.set)
        assert await timed_stop(threads) < GRACE
        assert await running is True
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RuntimeError, match="stopped"):
            threads.submit(time.sleep, 0)

    asyncio.run(main())


def test_an_idle_thread_holds_neither_the_message_nor_its_parse() -> None:
    """A thread waiting for its next parse must not keep the last message alive: with a
    10 MB message that doubled what the server held while it built the event."""

    class Held:
        """Stands for a message and its parse (bytes cannot be weakly referenced)."""

    def work(message: Held) -> Held:
        return Held()

    messages = [Held()]
    sent = weakref.ref(messages[0])

    async def scenario() -> tuple[bool, bool]:
        threads = ParseThreads(1)
        loop = asyncio.get_running_loop()
        returned = weakref.ref(await loop.run_in_executor(threads, work, messages.pop()))
        deadline = time.monotonic() + 2.0  # the thread returns to its queue right after
        while time.monotonic() < deadline:
            gc.collect()
            held = (sent() is not None, returned() is not None)
            if not any(held):
                break
            await asyncio.sleep(0.01)
        await threads.stop(GRACE)
        return held

    message_held, parse_held = asyncio.run(scenario())
    assert not message_held, "the idle parse thread still holds the message"
    assert not parse_held, "the idle parse thread still holds the parse result"
