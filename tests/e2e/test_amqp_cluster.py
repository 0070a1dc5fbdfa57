"""Many nodes on one broker pipeline: two SMTP ingress processes push into one RabbitMQ
queue and two consumer processes drain it."""

from __future__ import annotations

import smtplib
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.brokers import AMQP_ADDR, amqp_answers, delete_amqp_pipeline
from support.processes import ServeProcess
from support.requirements import require_broker
from support.waiting import wait_until

JOB_WORKER = Path(__file__).parents[1] / "jobs" / "job_worker.py"
EMAILS = 2000


@pytest.mark.amqp
def test_two_ingress_and_two_consumer_nodes_consume_each_email_exactly_once(tmp_path: Path) -> None:
    require_broker("rabbitmq", "127.0.0.1", 5672)
    wait_until(lambda: amqp_answers(AMQP_ADDR), "RabbitMQ to accept AMQP connections", 60)
    queue = f"mailrunner.cluster.{uuid.uuid4().hex[:10]}"
    log = tmp_path / "executed.log"
    config = {"addr": AMQP_ADDR, "queue": queue}
    pipeline = {"smtp-emails": {"driver": "amqp", "prefetch": 20, "config": config}}
    nodes: list[ServeProcess] = []
    try:
        for index in range(2):
            workdir = tmp_path / f"ingress{index}"
            workdir.mkdir()
            nodes.append(ServeProcess(workdir, {"jobs": {"pipelines": pipeline}}))
        for index in range(2):
            workdir = tmp_path / f"consumer{index}"
            workdir.mkdir()
            consumer = {
                "server": {
                    "command": [sys.executable, str(JOB_WORKER)],
                    "env": {"JOB_LOG": str(log)},
                },
                "jobs": {
                    "pipelines": pipeline,
                    "consume": ["smtp-emails"],
                    "pool": {"num_workers": 2},
                },
            }
            nodes.append(ServeProcess(workdir, consumer))
        ingress = nodes[:2]

        def sender(index: int) -> list[str]:
            node = ingress[index % 2]
            accepted = []
            with smtplib.SMTP("127.0.0.1", node.port, timeout=30) as client:
                client.ehlo("cluster.test")
                for _ in range(EMAILS // 20):
                    client.mail("a@example.com")
                    client.rcpt("b@example.com")
                    code, reply = client.data(b"Subject: cluster\r\n\r\nbody\r\n")
                    assert code == 250, reply
                    accepted.append(reply.decode().rsplit(" ", 1)[-1])
            return accepted

        with ThreadPoolExecutor(20) as senders:
            accepted = [event_id for ids in senders.map(sender, range(20)) for event_id in ids]
        assert len(accepted) == EMAILS

        def executed() -> list[str]:
            return (
                [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []
            )

        wait_until(lambda: len(executed()) >= EMAILS, f"{EMAILS} executed emails", 120)
        ran = executed()
        assert sorted(ran) == sorted(accepted), "every accepted email must be consumed exactly once"
        consumers = {line.split()[2] for line in log.read_text().splitlines()}
        assert len(consumers) >= 2, "the work is shared by the consumer nodes' workers"
    finally:
        for node in nodes:
            node.terminate()
        delete_amqp_pipeline(queue)
