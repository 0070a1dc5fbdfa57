"""SIGTERM stops a server whose RabbitMQ went silent within `jobs.shutdown_timeout`.

The pipeline's broker address is a TCP listener of the test's own in front of the machine's
RabbitMQ (which no test may stop): it forwards until told to go silent, then stops passing
bytes on the connections it holds and accepts new ones without ever answering, as a broker
host that hangs does. The server holds a lease of a long job when the broker goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from support.brokers import delete_amqp_pipeline
from support.processes import ServeProcess, run_cli
from support.requirements import require_broker
from support.waiting import wait_until

pytestmark = pytest.mark.amqp

BROKER = ("127.0.0.1", 5672)
SHUTDOWN_TIMEOUT = 3.0
AMQP_TIMEOUT = 3.0
"""`config.timeout`: before, the give-back of the running job added that much to the stop."""
DESTROY_TIMEOUT = 0.5
"""The worker running the job is killed after that long when the pool stops."""
MARGIN = DESTROY_TIMEOUT + 1.0
"""Beyond `shutdown_timeout`: the pool's kill of the worker still running the job (after the
consumers' deadline), then exiting (closing the driver gets only a slice: asserted apart)."""
HERE = Path(__file__).parent


class SilencingProxy:
    """A TCP proxy to the machine's RabbitMQ on a thread of its own; `silence()` makes it a
    listener that accepts and never answers, the connections it holds included."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.silent = False
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    def __enter__(self) -> SilencingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _shut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def silence(self) -> None:
        self.silent = True

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        starting = asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._server = self.loop.run_until_complete(starting)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.silent:
            return  # keep the connection open, answer nothing
        upstream_reader, upstream_writer = await asyncio.open_connection(*BROKER)
        self._writers.append(upstream_writer)

        async def pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await source.read(65536):
                    if self.silent:
                        return  # swallowed; the connection stays open
                    target.write(data)
                    await target.drain()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def logged_at(logs: str, event: str) -> float:
    """When the server logged `event` (its first line holding it), in epoch seconds."""
    line = next(line for line in logs.splitlines() if event in line)
    return datetime.fromisoformat(line.split()[0]).timestamp()


@pytest.fixture
def queue_name() -> Iterator[str]:
    require_broker("amqp", *BROKER)
    name = f"mailrunner-test-{uuid.uuid4().hex}"
    yield name
    delete_amqp_pipeline(name)


def test_sigterm_stops_the_server_within_shutdown_timeout_while_rabbitmq_is_silent(
    queue_name: str, serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    with SilencingProxy() as proxy:
        addr = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        settings: dict[str, Any] = {
            "server": {"command": [sys.executable, str(HERE / "job_worker.py")]},
            "jobs": {
                "pipelines": {
                    "smtp-emails": {"driver": "memory"},
                    "q": {
                        "driver": "amqp",
                        "config": {"addr": addr, "queue": queue_name, "timeout": AMQP_TIMEOUT},
                    },
                },
                "consume": ["q"],
                "shutdown_timeout": SHUTDOWN_TIMEOUT,
                "pool": {"num_workers": 1, "destroy_timeout": DESTROY_TIMEOUT},
            },
        }
        server = serve(**settings)
        api = f"http://127.0.0.1:{server.api_port}"

        def cli_json(*args: str) -> Any:
            done = run_cli(*args, "--server", api, "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        cli_json("jobs", "push", "q", "--payload", json.dumps({"do": "sleep", "seconds": 600}))
        wait_until(lambda: cli_json("jobs", "stat", "q")["reserved"] == 1, "the job leased")
        proxy.silence()
        started = time.monotonic()
        code = server.terminate()
        took = time.monotonic() - started
    logs = server.logs()
    # One deadline covers the running job and its give-back; closing the driver (after the
    # pool) adds next to nothing: it waited 2 s for a silent broker's Close-Ok before.
    closing = logged_at(logs, "] stopped ") - logged_at(logs, "] worker pool stopped ")
    assert closing < 1.0, f"closing the jobs drivers took {closing:.1f}s:\n{logs[-3000:]}"
    assert took < SHUTDOWN_TIMEOUT + MARGIN, f"the server took {took:.1f}s to stop:\n{logs[-3000:]}"
    assert code == 0, f"the server exited with {code}:\n{server.logs()[-3000:]}"
