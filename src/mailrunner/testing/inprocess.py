"""A whole mailrunner inside the test process: the pytest fixtures' server, and
`server()` / `aserver()` for unittest, behave or a script.

The App runs on an event loop of its own, on a background thread, so that it serves whether
the test blocks (smtplib, `Mailbox.wait_for`) or runs on a loop of its own (aiosmtplib,
pytest-asyncio): nothing of the caller's loop, policy or logging setup is touched.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from mailrunner.app import App
from mailrunner.config import Config, config_from_mapping
from mailrunner.loops import new_event_loop
from mailrunner.testing.logs import routed_to_stdlib
from mailrunner.testing.mailbox import Mailbox

CONTROL_TIMEOUT = 30.0
"""Longest a start or a stop may take before the test is told the server hangs."""
SOURCE = "mailrunner.testing"
"""The configuration's source, as the server's errors and log name it."""


def settings_for_tests(data_dir: Path) -> dict[str, Any]:
    """What a test's server differs in from `mailrunner serve`'s default: free loopback
    ports, its own data_dir, the faults API on. No pipeline is consumed, so no worker
    process starts."""
    return {
        "data_dir": str(data_dir),
        "smtp": {"addr": "127.0.0.1:0", "faults_api": True},
        "rpc": {"listen": "127.0.0.1:0"},
        "inbox": {"enabled": True},
    }


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, section by section (a mapping merges into a
    mapping; anything else replaces)."""
    result = dict(base)
    for key, value in overrides.items():
        current = result.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            result[key] = merged(current, value)
        else:
            result[key] = value
    return result


class InProcessServer:
    """A started App on a private loop thread. `smtp_host`, `smtp_port` and `api_url` say
    where it listens; `mailbox` sees what it accepted since it started."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._loop = new_event_loop(config.server.loop)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mailrunner-server", daemon=True
        )
        self._thread.start()
        try:
            self.app: App = self._call(self._start())
        except BaseException:
            self._end_loop()
            raise
        self.smtp_host, self.smtp_port = self.app.smtp.address
        self.api_url = "http://{}:{}".format(*self.app.api.address)
        self.mailbox = Mailbox(self.api_url, self.token, inbox_pipeline=config.inbox.pipeline)

    @property
    def token(self) -> str | None:
        """The API's bearer token, when the configuration sets one."""
        return self.config.rpc.token

    async def _start(self) -> App:
        app = App(self.config, SOURCE)
        await app.start()
        return app

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(CONTROL_TIMEOUT)

    def stop(self) -> None:
        """Stop gracefully (open SMTP sessions get smtp.shutdown_timeout), then end the loop."""
        self.mailbox.close()
        try:
            self._call(self.app.stop())
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT)
        self._loop.close()


def start(overrides: Mapping[str, Any], data_dir: Path) -> InProcessServer:
    """A server with `overrides` (nested like the YAML file) over the test settings."""
    settings = merged(settings_for_tests(data_dir), overrides)
    return InProcessServer(config_from_mapping(settings, SOURCE))


@contextmanager
def server(**config: Any) -> Iterator[InProcessServer]:
    """A server for as long as the block runs, in a temporary data_dir unless `config`
    names one: `with server(smtp={"max_message_size": 10_000}) as srv: ...`."""
    with TemporaryDirectory(prefix="mailrunner-") as data_dir, routed_to_stdlib():
        running = start(config, Path(data_dir))
        try:
            yield running
        finally:
            running.stop()


@asynccontextmanager
async def aserver(**config: Any) -> AsyncIterator[InProcessServer]:
    """`server()` for async code: starts and stops on a worker thread, so the caller's loop
    goes on serving meanwhile."""
    with TemporaryDirectory(prefix="mailrunner-") as data_dir, routed_to_stdlib():
        running = await asyncio.to_thread(start, config, Path(data_dir))
        try:
            yield running
        finally:
            await asyncio.to_thread(running.stop)
