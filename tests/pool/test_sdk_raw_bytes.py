"""`Email.raw_bytes()` gives a consumer the bytes received wherever the server put them: in
the event (`message.raw`) or, claim-checked, in the file at `message.raw_path`."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from mailrunner.files import PRIVATE_FILE
from mailrunner.mime.attachments import TempfileStorage
from mailrunner.mime.build import EventBuilder
from mailrunner.smtp.spool import MessageContent
from mailrunner.worker import Email
from mailrunner.worker.errors import EventError
from support.events import BUILDER, arrival

RAW = b"From: a@example.com\r\nSubject: raw\r\n\r\n" + b"line of text\r\n" * 40


def email_of(builder: EventBuilder, content: MessageContent) -> Email:
    event = asyncio.run(builder.build(arrival(), content))
    return Email.from_json(event.to_json())


def test_the_raw_bytes_in_the_event() -> None:
    email = email_of(BUILDER, MessageContent.in_memory(RAW))
    assert email.message.raw_path is None
    assert email.raw_bytes() == RAW


def test_the_raw_bytes_in_a_claim_checked_file(tmp_path: Path) -> None:
    storage = TempfileStorage(tmp_path, "p", file_mode=PRIVATE_FILE, claim_check_bytes=100)
    email = email_of(dataclasses.replace(BUILDER, storage=storage), MessageContent.in_memory(RAW))
    assert email.message.raw is None
    assert email.message.raw_path == str(tmp_path.resolve() / email.id / "message.eml")
    assert email.raw_bytes() == RAW


def test_no_raw_bytes_without_include_raw() -> None:
    email = email_of(dataclasses.replace(BUILDER, include_raw=False), MessageContent.in_memory(RAW))
    with pytest.raises(EventError, match="include_raw"):
        email.raw_bytes()
