"""Pushes per second into the sqlite driver: group commit against one commit per push.

Each pusher pushes one job at a time and waits until it is durable (WAL, synchronous=FULL),
for a fixed time; the baseline is the same driver with batches of one, measured in the same
run on the same disk.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pydantic import TypeAdapter

from mailrunner.config import PipelineConfig, SqlitePipelineConfig
from mailrunner.jobs.drivers.sqlite import SqliteDriver
from mailrunner.jobs.model import Job, JobOptions

SECONDS = 2.0
PUSHERS = (1, 10, 100)
TARGET_RATIO = 5.0
_IDS = itertools.count()


async def measure(directory: Path, pushers: int, max_batch: int) -> float:
    """Pushes per second with `pushers` concurrent pushers for SECONDS."""
    adapter: TypeAdapter[PipelineConfig] = TypeAdapter(PipelineConfig)
    path = directory / f"bench-{pushers}-{max_batch}.db"
    settings = adapter.validate_python({"driver": "sqlite", "config": {"path": str(path)}})
    assert isinstance(settings, SqlitePipelineConfig)
    driver = SqliteDriver("bench", settings, directory, max_batch=max_batch)
    await driver.open()
    payload = b"x" * 1024
    stop_at = time.monotonic() + SECONDS
    done = 0

    async def pusher() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            job = Job(str(next(_IDS)), "bench", payload, JobOptions("bench", priority=10))
            await driver.push([job], deadline=time.monotonic() + 30)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(pusher() for _ in range(pushers)))
    elapsed = time.monotonic() - started
    await driver.close()
    return done / elapsed


async def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="mailrunner-bench-", dir="."))
    try:
        print(
            "sqlite driver: WAL, synchronous=FULL, 1 KiB payloads, each push awaited until durable"
        )
        print(f"{'pushers':>8} {'group commit/s':>15} {'one commit per push/s':>22} {'ratio':>7}")
        ratio = 0.0
        for pushers in PUSHERS:
            grouped = await measure(directory, pushers, max_batch=1000)
            single = await measure(directory, pushers, max_batch=1)
            ratio = grouped / single
            print(f"{pushers:>8} {grouped:>15.0f} {single:>22.0f} {ratio:>6.1f}x")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    target = f"{verdict} the {TARGET_RATIO:.0f}x target"
    print(f"group commit at {PUSHERS[-1]} pushers: {ratio:.1f}x one commit per push ({target})")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
