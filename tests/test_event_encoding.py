"""Encoding an event with a large attachment or raw message: the same bytes as encoding its
plain dict, in a fraction of the memory (orjson's buffer for a `str` peaks near ten times
its length; the base64 goes in as a ready-made JSON fragment instead)."""

from __future__ import annotations

import os
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import orjson

from mailrunner.events import Attachment, EmailEvent, Envelope, Message

MIB = 1024 * 1024


def event_with(content: bytes, raw: bytes) -> EmailEvent:
    return EmailEvent(
        id="00000000-0000-4000-8000-000000000001",
        uuid="00000000-0000-4000-8000-000000000002",
        remote_addr="127.0.0.1:2525",
        received_at=datetime(2026, 12, 3, tzinfo=UTC),
        envelope=Envelope(from_="a@example.com", to=("b@example.com",), helo="h", size=len(raw)),
        authentication=None,
        message=Message(
            id="<m@example.com>",
            subject="large",
            from_=(),
            to=(),
            cc=(),
            reply_to=(),
            headers={"Subject": ["large"]},
            body="text",
            html_body="",
            raw=raw,
        ),
        attachments=(
            Attachment("a.bin", "application/octet-stream", len(content), None, False, content),
            Attachment("b.bin", "application/octet-stream", 3, None, False, path="/spool/b"),
        ),
    )


def plain_json(event: EmailEvent) -> bytes:
    """The event through the shared classes' own `to_dict`s: base64 as `str`."""
    data: dict[str, Any] = event.to_dict()
    data["message"] = event.message.to_dict()
    data["attachments"] = [attachment.to_dict() for attachment in event.attachments]
    return orjson.dumps(data)


def test_the_event_json_is_the_plain_encoding_byte_for_byte() -> None:
    event = event_with(os.urandom(3000), os.urandom(5000))
    assert event.to_json() == plain_json(event)
    decoded = orjson.loads(event.to_json())
    assert list(decoded["attachments"][0]) == [
        "filename", "content_type", "size", "content_id", "inline", "content"
    ]  # fmt: skip
    assert list(decoded["message"])[-1] == "raw"


def test_a_10_mib_attachment_costs_a_few_times_its_size_to_encode() -> None:
    event = event_with(os.urandom(10 * MIB), b"raw")
    tracemalloc.start()
    try:
        event.to_json()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 10 * MIB, f"encoding a 10 MiB attachment peaked at {peak / MIB:.0f} MiB"
