"""A job as a JetStream message: the payload is the message's data, everything else is in
headers as ASCII (NATS headers cannot carry newlines); docs/jobs.md#nats lists them."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from mailrunner.jobs.model import FailedJob, Job, JobOptions

JOB, ATTEMPTS, MSG_ID = "Mailrunner-Job", "Mailrunner-Attempts", "Nats-Msg-Id"
DEADLINE, NOT_BEFORE = "Mailrunner-Deadline", "Mailrunner-Not-Before"
ERROR, FAILED_AT = "Mailrunner-Error", "Mailrunner-Failed-At"

Headers = dict[str, str]


def msg_id(job_id: str) -> str:
    """The job id when it is a safe header value, else its hash (same id, same value)."""
    if job_id.isascii() and job_id.isprintable() and len(job_id) <= 200:
        return job_id
    return "sha256:" + hashlib.sha256(job_id.encode()).hexdigest()


def encode(
    job: Job,
    attempts: int,
    *,
    delay: float = 0.0,
    deadline: float | None = None,
    error: str | None = None,
) -> Headers:
    """The headers of a message for `job`: due `delay` seconds from now, pushed with the
    wall-clock `deadline` (a first push, which JetStream checks for duplicates), or going to
    the failed list with `error`."""
    options = job.options
    meta: dict[str, Any] = {"id": job.id, "name": job.name, "headers": job.headers}
    meta |= {"priority": options.priority, "auto_ack": options.auto_ack}
    headers = {JOB: json.dumps(meta, ensure_ascii=True), ATTEMPTS: str(attempts)}
    if deadline is not None:
        headers |= {MSG_ID: msg_id(job.id), DEADLINE: repr(deadline)}
    if delay > 0:
        headers[NOT_BEFORE] = repr(time.time() + delay)
    if error is not None:
        headers |= {ERROR: json.dumps(error, ensure_ascii=True), FAILED_AT: repr(time.time())}
    return headers


def decode(headers: Headers | None, payload: bytes, pipeline: str) -> Job:
    meta = json.loads((headers or {})[JOB])
    options = JobOptions(pipeline, int(meta["priority"]), auto_ack=bool(meta["auto_ack"]))
    return Job(meta["id"], meta["name"], payload, options, meta["headers"])


def decode_failed(headers: Headers | None, payload: bytes, pipeline: str) -> FailedJob:
    headers = headers or {}
    error, failed_at = json.loads(headers.get(ERROR, '""')), float(headers.get(FAILED_AT, "0"))
    return FailedJob(decode(headers, payload, pipeline), error, attempts(headers), failed_at)


def attempts(headers: Headers | None) -> int:
    return int((headers or {}).get(ATTEMPTS, "0"))


def due_in(headers: Headers | None) -> float:
    """Seconds until a delayed job is due (0 or less: due now)."""
    return float((headers or {}).get(NOT_BEFORE, "0")) - time.time()
