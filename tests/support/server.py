"""A real mailrunner App on a background loop, so blocking clients (smtplib, swaks) and
asyncio clients (aiosmtplib) drive it over real TCP exactly as users do."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from mailrunner.app import App
from mailrunner.config import config_from_mapping
from mailrunner.events import EmailEvent
from mailrunner.loops import UVLOOP_REQUIREMENT, new_event_loop
from mailrunner.smtp.delivery import Outcome
from support.events import decode_event
from support.requirements import unavailable
from support.waiting import WAIT_SECONDS

LOOPS = ("asyncio", "uvloop")
"""The event loops `server.loop` can force: tests of loop-sensitive paths run on each, since
the default (`auto`) covers only the one installed."""


def on_loop(kind: str) -> dict[str, Any]:
    """The `server` overrides that run a server on `kind`; a missing uvloop skips on a laptop
    and fails in CI, where it is a default dependency."""
    if kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
        unavailable(f"uvloop is not installed (pip install '{UVLOOP_REQUIREMENT}')")
    return {"loop": kind}


def with_test_pipeline(smtp_jobs: dict[str, Any]) -> dict[str, Any]:
    """Tests push to the `smtp-emails` pipeline the harness declares unless they name others
    (the inbox is off unless a test configures `inbox`: it has tests of its own)."""
    if "pipeline" in smtp_jobs or "pipelines" in smtp_jobs:
        return smtp_jobs
    return {**smtp_jobs, "pipeline": "smtp-emails"}


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
        settings["smtp"]["jobs"] = with_test_pipeline(settings["smtp"].get("jobs", {}))
        settings.setdefault("inbox", {"enabled": False})
        settings["rpc"] = {"listen": "127.0.0.1:0", **overrides.get("rpc", {})}
        jobs = settings["jobs"] = dict(overrides.get("jobs", {}))
        jobs["pipelines"] = {"smtp-emails": {"driver": "memory"}, **jobs.get("pipelines", {})}
        self.config = config_from_mapping(settings, "test")
        self.delivery = RecordingDelivery()
        self._record = record
        self.loop = new_event_loop(self.config.server.loop)
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
