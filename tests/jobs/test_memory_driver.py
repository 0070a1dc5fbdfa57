"""The in-memory driver passes the driver contract and holds at most `max_queued` jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from contract import (
    DriverContract,
    Harness,
    assert_stat,
    drain,
    fail,
    make_job,
    make_jobs,
    push,
    queue_stat,
)

from mailrunner.errors import DriverError
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.model import Capabilities

MEMORY_CAPABILITIES = Capabilities(
    durable=False, idempotent_push=True, atomic_batch=True, priority=True, delay=True, peek=True
)


class TestMemoryDriver(DriverContract):
    @pytest.fixture
    def pipeline_settings(self, tmp_path: Path) -> dict[str, Any]:
        return {"driver": "memory"}

    def test_declares_exactly_its_capabilities(self, harness: Harness) -> None:
        """A capability left undeclared would turn its contract tests into skips."""

        async def scenario(driver: Driver) -> None:
            assert driver.capabilities == MEMORY_CAPABILITIES, driver.capabilities

        harness.run(scenario)


def test_max_queued_defaults_to_100000() -> None:
    harness = Harness.from_settings({"driver": "memory"}, Path("unused"))

    async def scenario(driver: Driver) -> None:
        await push(driver, *make_jobs(*(f"job-{n}" for n in range(100_000))))
        with pytest.raises(DriverError, match=r"max_queued \(100000\)"):
            await push(driver, make_job("one-too-many"))
        await assert_stat(driver, queue_stat(queued=100_000), "the refused job was stored")

    harness.run(scenario)


def test_a_push_beyond_max_queued_fails_whole_and_stores_nothing(tmp_path: Path) -> None:
    harness = Harness.from_settings({"driver": "memory", "config": {"max_queued": 3}}, tmp_path)

    async def scenario(driver: Driver) -> None:
        await push(driver, *make_jobs("a", "b"))
        with pytest.raises(DriverError, match="max_queued"):
            await push(driver, *make_jobs("c", "d"))
        await assert_stat(driver, queue_stat(queued=2), "part of a refused batch was stored")
        await push(driver, make_job("c"))
        with pytest.raises(DriverError, match="max_queued"):
            await push(driver, make_job("d"))
        await push(driver, make_job("a"))  # an id already stored takes no room: a no-op
        await assert_stat(driver, queue_stat(queued=3), "a full pipeline")

    harness.run(scenario)


def test_reserved_and_delayed_jobs_count_towards_max_queued_failed_and_acked_do_not(
    tmp_path: Path,
) -> None:
    harness = Harness.from_settings({"driver": "memory", "config": {"max_queued": 2}}, tmp_path)

    async def scenario(driver: Driver) -> None:
        await push(driver, make_job("leased"), make_job("delayed", delay=60))
        leased = await drain(driver, 1)
        with pytest.raises(DriverError, match="max_queued"):
            await push(driver, make_job("refused"))
        await fail(leased)
        await push(driver, make_job("after-failure"))
        await assert_stat(driver, queue_stat(queued=1, delayed=1, failed=1), "after a failure")
        await driver.retry_failed()
        with pytest.raises(DriverError, match="max_queued"):
            await push(driver, make_job("refused"))
        for lease in await drain(driver, 2, limit=2):
            await lease.ack()
        await push(driver, make_job("after-ack"))
        await assert_stat(driver, queue_stat(queued=1, delayed=1), "after two acks")

    harness.run(scenario)
