"""SMTP -> Jobs: every accepted email becomes a stored job before the client gets 250."""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from support.brokers import delete_streams
from support.events import validate_event
from support.processes import run_cli
from support.requirements import require_broker, unavailable
from support.sample_mail import TEMP_FAILURE, WITH_ATTACHMENT
from support.server import RunningServer
from support.waiting import wait_until

HERE = Path(__file__).parent
JOB_WORKER = HERE.parent / "jobs" / "job_worker.py"


def message(subject: str = "hello", message_id: str = "<m1@example.com>") -> bytes:
    return (
        f"From: A <a@example.com>\r\nTo: b@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n\r\nbody\r\n"
    ).encode()


def send(server: RunningServer, payload: bytes | None = None) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        return client.data(payload or message())


@pytest.fixture
def jobs_server(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> Callable[..., RunningServer]:
    def start(
        driver: str = "sqlite", smtp_jobs: dict[str, Any] | None = None, **overrides: Any
    ) -> RunningServer:
        pipeline: dict[str, Any] = {"driver": driver}
        smtp = {"jobs": {"push_timeout": 1, **(smtp_jobs or {})}, **overrides.pop("smtp", {})}
        return start_server(
            record=False, smtp=smtp, jobs={"pipelines": {"smtp-emails": pipeline}}, **overrides
        )

    return start


def stored_events(server: RunningServer) -> list[dict[str, Any]]:
    jobs = server.call(server.app.jobs.peek("smtp-emails", 1000))
    return [json.loads(job.payload) for job in jobs]


@pytest.mark.parametrize("driver", ["memory", "sqlite"])
def test_accepted_email_is_a_job_with_name_id_headers_options_and_valid_payload(
    jobs_server: Callable[..., RunningServer], driver: str
) -> None:
    server = jobs_server(driver, smtp_jobs={"priority": 4, "delay": 0, "auto_ack": True})
    code, reply = send(server)
    assert code == 250
    (job,) = server.call(server.app.jobs.peek("smtp-emails", 10))
    event = json.loads(job.payload)
    validate_event(event)
    assert reply.decode() == f"2.0.0 OK: queued as {event['id']}"
    assert (job.id, job.name) == (event["id"], "smtp.email")
    assert job.headers == {"uuid": [event["uuid"]], "email_id": [event["id"]]}
    assert (job.options.pipeline, job.options.priority, job.options.auto_ack) == (
        "smtp-emails",
        4,
        True,
    )
    assert event["message"]["id"] == "<m1@example.com>"


def test_delayed_email_jobs_wait_their_delay(jobs_server: Callable[..., RunningServer]) -> None:
    server = jobs_server("sqlite", smtp_jobs={"delay": "1h"})
    assert send(server)[0] == 250
    stat = server.call(server.app.jobs.stat("smtp-emails"))
    assert (stat.delayed, stat.queued) == (1, 0)


def test_the_same_message_with_use_jobs_false_reaches_the_worker_pool(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    worker = HERE.parent / "pool" / "behaviour_worker.py"
    log = tmp_path / "pool.log"
    server = start_server(
        record=False,
        server={"command": [sys.executable, str(worker)], "env": {"BEHAVIOUR_LOG": str(log)}},
        smtp={"use_jobs": False, "pool": {"num_workers": 1}},
    )
    code, reply = send(server)
    assert code == 250
    event_id = reply.decode().rsplit(" ", 1)[-1]
    wait_until(lambda: log.exists() and event_id in log.read_text(), "the worker to log the email")
    assert server.call(server.app.jobs.stat("smtp-emails")).queued == 0


def test_paused_pipeline_still_stores_and_answers_250(
    jobs_server: Callable[..., RunningServer],
) -> None:
    server = jobs_server()
    server.call(server.app.jobs.pause("smtp-emails"))
    assert send(server)[0] == 250
    assert len(stored_events(server)) == 1


def test_destroyed_pipeline_gives_451_and_the_next_message_succeeds_once_it_is_back(
    jobs_server: Callable[..., RunningServer],
) -> None:
    server = jobs_server()
    settings = server.app.jobs.pipeline("smtp-emails").settings
    server.call(server.app.jobs.destroy("smtp-emails"))
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("c")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        assert client.data(message("lost")) == TEMP_FAILURE
        server.call(server.app.jobs.declare("smtp-emails", settings))
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        assert client.data(message("kept"))[0] == 250, "the connection stays usable after a 451"
    assert [e["message"]["subject"] for e in stored_events(server)] == ["kept"]


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold BEGIN EXCLUSIVE on the sqlite file from another connection, as another program would."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_locked_database_longer_than_push_timeout_gives_451_in_time_and_never_delivers_later(
    jobs_server: Callable[..., RunningServer],
) -> None:
    server = jobs_server("sqlite", smtp_jobs={"push_timeout": 1})
    with exclusive_lock(server.config.data_dir / "jobs.db"):
        started = time.monotonic()
        assert send(server, message("refused", "<refused@x>")) == TEMP_FAILURE
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"451 came after {elapsed:.2f}s; push_timeout is 1s"
    assert send(server, message("after", "<after@x>"))[0] == 250
    ids = [e["message"]["id"] for e in stored_events(server)]
    assert ids == ["<after@x>"], "the refused message must never be stored"


def test_read_only_database_gives_451(
    jobs_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = jobs_server("sqlite")
    assert send(server, message("first", "<first@x>"))[0] == 250
    files = [server.config.data_dir / "jobs.db", server.config.data_dir / "jobs.db-wal"]
    if shutil.which("chattr") is None:
        unavailable("chattr is not installed (apt-get install e2fsprogs)")
    made_immutable = subprocess.run(
        ["chattr", "+i", *map(str, files)], capture_output=True, check=False
    )
    if made_immutable.returncode != 0:
        unavailable(
            f"cannot make the database read-only here: {made_immutable.stderr.decode().strip()}"
        )
    try:
        assert send(server, message("refused", "<refused@x>")) == TEMP_FAILURE
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=True)
    assert send(server, message("after", "<after@x>"))[0] == 250
    ids = [e["message"]["id"] for e in stored_events(server)]
    assert ids == ["<first@x>", "<after@x>"]


def test_tempfile_attachments_live_until_the_job_is_acked(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    log = tmp_path / "executed.log"
    server = start_server(
        record=False,
        server={"command": [sys.executable, str(JOB_WORKER)], "env": {"JOB_LOG": str(log)}},
        smtp={"attachment_storage": {"mode": "tempfile", "cleanup_after": 0.01}},
        jobs={"consume": ["smtp-emails"], "pool": {"num_workers": 1}},
    )
    server.call(server.app.jobs.pause("smtp-emails"))
    assert send(server, WITH_ATTACHMENT)[0] == 250
    (event,) = stored_events(server)
    stored = Path(event["attachments"][0]["path"])
    assert stored.read_bytes() == b"DATA"
    old = time.time() - 3600
    os.utime(stored.parent, (old, old))
    time.sleep(1.5)  # longer than the age-based cleanup's interval: prove it does not run here
    assert stored.exists(), "with Jobs, attachment files are never removed by age"
    server.call(server.app.jobs.resume("smtp-emails"))
    wait_until(
        lambda: not stored.parent.exists(), "the attachment folder to go once the job is acked"
    )
    assert event["id"] in log.read_text()


NACK_WORKER = (
    "from mailrunner.worker import Consumer\n"
    "consumer = Consumer()\n"
    "while (task := consumer.wait_task()) is not None:\n"
    "    task.nack('refused for the test', requeue=False)\n"
)


def test_tempfile_attachments_go_with_purged_failed_jobs_and_destroyed_pipelines(
    start_server: Callable[..., RunningServer],
) -> None:
    """Through the CLI, as an operator would: `jobs failed purge` and `jobs destroy --purge`."""
    server = start_server(
        record=False,
        server={"command": [sys.executable, "-c", NACK_WORKER]},
        smtp={"attachment_storage": {"mode": "tempfile"}},
        jobs={"consume": ["smtp-emails"], "pool": {"num_workers": 1}},
    )
    assert send(server, WITH_ATTACHMENT)[0] == 250
    wait_until(
        lambda: server.call(server.app.jobs.stat("smtp-emails")).failed == 1,
        "the nacked job to reach the failed list",
    )
    (failed,) = server.call(server.app.jobs.list_failed("smtp-emails"))
    failed_folder = Path(json.loads(failed.job.payload)["attachments"][0]["path"]).parent
    assert failed_folder.is_dir()
    purged = run_cli("jobs", "failed", "purge", "smtp-emails", "--server", server.api_url)
    assert purged.returncode == 0, purged.stderr
    assert not failed_folder.exists(), "purging a failed job must delete its attachments"

    server.call(server.app.jobs.pause("smtp-emails"))
    assert send(server, WITH_ATTACHMENT)[0] == 250
    (event,) = stored_events(server)
    queued_folder = Path(event["attachments"][0]["path"]).parent
    assert queued_folder.is_dir()
    destroyed = run_cli("jobs", "destroy", "smtp-emails", "--purge", "--server", server.api_url)
    assert destroyed.returncode == 0, destroyed.stderr
    assert not queued_folder.exists(), "destroy --purge must delete its jobs' attachments"


@pytest.mark.nats
def test_a_pipeline_with_a_small_max_payload_lowers_the_advertised_size(
    start_server: Callable[..., RunningServer],
) -> None:
    require_broker("nats", "127.0.0.1", 4222)
    stream = f"size_{uuid.uuid4().hex[:12]}"
    pipeline = {"driver": "nats", "config": {"stream": stream, "subject": f"mailrunner.{stream}"}}
    try:
        server = start_server(record=False, jobs={"pipelines": {"smtp-emails": pipeline}})
        max_payload = server.app.jobs.pipeline("smtp-emails").driver.capabilities.max_payload
        assert max_payload is not None
        with smtplib.SMTP(server.host, server.port, timeout=30) as client:
            client.ehlo("c")
            advertised = int(client.esmtp_features["size"])
            assert advertised == int(max_payload / 2.0) < 10485760
            code, _ = client.docmd(f"MAIL FROM:<a@example.com> SIZE={advertised + 1}")
            assert code == 552, "a declared size over what the pipeline carries is refused early"
            client.rset()
            body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (advertised // 1000 - 1)
            client.sendmail("a@example.com", ["b@example.com"], body)
    finally:
        delete_streams(4222, stream)
