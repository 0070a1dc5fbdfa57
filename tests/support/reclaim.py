"""The kill -9 scenario for drivers whose restarted node takes back its own leases at once.

A real child process (this module run as `python -m support.reclaim SETTINGS DATA_DIR`)
leases the one job, prints `leased <id>` and holds the lease until it is killed with SIGKILL.
Then another node on its own data_dir must not be served the job, and a node restarted on
the killed one's data_dir must get it back at once, long before the visibility timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from mailrunner.config import PipelineConfig
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.drivers import build_driver
from mailrunner.jobs.model import Job, JobOptions
from support.waiting import wait_until

VISIBILITY_TIMEOUT = 3600.0
"""So long that a job served again within the test can only have been taken back."""
PIPELINE = "restart"
HELD = Job("held", "restart.test", b"{}", JobOptions(PIPELINE))


def open_driver(settings: dict[str, Any], data_dir: Path) -> Driver:
    """The pipeline `settings` (driver and its config) with the hour-long visibility."""
    pipeline = {**settings, "visibility_timeout": VISIBILITY_TIMEOUT}
    config = TypeAdapter(PipelineConfig).validate_python(pipeline)
    return build_driver(PIPELINE, config, data_dir)


async def hold_a_lease(settings: dict[str, Any], data_dir: Path) -> None:
    driver = open_driver(settings, data_dir)
    await driver.open()
    leases = await driver.reserve(1, 10.0)
    print(f"leased {leases[0].job.id}" if leases else "nothing to lease", flush=True)
    await asyncio.Event().wait()


@dataclass(frozen=True)
class Restart:
    """What the nodes saw after the kill."""

    held_elsewhere: int
    took: float
    attempt: int

    def assert_taken_back(self) -> None:
        assert self.held_elsewhere == 0, "another node was served the job while its lease was held"
        assert self.took < 5.0, f"the restarted node took {self.took:.1f}s to get its job back"
        assert self.attempt == 2, (
            f"the job came back as attempt {self.attempt}, not 2 (as after an expiry)"
        )


def kill_the_holder_then_restart(settings: dict[str, Any], tmp_path: Path) -> Restart:
    """Push the job, let a child on `node/` lease it, SIGKILL it, then ask `other/` and a
    restarted `node/` for it."""
    node_dir, other_dir = tmp_path / "node", tmp_path / "other"
    node_dir.mkdir()
    other_dir.mkdir()

    async def push() -> None:
        driver = open_driver(settings, other_dir)
        await driver.open()
        await driver.push([HELD], deadline=time.monotonic() + 5)
        await driver.close()

    asyncio.run(push())
    output = tmp_path / "node.out"
    with output.open("wb") as stdout:
        node = subprocess.Popen(
            [sys.executable, "-m", "support.reclaim", json.dumps(settings), str(node_dir)],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
    try:
        wait_until(lambda: "leased held" in output.read_text(), "the node to lease the job")
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait(10)

    async def after_the_kill() -> Restart:
        other = open_driver(settings, other_dir)
        await other.open()
        held_elsewhere = len(await other.reserve(1, 0.5))
        await other.close()
        restarted = open_driver(settings, node_dir)
        started = time.monotonic()
        await restarted.open()
        leases = await restarted.reserve(1, 10.0)
        took = time.monotonic() - started
        await restarted.close()
        assert [lease.job for lease in leases] == [HELD], "the restarted node got no job"
        return Restart(held_elsewhere, took, leases[0].attempt)

    return asyncio.run(after_the_kill())


if __name__ == "__main__":
    asyncio.run(hold_a_lease(json.loads(sys.argv[1]), Path(sys.argv[2])))
