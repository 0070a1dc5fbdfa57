"""A broker driver's client library is an extra: without it, start-up stops with the line
that installs it, and the drivers that need no extra still work."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from mailrunner.config import config_from_mapping
from mailrunner.errors import DriverUnavailable
from mailrunner.jobs.service import JobsService

EXTRAS = [("redis", "redis", "redis"), ("amqp", "aio_pika", "amqp"), ("nats", "nats", "nats")]
"""Driver, the client library it imports, the extra that installs that library."""


def hide(monkeypatch: pytest.MonkeyPatch, library: str, driver: str) -> None:
    """Make `import library` fail as it does when the library is not installed, and make the
    driver module import again (a module already imported would not notice)."""
    for module in [m for m in sys.modules if m == library or m.startswith(f"{library}.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, library, None)
    monkeypatch.delitem(sys.modules, f"mailrunner.jobs.drivers.{driver}", raising=False)


def service(tmp_path: Path, driver: str) -> JobsService:
    config = config_from_mapping(
        {
            "data_dir": str(tmp_path),
            "smtp": {"use_jobs": False},
            "server": {"command": "never-started"},
            "jobs": {"pipelines": {"q": {"driver": driver}, "local": {"driver": "sqlite"}}},
        }
    )
    return JobsService(config)


@pytest.mark.parametrize(("driver", "library", "extra"), EXTRAS)
def test_a_driver_whose_extra_is_missing_stops_start_up_with_the_pip_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, driver: str, library: str, extra: str
) -> None:
    hide(monkeypatch, library, driver)
    jobs = service(tmp_path, driver)
    with pytest.raises(DriverUnavailable) as raised:
        asyncio.run(jobs.start())
    message = str(raised.value)
    assert f"pip install 'mailrunner[{extra}]'" in message, message
    assert message.startswith(f"pipeline q: the {driver} driver"), message
    assert library in message, message


@pytest.mark.parametrize(("driver", "library", "extra"), EXTRAS)
def test_sqlite_and_memory_pipelines_need_no_broker_library(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, driver: str, library: str, extra: str
) -> None:
    hide(monkeypatch, library, driver)
    for local in ("memory", "sqlite"):
        jobs = service(tmp_path / local, local)

        async def start_and_stop(jobs: JobsService = jobs) -> list[str]:
            await jobs.start()
            try:
                return jobs.list_pipelines()
            finally:
                await jobs.stop()

        assert asyncio.run(start_and_stop()) == ["local", "q"]
