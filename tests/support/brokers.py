"""Broker processes of the tests' own: a redis-server, nats-server or RabbitMQ node in a tmp
dir on free ports, restartable on the same dir and ports, stopped by pid; and the helpers for
the machine's RabbitMQ, which no test may stop. Shared by the driver tests and the end-to-end
tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import nats
import nats.js.errors
import pytest
import redis

from support.net import free_port
from support.requirements import REQUIRE_TOOLS, require_broker
from support.waiting import wait_until

NATS_SERVER = "/usr/sbin/nats-server"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
"""The script itself, not /usr/sbin's wrapper, which runs as the rabbitmq user, in the
machine's broker's directory, logging into its files."""
SERVER_START_DEADLINE = 15.0
RABBITMQ_START_DEADLINE = 60.0
"""A node boots in 8-10 s here, a restart on its own data included; 2 busy cores can double
that."""
RABBITMQ_STOP_DEADLINE = 60.0
DURABLE_REDIS = {"appendonly": "yes", "appendfsync": "always"}
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672


def amqp_addr(port: int = AMQP_PORT) -> str:
    """The guest account's URL of a broker (or a proxy in front of it) on 127.0.0.1."""
    return f"amqp://guest:guest@{AMQP_HOST}:{port}/"


AMQP_ADDR = amqp_addr()


def require_binary(path: str | None, name: str) -> str:
    """The binary's path; skipped locally when it is missing, a failure in CI."""
    if path is None or not os.access(path, os.X_OK):
        reason = f"{name} is not installed (apt-get install {name})"
        if REQUIRE_TOOLS:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def answers_ping(port: int) -> bool:
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0) as client:
            return bool(client.ping())
    except redis.RedisError:  # refused while down, LOADING while it reads its AOF
        return False


class RedisServer:
    """A redis-server process of our own in a tmp dir, restartable on the same dir and port."""

    def __init__(self, binary: str, directory: Path, settings: dict[str, str]) -> None:
        self.binary = binary
        self.directory = directory
        self.settings = settings
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        options = {"save": "", **self.settings}
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--logfile", "redis.log"]
        for name, value in options.items():
            command += [f"--{name}", value]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        process = self.process
        wait_until(
            lambda: process.poll() is not None or answers_ping(self.port),
            f"redis-server on port {self.port} to answer PING",
            SERVER_START_DEADLINE,
        )
        if process.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"redis-server exited with {process.returncode}: {log}")

    def kill(self) -> None:
        """SIGKILL: nothing is flushed that was not already on disk."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def send_signal(self, signum: signal.Signals) -> None:
        assert self.process is not None, "the redis-server is not running"
        os.kill(self.process.pid, signum)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NatsServer:
    """A nats-server with JetStream of our own, restartable on the same store dir and port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [NATS_SERVER, "-js", "-sd", str(self.directory), "-a", "127.0.0.1"]
        command += ["-p", str(self.port), "-l", str(self.directory / "nats.log")]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        process = self.process
        wait_until(
            lambda: process.poll() is not None or listening(self.port),
            f"nats-server on port {self.port}",
            SERVER_START_DEADLINE,
        )
        if process.poll() is not None:
            pytest.fail(f"nats-server exited with {process.returncode}")

    def kill(self) -> None:
        """SIGKILL: nothing is flushed that was not already written."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def amqp_answers(addr: str) -> bool:
    """An open port is not enough: while it boots RabbitMQ listens before it lets anyone in."""

    async def connect() -> None:
        connection = await aio_pika.connect(addr, timeout=2)
        await connection.close()

    try:
        asyncio.run(connect())
    except (OSError, aio_pika.exceptions.AMQPError, TimeoutError):
        return False
    return True


class RabbitMQServer:
    """A RabbitMQ node of our own, never the machine's: its own node name, AMQP, distribution
    and epmd ports, and its data, logs, config and Erlang cookie in a tmp dir, so that stopping
    it touches no other broker. Restartable on the same dir and ports; `start` returns once the
    node accepts AMQP connections."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.addr = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.epmd_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        config = directory / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        plugins = directory / "enabled_plugins"
        plugins.write_text("[].\n")
        home = directory / "home"
        home.mkdir()
        # Each of the machine's /etc/rabbitmq files (its node name, port 5672, plugins) is
        # replaced by one of ours, not merged with it: none of them is read.
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": f"mailrunner-test-{uuid.uuid4().hex[:12]}@localhost",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
        }

    def start(self) -> None:
        with (self.directory / "rabbitmq-server.out").open("ab") as output:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        wait_until(
            lambda: (
                process.poll() is not None or (listening(self.port) and amqp_answers(self.addr))
            ),
            f"the RabbitMQ node on port {self.port} to accept AMQP connections",
            RABBITMQ_START_DEADLINE,
        )
        if process.poll() is not None:
            output_tail = (self.directory / "rabbitmq-server.out").read_text(errors="replace")
            pytest.fail(f"rabbitmq-server exited with {process.returncode}: {output_tail[-2000:]}")

    def stop(self) -> None:
        """SIGTERM: the script asks the node to shut down as `rabbitmqctl stop` would, and
        returns when it has."""
        assert self.process is not None, "the RabbitMQ node is not running"
        self.process.terminate()
        self.process.wait(RABBITMQ_STOP_DEADLINE)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the node's process group if it still runs, then stop the epmd it started
        on its own port: nothing of it is left running."""
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
        wait_until(self._epmd_gone, f"the epmd on port {self.epmd_port} to stop", 10.0)

    def _epmd_gone(self) -> bool:
        """Ask our epmd to exit; it refuses while it still lists the node that just died."""
        result = subprocess.run(
            ["epmd", "-port", str(self.epmd_port), "-kill"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.stdout.strip() == b"Killed" or not listening(self.epmd_port)


async def _delete_amqp_pipeline(queue: str, exchange: str) -> None:
    connection = await aio_pika.connect(AMQP_ADDR, timeout=10.0)
    async with connection:
        names = [queue, f"{queue}.failed", f"{queue}.delays"]
        channel = await connection.channel()
        try:
            catalog = await channel.declare_queue(f"{queue}.delays", passive=True)
            while (message := await catalog.get(no_ack=True, fail=False)) is not None:
                names.append(f"{queue}.delay.{message.body.decode()}")
        except aio_pika.exceptions.ChannelClosed:
            pass
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)
        channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(exchange)


def delete_amqp_pipeline(queue: str, exchange: str | None = None) -> None:
    """Delete an amqp pipeline's queues (its delay queues found through the catalog queue,
    as the driver finds them) and its exchange, leaving the machine's RabbitMQ as it was."""
    asyncio.run(_delete_amqp_pipeline(queue, exchange or queue))


def delete_streams(port: int, stream: str) -> None:
    """Remove a NATS pipeline's streams (its jobs and its failed list) after a test."""

    async def main() -> None:
        connection = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=5)
        try:
            jetstream = connection.jetstream()
            for name in (stream, f"{stream}_failed"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await jetstream.delete_stream(name)
        finally:
            await connection.close()

    asyncio.run(main())


def amqp_queue() -> Iterator[str]:
    """A fresh queue name on the machine's RabbitMQ, its pipeline deleted afterwards."""
    require_broker("amqp", AMQP_HOST, AMQP_PORT)
    name = f"mailrunner-test-{uuid.uuid4().hex}"
    yield name
    delete_amqp_pipeline(name)
