"""After a kill -9, the next process on the same data_dir takes back the dead one's nats
leases at once, instead of leaving their jobs unserved for the visibility timeout (1 h here).

The lease is held by a real child process (this module run as a script), killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from mailrunner.config import PipelineConfig
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.drivers import build_driver
from mailrunner.jobs.drivers._nats_leases import Holdings
from mailrunner.jobs.model import Job, JobOptions
from support.brokers import delete_streams
from support.requirements import require_broker
from support.waiting import wait_until

TESTS = Path(__file__).parents[1]

PIPELINE = "reclaim"
HOUR = 3600.0


def settings_for(stream: str) -> dict[str, Any]:
    return {
        "driver": "nats",
        "visibility_timeout": HOUR,
        "config": {"addr": "nats://127.0.0.1:4222", "stream": stream, "subject": f"t.{stream}"},
    }


def build(settings: dict[str, Any], data_dir: Path) -> Driver:
    return build_driver(PIPELINE, TypeAdapter(PipelineConfig).validate_python(settings), data_dir)


async def hold_a_lease(settings: dict[str, Any], data_dir: Path) -> None:
    """The child: push one job, lease it, print its id and attempt, then hold it for ever."""
    driver = build(settings, data_dir)
    await driver.open()
    job = Job("held", "test.job", b"{}", JobOptions(PIPELINE))
    await driver.push([job], deadline=time.monotonic() + 10)
    leases = await driver.reserve(1, 10.0)
    sys.stdout.write(f"{leases[0].job.id} {leases[0].attempt}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


@pytest.fixture
def stream() -> Iterator[str]:
    require_broker("nats", "127.0.0.1", 4222)
    name = f"reclaim-{uuid.uuid4().hex}"
    yield name
    delete_streams(4222, name)


async def reserve_within(
    settings: dict[str, Any], data_dir: Path, wait: float
) -> list[tuple[str, int]]:
    """Open a driver on `data_dir`, wait up to `wait` s for one job, ack what came, close."""
    driver = build(settings, data_dir)
    await driver.open()
    try:
        leases = await driver.reserve(1, wait)
        served = [(lease.job.id, lease.attempt) for lease in leases]
        for lease in leases:
            await lease.ack()
    finally:
        await driver.close()
    return served


def test_a_restart_on_the_same_data_dir_takes_back_the_leases_of_a_killed_process(
    stream: str, tmp_path: Path
) -> None:
    settings = settings_for(stream)
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, __file__, json.dumps(settings), str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["held", "1"], "the child leased nothing"
        noted = data_dir / f"nats-leases.{stream}.json"
        wait_until(
            lambda: noted.exists() and len(json.loads(noted.read_text())) == 1,
            "the child to note its lease",
            10,
        )
        assert stat.S_IMODE(noted.stat().st_mode) == 0o600, "the lease file must be private"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()

    other_node = tmp_path / "other"
    other_node.mkdir()
    assert asyncio.run(reserve_within(settings, other_node, 1.0)) == [], (
        "the killed process's lease was given back before any restart on its data_dir"
    )
    started = time.monotonic()
    served = asyncio.run(reserve_within(settings, data_dir, 10.0))
    took = time.monotonic() - started
    assert served == [("held", 2)], f"the restart got {served}; expected the held job, attempt 2"
    assert took < 10.0, f"the job came back after {took:.1f}s, not at the restart"
    assert not noted.exists(), "a driver that closed left its leases noted"


def test_only_leases_not_yet_expired_are_given_back_and_a_damaged_note_gives_back_none(
    tmp_path: Path,
) -> None:
    noted = tmp_path / "nats-leases.q.json"
    now = time.time()
    noted.write_text(json.dumps({"$JS.ACK.live": now + 60, "$JS.ACK.expired": now - 1}))
    assert asyncio.run(Holdings(noted).left_behind()) == ["$JS.ACK.live"], (
        "a lease whose expiry passed may be another consumer's now: it must not be nakked"
    )
    noted.write_text('{"$JS.ACK.cut')
    assert asyncio.run(Holdings(noted).left_behind()) == []
    noted.unlink()
    assert asyncio.run(Holdings(noted).left_behind()) == []


if __name__ == "__main__":
    asyncio.run(hold_a_lease(json.loads(sys.argv[1]), Path(sys.argv[2])))
