"""The 451 bound of a push (`delivery._Bounds`): one timer for every push in flight must act as
`asyncio.timeout` did per push: it cancels the pushing task when due and only then, its own
cancellation alone counts as expiry, and an extension moves it later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from mailrunner.jobs.deadline import PUSH_GRACE
from mailrunner.smtp.delivery import _Bound, _Bounds

SLACK = 0.002
"""What a timer may run early by (uvloop counts in milliseconds)."""


def run(kind: str, test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(test())


async def never_answered(bound: _Bound) -> float:
    """Wait like a push that never answers; the seconds until the bound cancelled it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.Event().wait()
    assert bound.finish(), "its own expiry cancelled the task"
    return loop.time() - started


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_bound_cancels_its_push_when_due_and_not_once_finished(kind: str) -> None:
    async def test() -> None:
        bounds = _Bounds(asyncio.get_running_loop())
        finished = bounds.start(0.02)
        assert not finished.finish()
        assert await never_answered(bounds.start(0.1)) >= 0.1 - SLACK
        await asyncio.sleep(0)  # the task was uncancelled: it goes on

    run(kind, test)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_an_extended_bound_waits_for_the_named_instant_and_grace(kind: str) -> None:
    async def test() -> None:
        bounds = _Bounds(asyncio.get_running_loop())
        bound = bounds.start(0.02)
        bound.extend(time.monotonic() + 0.1)
        bound.extend(time.monotonic())  # never earlier than it already is
        assert await never_answered(bound) >= 0.1 + PUSH_GRACE - SLACK

    run(kind, test)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_shorter_bound_after_longer_ones_is_due_at_its_own_instant(kind: str) -> None:
    async def test() -> None:
        bounds = _Bounds(asyncio.get_running_loop())
        long = bounds.start(60.0)
        assert await never_answered(bounds.start(0.05)) < 30
        assert not long.expired
        long.finish()

    run(kind, test)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_cancellation_from_outside_is_not_taken_for_the_bounds_expiry(kind: str) -> None:
    async def test() -> None:
        bounds = _Bounds(asyncio.get_running_loop())
        entered = asyncio.Event()

        async def push() -> bool:
            bound = bounds.start(60.0)
            try:
                entered.set()
                await asyncio.Event().wait()
            finally:
                expired = bound.finish()
            return expired

        task = asyncio.create_task(push())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(kind, test)
