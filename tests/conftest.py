"""Shared fixtures: a real mailrunner SMTP server on a background loop, and the event schema.

The server runs on its own thread and event loop so that blocking clients (smtplib, swaks)
and asyncio clients (aiosmtplib) drive it over real TCP exactly as users do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import nats
import nats.js.errors
import pytest
import yaml
from hypothesis import HealthCheck, settings

from mailrunner.app import App
from mailrunner.config import config_from_mapping
from mailrunner.events import Authentication, EmailEvent
from mailrunner.mime.attachments import MemoryStorage
from mailrunner.mime.build import Arrival, EventBuilder
from mailrunner.mime.parse import ParseOptions
from mailrunner.smtp.delivery import Outcome

REQUIRE_TOOLS = (
    os.environ.get("MAILRUNNER_REQUIRE_BROKERS") == "1" or os.environ.get("CI") == "true"
)
WAIT_SECONDS = 10.0

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

_SCHEMA = json.loads(
    resources.files("mailrunner")
    .joinpath("schema/email_received.v1.json")
    .read_text(encoding="utf-8")
)
EVENT_VALIDATOR = jsonschema.Draft202012Validator(
    _SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def validate_event(event: dict[str, Any]) -> None:
    """Fail the test with the schema's own explanation when an event is malformed."""
    errors = sorted(EVENT_VALIDATOR.iter_errors(event), key=lambda e: list(e.path))
    if errors:
        details = "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
        pytest.fail(f"event does not match email_received.v1.json: {details}")


def decode_event(event: EmailEvent) -> dict[str, Any]:
    """Encode as the server would, check it round-trips as UTF-8 JSON and matches the schema."""
    decoded: dict[str, Any] = json.loads(event.to_json().decode("utf-8"))
    validate_event(decoded)
    return decoded


BUILDER = EventBuilder(
    hostname="mx.test",
    options=ParseOptions(max_depth=8),
    storage=MemoryStorage(),
    include_raw=True,
    offload_bytes=1 << 30,
)


def arrival() -> Arrival:
    """What a session would know about a message, for building events without a server."""
    return Arrival(
        event_id=str(uuid.uuid4()),
        connection_id=str(uuid.uuid4()),
        remote_addr="127.0.0.1:2525",
        remote_host="127.0.0.1",
        received_at=datetime.now(UTC),
        helo="client.example",
        esmtp=True,
        mail_from="a@example.com",
        rcpt_to=("b@example.com",),
        authentication=Authentication("PLAIN", "u", "p"),
    )


class RecordingDelivery:
    """A delivery for SMTP-side tests: records events; can be told to stall or fail."""

    destination = "the test's recorder"

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.outcome = Outcome.ACCEPTED
        self.failure: Exception | None = None
        self.release: asyncio.Event | None = None
        self.entered = threading.Event()
        self._changed = threading.Condition()

    async def deliver(self, event: EmailEvent) -> Outcome:
        self.entered.set()
        if self.release is not None:
            await self.release.wait()
        if self.failure is not None:
            raise self.failure
        decoded = decode_event(event)
        with self._changed:
            self.events.append(decoded)
            self._changed.notify_all()
        return self.outcome

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[dict[str, Any]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.events) >= count, timeout):
                pytest.fail(f"expected {count} delivered events, got {len(self.events)}")
            return list(self.events)


class RunningServer:
    """A started App on a private loop thread; `call` runs coroutines on that loop."""

    def __init__(self, overrides: dict[str, Any], data_dir: Path, *, record: bool = True) -> None:
        settings: dict[str, Any] = {"data_dir": str(data_dir), **overrides}
        settings["smtp"] = {"addr": "127.0.0.1:0", **overrides.get("smtp", {})}
        settings["rpc"] = {"listen": "127.0.0.1:0", **overrides.get("rpc", {})}
        jobs = settings["jobs"] = dict(overrides.get("jobs", {}))
        jobs["pipelines"] = {"smtp-emails": {"driver": "memory"}, **jobs.get("pipelines", {})}
        self.config = config_from_mapping(settings, "test")
        self.delivery = RecordingDelivery()
        self._record = record
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.app = self.call(self._start())
        self.host, self.port = self.app.smtp.address
        self.api_url = "http://{}:{}".format(*self.app.api.address)

    async def _start(self) -> App:
        app = App(self.config, "test", self.delivery if self._record else None)
        await app.start()
        return app

    def call(self, coroutine: Any, timeout: float = WAIT_SECONDS * 3) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def hold_deliveries(self) -> Callable[[], None]:
        """Make deliveries wait until the returned function is called."""

        async def create() -> asyncio.Event:
            return asyncio.Event()

        release = self.call(create())
        self.delivery.release = release
        self.delivery.entered.clear()
        return lambda: self.loop.call_soon_threadsafe(release.set)

    def connection_count(self) -> int:
        async def count() -> int:
            return len(self.app.smtp.connections)

        result: int = self.call(count())
        return result

    def stop(self) -> None:
        if self.loop.is_running():
            self.call(self.app.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(WAIT_SECONDS)
        self.loop.close()


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


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    """Poll a condition with a deadline (for state that offers no notification)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def swaks() -> str:
    """The swaks binary; skipped locally when missing, a failure in CI."""
    path = shutil.which("swaks")
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail("swaks is not installed (CI installs it: apt-get install swaks)")
        pytest.skip("swaks is not installed (apt-get install swaks)")
    return path


def require_broker(name: str, host: str, port: int) -> None:
    """Make sure a broker listens on host:port: skipped locally when it does not, a failure in
    CI (`MAILRUNNER_REQUIRE_BROKERS=1`), where every broker must be there."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return
    except OSError as error:
        reason = f"{name} is not reachable on {host}:{port} ({error})"
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason}; CI must start it before the tests")
    pytest.skip(reason)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`mailrunner ARGS` in a child process, as a user runs it; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mailrunner", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


class ServeProcess:
    """A `mailrunner serve` child with its own config, data dir and captured logs."""

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.api_port = free_port()
        config = {
            "rpc": {"listen": f"127.0.0.1:{self.api_port}"},
            "jobs": {"pipelines": {"smtp-emails": {"driver": "sqlite"}}},
            **settings,
            "smtp": {**settings.get("smtp", {}), "addr": f"127.0.0.1:{self.port}"},
        }
        (workdir / "mailrunner.yaml").write_text(yaml.safe_dump(config))
        self.pidfile = workdir / "server.pid"
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailrunner", "serve", "--pidfile", str(self.pidfile)],
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, "the server to write its pidfile")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"server exited early:\n{self.log_path.read_text()}")
        # the pid, not just a pidfile: a restart in the same workdir finds the old one there
        return self.pidfile.exists() and self.pidfile.read_text().strip() == str(self.process.pid)

    def events(self) -> list[dict[str, Any]]:
        """The events stored as `smtp.email` jobs in the sqlite pipeline, in push order."""
        path = self.workdir / "var" / "jobs.db"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path)) as database:
            rows = database.execute(
                "SELECT payload FROM jobs WHERE name = 'smtp.email' ORDER BY seq"
            )
            events = [json.loads(payload) for (payload,) in rows]
        for event in events:
            validate_event(event)
        return events

    def wait_events(self, count: int) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events()) >= count, f"{count} email jobs in var/jobs.db")
        return self.events()

    def terminate(self) -> int:
        """SIGTERM and wait; a server that does not stop in time is killed and the test fails."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"the server did not stop within 30 s of SIGTERM:\n{self.logs()[-3000:]}")
        finally:
            self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


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
