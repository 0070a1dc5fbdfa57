"""The `mailrunner` CLI against a running server, the way an operator uses it."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailrunner.config import MemoryPipelineConfig
from support.processes import run_cli
from support.server import RunningServer
from support.waiting import wait_until

JOB_WORKER = Path(__file__).parents[1] / "jobs" / "job_worker.py"
ROOT = Path(__file__).parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, timeout=60)


def cli_json(server: RunningServer, *args: str) -> Any:
    result = cli(*args, "--server", server.api_url, "--json")
    assert result.returncode == 0, f"mailrunner {' '.join(args)} failed: {result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture
def node(start_server: Callable[..., RunningServer], tmp_path: Path) -> RunningServer:
    """A server consuming `smtp-emails` (sqlite) with the test job worker."""
    return start_server(
        record=False,
        server={
            "command": [sys.executable, str(JOB_WORKER)],
            "env": {"JOB_LOG": str(tmp_path / "ran.log")},
        },
        jobs={
            "pipelines": {"smtp-emails": {"driver": "sqlite"}},
            "consume": ["smtp-emails"],
            "pool": {"num_workers": 1},
        },
    )


def executed(tmp_path: Path) -> list[str]:
    log = tmp_path / "ran.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_pause_stat_push_resume_consume_through_the_cli(
    node: RunningServer, tmp_path: Path
) -> None:
    assert cli_json(node, "jobs", "pause", "smtp-emails") == {"ok": True}
    assert cli_json(node, "jobs", "stat", "smtp-emails")["paused"] is True
    pushed = cli_json(node, "jobs", "push", "smtp-emails", "--payload", "{}", "--name", "cli.test")
    wait_until(lambda: cli_json(node, "jobs", "stat", "smtp-emails")["queued"] == 1, "a stored job")
    assert executed(tmp_path) == [], "a paused pipeline must not be consumed"
    peeked = cli_json(node, "jobs", "peek", "smtp-emails")["jobs"]
    assert [(job["id"], job["job"]) for job in peeked] == [(pushed["id"], "cli.test")]
    assert cli_json(node, "jobs", "resume", "smtp-emails") == {"ok": True}
    wait_until(lambda: executed(tmp_path) == [pushed["id"]], "the job to be consumed after resume")


def test_declare_list_destroy_and_the_failed_list(node: RunningServer, tmp_path: Path) -> None:
    declared = cli_json(
        node,
        "jobs",
        "declare",
        "extra",
        "--driver",
        "sqlite",
        "--config",
        f"path={node.config.data_dir / 'extra.db'}",
        "--consume",
    )
    assert declared == {"pipeline": "extra", "created": True}
    assert "extra" in cli_json(node, "jobs", "list")["pipelines"]
    failing = cli_json(node, "jobs", "push", "extra", "--payload", '{"do": "nack-final"}')["id"]
    wait_until(lambda: cli_json(node, "jobs", "stat", "extra")["failed"] == 1, "a failed job")
    (failed,) = cli_json(node, "jobs", "failed", "list", "extra")["failed"]
    assert (failed["job"]["id"], failed["error"]) == (failing, "asked to fail for good")
    assert cli_json(node, "jobs", "failed", "retry", "extra", "--id", failing) == {"count": 1}
    wait_until(lambda: executed(tmp_path) == [failing, failing], "the retried job to run again")
    wait_until(lambda: cli_json(node, "jobs", "stat", "extra")["failed"] == 1, "failed again")
    (again,) = cli_json(node, "jobs", "failed", "list", "extra")["failed"]
    assert (again["job"]["id"], again["error"]) == (failing, "asked to fail for good")
    assert again["failed_at"] > failed["failed_at"], "the failed list kept the first failure"
    assert cli_json(node, "jobs", "failed", "purge", "extra") == {"count": 1}
    assert cli_json(node, "jobs", "destroy", "extra", "--purge") == {"ok": True}
    assert "extra" not in cli_json(node, "jobs", "list")["pipelines"]


def test_declare_leaves_unset_settings_to_the_pipeline_defaults(node: RunningServer) -> None:
    """A declare without options gets the pipeline model's defaults: declaring them all
    explicitly afterwards is the same pipeline (a differing setting would answer 409)."""
    defaults = MemoryPipelineConfig(driver="memory")
    plain = ("jobs", "declare", "plain", "--driver", "memory")
    assert cli_json(node, *plain) == {"pipeline": "plain", "created": True}
    explicit = (
        *("--priority", str(defaults.priority), "--prefetch", str(defaults.prefetch)),
        *(
            "--retries",
            str(defaults.retries),
            "--visibility-timeout",
            f"{defaults.visibility_timeout}s",
        ),
    )
    assert cli_json(node, *plain, *explicit) == {"pipeline": "plain", "created": False}
    assert cli_json(node, "jobs", "stat", "plain")["priority"] == defaults.priority
    refused = cli(*plain, "--priority", "-1", "--server", node.api_url)
    assert refused.returncode == 1
    assert "priority" in refused.stderr, refused.stderr


def test_workers_list_add_remove_reset(node: RunningServer) -> None:
    (first,) = cli_json(node, "workers", "list", "--pool", "jobs")["workers"]
    added = cli_json(node, "workers", "add", "--pool", "jobs")["worker"]
    assert {w["pid"] for w in cli_json(node, "workers", "list")["workers"]} == {
        first["pid"],
        added["pid"],
    }
    cli_json(node, "workers", "remove", "--pool", "jobs")
    assert len(cli_json(node, "workers", "list")["workers"]) == 1
    assert cli_json(node, "workers", "reset") == {"ok": True}
    wait_until(
        lambda: (
            [w["state"] for w in cli_json(node, "workers", "list")["workers"]] == ["ready"]
            and cli_json(node, "workers", "list")["workers"][0]["pid"]
            not in (first["pid"], added["pid"])
        ),
        "a fresh worker after reset",
    )


def test_connections_list_and_close(node: RunningServer) -> None:
    client = smtplib.SMTP(node.host, node.port, timeout=10)
    client.ehlo("cli.example")
    client.login("operator", "secret")
    client.mail("a@example.com")
    client.rcpt("b@example.com")
    (connection,) = cli_json(node, "connections", "list")["connections"]
    assert (
        connection["helo"],
        connection["mail_from"],
        connection["recipients"],
        connection["auth_user"],
    ) == (
        "cli.example",
        "a@example.com",
        ["b@example.com"],
        "operator",
    )
    assert cli_json(node, "connections", "close", connection["uuid"]) == {"ok": True}
    assert client.getreply()[0] == 421
    client.close()
    wait_until(
        lambda: cli_json(node, "connections", "list")["connections"] == [], "the connection to go"
    )


def test_send_delivers_a_test_email_with_an_attachment_and_auth(
    node: RunningServer, tmp_path: Path
) -> None:
    node.call(node.app.jobs.pause("smtp-emails"))
    result = cli(
        "send",
        "--smtp",
        f"{node.host}:{node.port}",
        "--to",
        "t@example.com",
        "--subject",
        "from the cli",
        "--attach",
        str(ROOT / "README.md"),
        "--auth-user",
        "u",
        "--auth-password",
        "p",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("250 2.0.0 OK: queued as ")
    (job,) = cli_json(node, "jobs", "peek", "smtp-emails")["jobs"]
    event = json.loads(job["payload"])
    assert event["message"]["subject"] == "from the cli"
    assert event["authentication"]["username"] == "u"
    assert event["attachments"][0]["size"] == (ROOT / "README.md").stat().st_size
    table = cli("jobs", "peek", "smtp-emails", "--server", node.api_url)
    assert table.returncode == 0, table.stderr
    summary = f"{event['envelope']['from']} → t@example.com · 'from the cli' · 1 attachment(s)"
    assert summary in table.stdout, table.stdout
    assert job["id"] in table.stdout


def test_exit_codes_error_answer_1_unreachable_2_usage_2(
    node: RunningServer, tmp_path: Path
) -> None:
    missing = cli("jobs", "stat", "nope", "--server", node.api_url)
    assert missing.returncode == 1
    assert "unknown pipeline 'nope'" in missing.stderr
    unreachable = cli("jobs", "list", "--server", "http://127.0.0.1:9")
    assert unreachable.returncode == 2
    assert "cannot reach" in unreachable.stderr
    usage = cli("jobs", "declare", "x", "--server", node.api_url)
    assert usage.returncode == 2
    assert "--driver" in usage.stderr
    bad_config = cli(
        "jobs",
        "declare",
        "x",
        "--driver",
        "memory",
        "--config",
        "novalue",
        "--server",
        node.api_url,
    )
    assert bad_config.returncode == 2


def test_the_server_is_found_from_the_environment_or_the_config_file(
    node: RunningServer, tmp_path: Path
) -> None:
    environment = {**os.environ, "MAILRUNNER_RPC": node.api_url}
    assert cli("jobs", "list", env=environment).returncode == 0
    config = tmp_path / "client.yaml"
    config.write_text(
        f"smtp: {{use_jobs: false, pool: {{command: x}}}}\nrpc: {{listen: '{node.api_url[7:]}'}}\n"
    )
    result = cli("jobs", "list", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "smtp-emails" in result.stdout


def test_a_token_protected_server_needs_the_token(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(rpc={"token": "t0ken"})
    refused = cli("jobs", "list", "--server", server.api_url)
    assert refused.returncode == 1
    assert "bearer token" in refused.stderr
    assert cli("jobs", "list", "--server", server.api_url, "--token", "t0ken").returncode == 0
    environment = {**os.environ, "MAILRUNNER_TOKEN": "t0ken"}
    assert cli("jobs", "list", "--server", server.api_url, env=environment).returncode == 0
