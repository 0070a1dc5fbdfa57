"""A push that never answers still ends in 451, within push_timeout + PUSH_GRACE of the dot.

A driver may hang (a broker that accepts and never answers, a stalled disk) whatever deadline
it was given. The SMTP side's own bound is what answers the client then: 451, at
push_timeout + PUSH_GRACE after the final dot at the latest, so that the client's retry is not
held up by the broker's state. Here the pipeline's driver waits forever in `push`, in process
and behind a remote jobs node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from mailrunner.errors import DriverError
from mailrunner.jobs.deadline import PUSH_GRACE
from mailrunner.jobs.drivers.memory import MemoryDriver
from mailrunner.jobs.model import Job
from support.net import free_port
from support.raw_smtp import raw_smtp
from support.server import RunningServer

PUSH_TIMEOUT = 0.5
SCHEDULING_SLACK = 0.5
"""What the server's loop thread may add to the bound on a busy machine."""


class HangingPushes:
    """Makes every memory driver's `push` wait until `release`, which the test's teardown
    calls before the servers stop (a node's stop waits for its requests in flight)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def wait(self) -> None:
        released = asyncio.Event()
        self._waiting.append((asyncio.get_running_loop(), released))
        await released.wait()
        raise DriverError("released by the test's teardown; nothing was stored")

    def release(self) -> None:
        for loop, released in self._waiting:
            loop.call_soon_threadsafe(released.set)


@pytest.fixture
def hanging_servers(
    start_server: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., RunningServer]]:
    """`start_server` for servers whose memory pipelines never answer a push."""
    hanging = HangingPushes()

    async def push(driver: MemoryDriver, jobs: Sequence[Job], *, deadline: float) -> None:
        await hanging.wait()

    monkeypatch.setattr(MemoryDriver, "push", push)
    yield start_server
    hanging.release()


def start_ingress(start_server: Callable[..., RunningServer], path: str) -> RunningServer:
    smtp: dict[str, Any] = {"jobs": {"push_timeout": PUSH_TIMEOUT}}
    if path == "remote rpc":
        api_port = free_port()
        start_server(record=False, rpc={"listen": f"127.0.0.1:{api_port}"})
        smtp["jobs"]["rpc"] = f"http://127.0.0.1:{api_port}"
    return start_server(record=False, smtp=smtp)


@pytest.mark.parametrize("path", ["in-process", "remote rpc"])
def test_a_driver_that_never_answers_gives_451_within_push_timeout_and_grace_of_the_dot(
    hanging_servers: Callable[..., RunningServer], path: str
) -> None:
    server = start_ingress(hanging_servers, path)
    with raw_smtp(server.port) as client:
        client.start_data()
        client.send(b"Subject: hang\r\n\r\nbody\r\n")
        final_dot = time.monotonic()
        client.send(b".\r\n")
        reply = client.reply()
        elapsed = time.monotonic() - final_dot
    assert reply.startswith(b"451 "), f"a push that never answered gave {reply!r}"
    assert elapsed >= PUSH_TIMEOUT, f"451 after {elapsed:.2f}s, before push_timeout ran out"
    limit = PUSH_TIMEOUT + PUSH_GRACE
    assert elapsed <= limit + SCHEDULING_SLACK, f"451 after {elapsed:.2f}s, bound {limit}s"
