"""What one end of the relay writes, the other reads: each direction through each side's code.

Server side: the jobs consumer, SMTP delivery, the pool's environment and the event builder.
Worker side: the SDK (`Task`, `handle_emails`, `Email`, `current_mode`) over in-memory streams.
"""

from __future__ import annotations

import asyncio
import io
import json
from types import SimpleNamespace
from typing import Any

import pytest

from mailrunner.jobs.consumer import PipelineConsumer
from mailrunner.jobs.model import Job, JobOptions
from mailrunner.pool.pool import worker_environment
from mailrunner.smtp.delivery import Outcome, PoolDelivery, email_job
from mailrunner.wire.frame import encode, payload_frame, read_frame, split_payload
from mailrunner.wire.jobs import Answer, decode_answer
from mailrunner.wire.protocol import JOBS_MODE, MODE_ENV, SMTP_MODE
from mailrunner.worker import CLOSE, CONTINUE, Email, Task, Worker, current_mode, handle_emails
from mailrunner.worker.relay import Payload
from support.events import BUILDER, arrival

RAW = b"From: A <a@example.com>\r\nTo: b@example.com\r\nSubject: round trip\r\n\r\nbody\r\n"


def _sdk_answer(answer: Any) -> bytes:
    """Let the SDK answer one task; return the answer body the server reads."""
    out = io.BytesIO()
    task = Task(
        Worker(io.BytesIO(), out),
        id="j-1",
        name="demo",
        pipeline="q",
        driver="memory",
        headers={"h": ["old"]},
        attempts=1,
        payload=b"",
    )
    answer(task)
    out.seek(0)
    frame = read_frame(out)
    assert frame is not None
    context, body = split_payload(frame)
    assert context == b""
    return body


@pytest.mark.parametrize(
    ("answer", "read"),
    [
        (Task.ack, Answer(ack=True)),
        (
            lambda task: task.nack("boom", requeue=False, delay=0),
            Answer(ack=False, requeue=False, message="boom"),
        ),
        (
            lambda task: task.nack("later", delay=2.5),
            Answer(ack=False, requeue=True, delay=2.5, message="later"),
        ),
        (
            lambda task: task.requeue(delay=3, headers={"h": ["new", "2"]}),
            Answer(ack=False, delay=3.0, message="requeued", headers={"h": ["new", "2"]}),
        ),
        (
            lambda task: task.requeue(),
            Answer(ack=False, message="requeued", headers={"h": ["old"]}),
        ),
    ],
    ids=["ack", "nack", "nack with requeue", "requeue with headers", "requeue keeps headers"],
)
def test_the_consumer_reads_every_answer_the_sdk_writes(answer: Any, read: Answer) -> None:
    assert decode_answer(_sdk_answer(answer)) == read


def test_the_sdk_reads_the_job_context_the_consumer_writes() -> None:
    pipeline = SimpleNamespace(name="emails", settings=SimpleNamespace(driver="sqlite"))
    consumer = PipelineConsumer(pipeline, None, 1.0, None)  # type: ignore[arg-type]
    job = Job(
        id="j-42",
        name="smtp.email",
        payload=b"{}",
        options=JobOptions(pipeline="emails"),
        headers={"k": ["v1", "v2"]},
    )
    lease = SimpleNamespace(job=job, attempt=3)

    context = consumer._context(lease)  # type: ignore[arg-type]
    task = Task.from_payload(Worker(io.BytesIO(), io.BytesIO()), Payload(context, b"payload"))

    assert (task.id, task.name, task.pipeline, task.driver, task.headers, task.attempts) == (
        "j-42",
        "smtp.email",
        "emails",
        "sqlite",
        {"k": ["v1", "v2"]},
        3,
    )
    assert task.payload == b"payload"


def test_the_sdk_reads_the_event_and_the_email_job_the_server_writes() -> None:
    event = asyncio.run(BUILDER.build(arrival(), RAW))
    settings = SimpleNamespace(pipeline="q", priority=10, delay=0, auto_ack=False)
    job = email_job(event, settings)  # type: ignore[arg-type]
    task = Task(
        Worker(io.BytesIO(), io.BytesIO()),
        id=job.id,
        name=job.name,
        pipeline="q",
        driver="memory",
        headers={},
        attempts=1,
        payload=job.payload,
    )

    email = task.email()

    assert (email.id, email.message.subject, email.envelope.to) == (
        event.id,
        "round trip",
        event.envelope.to,
    )


class _RelayPool:
    """A pool whose one worker is the SDK's `handle_emails`, run over in-memory streams."""

    name = "smtp"

    def __init__(self, decide: Any) -> None:
        self._decide = decide

    async def exec(self, context: bytes, body: bytes = b"") -> tuple[bytes, bytes]:
        requests = io.BytesIO(encode(payload_frame(context, body)))
        answers = io.BytesIO()
        handle_emails(self._decide, worker=Worker(requests, answers))
        answers.seek(0)
        frame = read_frame(answers)
        assert frame is not None
        return split_payload(frame)


@pytest.mark.parametrize(
    ("decision", "outcome"),
    [(CONTINUE, Outcome.ACCEPTED), (CLOSE, Outcome.ACCEPTED_CLOSE), (None, Outcome.ACCEPTED)],
)
def test_smtp_delivery_reads_every_decision_the_sdk_writes(
    decision: str | None, outcome: Outcome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODE_ENV, SMTP_MODE)
    event = asyncio.run(BUILDER.build(arrival(), RAW))
    seen: list[Email] = []

    def decide(email: Email) -> str | None:
        seen.append(email)
        return decision

    delivery = PoolDelivery(_RelayPool(decide))  # type: ignore[arg-type]

    assert asyncio.run(delivery.deliver(event)) is outcome
    assert [email.id for email in seen] == [event.id]


@pytest.mark.parametrize("mode", [SMTP_MODE, JOBS_MODE])
def test_the_sdk_reads_the_mode_the_pool_sets(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in worker_environment({}, mode).items():
        monkeypatch.setenv(name, value)

    assert current_mode() == mode


ATTACHED = (
    b"From: A <a@example.com>\r\nTo: B <b@example.com>, c@example.com\r\nSubject: parts\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
    b"hi\r\n--b\r\nContent-Type: application/pdf\r\nContent-ID: <p@x>\r\n"
    b"Content-Disposition: attachment; filename=a.pdf\r\n\r\n%PDF\r\n--b--\r\n"
)


def test_the_sdk_reads_the_event_back_into_the_classes_the_server_built_it_from() -> None:
    """Address, Envelope, Message and Attachment are declared once (`mailrunner.wire.event`):
    what the SDK reads compares equal to what the server built, and writes the same JSON."""
    event = asyncio.run(BUILDER.build(arrival(), ATTACHED))
    written = json.loads(event.to_json())

    email = Email.from_json(event.to_json())

    assert email.envelope == event.envelope
    assert (email.message.from_, email.message.to) == (event.message.from_, event.message.to)
    assert email.message.raw == event.message.raw == ATTACHED
    assert json.loads(json.dumps(email.message.to_dict())) == written["message"]
    assert [json.loads(json.dumps(a.to_dict())) for a in email.attachments] == (
        written["attachments"]
    )
    assert [(a.filename, a.content_id, a.read()) for a in email.attachments] == [
        ("a.pdf", "p@x", b"%PDF")
    ]
