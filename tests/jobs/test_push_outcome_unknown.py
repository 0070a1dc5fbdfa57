"""A push whose outcome is unknown keeps the email's attachment files.

When RabbitMQ has the publish but its confirm does not come back in time, the amqp driver
cannot withdraw it: the job may be stored. The SMTP client gets 451 (it sends again: at least
once), and the files stay for the job that is in the queue. The missing confirm is made as a
stalled network would make it: a proxy in front of the machine's RabbitMQ stops passing the
broker's frames on, while the driver's own frames still reach the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from structlog.testing import capture_logs

from support.brokers import AMQP_ADDR, delete_amqp_pipeline
from support.net import free_port
from support.requirements import require_broker
from support.sample_mail import TEMP_FAILURE, timed_send
from support.server import RunningServer
from support.waiting import wait_until

BROKER = ("127.0.0.1", 5672)
PUSH_TIMEOUT = 0.5


class MutingProxy:
    """A TCP proxy to RabbitMQ on a loop thread of its own; while `muted`, what the broker
    sends (confirms included) is held back, and passed on once it is not."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._passing = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server = self._call(self._start())
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    async def _start(self) -> asyncio.Server:
        self._passing.set()
        return await asyncio.start_server(self._handle, "127.0.0.1", 0)

    def mute(self, muted: bool) -> None:
        self.loop.call_soon_threadsafe(self._passing.clear if muted else self._passing.set)

    def close(self) -> None:
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _close(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*BROKER)
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            self._pipe(reader, upstream_writer, None), self._pipe(upstream_reader, writer, True)
        )

    async def _pipe(
        self, source: asyncio.StreamReader, target: asyncio.StreamWriter, mutable: bool | None
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if mutable:
                    await self._passing.wait()
                target.write(data)
                await target.drain()
        target.transport.abort()


@pytest.fixture
def proxy() -> Iterator[MutingProxy]:
    require_broker("amqp", *BROKER)
    running = MutingProxy()
    yield running
    running.close()


@pytest.fixture
def queue_name() -> Iterator[str]:
    name = f"mailrunner-test-{uuid.uuid4().hex}"
    yield name
    delete_amqp_pipeline(name)


def queued_payloads(queue: str) -> list[dict[str, Any]]:
    """The queue's messages, read straight from RabbitMQ and put back (never acked)."""

    async def main() -> list[dict[str, Any]]:
        connection = await aio_pika.connect(AMQP_ADDR, timeout=5.0)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            payloads = []
            while message := await declared.get(no_ack=False, fail=False, timeout=5.0):
                payloads.append(json.loads(message.body))
            return payloads  # closing the channel puts the unacked messages back

    return asyncio.run(main())


@pytest.mark.parametrize("path", ["in-process", "remote rpc"])
def test_an_unconfirmed_amqp_publish_answers_451_and_keeps_the_files_of_the_queued_job(
    proxy: MutingProxy, queue_name: str, start_server: Callable[..., RunningServer], path: str
) -> None:
    """In process the driver's error reaches the SMTP side; through a jobs node's API it
    comes back as the node's answer, with its type."""
    config = {"addr": f"amqp://guest:guest@127.0.0.1:{proxy.port}/", "queue": queue_name}
    jobs = {"pipelines": {"smtp-emails": {"driver": "amqp", "config": config}}}
    smtp: dict[str, Any] = {
        "attachment_storage": {"mode": "tempfile"},
        "jobs": {"push_timeout": PUSH_TIMEOUT},
    }
    if path == "remote rpc":
        api_port = free_port()
        start_server(record=False, rpc={"listen": f"127.0.0.1:{api_port}"}, jobs=jobs)
        smtp["jobs"]["rpc"] = f"http://127.0.0.1:{api_port}"
        ingress = start_server(record=False, smtp=smtp)
    else:
        ingress = start_server(record=False, smtp=smtp, jobs=jobs)
    proxy.mute(True)
    with capture_logs() as logs:
        reply, elapsed = timed_send(ingress)
    proxy.mute(False)
    assert reply == TEMP_FAILURE, f"{reply} after {elapsed:.2f}s"
    assert elapsed <= PUSH_TIMEOUT + 1 + 0.5, f"451 came after {elapsed:.2f}s"
    wait_until(lambda: len(queued_payloads(queue_name)) == 1, "the published job in the queue")
    (event,) = queued_payloads(queue_name)
    files = [Path(attachment["path"]) for attachment in event["attachments"]]
    assert [file.read_bytes() for file in files] == [b"DATA"], "the queued job lost its files"
    warnings = [e for e in logs if e["event"] == "push outcome unknown: attachments kept"]
    assert [(e["log_level"], e["id"]) for e in warnings] == [("warning", event["id"])], logs


def test_a_push_to_a_jobs_node_that_is_not_there_answers_451_and_leaves_no_files(
    start_server: Callable[..., RunningServer],
) -> None:
    """Refused before anything was sent: nothing can be stored, so nothing is kept."""
    ingress = start_server(
        record=False,
        smtp={
            "attachment_storage": {"mode": "tempfile"},
            "jobs": {"rpc": f"http://127.0.0.1:{free_port()}", "push_timeout": PUSH_TIMEOUT},
        },
    )
    reply, _ = timed_send(ingress)
    assert reply == TEMP_FAILURE
    leftovers = list(ingress.config.attachments_dir.iterdir())
    assert leftovers == [], f"a refused message left {leftovers}"
