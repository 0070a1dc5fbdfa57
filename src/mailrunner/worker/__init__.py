"""The SDK for worker processes that mailrunner's pools start: standard library only.

A worker speaks goridge frames with the server over stdin/stdout; this package hides that.
`MAILRUNNER_MODE` says which pool started the process (`current_mode()`):

SMTP pool (`smtp.use_jobs: false`, or `smtp.hooks`): the SMTP client waits for the answer::

    import sys
    from mailrunner.worker import CLOSE, CONTINUE, Email, Hooks, Reply, serve

    class MyHooks(Hooks):
        def on_rcpt(self, context):
            if not context.rcpt.endswith("@example.com"):
                return Reply(550, "5.1.1", "No such user")
            return None

    def on_email(event: Email) -> str:
        print(event.message.subject, file=sys.stderr)
        return CLOSE if event.envelope.to == ("bye@example.com",) else CONTINUE

    serve(hooks=MyHooks(), emails=on_email)

`handle_emails(on_email)` is `serve(emails=on_email)`.

Jobs pool (`jobs.consume`): each task is acked, nacked or requeued exactly once::

    from mailrunner.worker import Consumer, emails

    for task, event in emails(Consumer()):
        try:
            store(event)
        except TemporaryError as exc:
            task.nack(str(exc), requeue=True, delay=10)
        else:
            task.ack()

stdout carries the frames. `handle_emails`, `Consumer` and `Worker.from_stdio` move the relay
off file descriptor 1 and send `print()` (and anything else written to fd 1) to stderr, which
the server logs with the worker's pid; output printed before they run still corrupts the relay,
so log to stderr.

This package must import quickly and must not pull in the server's dependencies (pydantic,
structlog, aiohttp, ...): a test checks `sys.modules` after importing it.
"""

from __future__ import annotations

from mailrunner.wire.protocol import EMAIL_JOB, MODE_ENV
from mailrunner.wire.smtp import CLOSE, CONTINUE
from mailrunner.worker.errors import EventError, ProtocolError, TaskAlreadyAnswered, WorkerError
from mailrunner.worker.event import Address, Attachment, Authentication, Email, Envelope, Message
from mailrunner.worker.hooks import HookAuth, HookContext, Hooks, Reply
from mailrunner.worker.jobs import Consumer, Task, emails
from mailrunner.worker.relay import Payload, Worker, current_mode
from mailrunner.worker.smtp import EmailHandler, handle_emails, serve

__all__ = [
    "CLOSE",
    "CONTINUE",
    "EMAIL_JOB",
    "MODE_ENV",
    "Address",
    "Attachment",
    "Authentication",
    "Consumer",
    "Email",
    "EmailHandler",
    "Envelope",
    "EventError",
    "HookAuth",
    "HookContext",
    "Hooks",
    "Message",
    "Payload",
    "ProtocolError",
    "Reply",
    "Task",
    "TaskAlreadyAnswered",
    "Worker",
    "WorkerError",
    "current_mode",
    "emails",
    "handle_emails",
    "serve",
]
