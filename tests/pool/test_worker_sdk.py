"""The worker SDK, driven the way the pool drives it: a real process, frames over its pipes."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from mailrunner.wire.frame import (
    Flag,
    Frame,
    control_frame,
    encode,
    parse_control,
    payload_frame,
    read_frame,
    split_payload,
    write_frame,
)
from mailrunner.worker import (
    Email,
    EventError,
    Task,
    TaskAlreadyAnswered,
    Worker,
)

TIMEOUT = 20.0
"""Seconds any single wait may take; generous, since CI machines stall."""

SMTP_WORKER = """
import os, sys
from mailrunner.worker import CLOSE, CONTINUE, handle_emails

def on_email(event):
    subject = event.message.subject
    print(f"handling {subject}", file=sys.stderr)
    if subject == "raise":
        raise RuntimeError("handler exploded")
    if subject == "print":
        print("stray print from the handler")
        os.write(1, b"stray write to fd 1\\n")
    if subject == "bogus":
        return "MAYBE"
    if subject == "close":
        return CLOSE
    if subject == "none":
        return None
    return CONTINUE

handle_emails(on_email)
"""

JOBS_WORKER = """
import sys
from mailrunner.worker import Consumer, TaskAlreadyAnswered

for task in Consumer():
    action = task.payload.decode()
    if action == "ack":
        task.ack()
    elif action == "nack":
        task.nack("boom", requeue=False, delay=2.5)
    elif action == "nack-default":
        task.nack("boom")
    elif action == "requeue":
        task.requeue(delay=3, headers={"step": ["2"]})
    elif action == "requeue-keep":
        task.requeue()
    elif action == "twice":
        task.ack()
        try:
            task.nack("again")
        except TaskAlreadyAnswered as exc:
            print(f"second answer refused: {exc}", file=sys.stderr, flush=True)
    elif action == "echo-meta":
        print(f"meta {task.id} {task.name} {task.pipeline} {task.driver} {task.attempts} "
              f"{task.headers}", file=sys.stderr, flush=True)
        task.ack()
    # "ignore": leave the task unanswered
"""

EMAILS_WORKER = """
import sys
from mailrunner.worker import Consumer, emails

for task, event in emails(Consumer()):
    print(f"email {event.id} {event.message.subject}", file=sys.stderr, flush=True)
    if event.message.subject == "fail":
        task.nack("cannot store", delay=10)
    else:
        task.ack()
"""


def make_event(subject: str = "hello", **overrides: Any) -> dict[str, Any]:
    """A complete EMAIL_RECEIVED v1 event, as DESIGN.md shows it."""
    event: dict[str, Any] = {
        "event": "EMAIL_RECEIVED",
        "version": 1,
        "id": "8f14e45f-ceea-467f-a9f0-cb5b1a0f2f01",
        "uuid": "c9f0f895-fb98-4b91-8a7f-0f0a2b7f1c02",
        "remote_addr": "127.0.0.1:54321",
        "received_at": "2026-11-28T10:30:45.123Z",
        "envelope": {
            "from": "a@example.com",
            "to": ["b@example.com"],
            "helo": "client",
            "size": 42,
        },
        "authentication": {
            "attempted": True,
            "mechanism": "PLAIN",
            "username": "alice",
            "password": "hunter2-secret",
        },
        "message": {
            "id": "<m1@example.com>",
            "subject": subject,
            "from": [{"email": "a@example.com", "name": "A"}],
            "to": [{"email": "b@example.com", "name": ""}],
            "cc": [],
            "reply_to": [],
            "headers": {"Subject": [subject], "Received": ["from x", "from y"]},
            "body": "text body",
            "html_body": "",
        },
        "attachments": [],
        "parse_errors": [],
    }
    event.update(overrides)
    return event


def event_bytes(subject: str = "hello", **overrides: Any) -> bytes:
    return json.dumps(make_event(subject, **overrides), ensure_ascii=False).encode()


def job_context(
    job: str = "demo.job", *, job_id: str = "job-1", headers: Any = None, attempts: int = 1
) -> bytes:
    meta = {
        "id": job_id,
        "job": job,
        "pipeline": "smtp-emails",
        "driver": "memory",
        "headers": headers if headers is not None else {"uuid": ["c-1"]},
        "attempts": attempts,
    }
    return json.dumps(meta).encode()


class WorkerProcess:
    """A worker script under test, with the server's side of the relay."""

    def __init__(self, script: Path, mode: str | None) -> None:
        env = dict(os.environ)
        env.pop("MAILRUNNER_MODE", None)
        if mode is not None:
            env["MAILRUNNER_MODE"] = mode
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._frames: queue.Queue[Frame | BaseException | None] = queue.Queue()
        self._stderr_lines: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_frames, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_frames(self) -> None:
        stdout = self._pipe(self.proc.stdout)
        try:
            while (frame := read_frame(stdout, max_payload=1 << 24)) is not None:
                self._frames.put(frame)
        except Exception as exc:  # handed to the test thread, which fails with it
            self._frames.put(exc)
        else:
            self._frames.put(None)

    def _read_stderr(self) -> None:
        for line in self._pipe(self.proc.stderr):
            self._stderr_lines.append(line.decode(errors="replace"))

    @staticmethod
    def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
        assert stream is not None
        return stream

    @property
    def stderr(self) -> str:
        return "".join(self._stderr_lines)

    def send(self, frame: Frame) -> None:
        stdin = self._pipe(self.proc.stdin)
        write_frame(stdin, frame)

    def receive(self) -> Frame:
        item = self._next_item()
        if item is None:
            pytest.fail(f"worker closed stdout instead of answering; stderr:\n{self.stderr}")
        if isinstance(item, BaseException):
            pytest.fail(f"worker wrote a corrupt frame: {item!r}; stderr:\n{self.stderr}")
        return item

    def _next_item(self) -> Frame | BaseException | None:
        try:
            return self._frames.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no frame from the worker in {TIMEOUT}s; stderr:\n{self.stderr}")

    def handshake(self) -> None:
        self.send(control_frame({"pid": os.getpid()}))
        answer = self.receive()
        assert Flag.CONTROL in answer.flags, f"handshake answer is not CONTROL: {answer!r}"
        assert parse_control(answer) == {"pid": self.proc.pid}

    def call(self, context: bytes, body: bytes = b"") -> Frame:
        self.send(payload_frame(context, body))
        return self.receive()

    def stop(self) -> int:
        """Ask the worker to stop, and check it leaves nothing but frames on stdout."""
        self.send(control_frame({"stop": True}))
        return self.wait_for_exit()

    def wait_for_exit(self) -> int:
        returncode = self.proc.wait(timeout=TIMEOUT)
        for thread in self._threads:
            thread.join(timeout=TIMEOUT)
        leftover = self._next_item()
        assert leftover is None, f"worker wrote more after its last answer: {leftover!r}"
        return returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT)


Spawn = Callable[[str, "str | None"], WorkerProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    started: list[WorkerProcess] = []

    def start(source: str, mode: str | None) -> WorkerProcess:
        script = tmp_path / f"worker_{len(started)}.py"
        script.write_text(source)
        worker = WorkerProcess(script, mode)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def answer_json(frame: Frame) -> dict[str, Any]:
    assert Flag.ERROR not in frame.flags, f"expected an answer, got an ERROR frame: {frame!r}"
    context, body = split_payload(frame)
    assert context == b"", f"jobs answers carry an empty context, got {context!r}"
    decoded: dict[str, Any] = json.loads(body)
    return decoded


# --- SMTP pool ------------------------------------------------------------------------------


def test_handshake_answers_the_server_pid_with_the_worker_pid(spawn: Spawn) -> None:
    worker = spawn(SMTP_WORKER, "smtp")

    worker.handshake()

    assert worker.stop() == 0


@pytest.mark.parametrize(
    ("subject", "decision"),
    [("hello", b"CONTINUE"), ("none", b"CONTINUE"), ("close", b"CLOSE")],
)
def test_handle_emails_answers_the_handlers_decision(
    spawn: Spawn, subject: str, decision: bytes
) -> None:
    worker = spawn(SMTP_WORKER, "smtp")
    worker.handshake()

    answer = worker.call(event_bytes(subject))

    assert Flag.ERROR not in answer.flags
    assert split_payload(answer) == (decision, b"")
    assert worker.stop() == 0


def test_handler_exception_answers_error_logs_traceback_and_keeps_serving(spawn: Spawn) -> None:
    worker = spawn(SMTP_WORKER, "smtp")
    worker.handshake()

    failed = worker.call(event_bytes("raise"))
    after = worker.call(event_bytes("hello"))

    assert Flag.ERROR in failed.flags
    assert b"handler exploded" in failed.payload
    assert split_payload(after) == (b"CONTINUE", b"")
    assert worker.stop() == 0
    assert "Traceback" in worker.stderr
    assert "RuntimeError: handler exploded" in worker.stderr


def test_handler_returning_an_unknown_decision_answers_error(spawn: Spawn) -> None:
    worker = spawn(SMTP_WORKER, "smtp")
    worker.handshake()

    answer = worker.call(event_bytes("bogus"))

    assert Flag.ERROR in answer.flags
    assert b"'MAYBE'" in answer.payload
    assert worker.stop() == 0


def test_malformed_event_answers_error_instead_of_calling_the_handler(spawn: Spawn) -> None:
    worker = spawn(SMTP_WORKER, "smtp")
    worker.handshake()

    answer = worker.call(b'{"event": "EMAIL_RECEIVED", "version": 1}')

    assert Flag.ERROR in answer.flags
    assert b"id: missing" in answer.payload
    assert worker.stop() == 0
    assert "handling" not in worker.stderr


def test_stray_print_and_fd1_writes_go_to_stderr_not_the_relay(spawn: Spawn) -> None:
    worker = spawn(SMTP_WORKER, "smtp")
    worker.handshake()

    answer = worker.call(event_bytes("print"))
    after = worker.call(event_bytes("close"))

    assert split_payload(answer) == (b"CONTINUE", b"")
    assert split_payload(after) == (b"CLOSE", b"")
    assert worker.stop() == 0, "stop() also checks that stdout held nothing but frames"
    assert "stray print from the handler" in worker.stderr
    assert "stray write to fd 1" in worker.stderr


def test_worker_exits_cleanly_when_the_server_closes_stdin(spawn: Spawn) -> None:
    worker = spawn(SMTP_WORKER, "smtp")
    worker.handshake()

    worker._pipe(worker.proc.stdin).close()

    assert worker.wait_for_exit() == 0


def test_handle_emails_refuses_to_run_in_the_jobs_pool(spawn: Spawn) -> None:
    worker = spawn(SMTP_WORKER, "jobs")

    assert worker.wait_for_exit() != 0
    assert "handle_emails() serves the 'smtp' pool, but MAILRUNNER_MODE='jobs'" in worker.stderr


# --- jobs pool ------------------------------------------------------------------------------


def test_ack_answers_type_2_with_empty_data(spawn: Spawn) -> None:
    worker = spawn(JOBS_WORKER, "jobs")
    worker.handshake()

    assert answer_json(worker.call(job_context(), b"ack")) == {"type": 2, "data": {}}
    assert worker.stop() == 0


@pytest.mark.parametrize(
    ("action", "data"),
    [
        ("nack", {"message": "boom", "requeue": False, "delay_seconds": 2.5}),
        ("nack-default", {"message": "boom", "requeue": True, "delay_seconds": 0}),
    ],
)
def test_nack_answers_type_3_with_message_requeue_and_delay(
    spawn: Spawn, action: str, data: dict[str, Any]
) -> None:
    worker = spawn(JOBS_WORKER, "jobs")
    worker.handshake()

    assert answer_json(worker.call(job_context(), action.encode())) == {"type": 3, "data": data}
    assert worker.stop() == 0


@pytest.mark.parametrize(
    ("action", "data"),
    [
        ("requeue", {"message": "", "delay_seconds": 3, "headers": {"step": ["2"]}}),
        ("requeue-keep", {"message": "", "delay_seconds": 0, "headers": {"uuid": ["c-1"]}}),
    ],
)
def test_requeue_answers_type_4_with_delay_and_headers(
    spawn: Spawn, action: str, data: dict[str, Any]
) -> None:
    worker = spawn(JOBS_WORKER, "jobs")
    worker.handshake()

    assert answer_json(worker.call(job_context(), action.encode())) == {"type": 4, "data": data}
    assert worker.stop() == 0


def test_task_exposes_the_job_metadata_from_the_context(spawn: Spawn) -> None:
    worker = spawn(JOBS_WORKER, "jobs")
    worker.handshake()

    context = job_context("demo.job", job_id="j-42", headers={"k": ["v1", "v2"]}, attempts=3)
    answer_json(worker.call(context, b"echo-meta"))

    assert worker.stop() == 0
    assert "meta j-42 demo.job smtp-emails memory 3 {'k': ['v1', 'v2']}" in worker.stderr


def test_answering_a_task_twice_raises_and_sends_only_the_first_answer(spawn: Spawn) -> None:
    worker = spawn(JOBS_WORKER, "jobs")
    worker.handshake()

    first = worker.call(job_context(), b"twice")
    second = worker.call(job_context(job_id="job-2"), b"ack")

    assert answer_json(first) == {"type": 2, "data": {}}
    assert answer_json(second) == {"type": 2, "data": {}}, "a second answer leaked into the relay"
    assert worker.stop() == 0
    assert "second answer refused: task job-1 was already answered with ack()" in worker.stderr


def test_a_task_left_unanswered_is_nacked_with_requeue_before_the_next(spawn: Spawn) -> None:
    worker = spawn(JOBS_WORKER, "jobs")
    worker.handshake()
    worker.send(payload_frame(job_context(), b"ignore"))
    worker.send(payload_frame(job_context(job_id="job-2"), b"ack"))

    first, second = worker.receive(), worker.receive()

    assert answer_json(first)["type"] == 3
    assert answer_json(first)["data"]["requeue"] is True
    assert answer_json(second) == {"type": 2, "data": {}}
    assert worker.stop() == 0


def test_malformed_job_context_answers_error_and_keeps_serving(spawn: Spawn) -> None:
    worker = spawn(JOBS_WORKER, "jobs")
    worker.handshake()

    failed = worker.call(b'{"id": 1}', b"ack")
    after = worker.call(job_context(), b"ack")

    assert Flag.ERROR in failed.flags
    assert b"'id' must be a string" in failed.payload
    assert answer_json(after) == {"type": 2, "data": {}}
    assert worker.stop() == 0


def test_emails_yields_smtp_email_jobs_with_their_event(spawn: Spawn) -> None:
    worker = spawn(EMAILS_WORKER, "jobs")
    worker.handshake()

    stored = worker.call(job_context("smtp.email"), event_bytes("stored"))
    failed = worker.call(job_context("smtp.email"), event_bytes("fail"))

    assert answer_json(stored) == {"type": 2, "data": {}}
    assert answer_json(failed) == {
        "type": 3,
        "data": {"message": "cannot store", "requeue": True, "delay_seconds": 10},
    }
    assert worker.stop() == 0
    assert "email 8f14e45f-ceea-467f-a9f0-cb5b1a0f2f01 stored" in worker.stderr


@pytest.mark.parametrize(
    ("job", "payload", "reason"),
    [
        ("other.job", b"{}", "handles only 'smtp.email' jobs, got 'other.job'"),
        ("smtp.email", b"not json", "invalid smtp.email payload: event is not valid JSON"),
    ],
)
def test_emails_nacks_jobs_it_cannot_read_without_requeue(
    spawn: Spawn, job: str, payload: bytes, reason: str
) -> None:
    worker = spawn(EMAILS_WORKER, "jobs")
    worker.handshake()

    answer = answer_json(worker.call(job_context(job), payload))

    assert answer["type"] == 3
    assert answer["data"]["requeue"] is False
    assert reason in answer["data"]["message"]
    assert worker.stop() == 0


def test_consumer_refuses_to_run_in_the_smtp_pool(spawn: Spawn) -> None:
    worker = spawn(JOBS_WORKER, "smtp")

    assert worker.wait_for_exit() != 0
    assert "Consumer serves the 'jobs' pool, but MAILRUNNER_MODE='smtp'" in worker.stderr


# --- in-process: the low-level Worker and the event view --------------------------------------


def _in_process_worker(*frames: Frame) -> tuple[Worker, io.BytesIO]:
    server_to_worker = io.BytesIO(b"".join(encode(frame) for frame in frames))
    worker_to_server = io.BytesIO()
    return Worker(server_to_worker, worker_to_server), worker_to_server


def test_wait_payload_skips_unknown_control_frames_and_stops_on_stop() -> None:
    worker, _ = _in_process_worker(
        control_frame({"something": "new"}),
        payload_frame(b"ctx", b"body"),
        control_frame({"stop": True}),
        payload_frame(b"never", b"read"),
    )

    payload = worker.wait_payload()

    assert payload is not None
    assert (payload.context, payload.body) == (b"ctx", b"body")
    assert worker.wait_payload() is None
    assert worker.stopped


def test_task_email_refuses_a_job_that_is_not_smtp_email() -> None:
    worker, _ = _in_process_worker()
    task = Task(
        worker,
        id="j",
        name="other.job",
        pipeline="p",
        driver="memory",
        headers={},
        attempts=1,
        payload=b"{}",
    )

    with pytest.raises(
        ValueError, match=r"'other\.job' job; only 'smtp\.email' jobs carry an email"
    ):
        task.email()
    with pytest.raises(ValueError, match="delay must be a finite number"):
        task.nack("x", delay=-1)
    task.ack()
    with pytest.raises(TaskAlreadyAnswered):
        task.requeue()


def test_email_view_reads_every_part_of_the_event(tmp_path: Path) -> None:
    stored = tmp_path / "report.pdf"
    stored.write_bytes(b"%PDF stored")
    raw = b"Subject: hi\r\n\r\nbody\r\n"
    attachments = [
        {
            "filename": "inline.png",
            "content_type": "image/png",
            "size": 4,
            "content_id": "img1@x",
            "inline": True,
            "content": base64.b64encode(b"\x89PNG").decode(),
        },
        {
            "filename": "report.pdf",
            "content_type": "application/pdf",
            "size": 11,
            "content_id": None,
            "inline": False,
            "path": str(stored),
        },
    ]
    event = make_event("hi", attachments=attachments, parse_errors=["bad charset"])
    event["message"]["raw"] = base64.b64encode(raw).decode()

    email = Email.from_json(json.dumps(event))

    assert email.envelope.from_ == "a@example.com"
    assert email.envelope.to == ("b@example.com",)
    assert email.authentication is not None
    assert email.authentication.password == "hunter2-secret"
    assert email.message.from_[0].email == "a@example.com"
    assert email.message.header("received") == "from x"
    assert email.message.headers["Received"] == ("from x", "from y")
    assert email.message.raw == raw
    assert [attachment.read() for attachment in email.attachments] == [b"\x89PNG", b"%PDF stored"]
    assert email.attachments[0].inline
    assert email.parse_errors == ("bad charset",)


def test_email_repr_never_shows_the_captured_password() -> None:
    email = Email.from_json(event_bytes())

    assert "hunter2-secret" not in repr(email)
    assert "alice" in repr(email)


def test_email_view_is_read_only() -> None:
    email = Email.from_json(event_bytes())

    with pytest.raises(AttributeError):
        email.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        email.message.headers["X"] = ("y",)  # type: ignore[index]


def test_null_authentication_and_message_id_are_none() -> None:
    event = make_event(authentication=None)
    event["message"]["id"] = None

    email = Email.from_json(json.dumps(event))

    assert email.authentication is None
    assert email.message.id is None


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda e: e["message"]["from"][0].update(email=5), r"message\.from\[0\]\.email: expected"),
        (lambda e: e["envelope"].pop("helo"), r"envelope\.helo: missing"),
        (lambda e: e.update(version=2), "this SDK reads version 1, got 2"),
        (lambda e: e.update(event="OTHER"), "expected 'EMAIL_RECEIVED'"),
        (lambda e: e["message"].update(raw="***"), r"message\.raw: invalid base64"),
    ],
)
def test_broken_event_raises_event_error_naming_the_field(
    mutate: Callable[[dict[str, Any]], object], error: str
) -> None:
    event = make_event()
    mutate(event)

    with pytest.raises(EventError, match=error):
        Email.from_json(json.dumps(event))


def test_importing_the_sdk_does_not_import_server_dependencies() -> None:
    code = (
        "import mailrunner.worker, sys; print(sorted(m for m in "
        "('pydantic','structlog','aiohttp','yaml','aiosmtpd') if m in sys.modules))"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )

    assert result.stdout.strip() == "[]", f"the worker SDK imported: {result.stdout}"
