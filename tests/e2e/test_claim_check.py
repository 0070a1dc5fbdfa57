"""Claim-check (`smtp.attachment_storage.mode: auto`) on every driver: a 10 MB message is a
small job whose attachment and raw message are files a consumer reads (written with the SDK,
`claim_check_worker.py`), the spool file handed over rather than copied; a small message
travels whole; a refused message leaves no file; an acked job takes its files with it."""

from __future__ import annotations

import os
import smtplib
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from support.brokers import AMQP_ADDR, amqp_queue, delete_streams
from support.claim_check import (
    ATTACHMENT,
    BIG,
    MEDIUM,
    SMALL,
    SMALL_JOB,
    WORKER,
    consumed,
    event_folders,
    send,
    sha256,
    spooled,
)
from support.requirements import require_broker, unavailable
from support.server import RunningServer
from support.waiting import wait_until

HOOKS_WORKER = Path(__file__).parent.parent / "pool" / "hooks_worker.py"


# --- pipelines -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_pipeline() -> dict[str, Any]:
    return {"driver": "sqlite"}


@pytest.fixture
def redis_pipeline() -> Iterator[dict[str, Any]]:
    require_broker("redis", "127.0.0.1", 6379)
    prefix = f"mailrunner-test-{uuid.uuid4().hex[:12]}"
    yield {"driver": "redis", "config": {"addr": "redis://127.0.0.1:6379/0", "key_prefix": prefix}}
    with redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5.0) as client:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def amqp_pipeline() -> Iterator[dict[str, Any]]:
    for queue in amqp_queue():
        yield {"driver": "amqp", "config": {"addr": AMQP_ADDR, "queue": queue}}


@pytest.fixture
def nats_pipeline() -> Iterator[dict[str, Any]]:
    require_broker("nats", "127.0.0.1", 4222)
    stream = f"claim_{uuid.uuid4().hex[:12]}"
    yield {"driver": "nats", "config": {"stream": stream, "subject": f"mailrunner.{stream}"}}
    delete_streams(4222, stream)


DRIVERS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("amqp", id="amqp", marks=pytest.mark.amqp),
    pytest.param("nats", id="nats", marks=pytest.mark.nats),
]


def claim_check_server(
    start_server: Callable[..., RunningServer],
    pipeline: dict[str, Any],
    log: Path,
    **smtp: Any,
) -> RunningServer:
    """A server in `auto` mode with include_raw, its pipeline consumed by the SDK worker."""
    return start_server(
        record=False,
        server={"command": [sys.executable, str(WORKER)], "env": {"CLAIM_LOG": str(log)}},
        smtp={"include_raw": True, "attachment_storage": {"mode": "auto"}, **smtp},
        jobs={
            "pipelines": {"smtp-emails": pipeline},
            "consume": ["smtp-emails"],
            "pool": {"num_workers": 1},
        },
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_10_mb_message_is_a_small_job_whose_files_hold_the_exact_bytes(
    start_server: Callable[..., RunningServer],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    driver: str,
) -> None:
    pipeline = request.getfixturevalue(f"{driver}_pipeline")
    log = tmp_path / "consumed.jsonl"
    server = claim_check_server(start_server, pipeline, log)
    assert len(BIG) > server.config.smtp.spool_bytes, "the message must be spooled"

    code, event_id = send(server, BIG)
    assert code == 250
    assert spooled(server) == [], "the spool file was handed over (or removed) before 250"
    big = consumed(log, event_id)
    assert big["payload_bytes"] < SMALL_JOB, f"a {len(BIG)}-byte message made a large job"
    assert big["raw_inline"] is False
    assert big["raw_sha256"] == sha256(BIG), "raw_path holds exactly the bytes received"
    assert big["raw_mode"] == 0o600
    assert big["raw_links"] == 1, "the spool file was renamed, not linked twice nor left"
    assert Path(big["raw_path"]).parent == server.config.attachments_dir.resolve() / event_id
    (attachment,) = big["attachments"]
    assert attachment["inline"] is False
    assert (attachment["size"], attachment["sha256"]) == (len(ATTACHMENT), sha256(ATTACHMENT))
    assert attachment["mode"] == 0o600
    assert Path(attachment["path"]).parent == Path(big["raw_path"]).parent

    code, small_id = send(server, SMALL)
    assert code == 250
    small = consumed(log, small_id)
    assert small["raw_inline"] is True
    assert small["raw_path"] is None
    assert small["raw_sha256"] == sha256(SMALL)
    assert [a["inline"] for a in small["attachments"]] == [True], "small messages stay whole"

    code, medium_id = send(server, MEDIUM)
    assert code == 250
    medium = consumed(log, medium_id)
    assert medium["raw_path"] is not None, "claim-checked, though never spooled"
    assert (medium["raw_sha256"], medium["raw_mode"]) == (sha256(MEDIUM), 0o600)
    assert [a["inline"] for a in medium["attachments"]] == [False]

    wait_until(lambda: event_folders(server) == [], "the acked jobs' folders to go")


def test_when_temp_dir_is_on_another_file_system_the_raw_message_is_copied(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        unavailable("no /dev/shm on another file system than the test's tmp dir")
    temp_dir = shm / f"mailrunner-test-{uuid.uuid4().hex}"
    log = tmp_path / "consumed.jsonl"
    try:
        server = claim_check_server(
            start_server,
            {"driver": "sqlite"},
            log,
            attachment_storage={"mode": "auto", "temp_dir": str(temp_dir)},
        )
        code, event_id = send(server, BIG)
        assert code == 250
        assert spooled(server) == [], "the spool file went after the copy"
        big = consumed(log, event_id)
        assert big["raw_sha256"] == sha256(BIG)
        assert big["raw_mode"] == 0o600
        assert Path(big["raw_path"]).is_relative_to(temp_dir.resolve())
        wait_until(lambda: event_folders(server) == [], "the acked job's folder to go")
    finally:
        for path in sorted(temp_dir.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        if temp_dir.exists():
            temp_dir.rmdir()


def test_a_message_the_data_hook_refuses_leaves_no_file(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = start_server(
        record=False,
        smtp={
            "include_raw": True,
            "attachment_storage": {"mode": "auto"},
            "hooks": ["data"],
            "pool": {"command": [sys.executable, str(HOOKS_WORKER)], "num_workers": 1},
        },
        server={"env": {"MAX_SIZE": "1000000"}},
    )
    code, _ = send(server, BIG)
    assert code == 552, "hooks_worker refuses messages over MAX_SIZE"
    assert event_folders(server) == [], "the refused message's files went with it"
    assert spooled(server) == []
    assert send(server, SMALL)[0] == 250


def test_a_message_whose_push_is_refused_answers_451_and_leaves_no_file(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(
        record=False,
        smtp={"include_raw": True, "attachment_storage": {"mode": "auto"}},
        jobs={"pipelines": {"smtp-emails": {"driver": "memory", "config": {"max_queued": 1}}}},
    )
    code, first = send(server, BIG)
    assert code == 250
    assert [folder.name for folder in event_folders(server)] == [first]
    code, _ = send(server, BIG)
    assert code == 451, "the full pipeline refused the second job"
    assert [folder.name for folder in event_folders(server)] == [first], "nothing of the second"
    assert spooled(server) == []


@pytest.mark.nats
def test_with_claim_check_nats_keeps_size_and_refuses_only_a_message_whose_text_outgrows_it(
    start_server: Callable[..., RunningServer], nats_pipeline: dict[str, Any]
) -> None:
    """A big message is a small job, so max_payload no longer lowers SIZE; text bodies stay
    in the event, and a message whose text the pipeline cannot carry is refused for good
    (552: a retry would fail the same way) with its files."""
    server = start_server(
        record=False,
        smtp={"include_raw": True, "attachment_storage": {"mode": "auto"}},
        jobs={"pipelines": {"smtp-emails": nats_pipeline}},
    )
    max_payload = server.app.jobs.pipeline("smtp-emails").driver.capabilities.max_payload
    assert max_payload is not None
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert int(client.esmtp_features["size"]) == server.config.smtp.max_message_size
    text = b"Subject: long text\r\n\r\n" + (b"y" * 998 + b"\r\n") * (max_payload // 1000 + 1)

    code, _ = send(server, text)
    assert code == 552
    assert event_folders(server) == [], "the refused message's raw file went with it"
    assert send(server, BIG)[0] == 250, "attachments and raw bytes are paths: a small job"


@pytest.mark.redis
def test_start_up_says_once_that_remote_consumers_must_see_temp_dir(
    start_server: Callable[..., RunningServer], redis_pipeline: dict[str, Any]
) -> None:
    shared = "events carry file paths: consumers must see temp_dir"
    pipelines = {"smtp-emails": redis_pipeline, "local": {"driver": "sqlite"}}
    with capture_logs() as logs:
        server = start_server(
            record=False,
            smtp={"attachment_storage": {"mode": "auto"}, "jobs": {"pipelines": list(pipelines)}},
            jobs={"pipelines": pipelines},
        )
    warnings = [entry for entry in logs if entry["event"] == shared]
    assert [(e["log_level"], e["pipelines"]) for e in warnings] == [("warning", ["smtp-emails"])]
    assert warnings[0]["temp_dir"] == str(server.config.attachments_dir)
    with capture_logs() as logs:
        start_server(record=False, smtp={"attachment_storage": {"mode": "auto"}})
    assert [entry for entry in logs if entry["event"] == shared] == [], "local pipelines only"
