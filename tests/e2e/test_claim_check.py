"""Claim-check (`smtp.attachment_storage.mode: auto`) on every driver: a 10 MB message is a
small job whose attachment and raw message are files a consumer reads (written with the SDK,
`claim_check_worker.py`), the spool file handed over rather than copied; a small message
travels whole; a refused message leaves no file; an acked job takes its files with it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
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
    mime,
    send,
    send_to,
    sha256,
    spooled,
)
from support.disk import small_tmpfs
from support.processes import ServeProcess, run_cli
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


# --- review (R2): edges, durability, a full disk ---------------------------------------------


def test_without_include_raw_a_big_message_still_has_its_attachments_claim_checked(
    start_server: Callable[..., RunningServer],
) -> None:
    """`auto` without `include_raw` (and no inbox) never carries the raw message, yet the
    message's size still decides the claim-check (it used to recurse: 451 for every message)."""
    server = start_server(smtp={"attachment_storage": {"mode": "auto"}})
    big_code, big_id = send(server, BIG)
    small_code, _ = send(server, SMALL)
    assert (big_code, small_code) == (250, 250)
    big, small = server.delivery.wait_for(2)
    assert "raw" not in big["message"]
    assert "raw_path" not in big["message"]
    (attachment,) = big["attachments"]
    assert Path(attachment["path"]).read_bytes() == ATTACHMENT
    assert [folder.name for folder in event_folders(server)] == [big_id]
    assert os.listdir(event_folders(server)[0]).count("message.eml") == 0, "no raw file asked for"
    assert [a.get("path") for a in small["attachments"]] == [None], "small messages stay whole"


def test_claim_check_bytes_is_the_largest_message_that_travels_whole(
    start_server: Callable[..., RunningServer],
) -> None:
    """A message of exactly `claim_check_bytes` octets travels whole; one octet more and its
    raw message and attachment are files holding exactly what was sent."""
    at = mime("edge", b"x" * 3000)
    over = mime("edges", b"x" * 3000)
    assert len(over) == len(at) + 1
    server = start_server(
        smtp={
            "include_raw": True,
            "attachment_storage": {"mode": "auto", "claim_check_bytes": len(at)},
        }
    )
    assert send(server, at)[0] == 250
    assert send(server, over)[0] == 250
    whole, checked = server.delivery.wait_for(2)
    assert base64.b64decode(whole["message"]["raw"]) == at
    assert "raw_path" not in whole["message"]
    assert [a.get("path") for a in whole["attachments"]] == [None]
    assert "raw" not in checked["message"]
    assert Path(checked["message"]["raw_path"]).read_bytes() == over
    (attachment,) = checked["attachments"]
    assert Path(attachment["path"]).read_bytes() == b"x" * 3000


def test_every_name_down_to_the_files_a_job_names_is_fsynced_before_250(
    start_server: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after 250 must lose nothing the job names: the raw file, the attachment file,
    their folder and the folder's own entry in temp_dir are all fsynced first. (A spy on
    os.fsync in this process, where the server runs, noting each synced inode.)"""
    server = start_server(smtp={"include_raw": True, "attachment_storage": {"mode": "auto"}})
    synced: set[tuple[int, int]] = set()
    real_fsync = os.fsync

    def noting_fsync(descriptor: int) -> None:
        info = os.fstat(descriptor)
        synced.add((info.st_dev, info.st_ino))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    code, event_id = send(server, BIG)
    assert code == 250
    (event,) = server.delivery.wait_for(1)
    folder = server.config.attachments_dir / event_id
    named = {
        "temp_dir": server.config.attachments_dir,
        "event folder": folder,
        "raw file": Path(event["message"]["raw_path"]),
        "attachment file": Path(event["attachments"][0]["path"]),
    }
    unsynced = [
        what
        for what, path in named.items()
        if ((info := os.stat(path)).st_dev, info.st_ino) not in synced
    ]
    assert unsynced == [], "not on disk before 250"


@pytest.fixture
def small_temp_dir(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for temp_dir: a disk that fills while an attachment is written."""
    with small_tmpfs(tmp_path / "claims") as mountpoint:
        yield mountpoint


def open_spool_files(server: RunningServer) -> list[str]:
    """The files this process (the server's) still has open in its spool folder, deleted or
    not (the folder itself is held open: it is the spool's lock)."""
    spool = f"{server.app.spool.folder}/"
    targets = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
    return [target for target in targets if target.startswith(spool)]


def test_a_disk_that_fills_while_an_attachment_is_written_answers_451_and_holds_nothing(
    start_server: Callable[..., RunningServer], small_temp_dir: Path
) -> None:
    """ENOSPC halfway through an attachment decoded from the spool file: 451, the folder
    gone, the spool file removed and closed (an open deleted file would keep its space, the
    very thing a full disk lacks), and the session goes on."""
    server = start_server(
        smtp={
            "include_raw": True,
            "attachment_storage": {"mode": "auto", "temp_dir": str(small_temp_dir)},
        }
    )
    large = mime("too large for the disk", ATTACHMENT[:2_000_000])
    assert len(large) > server.config.smtp.spool_bytes, "the attachment must be in the spool"
    with capture_logs() as logs:
        code, _ = send(server, large)
    assert code == 451
    told = [(e["event"], e["log_level"]) for e in logs if e["log_level"] in ("warning", "error")]
    assert told == [("message not stored", "warning")], "a full disk is no internal error"
    (warning,) = [e for e in logs if e["event"] == "message not stored"]
    assert "No space left on device" in warning["reason"]
    assert os.listdir(small_temp_dir) == [], "a half-written folder was left"
    assert spooled(server) == []
    assert open_spool_files(server) == [], "the removed spool file is still held open"
    assert send(server, SMALL)[0] == 250


def test_a_second_server_with_the_same_pid_and_data_dir_leaves_the_first_ones_spool_alone(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Two containers sharing a data_dir both run the server as the same pid (here: two
    servers in this process). The second one starting while the first receives a spooled
    message must not empty the first one's spool folder under it."""
    shared = {"data_dir": str(tmp_path / "shared"), "record": True}
    first = start_server(
        smtp={"include_raw": True, "attachment_storage": {"mode": "auto"}}, **shared
    )
    head, tail = BIG[: len(BIG) // 2], BIG[len(BIG) // 2 :]
    with smtplib.SMTP(first.host, first.port, timeout=60) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(head)
        wait_until(lambda: spooled(first) != [], "the first server to spool the message")
        second = start_server(**shared)
        assert spooled(first) != [], "the second server emptied the first one's spool"
        client.send(tail + b".\r\n")
        code, _ = client.getreply()
    assert code == 250
    (event,) = first.delivery.wait_for(1)
    assert Path(event["message"]["raw_path"]).read_bytes() == BIG
    assert send(second, SMALL)[0] == 250
    assert second.app.spool.folder.name == f"{first.app.spool.folder.name}.1"


def test_kill_9_after_250_keeps_the_job_and_its_files_for_the_consumer_after_restart(
    serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    """`mailrunner serve` killed right after the 250 of a claim-checked message: restarted,
    it hands the job to the SDK worker, whose raw_path and attachment hold the exact bytes,
    and the ack takes the files with it."""
    claim_check = {"include_raw": True, "attachment_storage": {"mode": "auto"}}
    server = serve(smtp=claim_check)
    code, event_id = send_to(server.port, BIG)
    assert code == 250
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    folder = tmp_path / "var" / "attachments" / event_id
    assert sorted(os.listdir(folder)) == [".mailrunner", ".pipeline", "001-data.bin", "message.eml"]
    (event,) = server.events()
    assert event["message"]["raw_path"] == str(folder.resolve() / "message.eml")

    log = tmp_path / "consumed.jsonl"
    restarted = serve(
        smtp=claim_check,
        server={"command": [sys.executable, str(WORKER)], "env": {"CLAIM_LOG": str(log)}},
        jobs={"consume": ["smtp-emails"], "pipelines": {"smtp-emails": {"driver": "sqlite"}}},
    )
    found = consumed(log, event_id)
    assert found["raw_sha256"] == sha256(BIG)
    assert [a["sha256"] for a in found["attachments"]] == [sha256(ATTACHMENT)]
    wait_until(lambda: not folder.exists(), "the acked job's folder to go")
    assert restarted.terminate() == 0


def test_a_job_acked_twice_in_one_pipeline_leaves_the_files_to_the_other_pipeline_s_job(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Delivery is at least once: the same job may be handled and acked twice (a late ack
    whose lease had expired, then the redelivery's). Here the job is pushed again with its id
    after its first ack; the second ack must not count as the `other` pipeline's release."""
    log = tmp_path / "consumed.jsonl"
    server = start_server(
        record=False,
        server={"command": [sys.executable, str(WORKER)], "env": {"CLAIM_LOG": str(log)}},
        smtp={
            "include_raw": True,
            "attachment_storage": {"mode": "auto"},
            "jobs": {"pipelines": ["smtp-emails", "other"]},
        },
        jobs={
            "pipelines": {"smtp-emails": {"driver": "sqlite"}, "other": {"driver": "sqlite"}},
            "consume": ["smtp-emails"],
            "pool": {"num_workers": 1},
        },
    )
    with capture_logs() as logs:
        code, event_id = send(server, BIG)
        assert code == 250
        assert consumed(log, event_id)["raw_sha256"] == sha256(BIG)
        peeked = run_cli("jobs", "peek", "other", "--json", "--server", server.api_url)
        (job,) = json.loads(peeked.stdout)["jobs"]
        payload = tmp_path / "payload.json"
        payload.write_text(job["payload"])
        pushed = run_cli(
            "jobs", "push", "smtp-emails", "--server", server.api_url, "--id", event_id,
            "--name", "smtp.email", "--payload-file", str(payload),
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        # `job done` is logged once the ack's release is over
        wait_until(
            lambda: [e.get("id") for e in logs if e["event"] == "job done"] == [event_id] * 2,
            "the second ack and its release",
        )
    folder = server.config.attachments_dir / event_id
    assert (folder / "message.eml").read_bytes() == BIG, "the other pipeline's job lost its file"
