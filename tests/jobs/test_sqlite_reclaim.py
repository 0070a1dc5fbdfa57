"""A node killed with SIGKILL while it holds a SQLite lease takes the job back as soon as it
starts again on the same data_dir, not after the lease's visibility timeout (an hour here);
another node on the same file does not (the scenario: tests/support/reclaim.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from mailrunner.jobs.model import Job, JobOptions
from support.reclaim import PIPELINE, kill_the_holder_then_restart, open_driver


def sqlite_at(db: Path) -> dict[str, object]:
    return {"driver": "sqlite", "config": {"path": str(db)}}


def test_kill_9_then_restart_on_the_same_data_dir_serves_the_held_job_at_once(
    tmp_path: Path,
) -> None:
    kill_the_holder_then_restart(sqlite_at(tmp_path / "jobs.db"), tmp_path).assert_taken_back()


def test_a_lease_from_before_node_names_is_left_to_expire(tmp_path: Path) -> None:
    """A jobs.db written by an earlier version holds bare uuid lease tokens: opening it works,
    and such a lease is not taken back (no node can be told from it), it expires."""
    db = tmp_path / "jobs.db"
    job = Job("old", "restart.test", b"{}", JobOptions(PIPELINE))

    async def push_and_lease() -> None:
        driver = open_driver(sqlite_at(db), tmp_path)
        await driver.open()
        await driver.push([job], deadline=time.monotonic() + 5)
        assert len(await driver.reserve(1, 1.0)) == 1
        await driver.close()

    asyncio.run(push_and_lease())
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE jobs SET lease = ?", ("0123456789abcdef0123456789abcdef",))

    async def reopen() -> int:
        driver = open_driver(sqlite_at(db), tmp_path)
        await driver.open()
        reserved = (await driver.stat()).reserved
        await driver.close()
        return reserved

    assert asyncio.run(reopen()) == 1, "a lease with an old token was taken back or lost"
