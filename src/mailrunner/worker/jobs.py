"""Consume jobs on the jobs worker pool (`jobs.consume`): one task in, one answer out.

Every task must be answered exactly once with `ack()`, `nack()` or `requeue()`; the server
reads one answer frame per task. Delivery is at-least-once, so a task can arrive again after a
crash or a lost lease: make handlers idempotent (the job id is stable; for `smtp.email` jobs it
is the event id).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field

from mailrunner.wire.errors import BadContext
from mailrunner.wire.jobs import (
    Headers,
    decode_context,
    encode_ack,
    encode_nack,
    encode_requeue,
)
from mailrunner.wire.protocol import EMAIL_JOB, JOBS_MODE
from mailrunner.worker.errors import EventError, ProtocolError, TaskAlreadyAnswered
from mailrunner.worker.event import Email
from mailrunner.worker.relay import Payload, Worker, require_mode, warn

__all__ = ["EMAIL_JOB", "Consumer", "Task", "emails"]


@dataclass(slots=True, eq=False)
class Task:
    """One job leased to this worker, with the three ways to answer it."""

    _relay: Worker
    _: KW_ONLY
    id: str
    name: str
    pipeline: str
    driver: str
    headers: Headers
    attempts: int
    """1 on the first delivery; + 1 per nack with requeue, requeue or expired lease."""
    payload: bytes
    _answer: str | None = field(default=None, init=False)

    @classmethod
    def from_payload(cls, relay: Worker, payload: Payload) -> Task:
        """Build the task the server sent: JSON metadata in the context, job payload as body."""
        try:
            context = decode_context(payload.context)
        except BadContext as exc:
            raise ProtocolError(str(exc)) from exc
        return cls(
            relay,
            id=context.id,
            name=context.job,
            pipeline=context.pipeline,
            driver=context.driver,
            headers=context.headers,
            attempts=context.attempts,
            payload=payload.body,
        )

    def __repr__(self) -> str:
        return (
            f"Task(id={self.id!r}, name={self.name!r}, pipeline={self.pipeline!r}, "
            f"attempts={self.attempts}, payload=<{len(self.payload)} bytes>)"
        )

    @property
    def answered(self) -> bool:
        """True once ack, nack or requeue has been sent for this task."""
        return self._answer is not None

    def ack(self) -> None:
        """The job is done: the driver deletes it."""
        self._send("ack", encode_ack())

    def nack(self, error: str, requeue: bool = True, delay: float = 0) -> None:
        """The job failed with `error`.

        With `requeue`, it is retried after `delay` seconds until the pipeline's `retries` are
        used up; without, it goes straight to the pipeline's failed list.
        """
        self._send("nack", encode_nack(error, requeue=requeue, delay=delay))

    def requeue(self, delay: float = 0, headers: Mapping[str, Sequence[str]] | None = None) -> None:
        """Put the job back to run again after `delay` seconds; this counts as an attempt.

        `headers`, when given, replace the job's headers (e.g. to carry progress to the next
        attempt); otherwise the job keeps `self.headers`.
        """
        self._send("requeue", encode_requeue(delay, self.headers if headers is None else headers))

    def email(self) -> Email:
        """Return the email an `smtp.email` job carries; ValueError for any other job."""
        if self.name != EMAIL_JOB:
            raise ValueError(
                f"task {self.id} is a {self.name!r} job; only {EMAIL_JOB!r} jobs carry an email"
            )
        return Email.from_json(self.payload)

    def _send(self, answer: str, body: bytes) -> None:
        if self._answer is not None:
            raise TaskAlreadyAnswered(
                f"task {self.id} was already answered with {self._answer}(); "
                f"a task takes exactly one ack(), nack() or requeue(), "
                f"so this {answer}() was not sent"
            )
        self._answer = answer
        self._relay.respond(b"", body)


class Consumer:
    """Receives the tasks the server's jobs pool sends to this worker process.

    Takes stdout for the relay (see `mailrunner.worker.relay`): print to stderr.
    """

    def __init__(self, worker: Worker | None = None) -> None:
        require_mode(JOBS_MODE, "Consumer")
        self._relay = worker if worker is not None else Worker.from_stdio()
        self._current: Task | None = None

    def wait_task(self) -> Task | None:
        """Block until the next task; None when the server asks this worker to stop.

        A previous task that was left unanswered is nacked with requeue first: the server
        would otherwise wait for its answer until the exec timeout.
        """
        self._settle_current()
        while (payload := self._relay.wait_payload()) is not None:
            task = self._read_task(payload)
            if task is not None:
                self._current = task
                return task
        return None

    def __iter__(self) -> Iterator[Task]:
        """Iterate over tasks until the server asks this worker to stop."""
        while (task := self.wait_task()) is not None:
            yield task

    def _settle_current(self) -> None:
        task, self._current = self._current, None
        if task is not None and not task.answered:
            warn(f"task {task.id} was not answered before the next wait_task(); nacking it")
            task.nack("the worker did not answer this task", requeue=True)

    def _read_task(self, payload: Payload) -> Task | None:
        try:
            return Task.from_payload(self._relay, payload)
        except ProtocolError as exc:
            warn(f"cannot read the job's metadata: {exc}")
            self._relay.error(f"worker cannot read the job's metadata: {exc}")
            return None


def emails(consumer: Consumer) -> Iterator[tuple[Task, Email]]:
    """Yield `(task, event)` for every `smtp.email` job; answer each task in the loop body.

    Other jobs, and `smtp.email` jobs whose payload is not a valid event, are nacked without
    requeue (retrying cannot fix them): they land in the pipeline's failed list, from which
    they can be retried once a suitable worker is deployed.
    """
    for task in consumer:
        event = _email_or_reject(task)
        if event is not None:
            yield task, event


def _email_or_reject(task: Task) -> Email | None:
    if task.name != EMAIL_JOB:
        reason = f"this worker handles only {EMAIL_JOB!r} jobs, got {task.name!r}"
    else:
        try:
            return task.email()
        except EventError as exc:
            reason = f"invalid {EMAIL_JOB} payload: {exc}"
    warn(f"task {task.id}: {reason}; nacking without requeue")
    task.nack(reason, requeue=False)
    return None
