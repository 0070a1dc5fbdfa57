"""A child process hosting the Jobs service with consumers, for the kill -9 test.

Usage: crash_host.py CONFIG COUNT. Pushes COUNT jobs (COUNT may be 0) from 20 concurrent
pushers, each pushing its share one after the other, so pushes keep flowing for a while
instead of landing in a couple of group commits; prints each id on its own line as soon as
its push has returned, then serves until killed.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from mailrunner import logs
from mailrunner.app import App
from mailrunner.config import load
from mailrunner.jobs.model import Job, JobOptions

PUSHERS = 20


def shares(count: int, pushers: int) -> list[int]:
    return [count // pushers + (1 if index < count % pushers else 0) for index in range(pushers)]


async def main(config_path: Path, count: int) -> None:
    config, source = load(config_path)
    logs.configure(config.logs)
    app = App(config, source)
    await app.start()

    async def pusher(share: int) -> None:
        for _ in range(share):
            job_id = str(uuid.uuid4())
            job = Job(job_id, "crash.test", b"{}", JobOptions("q"))
            await app.jobs.push(job, push_timeout=30)
            sys.stdout.write(job_id + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(pusher(share) for share in shares(count, PUSHERS)))
    sys.stdout.write("pushed\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
