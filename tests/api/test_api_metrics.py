"""/metrics moves with reality: counters count what SMTP clients did, gauges show what is."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from api_support import Api, smtp_client, start_jobs_node

from support.server import RunningServer
from support.waiting import wait_until

ACCEPTED = {"result": "accepted", "reason": "250"}
MESSAGES = [
    b"Subject: one\r\n\r\nplain body\r\n",
    b"Subject: two\r\n\r\n.a line that smtplib dot-stuffs\r\n..and another\r\n",
    b"Subject: three\r\n\r\nno final line break",
    b"Subject: four\r\nX-Pad: " + b"x" * 900 + b"\r\n\r\n" + b"long body line\r\n" * 50,
    "Subject: five\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nünïcödé\r\n".encode(),
]


def message_size(message: bytes) -> int:
    """RFC 1870 size: the content smtplib sends in DATA, CRLF line ends, before the final dot."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    text = b"\r\n".join(lines)
    return len(text if text.endswith(b"\r\n") else text + b"\r\n")


def test_counters_rise_by_exactly_what_smtp_clients_did(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(start_server, tmp_path, smtp={"max_recipients": 2})
    api = node.api
    before = api.metrics()

    with smtp_client(node.server) as client:
        for message in MESSAGES:
            assert client.sendmail("a@example.com", ["b@example.com"], message) == {}
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com")[0] == 250
        assert client.rcpt("d@example.com")[0] == 452, "over max_recipients"
        client.rset()
    after = api.metrics()

    def rise(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    events = [
        json.loads(job["payload"])
        for job in api.ok("GET", "/jobs/pipelines/smtp-emails/peek?limit=100")["jobs"]
    ]
    sizes = sorted(event["envelope"]["size"] for event in events)
    assert sizes == sorted(message_size(message) for message in MESSAGES)
    assert rise("mailrunner_smtp_messages_total", **ACCEPTED) == 5
    assert rise("mailrunner_smtp_bytes_total") == sum(sizes)
    assert rise("mailrunner_jobs_push_total", pipeline="smtp-emails", result="ok") == 5
    assert rise("mailrunner_jobs_push_total", pipeline="smtp-emails", result="error") == 0
    assert rise("mailrunner_smtp_messages_total", result="rejected", reason="452") == 1
    assert rise("mailrunner_smtp_delivery_seconds_count") == 5


def test_gauges_show_queues_connections_and_workers_as_they_are(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(start_server, tmp_path, workers=2)
    api = node.api
    api.ok("POST", "/jobs/pipelines/work/pause")
    for _ in range(3):
        api.push("work")
    api.push("work", options={"delay": 600})
    wait_until(lambda: api.stat("work")["queued"] == 3, "3 queued jobs in the paused pipeline")

    with smtp_client(node.server) as first, smtp_client(node.server) as second:
        for client in (first, second):
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: g\r\n\r\nbody\r\n")
        scrape = api.metrics()
        assert scrape.value("mailrunner_smtp_connections") == 2
        assert len(api.ok("GET", "/connections")["connections"]) == 2

    queued = scrape.value("mailrunner_jobs_queue", pipeline="smtp-emails", state="queued")
    assert queued == api.stat("smtp-emails")["queued"] == 2
    work = api.stat("work")
    for state in ("queued", "delayed", "reserved", "failed"):
        shown = scrape.value("mailrunner_jobs_queue", pipeline="work", state=state)
        assert shown == work[state], state
    assert (work["queued"], work["delayed"]) == (3, 1)
    ready = [worker for worker in api.workers() if worker["state"] == "ready"]
    assert scrape.value("mailrunner_workers", pool="jobs", state="ready") == len(ready) == 2
    assert scrape.value("mailrunner_workers", pool="jobs", state="working") == 0

    wait_until(
        lambda: api.metrics().value("mailrunner_smtp_connections") == 0,
        "the connection gauge to drop when the clients quit",
    )
    api.ok("POST", "/workers/jobs/add")
    assert api.metrics().value("mailrunner_workers", pool="jobs", state="ready") == 3


def test_a_destroyed_pipeline_leaves_no_queue_gauges_behind(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)
    api.ok("POST", "/jobs/pipelines", {"name": "brief", "driver": "memory"})
    api.push("brief")
    shown = api.metrics().value("mailrunner_jobs_queue", pipeline="brief", state="queued")
    assert shown == 1

    api.ok("POST", "/jobs/pipelines/brief/destroy", {"purge": True})

    stale = [
        labels
        for labels in api.metrics().labelled("mailrunner_jobs_queue")
        if labels["pipeline"] == "brief"
    ]
    assert stale == [], "a pipeline that no longer exists must not be reported with old counts"


def test_a_refused_message_is_counted_as_rejected_not_accepted(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False, smtp={"max_message_size": 1024})
    api = Api(server.api_url)
    before = api.metrics()

    big = b"Subject: big\r\n\r\n" + b"x" * 4096
    with (
        smtp_client(server) as client,
        pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as refused,
    ):
        client.sendmail("a@example.com", ["b@example.com"], big)
    after = api.metrics()

    assert refused.value.smtp_code == 552
    rejected = {"result": "rejected", "reason": "552"}
    assert (
        after.value("mailrunner_smtp_messages_total", **rejected)
        - before.value("mailrunner_smtp_messages_total", **rejected)
        == 1
    )
    assert after.value("mailrunner_smtp_messages_total", **ACCEPTED) == before.value(
        "mailrunner_smtp_messages_total", **ACCEPTED
    )
    assert after.value("mailrunner_smtp_bytes_total") == before.value("mailrunner_smtp_bytes_total")


def test_unwithdrawn_publishes_are_exported_per_pipeline(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The drivers' count of pushes that may be stored despite a timeout reaches /metrics
    (only the amqp driver ever counts one, under a RabbitMQ resource alarm)."""
    node = start_jobs_node(start_server, tmp_path)
    name = "mailrunner_jobs_unwithdrawn_publishes_total"
    assert node.api.metrics().value(name, pipeline="work") == 0
    node.server.app.jobs.pipeline("work").driver.unwithdrawn_publishes = 2
    assert node.api.metrics().value(name, pipeline="work") == 2
