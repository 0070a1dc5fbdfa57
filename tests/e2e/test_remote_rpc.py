"""Two servers: an SMTP ingress node pushing through the API of a jobs node."""

from __future__ import annotations

import base64
import contextlib
import json
import smtplib
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailrunner.jobs.drivers import sqlite as sqlite_driver
from support.net import free_port
from support.sample_mail import TEMP_FAILURE, timed_send
from support.server import RunningServer
from support.waiting import wait_until

JOB_WORKER = Path(__file__).parents[1] / "jobs" / "job_worker.py"


def send(server: RunningServer, subject: str) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("ingress.client")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        return client.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def test_ingress_pushes_to_the_jobs_node_and_recovers_when_it_comes_back(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    api_port = free_port()
    jobs_node_settings: dict[str, Any] = {
        "record": False,
        "rpc": {"listen": f"127.0.0.1:{api_port}"},
        "server": {"command": [sys.executable, str(JOB_WORKER)], "env": {"JOB_LOG": str(log)}},
        "jobs": {
            "pipelines": {
                "smtp-emails": {"driver": "sqlite", "config": {"path": str(tmp_path / "jobs.db")}}
            },
            "consume": ["smtp-emails"],
            "pool": {"num_workers": 1},
        },
    }
    jobs_node = start_server(**jobs_node_settings)
    ingress = start_server(
        record=False,
        smtp={"jobs": {"rpc": f"http://127.0.0.1:{api_port}", "push_timeout": 2}},
    )

    def ran() -> list[str]:
        return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []

    code, reply = send(ingress, "first")
    assert code == 250
    first = reply.decode().rsplit(" ", 1)[-1]
    wait_until(lambda: first in ran(), "the jobs node to run the first email")

    jobs_node.stop()
    started = time.monotonic()
    assert send(ingress, "while down") == TEMP_FAILURE
    assert time.monotonic() - started < 3.0, "451 must come within push_timeout + 1 s"

    start_server(**jobs_node_settings)
    code, reply = send(ingress, "after")
    assert code == 250, "the ingress recovers without a restart"
    after = reply.decode().rsplit(" ", 1)[-1]
    wait_until(lambda: after in ran(), "the restarted jobs node to run the email")
    assert len(ran()) == 2, "the refused email must never run"


def test_a_push_the_ingress_gave_up_on_is_never_stored_by_the_jobs_node(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The ingress sends its push_timeout along, so the jobs node gives up no later than the
    ingress does: a 451 at the ingress means the job is not stored, not even afterwards."""
    api_port = free_port()
    database = tmp_path / "jobs.db"
    pipeline = {"driver": "sqlite", "config": {"path": str(database)}}
    jobs_node = start_server(
        record=False,
        rpc={"listen": f"127.0.0.1:{api_port}"},
        jobs={"pipelines": {"smtp-emails": pipeline}},
    )
    ingress = start_server(
        record=False,
        smtp={"jobs": {"rpc": f"http://127.0.0.1:{api_port}", "push_timeout": 1}},
    )
    assert send(ingress, "stored")[0] == 250
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        assert send(ingress, "refused") == TEMP_FAILURE
        assert time.monotonic() - started < 2.0, "451 must come within push_timeout + 1 s"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert send(ingress, "after")[0] == 250

    def subjects() -> list[str]:
        with contextlib.closing(sqlite3.connect(database)) as reader:
            rows = reader.execute("SELECT payload FROM jobs ORDER BY seq").fetchall()
        return [json.loads(payload)["message"]["subject"] for (payload,) in rows]

    def node_pushes(result: str) -> float:
        labels = {"pipeline": "smtp-emails", "result": result}
        value = jobs_node.app.metrics.registry.get_sample_value(
            "mailrunner_jobs_push_total", labels
        )
        return value or 0.0

    wait_until(
        lambda: node_pushes("error") + node_pushes("ok") == 3, "the node to settle all 3 pushes"
    )
    assert node_pushes("error") == 1, "the node must give up on the push the ingress gave up on"
    assert subjects() == ["stored", "after"], "the refused email must never be stored"


def test_a_message_near_size_with_raw_included_is_stored_through_the_jobs_node(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The worst case for the push's size: include_raw on the ingress (which the jobs node
    cannot know) and a body of quotes, which JSON escaping doubles."""
    api_port = free_port()
    size = 1024 * 1024
    database = tmp_path / "jobs.db"
    jobs_node = start_server(
        record=False,
        rpc={"listen": f"127.0.0.1:{api_port}"},
        smtp={"max_message_size": size},
        jobs={
            "pipelines": {"smtp-emails": {"driver": "sqlite", "config": {"path": str(database)}}}
        },
    )
    ingress = start_server(
        record=False,
        smtp={
            "max_message_size": size,
            "include_raw": True,
            "jobs": {"rpc": f"http://127.0.0.1:{api_port}"},
        },
    )
    quotes = (b'"' * 998 + b"\r\n") * ((size - 1024) // 1000)
    sent = b"Subject: quotes\r\n\r\n" + quotes
    with smtplib.SMTP(ingress.host, ingress.port, timeout=30) as client:
        client.ehlo("ingress.client")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, reply = client.data(sent)
    assert code == 250, reply
    with contextlib.closing(sqlite3.connect(database)) as reader:
        (payload,) = reader.execute("SELECT payload FROM jobs").fetchone()
    event = json.loads(payload)
    assert event["message"]["subject"] == "quotes"
    assert len(event["message"]["body"]) == len(quotes) // 1000 * 999
    assert base64.b64decode(event["message"].get("raw", "")) == sent, (
        "the ingress's include_raw did not arrive"
    )
    assert len(payload) > 2 * jobs_node.app.smtp.max_message_size, (
        f"a {len(payload)}-byte job is no worst case for a jobs node taking {size}-byte mail"
    )


def test_a_push_whose_commit_outlasts_the_ingress_answers_451_and_keeps_the_stored_jobs_files(
    start_server: Callable[..., RunningServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs node's sqlite transaction has begun when the ingress stops waiting for the
    node's answer: the node then stores the job once its COMMIT is done. The ingress cannot
    know, so it answers 451 (the client sends the message again) and keeps the files the
    stored job points at. The slow COMMIT is a trigger that sleeps in the node's transaction,
    as a stalled disk would hold it."""
    stall = 3.0
    push_timeout = 0.5
    connect = sqlite_driver._connect

    def connect_with_stall(path: Path) -> sqlite3.Connection:
        connection = connect(path)
        connection.create_function("stall_commit", 0, lambda: time.sleep(stall))
        return connection

    monkeypatch.setattr(sqlite_driver, "_connect", connect_with_stall)
    api_port = free_port()
    database = tmp_path / "jobs.db"
    start_server(
        record=False,
        rpc={"listen": f"127.0.0.1:{api_port}"},
        jobs={
            "pipelines": {"smtp-emails": {"driver": "sqlite", "config": {"path": str(database)}}}
        },
    )
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute(
            "CREATE TRIGGER stalled AFTER INSERT ON jobs BEGIN SELECT stall_commit(); END"
        )
    ingress = start_server(
        record=False,
        smtp={
            "attachment_storage": {"mode": "tempfile"},
            "jobs": {"rpc": f"http://127.0.0.1:{api_port}", "push_timeout": push_timeout},
        },
    )
    reply, elapsed = timed_send(ingress)
    assert reply == TEMP_FAILURE, f"{reply} after {elapsed:.2f}s"
    assert elapsed < stall, f"451 came after {elapsed:.2f}s, once the COMMIT was done"

    def payloads() -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(database)) as reader:
            rows = reader.execute("SELECT payload FROM jobs").fetchall()
        return [json.loads(payload) for (payload,) in rows]

    wait_until(lambda: len(payloads()) == 1, "the jobs node to commit the job")
    (event,) = payloads()
    files = [Path(attachment["path"]) for attachment in event["attachments"]]
    assert [file.read_bytes() for file in files] == [b"DATA"], "the stored job lost its files"
