"""Jobs pool payloads: a job context and payload go out, a JSON answer comes back.

The server sends context = `JobContext` as JSON, body = the job's payload. The worker answers
with an empty context and body = `{"type": T, "data": {...}}`, RoadRunner's answer shape.
Both directions are coded here once: the consumer (`jobs/consumer.py`) encodes contexts and
decodes answers, the SDK (`worker/jobs.py`) decodes contexts and encodes answers.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailrunner.wire.context import ContextObject
from mailrunner.wire.errors import BadContext

__all__ = [
    "Answer",
    "AnswerType",
    "Headers",
    "JobContext",
    "decode_answer",
    "decode_context",
    "encode_ack",
    "encode_context",
    "encode_nack",
    "encode_requeue",
]

Headers = dict[str, list[str]]


class AnswerType(enum.IntEnum):
    """The `type` of a worker's answer; RoadRunner's numbers, so its workers' answers read."""

    NO_ERROR = 0
    ERROR = 1
    ACK = 2
    NACK = 3
    REQUEUE = 4


_ACKS = frozenset({AnswerType.NO_ERROR, AnswerType.ACK})
_FAILURES = frozenset({AnswerType.ERROR, AnswerType.NACK})


# --- context: server -> worker --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a worker learns about a job besides its payload."""

    id: str
    job: str
    """The job's name, e.g. `smtp.email`."""
    pipeline: str
    driver: str
    headers: Headers
    attempts: int
    """1 on the first delivery; + 1 per nack with requeue, requeue or expired lease."""


def encode_context(context: JobContext) -> bytes:
    return json.dumps(
        {
            "id": context.id,
            "job": context.job,
            "pipeline": context.pipeline,
            "driver": context.driver,
            "headers": context.headers,
            "attempts": context.attempts,
        }
    ).encode()


def decode_context(data: bytes) -> JobContext:
    """Read a job context; `BadContext` names the field that is missing or mistyped."""
    meta = ContextObject.read("job context", data)
    return JobContext(
        id=meta.text("id"),
        job=meta.text("job"),
        pipeline=meta.text("pipeline"),
        driver=meta.text("driver"),
        headers=_meta_headers(meta),
        attempts=_meta_int(meta, "attempts"),
    )


def _meta_int(meta: ContextObject, key: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise meta.error(key, "an integer", value)
    return value


def _meta_headers(meta: ContextObject) -> Headers:
    """Headers are `{name: [values]}`; null or absent means none."""
    value = meta.get("headers")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(values, list) and all(isinstance(item, str) for item in values)
        for values in value.values()
    ):
        raise BadContext(f"job context: 'headers' must map names to lists of strings: {value!r}")
    return {str(name): list(values) for name, values in value.items()}


# --- answer: worker -> server ---------------------------------------------------------------


def encode_ack() -> bytes:
    return _answer(AnswerType.ACK, {})


def encode_nack(message: str, *, requeue: bool, delay: float) -> bytes:
    return _answer(
        AnswerType.NACK, {"message": message, "requeue": requeue, "delay_seconds": _seconds(delay)}
    )


def encode_requeue(delay: float, headers: Mapping[str, Sequence[str]]) -> bytes:
    return _answer(
        AnswerType.REQUEUE,
        {"message": "", "delay_seconds": _seconds(delay), "headers": _copy_headers(headers)},
    )


def _answer(kind: AnswerType, data: dict[str, object]) -> bytes:
    return json.dumps({"type": int(kind), "data": data}, separators=(",", ":")).encode()


def _seconds(delay: float) -> int | float:
    """Delays go out as whole numbers when they are whole, as RoadRunner's integer field."""
    if isinstance(delay, bool) or not math.isfinite(delay) or delay < 0:
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    return int(delay) if float(delay).is_integer() else float(delay)


def _copy_headers(headers: Mapping[str, Sequence[str]]) -> Headers:
    copied: Headers = {}
    for name, values in headers.items():
        if isinstance(values, str):
            raise TypeError(f"header {name!r}: values must be a list of strings, not one string")
        copied[name] = [str(value) for value in values]
    return copied


@dataclass(frozen=True, slots=True)
class Answer:
    """A worker's verdict on one job."""

    ack: bool
    requeue: bool = True
    delay: float = 0.0
    message: str = ""
    headers: Headers | None = None


def decode_answer(body: bytes) -> Answer:
    """Read `{"type": T, "data": {...}}`; anything unreadable is a failure, never an ack."""
    try:
        kind, data = _decode(body)
        if kind in _ACKS:
            return Answer(ack=True)
        message = str(data.get("message", ""))
        delay = _delay(data.get("delay_seconds"))
        if kind in _FAILURES:
            requeue = _requeue(data.get("requeue", True))
            return Answer(ack=False, requeue=requeue, delay=delay, message=message)
        if kind == AnswerType.REQUEUE:
            headers = _headers(data.get("headers"))
            return Answer(ack=False, delay=delay, message=message or "requeued", headers=headers)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        return Answer(ack=False, message=f"unreadable worker answer {body[:80]!r}: {error}")
    return Answer(ack=False, message=f"unknown worker answer type {kind!r}")


def _requeue(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"requeue must be true or false, not {value!r}")
    return value


def _delay(value: object) -> float:
    """Seconds before a requeued job is due again: a finite number, zero or more."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"delay_seconds must be a number, not {value!r}")
    delay = float(value)
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"delay_seconds must be a finite number >= 0, not {value!r}")
    return delay


def _headers(value: object) -> Headers | None:
    """Requeue headers replace the job's: an object of string lists, or nothing."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(name, str)
        and isinstance(values, list)
        and all(isinstance(item, str) for item in values)
        for name, values in value.items()
    ):
        raise TypeError(f"headers must map names to lists of strings, not {value!r}")
    return value


def _decode(body: bytes) -> tuple[int, dict[str, Any]]:
    answer = json.loads(body)
    kind = answer["type"]
    data = answer.get("data") or {}
    if not isinstance(data, dict) or not isinstance(kind, int) or isinstance(kind, bool):
        raise TypeError(f"unexpected shapes: type={kind!r} data={data!r}")
    return kind, data
