"""The inbox as a pipeline with its own consumer, against a running server: every accepted
message reaches it last, a 451 keeps a message out of it, a locked inbox.db retries the job
and then fails it (never lost), and tempfile attachments are the inbox's own copy."""

from __future__ import annotations

import contextlib
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from mailrunner.inbox.message import StoredMessage
from mailrunner.inbox.query import parse as parse_query
from mailrunner.inbox.store import InboxStore, Stats
from mailrunner.jobs.model import Job, JobOptions
from support.sample_mail import TEMP_FAILURE, WITH_ATTACHMENT
from support.server import RunningServer
from support.waiting import WAIT_SECONDS, wait_until

Start = Callable[..., RunningServer]
PLAIN = b"Subject: caught\r\nFrom: a@example.com\r\nTo: b@example.com\r\n\r\nhello inbox\r\n"


def send(server: RunningServer, message: bytes = PLAIN) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        return client.data(message)


def start_with_inbox(start_server: Start, **overrides: Any) -> RunningServer:
    """A server pushing to `smtp-emails` (memory, not consumed) and then to the inbox."""
    return start_server(record=False, inbox=overrides.pop("inbox", {}), **overrides)


def stats(server: RunningServer) -> Stats:
    assert server.app.inbox is not None
    result: Stats = server.app.inbox.store.stats()
    return result


def job_ids(server: RunningServer, pipeline: str) -> list[str]:
    return [job.id for job in server.call(server.app.jobs.peek(pipeline, 100))]


def failed_ids(server: RunningServer, pipeline: str) -> list[str]:
    return [failed.job.id for failed in server.call(server.app.jobs.list_failed(pipeline))]


def test_a_message_reaches_the_other_pipeline_and_the_inbox_store(start_server: Start) -> None:
    server = start_with_inbox(start_server)

    assert send(server)[0] == 250
    [event_id] = job_ids(server, "smtp-emails")
    assert server.app.inbox is not None
    wait_until(lambda: stats(server).count == 1, "the message in the inbox")
    raw = server.call(server.app.inbox.raw(event_id))
    assert raw == PLAIN, "the inbox keeps the exact bytes received"
    other = orjson.loads(server.call(server.app.jobs.peek("smtp-emails", 1))[0].payload)
    assert "raw" not in other["message"], "include_raw is off for the other pipelines"
    assert server.app.delivery.destination == "jobs pipelines smtp-emails, inbox"
    with urllib.request.urlopen(f"{server.api_url}/messages", timeout=30) as response:
        listed = orjson.loads(response.read())
    assert (listed["total"], listed["messages"][0]["id"]) == (1, event_id), "the API reads it"


def test_smtp_jobs_delay_holds_the_other_pipelines_jobs_not_the_inbox(start_server: Start) -> None:
    server = start_with_inbox(start_server, smtp={"jobs": {"delay": "1h"}})

    assert send(server)[0] == 250
    wait_until(lambda: stats(server).count == 1, "the message in the inbox at once")
    assert server.call(server.app.jobs.stat("smtp-emails")).delayed == 1


def test_pipelines_are_pushed_in_order_and_a_later_failure_keeps_the_inbox_out(
    start_server: Start,
) -> None:
    full = {"driver": "memory", "config": {"max_queued": 1}}
    server = start_with_inbox(
        start_server,
        smtp={"jobs": {"pipelines": ["smtp-emails", "full"]}},
        jobs={"pipelines": {"full": full}},
    )
    assert server.app.delivery.destination == "jobs pipelines smtp-emails, full, inbox"

    assert send(server)[0] == 250
    wait_until(lambda: stats(server).count == 1, "the first message in the inbox")
    assert send(server) == TEMP_FAILURE, "the second pipeline is full"
    assert len(job_ids(server, "smtp-emails")) == 2, "the first pipeline had stored it"
    assert len(job_ids(server, "full")) == 1
    inbox_stat = server.call(server.app.jobs.stat("inbox"))
    assert (inbox_stat.queued, inbox_stat.reserved, stats(server).count) == (0, 0, 1)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holds inbox.db's write lock (BEGIN EXCLUSIVE) until the block ends."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def test_a_locked_inbox_retries_the_job_then_fails_it_and_the_message_is_never_lost(
    start_server: Start,
) -> None:
    inbox_pipeline = {"driver": "memory", "retries": 2}
    server = start_with_inbox(start_server, jobs={"pipelines": {"inbox": inbox_pipeline}})

    with locked(server.config.inbox_path):
        assert send(server)[0] == 250, "the client's answer does not wait for the inbox"
        [event_id] = job_ids(server, "smtp-emails")
        wait_until(
            lambda: failed_ids(server, "inbox") == [event_id],
            "the inbox job in the failed list after its retries",
            timeout=WAIT_SECONDS * 3,
        )
        assert stats(server).count == 0
    assert server.call(server.app.jobs.retry_failed("inbox")) == 1
    wait_until(lambda: stats(server).count == 1, "the retried job stored in the inbox")
    assert server.app.inbox is not None
    assert server.call(server.app.inbox.raw(event_id)) == PLAIN


def test_the_same_event_pushed_twice_is_stored_once(start_server: Start) -> None:
    server = start_with_inbox(start_server, jobs={"pipelines": {"inbox": {"driver": "memory"}}})
    server.call(server.app.jobs.pause("inbox"))

    assert send(server)[0] == 250
    [job] = server.call(server.app.jobs.peek("inbox", 10))
    again = Job("another-job-id", job.name, job.payload, JobOptions("inbox"))
    server.call(server.app.jobs.push(again))
    server.call(server.app.jobs.resume("inbox"))

    wait_until(
        lambda: (
            server.call(server.app.jobs.stat("inbox")).queued == 0
            and server.call(server.app.jobs.stat("inbox")).reserved == 0
        ),
        "both inbox jobs acked",
    )
    assert stats(server).count == 1


def queue_batch(server: RunningServer) -> list[str]:
    """With the inbox paused: three emails and, second, a job that is no email event; the
    event ids of the emails."""
    server.call(server.app.jobs.pause("inbox"))
    assert send(server)[0] == 250
    server.call(server.app.jobs.push(Job("junk", "smtp.email", b"{}", JobOptions("inbox"))))
    for _ in range(2):
        assert send(server)[0] == 250
    return job_ids(server, "smtp-emails")


def test_a_reserved_batch_is_stored_in_one_transaction_and_a_bad_job_fails_alone(
    start_server: Start,
) -> None:
    server = start_with_inbox(start_server, jobs={"pipelines": {"inbox": {"driver": "memory"}}})
    assert server.app.inbox is not None
    store: InboxStore = server.app.inbox.store
    batches: list[int] = []
    insert_many = store.insert_many

    def counting(messages: Sequence[StoredMessage]) -> list[bool]:
        batches.append(len(messages))
        return insert_many(messages)

    store.insert_many = counting  # type: ignore[method-assign]
    event_ids = queue_batch(server)
    server.call(server.app.jobs.resume("inbox"))

    wait_until(lambda: stats(server).count == 3, "the three emails in the inbox")
    assert batches == [3], "one transaction for the whole reserved batch"
    assert failed_ids(server, "inbox") == ["junk"]
    page = server.call(server.app.inbox.list(parse_query(""), 10))
    assert sorted(summary.id for summary in page.messages) == sorted(event_ids)


def test_a_locked_inbox_retries_every_job_of_the_batch_and_loses_none(
    start_server: Start,
) -> None:
    inbox_pipeline = {"driver": "memory", "retries": 2}
    server = start_with_inbox(start_server, jobs={"pipelines": {"inbox": inbox_pipeline}})
    event_ids = queue_batch(server)

    with locked(server.config.inbox_path):
        server.call(server.app.jobs.resume("inbox"))
        wait_until(
            lambda: sorted(failed_ids(server, "inbox")) == sorted([*event_ids, "junk"]),
            "every job of the batch in the failed list",
            timeout=WAIT_SECONDS * 3,
        )
        assert stats(server).count == 0
    failed = {job.job.id: job for job in server.call(server.app.jobs.list_failed("inbox"))}
    assert [failed[event_id].attempts for event_id in event_ids] == [2, 2, 2], "retried"
    assert failed["junk"].attempts == 1, "no retry for a job that is no email"
    assert server.call(server.app.jobs.retry_failed("inbox")) == 4
    wait_until(lambda: stats(server).count == 3, "the retried batch stored in the inbox")


def tempfile_server(start_server: Start, tmp_path: Path) -> RunningServer:
    storage = {"mode": "tempfile", "temp_dir": str(tmp_path / "files")}
    return start_with_inbox(start_server, smtp={"attachment_storage": storage})


def attachment_of(server: RunningServer, event_id: str) -> bytes:
    assert server.app.inbox is not None
    attachment = server.call(server.app.inbox.attachment(event_id, 0))
    assert attachment is not None
    content: bytes = attachment.content
    return content


def test_tempfile_attachments_survive_the_inbox_ack_and_go_with_the_other_job(
    start_server: Start, tmp_path: Path
) -> None:
    server = tempfile_server(start_server, tmp_path)

    assert send(server, WITH_ATTACHMENT)[0] == 250
    [event_id] = job_ids(server, "smtp-emails")
    wait_until(lambda: stats(server).count == 1, "the message in the inbox")
    folder = tmp_path / "files" / event_id
    assert (folder / "001-data.bin").read_bytes() == b"DATA", "the inbox ack left the files"
    assert attachment_of(server, event_id) == b"DATA"

    server.call(server.app.jobs.destroy("smtp-emails", purge=True))
    assert not folder.exists(), "the folder goes with the last other job"
    assert attachment_of(server, event_id) == b"DATA", "the inbox kept its own copy"


def test_the_inbox_takes_attachments_from_the_raw_message_once_their_files_are_gone(
    start_server: Start, tmp_path: Path
) -> None:
    server = tempfile_server(start_server, tmp_path)
    server.call(server.app.jobs.pause("inbox"))

    assert send(server, WITH_ATTACHMENT)[0] == 250
    [event_id] = job_ids(server, "smtp-emails")
    server.call(server.app.jobs.destroy("smtp-emails", purge=True))
    assert not (tmp_path / "files" / event_id).exists()
    server.call(server.app.jobs.resume("inbox"))

    wait_until(lambda: stats(server).count == 1, "the message in the inbox")
    assert attachment_of(server, event_id) == b"DATA"


def test_the_inbox_pipeline_cannot_be_destroyed_and_counts_in_health(start_server: Start) -> None:
    server = start_with_inbox(start_server)

    destroy = urllib.request.Request(
        f"{server.api_url}/jobs/pipelines/inbox/destroy",
        data=b'{"purge": true}',
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(destroy, timeout=30)
    assert refused.value.code == 409
    assert "cannot be destroyed" in orjson.loads(refused.value.read())["error"]
    with urllib.request.urlopen(f"{server.api_url}/health", timeout=30) as response:
        health = orjson.loads(response.read())
    assert health["pipelines"] == {"inbox": True}, "consumed by the inbox"


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_embedded_default_catches_a_message_into_the_inbox(tmp_path: Path) -> None:
    if not (port_free(1025) and port_free(6001)):
        pytest.skip("the embedded default's ports 127.0.0.1:1025 and :6001 are in use")
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mailrunner", "serve"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    database = tmp_path / "var" / "inbox.db"
    try:
        wait_until(lambda: not port_free(1025) or process.poll() is not None, "SMTP on 1025")
        assert process.poll() is None, (tmp_path / "server.log").read_text()
        with smtplib.SMTP("127.0.0.1", 1025, timeout=30) as client:
            assert client.sendmail("a@example.com", ["b@example.com"], PLAIN) == {}

        def subjects() -> list[str]:
            if not database.exists():
                return []
            with contextlib.closing(
                sqlite3.connect(f"file:{database}?mode=ro", uri=True)
            ) as connection:
                return [row[0] for row in connection.execute("SELECT subject FROM texts")]

        wait_until(lambda: subjects() == ["caught"], "the message in var/inbox.db")
        with contextlib.closing(sqlite3.connect(tmp_path / "var" / "jobs.db")) as jobs:
            wait_until(
                lambda: jobs.execute("SELECT count(*) FROM jobs").fetchone() == (0,),
                "the inbox job acked: nothing piles up",
            )
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(WAIT_SECONDS * 3)
        log.close()
    output = (tmp_path / "server.log").read_text()
    assert process.returncode == 0, output
    assert "inbox consuming" in output
    assert "no consumer configured" not in output, "the inbox's pipeline has its consumer"


def test_without_jobs_the_inbox_is_off_and_start_up_says_so(
    start_server: Start, capfd: pytest.CaptureFixture[str]
) -> None:
    server = start_server(smtp={"use_jobs": False}, server={"command": "never-started"}, inbox={})

    assert server.app.inbox is None
    assert server.app.jobs.list_pipelines() == ["smtp-emails"]
    assert "inbox off: smtp.use_jobs is false" in capfd.readouterr().out


def test_a_job_that_is_not_an_email_event_fails_at_once(start_server: Start) -> None:
    server = start_with_inbox(start_server)

    server.call(server.app.jobs.push(Job("junk", "smtp.email", b"{}", JobOptions("inbox"))))
    wait_until(lambda: failed_ids(server, "inbox") == ["junk"], "the junk job failed")
    [failed] = server.call(server.app.jobs.list_failed("inbox"))
    assert (failed.attempts, stats(server).count) == (1, 0)
    assert "not an email event" in failed.error


def test_an_ingress_pushing_to_a_jobs_node_feeds_that_node_s_inbox(start_server: Start) -> None:
    node = start_with_inbox(start_server)
    ingress = start_with_inbox(start_server, smtp={"jobs": {"rpc": node.api_url}})
    assert ingress.app.inbox is None, "the jobs node runs the inbox"
    assert ingress.app.jobs.list_pipelines() == ["smtp-emails"], "no inbox pipeline here"

    assert send(ingress)[0] == 250
    [event_id] = job_ids(node, "smtp-emails")
    wait_until(lambda: stats(node).count == 1, "the message in the node's inbox")
    assert node.app.inbox is not None
    assert node.call(node.app.inbox.raw(event_id)) == PLAIN


def test_with_the_inbox_alone_tempfile_folders_go_once_it_has_read_them(
    start_server: Start, tmp_path: Path
) -> None:
    storage = {"mode": "tempfile", "temp_dir": str(tmp_path / "files")}
    server = start_with_inbox(
        start_server, smtp={"attachment_storage": storage, "jobs": {"pipelines": []}}
    )

    assert send(server, WITH_ATTACHMENT)[0] == 250
    wait_until(lambda: stats(server).count == 1, "the message in the inbox")
    assert server.app.inbox is not None
    [summary] = server.app.inbox.store.list(parse_query(""), 1).messages
    assert attachment_of(server, summary.id) == b"DATA"
    wait_until(lambda: list((tmp_path / "files").iterdir()) == [], "the folder removed")
