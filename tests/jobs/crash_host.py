"""A child process hosting the Jobs service with consumers, for the kill -9 test.

Usage: crash_host.py CONFIG COUNT. Pushes COUNT jobs concurrently (COUNT may be 0) and
prints each id on its own line as soon as its push has returned, then serves until killed.
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


async def main(config_path: Path, count: int) -> None:
    config, source = load(config_path)
    logs.configure(config.logs)
    app = App(config, source)
    await app.start()

    async def push_one() -> None:
        job_id = str(uuid.uuid4())
        await app.jobs.push(Job(job_id, "crash.test", b"{}", JobOptions("q")), push_timeout=30)
        sys.stdout.write(job_id + "\n")
        sys.stdout.flush()

    await asyncio.gather(*(push_one() for _ in range(count)))
    sys.stdout.write("pushed\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
