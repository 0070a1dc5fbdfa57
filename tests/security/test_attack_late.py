"""Attacks on the jobs side of a running `mailrunner serve`: no silent drops, bounded queues,
private job files.

A memory pipeline that nobody consumes is flooded over SMTP: beyond `max_queued` the
senders get 451 (they retry later) instead of the server growing until the kernel kills it
with every stored job. A nats pusher whose clock lags the server's stores jobs that look late:
beyond `max_clock_skew` the consumer drops them, but says so in the log and in /metrics, and
within it the job is served. Another local user reads the sqlite jobs file, which holds every
message and captured credential, unless its mode keeps them out whatever the umask.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import smtplib
import stat
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.brokers import delete_streams
from support.nats_pusher import publish_as_lagging_pusher
from support.processes import ServeProcess
from support.requirements import require_broker
from support.sample_mail import TEMP_FAILURE
from support.waiting import wait_until

TESTS = Path(__file__).resolve().parents[1]
JOB_WORKER = TESTS / "jobs" / "job_worker.py"
NATS_PORT = 4222
MAX_QUEUED = 20
FLOOD = MAX_QUEUED + 10
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api_get(server: ServeProcess, path: str) -> bytes:
    """One GET on the management API, as a script or Prometheus makes it."""
    url = f"http://127.0.0.1:{server.api_port}{path}"
    with _NO_PROXY.open(url, timeout=20) as response:
        body: bytes = response.read()
        return body


def pipeline_stat(server: ServeProcess, pipeline: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(api_get(server, f"/jobs/pipelines/{pipeline}/stat"))
    return result


def message(number: int) -> bytes:
    body = f"flood message {number}\r\n" * 2000
    return f"Subject: flood {number}\r\nTo: b@example.com\r\n\r\n{body}".encode()


def test_flooding_an_unconsumed_memory_pipeline_gets_451_beyond_max_queued(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(
        jobs={
            "pipelines": {"smtp-emails": {"driver": "memory", "config": {"max_queued": MAX_QUEUED}}}
        }
    )
    replies = []
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("flood.example")
        for number in range(FLOOD):
            client.mail("a@example.com")
            client.rcpt("b@example.com")
            replies.append(client.data(message(number)))
    codes = [code for code, _ in replies]
    assert codes == [250] * MAX_QUEUED + [451] * (FLOOD - MAX_QUEUED), (
        f"with max_queued {MAX_QUEUED}, {FLOOD} messages got {codes}"
    )
    assert replies[-1] == TEMP_FAILURE, f"a full pipeline answered {replies[-1]!r}"
    counts = pipeline_stat(server, "smtp-emails")
    assert counts["queued"] == MAX_QUEUED, f"the pipeline holds {counts}"
    assert "max_queued" in server.logs(), "the refusal's reason is not in the server log"


@pytest.fixture
def lagging_stream() -> Iterator[str]:
    require_broker("nats", "127.0.0.1", NATS_PORT)
    stream = f"late-{uuid.uuid4().hex}"
    yield stream
    delete_streams(NATS_PORT, stream)


def dropped_late(server: ServeProcess, pipeline: str) -> float | None:
    """`mailrunner_jobs_dropped_late_total{pipeline=…}` as /metrics shows it, if at all."""
    metrics = api_get(server, "/metrics").decode()
    pattern = rf'^mailrunner_jobs_dropped_late_total\{{pipeline="{pipeline}"\}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return None if found is None else float(found.group(1))


def executed(log: Path) -> list[str]:
    """Job ids the test worker ran (see tests/jobs/job_worker.py)."""
    return [line.split(" ", 1)[0] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.nats
def test_a_lagging_pushers_late_job_is_logged_and_counted_and_one_within_the_skew_is_served(
    serve: Callable[..., ServeProcess], tmp_path: Path, lagging_stream: str
) -> None:
    log = tmp_path / "executed.log"
    addr, subject = f"nats://127.0.0.1:{NATS_PORT}", f"test.{lagging_stream}"
    server = serve(
        server={"command": [sys.executable, str(JOB_WORKER)], "env": {"JOB_LOG": str(log)}},
        jobs={
            "consume": ["lagging"],
            "pool": {"num_workers": 1},
            "pipelines": {
                "smtp-emails": {"driver": "sqlite"},
                "lagging": {
                    "driver": "nats",
                    "config": {"addr": addr, "stream": lagging_stream, "subject": subject},
                },
            },
        },
    )

    async def push_as_a_pusher_whose_clock_is_behind() -> None:
        # 10 s behind: its deadline had passed 10 s before the server stored the job.
        await publish_as_lagging_pusher(addr, subject, "ten-seconds-late", expired_ago=10.0)
        # 1 s behind: within the default max_clock_skew of 2 s.
        await publish_as_lagging_pusher(addr, subject, "one-second-late", expired_ago=1.0)

    asyncio.run(push_as_a_pusher_whose_clock_is_behind())
    wait_until(
        lambda: dropped_late(server, "lagging") == 1.0,
        "/metrics to count one job dropped late on pipeline lagging",
    )
    wait_until(lambda: "one-second-late" in executed(log), "the job within the skew to run")
    assert executed(log) == ["one-second-late"], "the job stored 10 s late was served"
    warnings = [line for line in server.logs().splitlines() if "job dropped" in line]
    assert len(warnings) == 1, f"expected one dropped-job warning, got {warnings}"
    assert "ten-seconds-late" in warnings[0], f"the warning does not name the job: {warnings}"
    assert "lagging" in warnings[0], f"the warning does not name the pipeline: {warnings}"


def test_the_sqlite_jobs_file_and_its_wal_are_private_under_a_usual_umask(
    serve: Callable[..., ServeProcess],
) -> None:
    previous = os.umask(0o022)  # the usual default: files world-readable
    try:
        server = serve(smtp={"auth": {"mode": "capture"}})
    finally:
        os.umask(previous)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.login("victim", "secret password")
        client.sendmail("a@example.com", ["b@example.com"], message(0))
    (event,) = server.wait_events(1)
    assert event["authentication"]["password"] == "secret password"
    data_dir = server.workdir / "var"
    modes = {
        path.name: oct(stat.S_IMODE(path.stat().st_mode))
        for path in (data_dir, *data_dir.glob("jobs.db*"))
    }
    assert {"jobs.db", "jobs.db-wal", "jobs.db-shm"} <= set(modes), f"found {modes}"
    expected = {name: oct(0o600) for name in modes} | {"var": oct(0o700)}
    assert modes == expected, "other local users can read the stored mail and credentials"
