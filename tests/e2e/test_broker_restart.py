"""A broker restart during a load: no acknowledged email lost, SMTP clients see 451 while it
is down, and the flow resumes without restarting mailrunner.

For each broker driver a background thread sends emails continuously over SMTP, each with a
unique Message-ID, while the broker is stopped and started again under it. Every Message-ID
that got 250 must be stored in the pipeline afterwards (duplicates are allowed, losses are
not); while the broker is down the clients must see 451; once it is back, 250s must come
again from the same mailrunner. Each broker is a private server of the test's own, on free
ports and a tmp dir, never the machine's: redis-server and nats-server are killed with SIGKILL,
the RabbitMQ node is shut down by SIGTERM (as `rabbitmqctl stop` would) and counts as back
once it accepts AMQP connections again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import smtplib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from support.brokers import (
    DURABLE_REDIS,
    NATS_SERVER,
    RABBITMQ_SERVER,
    NatsServer,
    RabbitMQServer,
    RedisServer,
    delete_streams,
    listening,
    require_binary,
)
from support.requirements import require_broker
from support.server import RunningServer

FIRST_ACCEPTS = 100
"""250s to see before the broker goes away: the load is flowing."""
REFUSALS_WHILE_DOWN = 5
DOWN_AT_LEAST = 1.0
"""The broker stays down until this many 451s and this many seconds have passed."""
ACCEPTS_AFTER_RESTART = 5
"""250s to see after the broker is back: the flow has resumed."""
TEMP_FAILURE_CODE = 451
PIPELINE = "smtp-emails"


# --- the SMTP load -------------------------------------------------------------------------


def message(message_id: str) -> bytes:
    return (
        "From: A <a@example.com>\r\nTo: b@example.com\r\nSubject: restart\r\n"
        f"Message-ID: {message_id}\r\n\r\nbody\r\n"
    ).encode()


class Sender:
    """Threads that send emails continuously until stopped, recording each outcome by
    Message-ID: accepted (250), refused (451), other replies, and connection errors."""

    def __init__(self, host: str, port: int, threads: int = 2) -> None:
        self.host = host
        self.port = port
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.other: list[tuple[str, int, bytes]] = []
        self.errors: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"smtp-sender-{index}", daemon=True)
            for index in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        assert not alive, f"sender threads did not stop: {alive}"

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self.accepted), len(self.refused)

    def summary(self) -> str:
        with self._lock:
            return (
                f"250: {len(self.accepted)}, 451: {len(self.refused)}, "
                f"other replies: {self.other[:5]}, errors: {len(self.errors)} {self.errors[:5]}"
            )

    def _record(self, bucket: list[Any], item: Any) -> None:
        with self._lock:
            bucket.append(item)

    def _run(self) -> None:
        client: smtplib.SMTP | None = None
        while not self._stop.is_set():
            message_id = f"<{uuid.uuid4().hex}@restart.test>"
            try:
                if client is None:
                    client = smtplib.SMTP(self.host, self.port, timeout=15)
                    client.ehlo("restart.test")
                client.mail("a@example.com")
                client.rcpt("b@example.com")
                code, reply = client.data(message(message_id))
            except (OSError, smtplib.SMTPException) as error:
                self._record(self.errors, (message_id, repr(error)))
                if client is not None:
                    with contextlib.suppress(OSError, smtplib.SMTPException):
                        client.close()
                client = None
                time.sleep(0.05)
                continue
            if code == 250:
                self._record(self.accepted, message_id)
            elif code == TEMP_FAILURE_CODE:
                self._record(self.refused, message_id)
                time.sleep(0.02)
            else:
                self._record(self.other, (message_id, code, reply))
                time.sleep(0.02)
        if client is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()


@contextlib.contextmanager
def sending(server: RunningServer) -> Iterator[Sender]:
    sender = Sender(server.host, server.port)
    sender.start()
    try:
        yield sender
    finally:
        sender.stop()


def wait_for(sender: Sender, condition: Callable[[], bool], what: str, timeout: float) -> None:
    """wait_until, failing with what the senders saw by then."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; {sender.summary()}")
        time.sleep(0.01)


def restart_under_load(
    server: RunningServer,
    stop_broker: Callable[[], None],
    start_broker: Callable[[], None],
) -> Sender:
    """Drive the load through a broker stop and start; return the sender's record."""
    with sending(server) as sender:
        wait_for(
            sender,
            lambda: sender.counts()[0] >= FIRST_ACCEPTS,
            f"{FIRST_ACCEPTS} emails accepted",
            15.0,
        )
        stop_broker()
        down_since = time.monotonic()
        wait_for(
            sender,
            lambda: (
                sender.counts()[1] >= REFUSALS_WHILE_DOWN
                and time.monotonic() - down_since >= DOWN_AT_LEAST
            ),
            f"{REFUSALS_WHILE_DOWN} 451s while the broker is down",
            15.0,
        )
        start_broker()
        resumed_from = sender.counts()[0]
        wait_for(
            sender,
            lambda: sender.counts()[0] >= resumed_from + ACCEPTS_AFTER_RESTART,
            "250s again after the broker restart, without restarting mailrunner",
            20.0,
        )
    return sender


def serve_pipeline(
    start_server: Callable[..., RunningServer], driver: str, config: dict[str, Any]
) -> RunningServer:
    """A mailrunner pushing every email into PIPELINE on `driver`; a 2 s push_timeout keeps
    the 451s coming quickly while the broker is away."""
    return start_server(
        record=False,
        smtp={"jobs": {"push_timeout": 2}},
        jobs={"pipelines": {PIPELINE: {"driver": driver, "config": config}}},
    )


def message_ids(payloads: list[bytes | str]) -> set[str]:
    return {json.loads(payload)["message"]["id"] for payload in payloads}


def assert_nothing_acknowledged_was_lost(sender: Sender, stored: set[str]) -> None:
    lost = [message_id for message_id in sender.accepted if message_id not in stored]
    assert not lost, (
        f"{len(lost)} of {len(sender.accepted)} emails answered 250 are not in the pipeline "
        f"(first: {lost[:5]}); {sender.summary()}"
    )
    assert not sender.other, f"only 250 or 451 expected: {sender.summary()}"
    assert not sender.errors, f"mailrunner stayed up, no connection may fail: {sender.summary()}"


def reserve_all(server: RunningServer) -> list[bytes | str]:
    """Read every stored job of a driver without peek: reserve and ack until none are left."""
    driver = server.app.jobs.pipeline(PIPELINE).driver

    async def take() -> list[bytes | str]:
        leases = await driver.reserve(500, 1.0)
        payloads = [lease.job.payload for lease in leases]
        await asyncio.gather(*(lease.ack() for lease in leases))
        return payloads

    payloads: list[bytes | str] = []
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        batch: list[bytes | str] = server.call(take())
        if not batch:
            return payloads
        payloads += batch
    pytest.fail(f"the pipeline was still not drained after 60s ({len(payloads)} jobs read)")


# --- the brokers ---------------------------------------------------------------------------


class Broker(Protocol):
    def start(self) -> None: ...

    def kill(self) -> None: ...


B = TypeVar("B", bound=Broker)


def running(broker: B) -> Iterator[B]:
    """A fixture's broker, started, and killed after the test whatever it did."""
    try:
        broker.start()
        yield broker
    finally:
        broker.kill()


def new_directory(path: Path) -> Path:
    path.mkdir()
    return path


# --- redis ---------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = require_binary(shutil.which("redis-server"), "redis-server")
    yield from running(RedisServer(binary, new_directory(tmp_path / "redis"), DURABLE_REDIS))


@pytest.mark.redis
def test_redis_restart_under_load_loses_no_acknowledged_email(
    start_server: Callable[..., RunningServer], own_redis: RedisServer
) -> None:
    require_broker("redis", "127.0.0.1", own_redis.port)
    addr = f"redis://127.0.0.1:{own_redis.port}/0"
    server = serve_pipeline(start_server, "redis", {"addr": addr, "timeout": 1})
    sender = restart_under_load(server, own_redis.kill, own_redis.start)
    assert server.app.jobs.pipeline(PIPELINE).driver.capabilities.peek
    jobs = server.call(server.app.jobs.peek(PIPELINE, 1_000_000))
    assert_nothing_acknowledged_was_lost(sender, message_ids([job.payload for job in jobs]))


# --- nats ----------------------------------------------------------------------------------


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    require_binary(NATS_SERVER, "nats-server")
    yield from running(NatsServer(new_directory(tmp_path / "nats-store")))


@pytest.mark.nats
def test_nats_restart_under_load_loses_no_acknowledged_email(
    start_server: Callable[..., RunningServer], own_nats: NatsServer
) -> None:
    require_broker("nats", "127.0.0.1", own_nats.port)
    stream = f"restart-{uuid.uuid4().hex}"
    config = {
        "addr": f"nats://127.0.0.1:{own_nats.port}",
        "stream": stream,
        "subject": f"restart.{stream}",
    }
    server = serve_pipeline(start_server, "nats", config)
    try:
        sender = restart_under_load(server, own_nats.kill, own_nats.start)
        stored = message_ids(reserve_all(server))
        assert_nothing_acknowledged_was_lost(sender, stored)
    finally:
        if listening(own_nats.port):
            delete_streams(own_nats.port, stream)


# --- amqp ----------------------------------------------------------------------------------


@pytest.fixture
def own_rabbitmq(tmp_path: Path) -> Iterator[RabbitMQServer]:
    require_binary(RABBITMQ_SERVER, "rabbitmq-server")
    yield from running(RabbitMQServer(new_directory(tmp_path / "rabbitmq")))


@pytest.mark.amqp
def test_rabbitmq_restart_under_load_loses_no_acknowledged_email(
    start_server: Callable[..., RunningServer], own_rabbitmq: RabbitMQServer
) -> None:
    config = {"addr": own_rabbitmq.addr, "queue": f"mailrunner.restart.{uuid.uuid4().hex[:12]}"}
    server = serve_pipeline(start_server, "amqp", config)
    sender = restart_under_load(server, own_rabbitmq.stop, own_rabbitmq.start)
    stored = message_ids(reserve_all(server))
    assert_nothing_acknowledged_was_lost(sender, stored)
