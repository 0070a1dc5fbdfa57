"""A push whose outcome is unknown keeps the email's attachment files.

When RabbitMQ has the publish but its confirm does not come back in time, the amqp driver
cannot withdraw it: the job may be stored. The SMTP client gets 451 (it sends again: at least
once), and the files stay for the job that is in the queue. The missing confirm is made as a
stalled network would make it: a proxy in front of the machine's RabbitMQ stops passing the
broker's frames on, while the driver's own frames still reach the broker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from structlog.testing import capture_logs

from support.brokers import AMQP_ADDR, AMQP_HOST, AMQP_PORT, amqp_addr
from support.net import free_port
from support.proxy import BrokerProxy
from support.requirements import require_broker
from support.sample_mail import TEMP_FAILURE, timed_send
from support.server import RunningServer
from support.waiting import wait_until

PUSH_TIMEOUT = 0.5


@pytest.fixture
def proxy() -> Iterator[BrokerProxy]:
    require_broker("amqp", AMQP_HOST, AMQP_PORT)
    running = BrokerProxy()
    yield running
    running.close()


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
    proxy: BrokerProxy, queue_name: str, start_server: Callable[..., RunningServer], path: str
) -> None:
    """In process the driver's error reaches the SMTP side; through a jobs node's API it
    comes back as the node's answer, with its type."""
    config = {"addr": amqp_addr(proxy.port), "queue": queue_name}
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
