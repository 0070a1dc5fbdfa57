"""The behaviour every Jobs driver must show, written once and run against each driver.

This is the executable form of the docstrings in `mailrunner/jobs/driver.py`. A driver's test
module subclasses `DriverContract` and provides one fixture, `pipeline_settings(tmp_path)`,
the pipeline's configuration as the YAML file would give it; the contract builds the driver
it names through `mailrunner.jobs.drivers.build_driver`, as the service does. Every test opens
a fresh driver on its own event loop (`asyncio.run`), so no test depends on another. A
capability the driver does not declare is skipped, naming the capability. Times are short (a
visibility timeout of 0.5 s unless the settings choose one) and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from mailrunner.config import PipelineConfig
from mailrunner.errors import DriverError, PushTimeout
from mailrunner.jobs.deadline import VERDICT_GRACE
from mailrunner.jobs.driver import Driver, Lease, ack_all
from mailrunner.jobs.drivers import build_driver
from mailrunner.jobs.model import Headers, Job, JobOptions, QueueStat

PIPELINE = "contract"
VISIBILITY_TIMEOUT = 0.5
"""Seconds; used unless `pipeline_settings` sets `visibility_timeout` itself."""
LATE = 0.35
"""How much later than promised a wait may end (scheduling, a driver's polling)."""
EARLY = 0.05
"""How much earlier than due a job may appear (clock granularity)."""
STORED_LATE_BY = VERDICT_GRACE + LATE
"""Seconds past a push's deadline by which a store it raised for would have landed: a broker
driver waits VERDICT_GRACE for the broker's verdict, and LATE covers scheduling. A "nothing
was stored" check waits this long, so it outlasts every store a driver may still make."""
SCENARIO_DEADLINE = 30.0
DRAIN_DEADLINE = 10.0
MIB = 1024 * 1024
EMPTY = QueueStat(queued=0, delayed=0, reserved=0, failed=0)

Scenario = Callable[[Driver], Awaitable[None]]


def queue_stat(
    *, queued: int = 0, delayed: int = 0, reserved: int = 0, failed: int = 0
) -> QueueStat:
    return QueueStat(queued=queued, delayed=delayed, reserved=reserved, failed=failed)


@dataclass(frozen=True)
class Harness:
    """Builds drivers for one pipeline and runs a scenario against a freshly opened one."""

    settings: PipelineConfig
    data_dir: Path
    name: str = PIPELINE

    @classmethod
    def from_settings(
        cls, pipeline_settings: dict[str, Any], data_dir: Path, name: str = PIPELINE
    ) -> Harness:
        """Validate settings as the config loader does; a short visibility timeout by default."""
        settings = {"visibility_timeout": VISIBILITY_TIMEOUT, **pipeline_settings}
        return cls(TypeAdapter(PipelineConfig).validate_python(settings), data_dir, name)

    @property
    def visibility_timeout(self) -> float:
        return float(self.settings.visibility_timeout)

    def build(self) -> Driver:
        """A new, unopened driver instance on the same settings and data_dir."""
        return build_driver(self.name, self.settings, self.data_dir)

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Driver]:
        driver = self.build()
        await driver.open()
        try:
            yield driver
        finally:
            await driver.close()

    def run(self, scenario: Scenario) -> None:
        async def main() -> None:
            deadline = asyncio.timeout(SCENARIO_DEADLINE)
            try:
                async with deadline, self.opened() as driver:
                    await scenario(driver)
            except TimeoutError:
                if not deadline.expired():
                    raise
                pytest.fail(f"the scenario did not finish within {SCENARIO_DEADLINE}s")

        asyncio.run(main())


def require(driver: Driver, capability: str) -> None:
    """Skip the test unless the driver declares `capability`."""
    if not getattr(driver.capabilities, capability):
        pytest.skip(f"{type(driver).__name__} does not declare capabilities.{capability}")


def make_job(
    job_id: str,
    payload: bytes = b"payload",
    *,
    priority: int = 10,
    delay: float = 0.0,
    headers: Headers | None = None,
) -> Job:
    return Job(
        id=job_id,
        name="contract.job",
        payload=payload,
        options=JobOptions(pipeline=PIPELINE, priority=priority, delay=delay),
        headers={"origin": ["contract"]} if headers is None else headers,
    )


def make_jobs(*job_ids: str) -> list[Job]:
    return [make_job(job_id, job_id.encode()) for job_id in job_ids]


def ids(items: Iterable[Lease | Job]) -> list[str]:
    return [item.job.id if isinstance(item, Lease) else item.id for item in items]


def describe(job: Job) -> str:
    return (
        f"Job(id={job.id!r}, name={job.name!r}, payload={len(job.payload)} bytes "
        f"starting {job.payload[:16]!r}, options={job.options!r}, headers={job.headers!r})"
    )


def soon(seconds: float = 10.0) -> float:
    """A push deadline comfortably in the future."""
    return time.monotonic() + seconds


async def push(driver: Driver, *jobs: Job) -> None:
    await driver.push(list(jobs), deadline=soon())


async def sleep_until(instant: float) -> None:
    """Let a lease or a delay run out (never used to wait for a condition)."""
    await asyncio.sleep(max(0.0, instant - time.monotonic()))


BROKER_GONE_DEADLINE = 10.0


async def until_broker_unreachable(driver: Driver) -> None:
    """Wait until the driver has seen its broker go: stat() then fails (at once, once the
    client knows; at the driver's own timeout while it does not yet)."""
    give_up = time.monotonic() + BROKER_GONE_DEADLINE
    while True:
        try:
            await driver.stat()
        except DriverError:
            return
        assert time.monotonic() < give_up, (
            f"the driver still reached its broker after {BROKER_GONE_DEADLINE}s"
        )
        await asyncio.sleep(0.02)


async def reserve_one(driver: Driver, wait: float, why: str) -> Lease:
    leases = await driver.reserve(1, wait)
    assert len(leases) == 1, f"{why}: reserve(1, {wait}) returned {len(leases)} leases"
    return leases[0]


async def drain(driver: Driver, count: int, limit: int = 1) -> list[Lease]:
    """Reserve until `count` leases are held, `limit` at a time, in the order served."""
    leases: list[Lease] = []
    give_up = time.monotonic() + DRAIN_DEADLINE
    while len(leases) < count:
        assert time.monotonic() < give_up, (
            f"only {len(leases)} of {count} jobs were reserved within {DRAIN_DEADLINE}s: "
            f"{ids(leases)}"
        )
        batch = await driver.reserve(limit, 1.0)
        assert len(batch) <= limit, f"reserve({limit}) returned {len(batch)} leases"
        leases.extend(batch)
    assert len(leases) == count, f"expected {count} leases, got {len(leases)}: {ids(leases)}"
    return leases


async def lease_all(driver: Driver, count: int) -> dict[str, Lease]:
    return {lease.job.id: lease for lease in await drain(driver, count, limit=count)}


async def fail(leases: Sequence[Lease], error: str = "failed by the contract") -> None:
    """Move leased jobs to the failed list, in the order given."""
    for lease in leases:
        await lease.nack(requeue=False, error=error)


async def assert_nothing_due(driver: Driver, why: str, wait: float = 0.1) -> None:
    leases = await driver.reserve(10, wait)
    assert leases == [], (
        f"{why}; reserved {[(lease.job.id, lease.attempt) for lease in leases]} (id, attempt)"
    )


async def assert_stat(driver: Driver, expected: QueueStat, why: str) -> None:
    got = await driver.stat()
    assert got == expected, f"{why}: expected {expected}, got {got}"


class DriverContract:
    """Subclass with a `pipeline_settings(tmp_path) -> dict` fixture to test a driver."""

    @pytest.fixture
    def harness(self, pipeline_settings: dict[str, Any], tmp_path: Path) -> Harness:
        return Harness.from_settings(pipeline_settings, tmp_path)

    # -- push, reserve, ack ---------------------------------------------------------------

    def test_pushed_job_is_reserved_once_and_gone_after_ack(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            job = make_job("job-1")
            await push(driver, job)
            await assert_stat(driver, queue_stat(queued=1), "a pushed job counts as queued")
            lease = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            assert lease.job == job, f"reserved {describe(lease.job)}, pushed {describe(job)}"
            assert lease.attempt == 1, f"first delivery must be attempt 1, got {lease.attempt}"
            await assert_stat(driver, queue_stat(reserved=1), "a leased job counts as reserved")
            await assert_nothing_due(driver, "a job was leased twice while its lease was valid")
            await lease.ack()
            await assert_stat(driver, EMPTY, "an acked job must be gone")
            await assert_nothing_due(driver, "an acked job was delivered again")

        harness.run(scenario)

    def test_reserve_never_returns_more_than_limit(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            jobs = make_jobs(*(f"job-{n}" for n in range(7)))
            await push(driver, *jobs)
            leases: list[Lease] = []
            for limit in (1, 2, 3):
                batch = await driver.reserve(limit, 1.0)
                assert 1 <= len(batch) <= limit, (
                    f"reserve({limit}) with {7 - len(leases)} jobs due returned {len(batch)}"
                )
                leases.extend(batch)
            leases.extend(await drain(driver, 7 - len(leases), limit=2))
            assert sorted(ids(leases)) == sorted(ids(jobs)), (
                f"every job must be leased exactly once, got {sorted(ids(leases))}"
            )

        harness.run(scenario)

    def test_reserve_returns_due_jobs_at_once_without_waiting_to_fill_its_limit(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("job-1", "job-2"))
            started = time.monotonic()
            leases = await driver.reserve(10, 5.0)
            elapsed = time.monotonic() - started
            assert leases, "reserve returned nothing although two jobs were due"
            assert elapsed < LATE, (
                f"reserve(10, wait=5) took {elapsed:.2f}s with jobs due; it must not wait "
                "for more jobs to fill its limit"
            )

        harness.run(scenario)

    def test_reserve_on_an_empty_pipeline_returns_nothing_once_its_wait_is_over(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            for wait in (0.0, 0.4):
                started = time.monotonic()
                leases = await driver.reserve(5, wait)
                elapsed = time.monotonic() - started
                assert leases == [], f"reserve on an empty pipeline returned {ids(leases)}"
                assert elapsed >= wait - EARLY, (
                    f"reserve(wait={wait}) gave up after {elapsed:.3f}s, before its wait"
                )
                assert elapsed <= wait + LATE, (
                    f"reserve(wait={wait}) returned [] after {elapsed:.3f}s; never later than "
                    "its wait"
                )

        harness.run(scenario)

    def test_waiting_reserve_wakes_up_when_another_task_pushes(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            waiter = asyncio.create_task(driver.reserve(1, 5.0))
            await asyncio.sleep(0.1)  # let the reserve start waiting on the empty pipeline
            assert not waiter.done(), "reserve(wait=5) returned at once on an empty pipeline"
            await push(driver, make_job("job-1"))
            pushed_at = time.monotonic()
            leases = await waiter
            woke_after = time.monotonic() - pushed_at
            assert ids(leases) == ["job-1"], f"the waiting reserve returned {ids(leases)}"
            assert woke_after < LATE, (
                f"the waiting reserve returned {woke_after:.2f}s after the push; it must wake "
                "when a job arrives, not when its wait runs out"
            )

        harness.run(scenario)

    def test_concurrent_reserves_never_lease_one_job_twice(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            jobs = make_jobs(*(f"job-{n:02}" for n in range(60)))
            await push(driver, *jobs)

            async def consume() -> list[str]:
                taken: list[str] = []
                while batch := await driver.reserve(4, 0.2):
                    taken.extend(ids(batch))
                    for lease in batch:  # acked, a job cannot come back through lease expiry
                        await lease.ack()
                return taken

            taken = [
                job_id
                for share in await asyncio.gather(*(consume() for _ in range(6)))
                for job_id in share
            ]
            assert len(taken) == len(set(taken)), (
                f"jobs leased twice while their leases were valid: "
                f"{sorted({job_id for job_id in taken if taken.count(job_id) > 1})}"
            )
            assert sorted(taken) == ids(jobs), f"missing jobs: {set(ids(jobs)) - set(taken)}"

        harness.run(scenario)

    def test_jobs_of_equal_priority_are_served_oldest_first(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            jobs = make_jobs(*(f"job-{n:02}" for n in range(15)))
            for job in jobs[:5]:
                await push(driver, job)
            await push(driver, *jobs[5:10])  # one batch keeps its order
            for job in jobs[10:]:
                await push(driver, job)
            served = await drain(driver, 5, limit=1) + await drain(driver, 10, limit=5)
            assert ids(served) == ids(jobs), (
                f"equal priority must be served in push order: got {ids(served)}"
            )

        harness.run(scenario)

    # -- leases ---------------------------------------------------------------------------

    def test_expired_lease_delivers_the_job_again_with_attempt_2(self, harness: Harness) -> None:
        timeout = harness.visibility_timeout

        async def scenario(driver: Driver) -> None:
            job = make_job("job-1")
            await push(driver, job)
            await reserve_one(driver, 1.0, "a pushed job must be reservable")
            leased_at = time.monotonic()
            await assert_nothing_due(
                driver, "the job was delivered again before its lease expired", timeout / 2
            )
            await sleep_until(leased_at + timeout + 0.1)
            await assert_stat(driver, queue_stat(queued=1), "an expired lease counts as queued")
            again = await reserve_one(driver, 1.0, "a job whose lease expired must come back")
            assert time.monotonic() - leased_at >= timeout - EARLY, "redelivered too early"
            assert again.job == job, f"redelivered {describe(again.job)}, pushed {describe(job)}"
            assert again.attempt == 2, f"redelivery after expiry is attempt {again.attempt}, not 2"
            await again.ack()
            await assert_stat(driver, EMPTY, "the redelivered job was acked")

        harness.run(scenario)

    def test_extend_keeps_a_job_leased_past_its_original_expiry(self, harness: Harness) -> None:
        timeout = harness.visibility_timeout

        async def scenario(driver: Driver) -> None:
            await push(driver, make_job("job-1"))
            lease = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            leased_at = time.monotonic()
            await sleep_until(leased_at + 0.4 * timeout)
            extended_at = time.monotonic()  # the new expiry is a full timeout after this
            await lease.extend()
            await sleep_until(leased_at + 1.1 * timeout)
            await assert_stat(
                driver, queue_stat(reserved=1), "an extended lease expired at its original time"
            )
            await assert_nothing_due(
                driver, "an extended lease expired at its original time", 0.1 * timeout
            )
            again = await reserve_one(driver, timeout + 1.0, "an extended lease must still expire")
            assert time.monotonic() - extended_at >= timeout - EARLY, (
                "the job came back before a full visibility timeout after extend()"
            )
            assert again.attempt == 2, f"redelivery after expiry is attempt {again.attempt}, not 2"

        harness.run(scenario)

    def test_ack_is_idempotent(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("job-1", "job-2"))
            lease = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            await lease.ack()
            await lease.ack()
            await assert_stat(driver, queue_stat(queued=1), "a second ack touched another job")
            other = await reserve_one(driver, 1.0, "the other job must still be there")
            assert other.job.id == "job-2", f"expected job-2, got {other.job.id}"

        harness.run(scenario)

    def test_ack_all_removes_every_leased_job_and_no_other(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("job-1", "job-2", "job-3", "job-4"))
            leases = await drain(driver, 3, limit=3)
            await ack_all(leases)
            await ack_all(leases)  # idempotent, like ack
            await assert_stat(driver, queue_stat(queued=1), "ack_all touched the wrong jobs")
            left = await reserve_one(driver, 1.0, "the job nobody leased must still be there")
            acked = {lease.job.id for lease in leases}
            assert left.job.id not in acked, f"{left.job.id} was acked and came back"

        harness.run(scenario)

    async def _stale_and_fresh(
        self, driver: Driver, visibility_timeout: float
    ) -> tuple[Lease, Lease]:
        """Lease job-1, let the lease expire, lease it again: (expired lease, valid lease)."""
        await push(driver, make_job("job-1", headers={"original": ["yes"]}))
        stale = await reserve_one(driver, 1.0, "a pushed job must be reservable")
        await sleep_until(time.monotonic() + visibility_timeout + 0.1)
        fresh = await reserve_one(driver, 1.0, "a job whose lease expired must come back")
        assert fresh.attempt == 2, f"redelivery after expiry is attempt {fresh.attempt}, not 2"
        return stale, fresh

    def test_ack_all_with_an_expired_lease_leaves_the_new_lease_alone(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            stale, fresh = await self._stale_and_fresh(driver, harness.visibility_timeout)
            await push(driver, make_job("job-2"))
            other = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            await ack_all([stale, other])
            await assert_stat(
                driver, queue_stat(reserved=1), "ack_all of an expired lease removed its job"
            )
            await fresh.ack()
            await assert_stat(driver, EMPTY, "the job was acked through its valid lease")

        harness.run(scenario)

    def test_ack_of_an_expired_lease_does_not_disturb_the_new_lease(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            stale, fresh = await self._stale_and_fresh(driver, harness.visibility_timeout)
            await stale.ack()
            await assert_stat(
                driver, queue_stat(reserved=1), "ack of an expired lease removed the re-leased job"
            )
            await fresh.nack(requeue=True)
            third = await reserve_one(driver, 1.0, "the new lease must still own the job")
            assert third.attempt == 3, f"expected attempt 3, got {third.attempt}"
            await third.ack()
            await assert_stat(driver, EMPTY, "the job was acked through its valid lease")

        harness.run(scenario)

    def test_nack_of_an_expired_lease_does_not_disturb_the_new_lease(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            stale, fresh = await self._stale_and_fresh(driver, harness.visibility_timeout)
            await stale.nack(requeue=False, error="stale")
            await stale.nack(requeue=True, headers={"stale": ["yes"]})
            await assert_stat(
                driver, queue_stat(reserved=1), "nack of an expired lease moved the re-leased job"
            )
            assert await driver.failed(10) == [], "nack of an expired lease failed the job"
            await assert_nothing_due(driver, "nack of an expired lease requeued a leased job")
            await fresh.nack(requeue=True)
            third = await reserve_one(driver, 1.0, "the new lease must still own the job")
            assert third.attempt == 3, f"expected attempt 3, got {third.attempt}"
            assert third.job.headers == {"original": ["yes"]}, (
                f"nack of an expired lease replaced the headers: {third.job.headers}"
            )

        harness.run(scenario)

    def test_extend_of_an_expired_lease_does_not_extend_the_new_lease(
        self, harness: Harness
    ) -> None:
        timeout = harness.visibility_timeout

        async def scenario(driver: Driver) -> None:
            stale, _fresh = await self._stale_and_fresh(driver, timeout)
            fresh_at = time.monotonic()
            await sleep_until(fresh_at + 0.5 * timeout)
            await stale.extend()
            await assert_stat(driver, queue_stat(reserved=1), "extend of an expired lease")
            await sleep_until(fresh_at + timeout + 0.1)
            await assert_stat(
                driver,
                queue_stat(queued=1),
                "the new lease must expire on its own schedule, not the expired lease's extend()",
            )
            third = await reserve_one(driver, 1.0, "the job must come back after the new lease")
            assert third.attempt == 3, f"expected attempt 3, got {third.attempt}"

        harness.run(scenario)

    # -- nack -----------------------------------------------------------------------------

    def test_nack_with_requeue_and_delay_makes_the_job_due_only_after_the_delay(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            job = make_job("job-1", headers={"kept": ["a", "b"]})
            await push(driver, job)
            first = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            nacked_at = time.monotonic()  # due no earlier than 0.5 s after this
            await first.nack(requeue=True, delay=0.5)
            await assert_stat(driver, queue_stat(delayed=1), "a job nacked with a delay")
            await assert_nothing_due(driver, "a job nacked with delay 0.5 s came back early", 0.25)
            second = await reserve_one(driver, 2.0, "the nacked job must be due after its delay")
            assert time.monotonic() - nacked_at >= 0.5 - EARLY, "due before its nack delay"
            assert second.attempt == 2, f"nack with requeue must add an attempt: {second.attempt}"
            assert second.job == job, f"nack without headers changed the job: {second.job}"
            await second.nack(requeue=True)
            started = time.monotonic()
            third = await reserve_one(driver, 2.0, "a job nacked without delay is due at once")
            assert time.monotonic() - started < LATE, "a job nacked without delay came back late"
            assert third.attempt == 3, f"second nack must make attempt 3, got {third.attempt}"

        harness.run(scenario)

    def test_release_gives_the_job_back_at_once_without_counting_the_attempt(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            first_job, second_job = make_jobs("job-1", "job-2")
            await push(driver, first_job, second_job)
            first = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            assert first.job.id == "job-1"
            await first.release()
            await assert_stat(driver, queue_stat(queued=2), "a released job is queued again")
            again = await reserve_one(driver, 1.0, "a released job must be due at once")
            assert again.job.id == "job-1", "a released job keeps its place in the queue"
            assert again.attempt == 1, f"release must not count an attempt: {again.attempt}"
            await first.release()
            await assert_stat(
                driver,
                queue_stat(queued=1, reserved=1),
                "a stale release must not free the new lease",
            )

        harness.run(scenario)

    def test_nack_with_headers_replaces_the_jobs_headers(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            job = make_job("job-1", b"body", headers={"a": ["1"], "b": ["2"]})
            await push(driver, job)
            first = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            replacement = {"retry-reason": ["timeout", "again"]}
            await first.nack(requeue=True, headers=replacement)
            second = await reserve_one(driver, 1.0, "a requeued job must be due again")
            assert second.job.headers == replacement, (
                f"nack(headers=...) must replace the headers, got {second.job.headers}"
            )
            assert (second.job.id, second.job.name, second.job.payload) == (
                job.id,
                job.name,
                job.payload,
            ), f"nack(headers=...) changed more than headers: {describe(second.job)}"
            assert second.attempt == 2, f"expected attempt 2, got {second.attempt}"

        harness.run(scenario)

    def test_nack_without_requeue_moves_the_job_to_the_failed_list(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            job = make_job("job-1", b"body", headers={"h": ["v"]})
            await push(driver, job)
            first = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            await first.nack(requeue=True)
            second = await reserve_one(driver, 1.0, "a requeued job must be due again")
            await second.nack(requeue=False, error="boom: 451 from upstream")
            await assert_stat(driver, queue_stat(failed=1), "a job nacked without requeue")
            failed = await driver.failed(10)
            assert len(failed) == 1, f"expected one failed job, got {len(failed)}"
            assert failed[0].job == job, f"failed list holds {describe(failed[0].job)}"
            assert failed[0].error == "boom: 451 from upstream", f"error: {failed[0].error!r}"
            assert failed[0].attempts == 2, f"failed after 2 attempts, says {failed[0].attempts}"
            await assert_nothing_due(driver, "a failed job must not be reservable")

        harness.run(scenario)

    def test_nack_without_requeue_with_headers_keeps_the_new_headers_on_the_failed_job(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, make_job("job-1", headers={"old": ["1"]}))
            lease = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            await lease.nack(requeue=False, error="x", headers={"new": ["2"]})
            failed = await driver.failed(10)
            assert [entry.job.headers for entry in failed] == [{"new": ["2"]}], (
                f"nack(headers=...) must replace the headers, failed list has {failed}"
            )
            assert await driver.retry_failed() == 1, "one failed job to retry"
            retried = await reserve_one(driver, 1.0, "a retried job must be due")
            assert retried.job.headers == {"new": ["2"]}, f"retried with {retried.job.headers}"

        harness.run(scenario)

    # -- the failed list ------------------------------------------------------------------

    def test_failed_lists_oldest_failure_first_up_to_its_limit(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("a", "b", "c"))
            leases = await lease_all(driver, 3)
            await fail([leases["c"], leases["a"], leases["b"]])
            assert ids(entry.job for entry in await driver.failed(10)) == ["c", "a", "b"], (
                "failed() must list the oldest failure first"
            )
            assert ids(entry.job for entry in await driver.failed(2)) == ["c", "a"], (
                "failed(2) must return the two oldest failures"
            )

        harness.run(scenario)

    def test_retry_failed_without_ids_makes_all_due_with_attempts_reset(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("a", "b"))
            for lease in await drain(driver, 2, limit=2):
                await lease.nack(requeue=True)
            await fail(await drain(driver, 2, limit=2))
            attempts = sorted(entry.attempts for entry in await driver.failed(10))
            assert attempts == [2, 2], f"both jobs failed on attempt 2, listed {attempts}"
            assert await driver.retry_failed() == 2, "retry_failed() must count both jobs"
            await assert_stat(driver, queue_stat(queued=2), "retried jobs are due again")
            retried = await drain(driver, 2, limit=2)
            assert sorted(ids(retried)) == ["a", "b"], f"retried {ids(retried)}"
            assert [lease.attempt for lease in retried] == [1, 1], (
                f"retry must reset attempts to 1: {[lease.attempt for lease in retried]}"
            )
            assert await driver.failed(10) == [], "retried jobs are still in the failed list"

        harness.run(scenario)

    def test_retry_failed_by_ids_retries_only_those_jobs(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("a", "b", "c"))
            leases = await lease_all(driver, 3)
            await fail([leases["a"], leases["b"], leases["c"]])
            retried_count = await driver.retry_failed(["a", "c", "never-pushed"])
            assert retried_count == 2, f"retry_failed([a, c, unknown]) returned {retried_count}"
            await assert_stat(driver, queue_stat(queued=2, failed=1), "after retrying a and c")
            assert ids(entry.job for entry in await driver.failed(10)) == ["b"], (
                "only b must stay failed"
            )
            retried = await drain(driver, 2, limit=2)
            assert sorted(ids(retried)) == ["a", "c"], f"retried {ids(retried)}"
            assert [lease.attempt for lease in retried] == [1, 1], "retry must reset attempts"

        harness.run(scenario)

    def test_purge_failed_without_ids_deletes_the_whole_failed_list(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("a", "b"))
            await fail(await drain(driver, 2, limit=2))
            await push(driver, make_job("queued"))
            purged = await driver.purge_failed()
            assert sorted(purged) == ["a", "b"], f"purge_failed() returned {purged}, a and b failed"
            await assert_stat(driver, queue_stat(queued=1), "purge must leave other jobs alone")
            assert await driver.failed(10) == [], "purged jobs are still listed as failed"
            assert await driver.retry_failed() == 0, "purged jobs could still be retried"
            assert await driver.purge_failed() == [], "a purge of an empty failed list"

        harness.run(scenario)

    def test_purge_failed_by_ids_returns_exactly_the_ids_it_deleted(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("a", "b", "c", "queued"))
            leases = await lease_all(driver, 3)
            await fail([leases["a"], leases["b"], leases["c"]])
            purged = await driver.purge_failed(["a", "never-pushed", "queued", "c", "a"])
            assert sorted(purged) == ["a", "c"], (
                f"purge_failed([a, unknown, queued, c, a]) returned {purged}: only the failed"
                " jobs a and c went, each to be named once"
            )
            assert ids(entry.job for entry in await driver.failed(10)) == ["b"], (
                "b must stay failed"
            )
            assert await driver.purge_failed(["a"]) == [], "a second purge of a named it again"
            assert await driver.purge_failed([]) == [], "an empty id list purges nothing"
            await assert_stat(driver, queue_stat(queued=1, failed=1), "after purging a and c")

        harness.run(scenario)

    # -- stat and destroy -----------------------------------------------------------------

    async def _one_job_in_every_state(self, driver: Driver) -> None:
        """a leased, b delayed by a nack, c failed, d and e queued."""
        await push(driver, *make_jobs("a", "b", "c", "d", "e"))
        leased = await drain(driver, 3, limit=1)
        assert ids(leased) == ["a", "b", "c"], f"expected a, b, c first, got {ids(leased)}"
        await leased[1].nack(requeue=True, delay=30.0)
        await leased[2].nack(requeue=False, error="failed")

    def test_stat_counts_queued_delayed_reserved_and_failed_exactly(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            await self._one_job_in_every_state(driver)
            expected = queue_stat(queued=2, delayed=1, reserved=1, failed=1)
            await assert_stat(driver, expected, "one leased, one delayed, one failed, two due")
            if driver.capabilities.delay:
                await push(driver, make_job("f", delay=30.0))
                expected = queue_stat(queued=2, delayed=2, reserved=1, failed=1)
                await assert_stat(driver, expected, "a pushed delayed job counts as delayed")

        harness.run(scenario)

    def test_destroy_deletes_every_job_leased_delayed_and_failed_included(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            await self._one_job_in_every_state(driver)
            await driver.destroy()
            await assert_stat(driver, EMPTY, "destroy must delete every job")
            assert await driver.failed(10) == [], "destroy must empty the failed list"
            if driver.capabilities.peek:
                assert await driver.peek(10) == [], "destroy left jobs to peek at"
            await assert_nothing_due(driver, "a job survived destroy")
            if driver.capabilities.durable:
                await driver.close()
                async with harness.opened() as reopened:
                    await assert_stat(reopened, EMPTY, "destroyed jobs came back after reopen")

        harness.run(scenario)

    # -- push -----------------------------------------------------------------------------

    def test_push_with_a_deadline_already_passed_raises_push_timeout_and_stores_nothing(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            with pytest.raises(PushTimeout):
                await driver.push(make_jobs("late-1", "late-2"), deadline=time.monotonic() - 1)
            await assert_nothing_due(
                driver, "a job pushed past its deadline was stored", STORED_LATE_BY
            )
            await assert_stat(driver, EMPTY, "a job pushed past its deadline was stored")
            if driver.capabilities.peek:
                assert await driver.peek(10) == [], "a job pushed past its deadline is peekable"
            if driver.capabilities.durable:
                await driver.close()
                async with harness.opened() as reopened:
                    await assert_stat(reopened, EMPTY, "a late job was stored after all")

        harness.run(scenario)

    def test_push_near_its_deadline_either_stores_the_jobs_or_raises_never_both(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            stored: list[str] = []
            counted_before = driver.unwithdrawn_publishes
            for attempt, allowance in enumerate((0.0, 0.0005, 0.001, 0.002, 0.005, 0.02, 0.1)):
                batch = [make_job(f"b{attempt}-{n:02}", bytes(65536)) for n in range(20)]
                deadline = time.monotonic() + allowance
                try:
                    await driver.push(batch, deadline=deadline)
                except PushTimeout:
                    continue
                stored.extend(ids(batch))
            await sleep_until(deadline + STORED_LATE_BY)  # a late commit, if any, landed by now
            # A driver that cannot withdraw a sent publish counts each one it raised for: only
            # those may be stored without a successful push (amqp confirming late under load).
            uncertain = driver.unwithdrawn_publishes - counted_before
            queued = (await driver.stat()).queued
            assert len(stored) <= queued <= len(stored) + uncertain, (
                f"{queued} stored; pushes returned for {len(stored)},"
                f" {uncertain} publishes were counted as possibly stored late"
            )
            if driver.capabilities.peek:
                kept = ids(await driver.peek(1000))
                unexpected = set(kept) - set(stored)
                assert len(unexpected) <= uncertain, (
                    f"stored without a successful push: {sorted(unexpected)}"
                )
                assert set(stored) <= set(kept), (
                    f"lost although their push returned: {sorted(set(stored) - set(kept))}"
                )

        harness.run(scenario)

    def test_concurrent_pushes_from_100_tasks_all_land_exactly_once(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            jobs = make_jobs(*(f"job-{n:03}" for n in range(100)))
            await asyncio.gather(*(push(driver, job) for job in jobs))
            await assert_stat(driver, queue_stat(queued=100), "100 concurrent pushes")
            leased = await drain(driver, 100, limit=25)
            assert sorted(ids(leased)) == ids(jobs), "some pushes were lost or doubled"
            await assert_nothing_due(driver, "more jobs than pushed")

        harness.run(scenario)

    def test_one_mebibyte_payload_of_arbitrary_bytes_round_trips_unchanged(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            size = min(MIB, driver.capabilities.max_payload or MIB)
            payload = bytes(range(256)) + random.Random(size).randbytes(size - 256)
            job = make_job("big", payload)
            await push(driver, job)
            lease = await reserve_one(driver, 1.0, "the big job must be reservable")
            assert lease.job.payload == payload, (
                f"payload changed: {len(lease.job.payload)} bytes back of {len(payload)}, "
                f"starting {lease.job.payload[:16]!r}"
            )

        harness.run(scenario)

    def test_empty_payload_and_empty_headers_round_trip(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            job = make_job("empty", b"", headers={})
            await push(driver, job)
            lease = await reserve_one(driver, 1.0, "a job with an empty payload")
            assert lease.job == job, f"reserved {describe(lease.job)}, pushed {describe(job)}"

        harness.run(scenario)

    def test_job_options_round_trip(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            job = Job(
                id="job-1",
                name="smtp.email",
                payload=b"{}",
                options=JobOptions(pipeline=PIPELINE, priority=3, auto_ack=True),
                headers={"uuid": ["u"]},
            )
            await push(driver, job)
            lease = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            assert lease.job.options == job.options, f"options changed: {lease.job.options}"

        harness.run(scenario)

    def test_headers_round_trip_with_every_value_in_order(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            headers = {
                "uuid": ["0f8fad5b-d9cb-469f-a165-70867728950e"],
                "Multi-Value": ["first", "second", "first"],
                "ключ ✓": ["значение", ""],
                "json-ish": ['{"a": [1, 2]}', "line\nbreak\ttab\x00nul"],
            }
            job = make_job("job-1", headers=headers)
            await push(driver, job)
            lease = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            assert lease.job.headers == headers, f"headers changed: {lease.job.headers}"

        harness.run(scenario)

    def test_close_is_idempotent(self, harness: Harness) -> None:
        """A second close raises nothing and undoes nothing: a durable driver's next open
        finds what a single close leaves, the stored job and the unacked lease (once expired)."""
        timeout = harness.visibility_timeout

        async def scenario(driver: Driver) -> None:
            leased, queued = make_jobs("leased", "queued")
            await push(driver, leased)
            held = await reserve_one(driver, 1.0, "a pushed job must be reservable")
            assert held.job.id == "leased"
            await push(driver, queued)
            await driver.close()
            await driver.close()
            if not driver.capabilities.durable:
                return
            async with harness.opened() as reopened:
                served: dict[str, tuple[Job, int]] = {}
                for _ in range(2):  # acked as served: the other may wait out a lease
                    lease = await reserve_one(reopened, timeout + 1.5, "a job two closes kept")
                    served[lease.job.id] = (lease.job, lease.attempt)
                    await lease.ack()
                assert served == {"leased": (leased, 2), "queued": (queued, 1)}, (
                    f"after two closes and a reopen: {served}"
                )
                await assert_nothing_due(reopened, "two closes made a job appear twice")

        harness.run(scenario)

    # -- capability: durable --------------------------------------------------------------

    def test_stored_jobs_and_attempts_survive_close_and_reopen(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "durable")
            jobs = {job.id: job for job in make_jobs("a", "b", "c", "d")}
            await push(driver, *jobs.values())
            leases = await lease_all(driver, 4)
            await leases["a"].nack(requeue=False, error="kept")
            await leases["b"].nack(requeue=True)
            await leases["c"].nack(requeue=True)
            await leases["d"].nack(requeue=True)
            delayed = 0
            if driver.capabilities.delay:
                await push(driver, make_job("later", delay=30.0))
                delayed = 1
            await driver.close()
            async with harness.opened() as reopened:
                expected = queue_stat(queued=3, delayed=delayed, failed=1)
                await assert_stat(reopened, expected, "after close and reopen")
                failed = await reopened.failed(10)
                assert [(f.job.id, f.error, f.attempts) for f in failed] == [("a", "kept", 1)], (
                    f"the failed list changed across reopen: {failed}"
                )
                served = await drain(reopened, 3, limit=3)
                for lease in served:
                    original = jobs[lease.job.id]
                    assert lease.job == original, f"reopened {describe(lease.job)}"
                    assert lease.attempt == 2, f"{lease.job.id}: attempt {lease.attempt}, not 2"

        harness.run(scenario)

    def test_unacked_lease_comes_back_after_reopen_once_it_expires(self, harness: Harness) -> None:
        timeout = harness.visibility_timeout

        async def scenario(driver: Driver) -> None:
            require(driver, "durable")
            job = make_job("job-1")
            await push(driver, job)
            await reserve_one(driver, 1.0, "a pushed job must be reservable")
            leased_at = time.monotonic()
            await driver.close()
            async with harness.opened() as reopened:
                again = await reserve_one(
                    reopened, timeout + 1.5, "a lease left by a closed driver must expire"
                )
                assert time.monotonic() - leased_at >= timeout - EARLY, (
                    "reopen handed out a job whose lease had not expired yet"
                )
                assert again.job == job, f"reopened {describe(again.job)}"
                assert again.attempt == 2, f"expected attempt 2, got {again.attempt}"

        harness.run(scenario)

    # -- capability: idempotent_push ------------------------------------------------------

    def test_same_id_pushed_twice_is_stored_once_and_not_replaced(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "idempotent_push")
            first = make_job("dup", b"first", headers={"n": ["1"]})
            await push(driver, first)
            await push(driver, make_job("dup", b"second", headers={"n": ["2"]}))
            await assert_stat(driver, queue_stat(queued=1), "one id pushed twice")
            lease = await reserve_one(driver, 1.0, "the job must be stored")
            assert lease.job == first, f"a re-push replaced the job: {describe(lease.job)}"
            await assert_nothing_due(driver, "the id was stored twice")

        harness.run(scenario)

    def test_same_id_twice_in_one_batch_is_stored_once(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "idempotent_push")
            first = make_job("dup", b"first")
            await push(driver, first, make_job("dup", b"second"))
            await assert_stat(driver, queue_stat(queued=1), "one id twice in a batch")
            lease = await reserve_one(driver, 1.0, "the job must be stored")
            assert lease.job == first, f"the batch's later copy won: {describe(lease.job)}"

        harness.run(scenario)

    def test_repush_of_a_leased_or_failed_id_stores_no_copy(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "idempotent_push")
            await push(driver, *make_jobs("leased", "failed"))
            leases = await lease_all(driver, 2)
            await fail([leases["failed"]])
            await push(driver, *make_jobs("leased", "failed"))
            await assert_stat(driver, queue_stat(reserved=1, failed=1), "re-push of stored ids")
            await assert_nothing_due(driver, "a re-push stored a second copy")

        harness.run(scenario)

    def test_concurrent_pushes_of_one_id_store_it_once(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "idempotent_push")
            copies = [make_job("dup", f"copy-{n}".encode()) for n in range(100)]
            await asyncio.gather(*(push(driver, job) for job in copies))
            await assert_stat(driver, queue_stat(queued=1), "100 concurrent pushes of one id")

        harness.run(scenario)

    # -- capability: atomic_batch ---------------------------------------------------------

    def test_a_batch_is_never_seen_in_part(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "atomic_batch")
            jobs = [make_job(f"job-{n:03}", bytes(4096)) for n in range(300)]
            pushing = asyncio.create_task(push(driver, *jobs))
            seen: set[int] = set()
            while not pushing.done():
                seen.add((await driver.stat()).queued)
                await asyncio.sleep(0)
            await pushing
            assert seen <= {0, 300}, f"a reader saw part of a batch: queued counts {sorted(seen)}"
            await assert_stat(driver, queue_stat(queued=300), "the whole batch")

        harness.run(scenario)

    # -- capability: priority -------------------------------------------------------------

    PRIORITIES = (("p5-a", 5), ("p1-a", 1), ("p3", 3), ("p1-b", 1), ("p5-b", 5), ("p2", 2))
    SERVED = ("p1-a", "p1-b", "p2", "p3", "p5-a", "p5-b")

    async def _push_priorities(self, driver: Driver) -> None:
        for job_id, priority in self.PRIORITIES:
            await push(driver, make_job(job_id, priority=priority))

    def test_lower_priority_number_is_served_first(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "priority")
            await self._push_priorities(driver)
            served = await drain(driver, 6, limit=1)
            assert ids(served) == list(self.SERVED), f"served in order {ids(served)}"

        harness.run(scenario)

    def test_reserve_with_a_limit_takes_the_most_urgent_jobs(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "priority")
            await self._push_priorities(driver)
            leases = await driver.reserve(3, 1.0)
            assert ids(leases) == list(self.SERVED[:3]), f"reserve(3) took {ids(leases)}"

        harness.run(scenario)

    # -- capability: delay ----------------------------------------------------------------

    def test_delayed_job_is_not_reserved_before_its_delay(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "delay")
            job = make_job("later", delay=1.2)  # room for a slow commit or confirm
            pushed_at = time.monotonic()  # due no earlier than 1.2 s after this
            await push(driver, job)
            await assert_stat(driver, queue_stat(delayed=1), "a job pushed with a delay")
            await assert_nothing_due(driver, "a job was served before its delay", 0.3)
            lease = await reserve_one(driver, 2.0, "a delayed job must be due after its delay")
            assert time.monotonic() - pushed_at >= 1.2 - EARLY, "served before its delay"
            assert lease.attempt == 1, f"first delivery must be attempt 1, got {lease.attempt}"
            assert (lease.job.id, lease.job.payload, lease.job.headers) == (
                job.id,
                job.payload,
                job.headers,
            ), f"delayed job changed: {describe(lease.job)}"

        harness.run(scenario)

    def test_delayed_job_counts_as_queued_once_due(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "delay")
            await push(driver, make_job("later", delay=0.3))
            await sleep_until(time.monotonic() + 0.3)
            give_up = time.monotonic() + DRAIN_DEADLINE  # a broker moves it in its own time
            while (stat := await driver.stat()) != queue_stat(queued=1):
                assert time.monotonic() < give_up, f"a job whose delay is over: {stat}"
                await asyncio.sleep(0.02)

        harness.run(scenario)

    def test_delayed_job_does_not_hold_back_due_jobs(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "delay")
            await push(driver, make_job("later", priority=1, delay=30.0))
            await push(driver, make_job("now", priority=10))
            lease = await reserve_one(driver, 1.0, "a due job behind a delayed one")
            assert lease.job.id == "now", f"served {lease.job.id}, which is not due yet"

        harness.run(scenario)

    # -- capability: peek -----------------------------------------------------------------

    def test_peek_lists_jobs_in_serving_order_without_leasing_them(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            require(driver, "peek")
            assert await driver.peek(10) == [], "peek on an empty pipeline"
            if driver.capabilities.priority:
                await self._push_priorities(driver)
                expected = list(self.SERVED)
            else:
                expected = [job_id for job_id, _ in self.PRIORITIES]
                await push(driver, *make_jobs(*expected))
            peeked = await driver.peek(10)
            assert ids(peeked) == expected, f"peek order {ids(peeked)}"
            assert ids(await driver.peek(2)) == expected[:2], "peek(2) must take the first two"
            await assert_stat(driver, queue_stat(queued=6), "peek must not lease")
            first = await reserve_one(driver, 1.0, "peeked jobs are still due")
            assert first.job == peeked[0], f"peek showed {describe(peeked[0])}"
            assert first.attempt == 1, f"peek counted as a delivery: attempt {first.attempt}"

        harness.run(scenario)

    def test_peek_shows_a_job_whose_lease_expired(self, harness: Harness) -> None:
        timeout = harness.visibility_timeout

        async def scenario(driver: Driver) -> None:
            require(driver, "peek")
            job = make_job("job-1")
            await push(driver, job)
            await reserve_one(driver, 1.0, "a pushed job must be reservable")
            await sleep_until(time.monotonic() + timeout + 0.1)
            await assert_stat(driver, queue_stat(queued=1), "an expired lease counts as queued")
            peeked = await driver.peek(10)
            assert ids(peeked) == ["job-1"], (
                f"peek must show a job whose lease expired (it is served next), got {ids(peeked)}"
            )

        harness.run(scenario)
