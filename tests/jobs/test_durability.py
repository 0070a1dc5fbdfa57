"""What survives a kill -9, and what a push that gave up must never do later."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from mailrunner.config import PipelineConfig
from mailrunner.errors import PushTimeout
from mailrunner.jobs.drivers.sqlite import SqliteDriver
from mailrunner.jobs.model import Job, JobOptions
from support.waiting import wait_until

HERE = Path(__file__).parent
PUSHES = 5000


def executed_ids(log: Path) -> set[str]:
    if not log.exists():
        return set()
    return {line.split(" ", 1)[0] for line in log.read_text().splitlines() if line}


def start_host(config: Path, count: int, output: Path) -> subprocess.Popen[bytes]:
    with output.open("ab") as stdout:
        return subprocess.Popen(
            [sys.executable, str(HERE / "crash_host.py"), str(config), str(count)],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            cwd=config.parent,
        )


def test_kill_9_midway_loses_no_job_whose_push_returned(tmp_path: Path) -> None:
    log = tmp_path / "executed.log"
    config = tmp_path / "mailrunner.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "var"),
                "smtp": {"addr": "127.0.0.1:0"},
                "rpc": {"listen": "127.0.0.1:0"},
                "server": {
                    "command": [sys.executable, str(HERE / "job_worker.py")],
                    "env": {"JOB_LOG": str(log)},
                },
                "jobs": {
                    "pipelines": {
                        "q": {"driver": "sqlite", "visibility_timeout": 2},
                        "smtp-emails": {"driver": "memory"},
                    },
                    "consume": ["q"],
                    "pool": {"num_workers": 2, "destroy_timeout": 1},
                },
            }
        )
    )
    printed = tmp_path / "pushed.txt"
    host = start_host(config, PUSHES, printed)

    def pushed_enough() -> bool:
        assert host.poll() is None, "the host process exited before it was killed"
        return len(printed.read_text().splitlines()) >= 600

    wait_until(pushed_enough, "600 acknowledged pushes", 60)
    host.send_signal(signal.SIGKILL)
    host.wait(10)
    acknowledged = {line for line in printed.read_text().splitlines() if line and line != "pushed"}
    assert len(acknowledged) < PUSHES, "the kill must land midway for the test to mean anything"

    restarted = start_host(config, 0, tmp_path / "restart.txt")
    try:
        wait_until(lambda: acknowledged <= executed_ids(log), "every acknowledged job to run", 120)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(30)
    missing = acknowledged - executed_ids(log)
    assert not missing, f"{len(missing)} jobs whose push returned were lost"


def settings(path: Path) -> PipelineConfig:
    adapter: TypeAdapter[PipelineConfig] = TypeAdapter(PipelineConfig)
    return adapter.validate_python({"driver": "sqlite", "config": {"path": str(path)}})


def test_push_blocked_past_its_deadline_by_an_exclusive_lock_fails_and_never_appears(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"

    async def scenario() -> None:
        driver = SqliteDriver("q", settings(path), tmp_path)  # type: ignore[arg-type]
        await driver.open()
        locked = threading.Event()
        release = threading.Event()

        def hold_lock() -> None:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(10)
            other.execute("COMMIT")
            other.close()

        holder = threading.Thread(target=hold_lock)
        holder.start()
        await asyncio.to_thread(locked.wait, 5)
        started = time.monotonic()
        job = Job("late-1", "n", b"x", JobOptions("q", priority=10))
        with pytest.raises(PushTimeout):
            await driver.push([job], deadline=time.monotonic() + 0.5)
        assert time.monotonic() - started < 1.5, "the push must give up near its deadline"
        release.set()
        await asyncio.to_thread(holder.join, 5)
        await driver.push(
            [Job("after", "n", b"x", JobOptions("q", priority=10))], deadline=time.monotonic() + 5
        )
        await driver.close()

    asyncio.run(scenario())
    rows = sqlite3.connect(path).execute("SELECT id FROM jobs ORDER BY seq").fetchall()
    assert rows == [("after",)], "the job whose push failed must never be stored"


def test_group_commit_shares_transactions_between_concurrent_pushes(tmp_path: Path) -> None:
    async def scenario() -> int:
        driver = SqliteDriver("q", settings(tmp_path / "jobs.db"), tmp_path)  # type: ignore[arg-type]
        await driver.open()
        deadline = time.monotonic() + 30
        jobs = [Job(str(i), "n", b"x", JobOptions("q", priority=10)) for i in range(500)]
        await asyncio.gather(*(driver.push([job], deadline=deadline) for job in jobs))
        stat = await driver.stat()
        await driver.close()
        assert stat.queued == 500
        return driver.commits

    commits = asyncio.run(scenario())
    assert commits < 50, f"500 concurrent pushes took {commits} commits: no group commit"


def test_database_uses_wal_and_synchronous_full(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, int]:
        driver = SqliteDriver("q", settings(tmp_path / "jobs.db"), tmp_path)  # type: ignore[arg-type]
        await driver.open()
        mode = sqlite3.connect(tmp_path / "jobs.db").execute("PRAGMA journal_mode").fetchone()[0]
        synchronous = await driver._run(
            lambda: driver._db().execute("PRAGMA synchronous").fetchone()[0]
        )
        await driver.close()
        return mode, synchronous

    assert asyncio.run(scenario()) == ("wal", 2)


def test_the_event_loop_keeps_running_while_sqlite_waits_for_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def scenario() -> list[float]:
        driver = SqliteDriver("q", settings(path), tmp_path)  # type: ignore[arg-type]
        await driver.open()
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        with pytest.raises(PushTimeout):
            await driver.push(
                [Job("x", "n", b"x", JobOptions("q", priority=10))], deadline=time.monotonic() + 0.5
            )
        ticker.cancel()
        other.execute("ROLLBACK")
        other.close()
        await driver.close()
        return gaps

    gaps = asyncio.run(scenario())
    assert gaps, "the loop never ran while the driver waited for the lock"
    assert max(gaps) < 0.3, (
        f"the loop stood still for {max(gaps):.2f}s while the driver waited 0.5 s for the lock"
    )
