"""A node killed with SIGKILL while it holds a Redis lease takes the job back as soon as it
starts again on the same data_dir, not after the lease's visibility timeout (an hour here).

Run as a script, this module is that node: `test_redis_restart.py ADDR STREAM DATA_DIR` leases
one job, prints `leased <id>`, and holds the lease until it is killed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from mailrunner.config import PipelineConfig
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.drivers import build_driver
from mailrunner.jobs.model import Job, JobOptions
from support.brokers import RedisServer, require_binary
from support.waiting import wait_until

VISIBILITY_TIMEOUT = 3600.0
"""So long that a job served again within the test can only have been taken back."""
PIPELINE = "restart"

pytestmark = pytest.mark.redis


def open_driver(addr: str, stream: str, data_dir: Path) -> Driver:
    settings: dict[str, Any] = {
        "driver": "redis",
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "config": {"addr": addr, "stream": stream},
    }
    return build_driver(PIPELINE, TypeAdapter(PipelineConfig).validate_python(settings), data_dir)


async def hold_a_lease(addr: str, stream: str, data_dir: Path) -> None:
    driver = open_driver(addr, stream, data_dir)
    await driver.open()
    leases = await driver.reserve(1, 10.0)
    print(f"leased {leases[0].job.id}" if leases else "nothing to lease", flush=True)
    await asyncio.Event().wait()


def test_kill_9_then_restart_on_the_same_data_dir_serves_the_held_job_at_once(
    tmp_path: Path,
) -> None:
    binary = require_binary(shutil.which("redis-server"), "redis-server")
    server_dir, node_dir, other_dir = (tmp_path / name for name in ("redis", "node", "other"))
    for directory in (server_dir, node_dir, other_dir):
        directory.mkdir()
    server = RedisServer(binary, server_dir, {})
    server.start()
    addr, stream = f"redis://127.0.0.1:{server.port}/0", "restart"
    job = Job("held", "restart.test", b"{}", JobOptions(PIPELINE))

    async def push() -> None:
        driver = open_driver(addr, stream, other_dir)
        await driver.open()
        await driver.push([job], deadline=time.monotonic() + 5)
        await driver.close()

    output = tmp_path / "node.out"
    try:
        asyncio.run(push())
        with output.open("wb") as stdout:
            node = subprocess.Popen(
                [sys.executable, __file__, addr, stream, str(node_dir)],
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
            other = open_driver(addr, stream, other_dir)
            await other.open()
            held_elsewhere = len(await other.reserve(1, 0.5))
            await other.close()
            restarted = open_driver(addr, stream, node_dir)
            started = time.monotonic()
            await restarted.open()
            leases = await restarted.reserve(1, 10.0)
            took = time.monotonic() - started
            await restarted.close()
            assert [lease.job for lease in leases] == [job], "the restarted node got no job"
            return held_elsewhere, took, leases[0].attempt

        held_elsewhere, took, attempt = asyncio.run(after_the_kill())
    finally:
        server.kill()
    assert held_elsewhere == 0, "another node was served the job while its lease was held"
    assert took < 5.0, f"the restarted node took {took:.1f}s to get its job back"
    assert attempt == 2, f"the job came back as attempt {attempt}, not 2 (as after an expiry)"


if __name__ == "__main__":
    asyncio.run(hold_a_lease(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
