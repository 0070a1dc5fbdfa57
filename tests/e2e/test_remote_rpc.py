"""Two servers: an SMTP ingress node pushing through the API of a jobs node."""

from __future__ import annotations

import smtplib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import RunningServer, free_port, wait_until

JOB_WORKER = Path(__file__).parents[1] / "jobs" / "job_worker.py"
TEMP_FAILURE = (451, b"4.3.0 Temporary failure, try again later")


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
