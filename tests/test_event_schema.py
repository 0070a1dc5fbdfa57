"""The hand-written JSON Schema accepts real events and rejects broken ones."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest

from mailrunner.events import Authentication
from support.events import BUILDER, EVENT_VALIDATOR, arrival, decode_event

RAW = (
    b"From: A <a@example.com>\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\n"
    b"Content-Disposition: attachment; filename=a.pdf\r\n\r\nPDF\r\n--b--\r\n"
)


@pytest.fixture
def event() -> dict[str, Any]:
    return decode_event(asyncio.run(BUILDER.build(arrival(), RAW)))


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        target: Any = event
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        target: Any = event
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


BROKEN = {
    "wrong event name": _set(["event"], "EMAIL_SENT"),
    "wrong version": _set(["version"], 2),
    "id not a uuid": _set(["id"], "42"),
    "missing envelope": _delete(["envelope"]),
    "extra top-level key": _set(["extra"], 1),
    "extra envelope key": _set(["envelope", "bcc"], []),
    "negative size": _set(["envelope", "size"], -1),
    "no recipients": _set(["envelope", "to"], []),
    "received_at without milliseconds": _set(["received_at"], "2026-11-28T10:30:45Z"),
    "auth attempted false": _set(
        ["authentication"],
        {"attempted": False, "mechanism": "PLAIN", "username": None, "password": None},
    ),
    "address without name": _set(["message", "from"], [{"email": "a@b"}]),
    "header value not a list": _set(["message", "headers", "Subject"], "s"),
    "attachment with neither content nor path": _delete(["attachments", 0, "content"]),
    "attachment size as string": _set(["attachments", 0, "size"], "3"),
    "parse error not a string": _set(["parse_errors"], [1]),
}


def test_a_real_event_is_valid(event: dict[str, Any]) -> None:
    assert list(EVENT_VALIDATOR.iter_errors(event)) == []
    assert event["attachments"][0]["filename"] == "a.pdf"


@pytest.mark.parametrize("breakage", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_event_is_rejected(
    event: dict[str, Any], breakage: Callable[[dict[str, Any]], None]
) -> None:
    broken = copy.deepcopy(event)
    breakage(broken)
    assert list(EVENT_VALIDATOR.iter_errors(broken)), "the schema accepted a broken event"


def test_password_is_in_the_event_but_not_in_its_repr() -> None:
    built = asyncio.run(BUILDER.build(arrival(), RAW))
    assert built.authentication == Authentication("PLAIN", "u", "p")
    assert "'p'" not in repr(built.authentication)
    assert decode_event(built)["authentication"]["password"] == "p"
