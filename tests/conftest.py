"""pytest's side of the suite: the hypothesis profiles and the fixtures.

What a test module imports (servers, processes, brokers, waits, sample mail) lives in
`tests/support/`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from support.brokers import amqp_queue
from support.processes import ServeProcess
from support.requirements import swaks_path
from support.server import RunningServer

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""`.ci/run` gates landing: the same examples every run, so a red CI is about the change.
Everyday `make test` keeps exploring new examples and remembers failures in .hypothesis/."""


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with config overrides; every one is stopped after the test."""
    servers: list[RunningServer] = []

    def start(*, record: bool = True, **overrides: Any) -> RunningServer:
        server = RunningServer(overrides, tmp_path / f"data{len(servers)}", record=record)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    """A server with the default configuration on a free port."""
    return start_server()


@pytest.fixture
def swaks() -> str:
    """The swaks binary; skipped locally when missing, a failure in CI."""
    return swaks_path()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(**settings: Any) -> ServeProcess:
        process = ServeProcess(tmp_path, settings)
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A fresh amqp queue on the machine's RabbitMQ (a failure in CI when it is down)."""
    yield from amqp_queue()
