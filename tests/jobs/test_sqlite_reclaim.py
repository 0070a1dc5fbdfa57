"""A node killed with SIGKILL while it holds a SQLite lease takes the job back as soon as it
starts again on the same data_dir, not after the lease's visibility timeout (an hour here);
another node on the same file does not.

Run as a script, this module is that node: `test_sqlite_reclaim.py DB DATA_DIR` leases one
job, prints `leased <id>`, and holds the lease until it is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from pydantic import TypeAdapter

from mailrunner.config import PipelineConfig
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.drivers import build_driver
from mailrunner.jobs.model import Job, JobOptions
from support.waiting import wait_until

VISIBILITY_TIMEOUT = 3600.0
"""So long that a job served again within the test can only have been taken back."""
PIPELINE = "restart"


def open_driver(db: Path, data_dir: Path) -> Driver:
    settings = {
        "driver": "sqlite",
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "config": {"path": str(db)},
    }
    return build_driver(PIPELINE, TypeAdapter(PipelineConfig).validate_python(settings), data_dir)


async def hold_a_lease(db: Path, data_dir: Path) -> None:
    driver = open_driver(db, data_dir)
    await driver.open()
    leases = await driver.reserve(1, 10.0)
    print(f"leased {leases[0].job.id}" if leases else "nothing to lease", flush=True)
    await asyncio.Event().wait()


def test_kill_9_then_restart_on_the_same_data_dir_serves_the_held_job_at_once(
    tmp_path: Path,
) -> None:
    db, node_dir, other_dir = tmp_path / "jobs.db", tmp_path / "node", tmp_path / "other"
    node_dir.mkdir()
    other_dir.mkdir()
    job = Job("held", "restart.test", b"{}", JobOptions(PIPELINE))

    async def push() -> None:
        driver = open_driver(db, other_dir)
        await driver.open()
        await driver.push([job], deadline=time.monotonic() + 5)
        await driver.close()

    output = tmp_path / "node.out"
    asyncio.run(push())
    with output.open("wb") as stdout:
        node = subprocess.Popen(
            [sys.executable, __file__, str(db), str(node_dir)],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
    try:
        wait_until(lambda: "leased held" in output.read_text(), "the node to lease the job")
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait(10)

    async def after_the_kill() -> tuple[int, float, int]:
        other = open_driver(db, other_dir)
        await other.open()
        held_elsewhere = len(await other.reserve(1, 0.5))
        await other.close()
        restarted = open_driver(db, node_dir)
        started = time.monotonic()
        await restarted.open()
        leases = await restarted.reserve(1, 10.0)
        took = time.monotonic() - started
        await restarted.close()
        assert [lease.job for lease in leases] == [job], "the restarted node got no job"
        return held_elsewhere, took, leases[0].attempt

    held_elsewhere, took, attempt = asyncio.run(after_the_kill())
    assert held_elsewhere == 0, "another node was served the job while its lease was held"
    assert took < 5.0, f"the restarted node took {took:.1f}s to get its job back"
    assert attempt == 2, f"the job came back as attempt {attempt}, not 2 (as after an expiry)"


def test_a_lease_from_before_node_names_is_left_to_expire(tmp_path: Path) -> None:
    """A jobs.db written by an earlier version holds bare uuid lease tokens: opening it works,
    and such a lease is not taken back (no node can be told from it), it expires."""
    db = tmp_path / "jobs.db"
    job = Job("old", "restart.test", b"{}", JobOptions(PIPELINE))

    async def push_and_lease() -> None:
        driver = open_driver(db, tmp_path)
        await driver.open()
        await driver.push([job], deadline=time.monotonic() + 5)
        assert len(await driver.reserve(1, 1.0)) == 1
        await driver.close()

    asyncio.run(push_and_lease())
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE jobs SET lease = ?", ("0123456789abcdef0123456789abcdef",))

    async def reopen() -> int:
        driver = open_driver(db, tmp_path)
        await driver.open()
        reserved = (await driver.stat()).reserved
        await driver.close()
        return reserved

    assert asyncio.run(reopen()) == 1, "a lease with an old token was taken back or lost"


if __name__ == "__main__":
    asyncio.run(hold_a_lease(Path(sys.argv[1]), Path(sys.argv[2])))
