"""The SQLite driver passes the driver contract and keeps its jobs in one plain SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from contract import (
    EARLY,
    LATE,
    DriverContract,
    Harness,
    assert_nothing_due,
    assert_stat,
    describe,
    make_job,
    make_jobs,
    push,
    queue_stat,
    reserve_one,
)

from mailrunner.errors import PushTimeout
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.model import Capabilities, Job

CHILD_DEADLINE = 30.0
SQLITE_CAPABILITIES = Capabilities(
    durable=True, idempotent_push=True, atomic_batch=True, priority=True, delay=True, peek=True
)

# Run by a child process that is then killed with SIGKILL: nothing is closed or flushed.
KILLED_CHILD = """
import asyncio, sys, time
from pathlib import Path
from pydantic import TypeAdapter
from mailrunner.config import PipelineConfig
from mailrunner.jobs.drivers import build_driver
from mailrunner.jobs.model import Job, JobOptions

async def main() -> None:
    settings = TypeAdapter(PipelineConfig).validate_python(
        {"driver": "sqlite", "visibility_timeout": sys.argv[2], "config": {"path": sys.argv[1]}}
    )
    driver = build_driver("contract", settings, Path(sys.argv[3]))
    await driver.open()
    jobs = [Job(job_id, "contract.job", job_id.encode(), JobOptions("contract", 10))
            for job_id in ("leased", "queued")]
    await driver.push(jobs, deadline=time.monotonic() + 10)
    await driver.reserve(1, 1.0)
    print("stored", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def rows(path: Path, pipeline: str = "contract") -> dict[str, bytes]:
    """The jobs table as the stdlib sees it: id -> payload."""
    with closing(sqlite3.connect(path)) as connection:
        found = connection.execute(
            "SELECT id, payload FROM jobs WHERE pipeline = ?", (pipeline,)
        ).fetchall()
    return {job_id: bytes(payload) for job_id, payload in found}


@contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another writer holds the file's write lock until the block ends (then rolls back)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def in_pipeline(job: Job, pipeline: str) -> Job:
    return dataclasses.replace(job, options=dataclasses.replace(job.options, pipeline=pipeline))


class TestSqliteDriver(DriverContract):
    @pytest.fixture
    def pipeline_settings(self, tmp_path: Path) -> dict[str, Any]:
        return {"driver": "sqlite", "config": {"path": str(tmp_path / "jobs.db")}}

    def test_declares_exactly_its_capabilities(self, harness: Harness) -> None:
        """A capability left undeclared would turn its contract tests into skips."""

        async def scenario(driver: Driver) -> None:
            assert driver.capabilities == SQLITE_CAPABILITIES, driver.capabilities

        harness.run(scenario)

    def test_jobs_survive_reopen_in_the_default_file_under_data_dir(self, tmp_path: Path) -> None:
        harness = Harness.from_settings({"driver": "sqlite"}, tmp_path)
        job = make_job("job-1", b"kept")

        async def scenario(driver: Driver) -> None:
            await push(driver, job)
            await driver.close()
            async with harness.opened() as reopened:
                lease = await reserve_one(reopened, 1.0, "the job must survive reopen")
                assert lease.job == job, f"reopened {describe(lease.job)}"

        harness.run(scenario)
        assert (tmp_path / "jobs.db").is_file(), "the default file is <data_dir>/jobs.db"

    def test_pushed_job_is_a_committed_row_another_connection_reads(
        self, harness: Harness, tmp_path: Path
    ) -> None:
        payload = bytes(range(256)) * 4

        async def scenario(driver: Driver) -> None:
            await push(driver, make_job("job-1", payload))
            found = rows(tmp_path / "jobs.db")
            assert found == {"job-1": payload}, (
                f"push returned before its row was committed: the jobs table holds {found}"
            )

        harness.run(scenario)

    def test_acked_and_purged_jobs_leave_no_rows(self, harness: Harness, tmp_path: Path) -> None:
        async def scenario(driver: Driver) -> None:
            await push(driver, *make_jobs("acked", "purged", "kept"))
            leases = {lease.job.id: lease for lease in await driver.reserve(2, 1.0)}
            assert sorted(leases) == ["acked", "purged"], f"reserved {sorted(leases)}"
            await leases["acked"].ack()
            await leases["purged"].nack(requeue=False, error="failed")
            assert await driver.purge_failed() == ["purged"], "one failed job to purge"
            remaining = sorted(rows(tmp_path / "jobs.db"))
            assert remaining == ["kept"], f"ack and purge must delete rows, left {remaining}"

        harness.run(scenario)

    def test_two_pipelines_in_one_file_keep_their_jobs_apart(self, tmp_path: Path) -> None:
        settings = {"driver": "sqlite"}
        left = Harness.from_settings(settings, tmp_path, name="left")
        right = Harness.from_settings(settings, tmp_path, name="right")

        async def scenario(left_driver: Driver) -> None:
            await push(left_driver, in_pipeline(make_job("shared-id", b"left"), "left"))
            async with right.opened() as right_driver:
                await assert_stat(right_driver, queue_stat(), "another pipeline's job showed")
                await assert_nothing_due(right_driver, "served another pipeline's job")
                await push(right_driver, in_pipeline(make_job("shared-id", b"right"), "right"))
                await assert_stat(right_driver, queue_stat(queued=1), "the same id elsewhere")
                await right_driver.destroy()
            await assert_stat(left_driver, queue_stat(queued=1), "destroy of another pipeline")
            lease = await reserve_one(left_driver, 1.0, "the left job must be intact")
            assert lease.job.payload == b"left", f"left pipeline served {describe(lease.job)}"

        left.run(scenario)

    def test_waiting_reserve_sees_a_push_through_another_driver_on_the_same_file(
        self, harness: Harness
    ) -> None:
        async def scenario(driver: Driver) -> None:
            async with harness.opened() as other:
                waiter = asyncio.create_task(driver.reserve(1, 5.0))
                await asyncio.sleep(0.1)  # let the reserve start waiting on the empty pipeline
                await push(other, make_job("job-1"))
                pushed_at = time.monotonic()
                leases = await waiter
                woke_after = time.monotonic() - pushed_at
            assert [lease.job.id for lease in leases] == ["job-1"], "the other push was missed"
            assert woke_after < 0.25 + LATE, (
                f"a push through another driver on the file was seen after {woke_after:.2f}s"
            )

        harness.run(scenario)

    def test_jobs_of_another_node_killed_without_close_are_kept_and_its_lease_expires(
        self, harness: Harness, tmp_path: Path
    ) -> None:
        """The killed process ran on another data_dir: its lease is not taken back at open
        (test_sqlite_reclaim.py shows the same node's is), it expires."""
        timeout = harness.visibility_timeout
        other_node = tmp_path / "other-node"
        other_node.mkdir()

        async def scenario(driver: Driver) -> None:
            await driver.close()
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                KILLED_CHILD,
                str(tmp_path / "jobs.db"),
                str(timeout),
                str(other_node),
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdout is not None
            try:
                line = await asyncio.wait_for(child.stdout.readline(), CHILD_DEADLINE)
                assert line == b"stored\n", f"the child process did not push: {line!r}"
            finally:
                child.kill()
                await child.wait()
            async with harness.opened() as reopened:
                await assert_stat(
                    reopened, queue_stat(queued=1, reserved=1), "after kill -9 of the pusher"
                )
                queued = await reserve_one(reopened, 1.0, "the queued job must survive")
                assert (queued.job.id, queued.attempt) == ("queued", 1), f"got {queued.job.id}"
                await queued.ack()
                leased = await reserve_one(reopened, timeout + 1.5, "the dead lease must expire")
                assert (leased.job.id, leased.attempt) == ("leased", 2), (
                    f"expected the leased job on attempt 2, got {leased.job.id} "
                    f"on attempt {leased.attempt}"
                )

        harness.run(scenario)

    def test_push_blocked_by_another_writer_past_its_deadline_times_out_and_is_never_written(
        self, harness: Harness, tmp_path: Path
    ) -> None:
        async def scenario(driver: Driver) -> None:
            with write_lock_held(tmp_path / "jobs.db"):
                started = time.monotonic()
                with pytest.raises(PushTimeout):
                    await driver.push([make_job("late")], deadline=started + 0.3)
                elapsed = time.monotonic() - started
            assert 0.3 - EARLY <= elapsed <= 0.3 + LATE, (
                f"PushTimeout came {elapsed:.2f}s after a push with a 0.3 s deadline"
            )
            await push(driver, make_job("next"))  # a later commit must not carry the late job
            await asyncio.sleep(0.2)
            assert sorted(rows(tmp_path / "jobs.db")) == ["next"], (
                f"a push that raised PushTimeout was written: {sorted(rows(tmp_path / 'jobs.db'))}"
            )

        harness.run(scenario)

    def test_push_whose_caller_gave_up_is_never_written(
        self, harness: Harness, tmp_path: Path
    ) -> None:
        async def scenario(driver: Driver) -> None:
            with write_lock_held(tmp_path / "jobs.db"):
                pushing = asyncio.create_task(push(driver, make_job("abandoned")))
                await asyncio.sleep(0.2)  # the push is now waiting for the write lock
                assert not pushing.done(), "push returned while another writer held the lock"
                pushing.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await pushing
            await push(driver, make_job("next"))
            await asyncio.sleep(0.2)
            assert sorted(rows(tmp_path / "jobs.db")) == ["next"], (
                f"a push whose caller gave up was written: {sorted(rows(tmp_path / 'jobs.db'))}"
            )

        harness.run(scenario)

    def test_files_it_creates_are_private_whatever_the_umask(self, tmp_path: Path) -> None:
        folder = tmp_path / "fresh" / "jobs"
        harness = Harness.from_settings(
            {"driver": "sqlite", "config": {"path": str(folder / "jobs.db")}}, tmp_path
        )
        created: dict[str, str] = {}

        async def scenario(driver: Driver) -> None:
            await push(driver, make_job("job-1"))
            for path in (tmp_path / "fresh", folder, *folder.iterdir()):
                created[path.relative_to(tmp_path).as_posix()] = oct(mode(path))

        with umask(0):
            harness.run(scenario)
        assert {"fresh/jobs/jobs.db-wal", "fresh/jobs/jobs.db-shm"} <= set(created), (
            f"no WAL files to check while open: {created}"
        )
        expected = {name: oct(0o600) for name in created} | {
            "fresh": oct(0o700),
            "fresh/jobs": oct(0o700),
        }
        assert created == expected, "jobs hold mail and credentials: only the owner may read"

    def test_an_existing_database_keeps_its_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "shared.db"
        with closing(sqlite3.connect(path)):
            pass
        path.chmod(0o640)
        harness = Harness.from_settings(
            {"driver": "sqlite", "config": {"path": str(path)}}, tmp_path
        )

        async def scenario(driver: Driver) -> None:
            await push(driver, make_job("job-1"))

        harness.run(scenario)
        assert mode(path) == 0o640, "the owner chose this file's mode"
        assert rows(path) == {"job-1": b"payload"}
