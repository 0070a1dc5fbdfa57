"""A sqlite transaction that has begun decides the push, however long its COMMIT takes.

The SMTP side must never answer 451 for a message whose job is then stored (the client would
send it again, and its attachment files would be deleted under the stored job). So a push
whose transaction began before its deadline waits for the COMMIT, and the SMTP side waits
with it: 250 when it committed, 451 when it failed. The slow COMMIT is injected as a disk
stall would make it: a trigger on the jobs table calls a function that sleeps (and, to show
a COMMIT that really fails, then raises) inside the driver's own transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from contract import EARLY, LATE, Harness, make_job

from mailrunner.errors import DriverError
from mailrunner.jobs.driver import Driver, verdict_listener
from mailrunner.jobs.drivers import sqlite as sqlite_driver
from support.sample_mail import TEMP_FAILURE, timed_send
from support.server import RunningServer

STALL = 2.5
"""Seconds the injected stall holds a transaction: past push_timeout plus the SMTP side's
one second of grace, which is when a 451 used to come."""
PUSH_TIMEOUT = 0.5


@dataclass
class Stall:
    """What the injected function does inside the driver's transaction."""

    seconds: float = 0.0
    then_fail: bool = False

    def __call__(self) -> None:
        time.sleep(self.seconds)  # the committer's thread, as a stalled disk would hold it
        if self.then_fail:
            raise OSError("injected: the disk gave up")


@pytest.fixture
def stall(monkeypatch: pytest.MonkeyPatch) -> Stall:
    """Every connection the sqlite driver opens knows `stall_commit()`; `slow_commits(path)`
    makes each insert into the jobs table call it."""
    injected = Stall()
    connect = sqlite_driver._connect

    def connect_with_stall(path: Path) -> sqlite3.Connection:
        connection = connect(path)
        connection.create_function("stall_commit", 0, injected)
        return connection

    monkeypatch.setattr(sqlite_driver, "_connect", connect_with_stall)
    return injected


def slow_commits(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute(
            "CREATE TRIGGER stalled AFTER INSERT ON jobs BEGIN SELECT stall_commit(); END"
        )


def stored_ids(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as connection:
        return [job_id for (job_id,) in connection.execute("SELECT id FROM jobs ORDER BY seq")]


def test_a_push_whose_transaction_began_returns_the_commits_outcome_after_its_deadline(
    stall: Stall, tmp_path: Path
) -> None:
    stall.seconds = 1.0
    harness = Harness.from_settings({"driver": "sqlite"}, tmp_path)
    told: list[float] = []

    async def scenario(driver: Driver) -> None:
        slow_commits(tmp_path / "jobs.db")
        started = time.monotonic()
        with verdict_listener(told.append):
            await driver.push([make_job("slow")], deadline=started + 0.3)
        returned = time.monotonic()
        assert returned - started >= stall.seconds - EARLY, "push returned before its COMMIT"
        assert len(told) == 1, f"the listener was told {told}: once per push that began"
        assert started < told[0] - sqlite_driver.COMMIT_WAIT <= started + 0.3, (
            "the instant told must be COMMIT_WAIT after the transaction began, before the"
            f" deadline: told {told[0] - started:.2f}s after the push started"
        )
        stall.then_fail = True
        with (
            pytest.raises(DriverError, match="user-defined function raised"),
            verdict_listener(told.append),
        ):
            await driver.push([make_job("failed")], deadline=time.monotonic() + 0.3)

    harness.run(scenario)
    assert stored_ids(tmp_path / "jobs.db") == ["slow"]


@pytest.fixture
def slow_sqlite_server(
    start_server: Callable[..., RunningServer], stall: Stall
) -> Callable[..., RunningServer]:
    def start() -> RunningServer:
        server = start_server(
            record=False,
            smtp={
                "attachment_storage": {"mode": "tempfile"},
                "jobs": {"push_timeout": PUSH_TIMEOUT},
            },
            jobs={"pipelines": {"smtp-emails": {"driver": "sqlite"}}},
        )
        stall.seconds = STALL
        slow_commits(server.config.data_dir / "jobs.db")
        return server

    return start


def test_smtp_waits_for_a_commit_in_flight_and_answers_250_with_the_files_kept(
    slow_sqlite_server: Callable[..., RunningServer],
) -> None:
    server = slow_sqlite_server()
    (code, text), elapsed = timed_send(server)
    stored = stored_ids(server.config.data_dir / "jobs.db")
    assert code == 250, (
        f"answered {code} {text!r} after {elapsed:.2f}s while the COMMIT was in flight;"
        f" the jobs table then held {stored}"
    )
    assert STALL - EARLY <= elapsed <= STALL + 1 + LATE, f"250 came after {elapsed:.2f}s"
    event_id = text.decode().rsplit(" ", 1)[-1]
    assert stored == [event_id], f"250 for {event_id}, stored {stored}"
    (job,) = server.call(server.app.jobs.peek("smtp-emails", 10))
    attachments: list[dict[str, Any]] = json.loads(job.payload)["attachments"]
    files = [Path(attachment["path"]) for attachment in attachments]
    assert [file.read_bytes() for file in files] == [b"DATA"], "the stored job lost its files"


def test_smtp_waits_for_a_commit_that_fails_and_answers_451_leaving_no_job_and_no_files(
    slow_sqlite_server: Callable[..., RunningServer], stall: Stall
) -> None:
    stall.then_fail = True
    server = slow_sqlite_server()
    reply, elapsed = timed_send(server)
    assert reply == TEMP_FAILURE
    assert elapsed >= STALL - EARLY, f"451 came after {elapsed:.2f}s, before the COMMIT failed"
    assert stored_ids(server.config.data_dir / "jobs.db") == []
    leftovers = list(server.config.attachments_dir.iterdir())
    assert leftovers == [], f"a refused message left {leftovers}"
