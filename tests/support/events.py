"""The event schema as a test oracle, and events built without a server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jsonschema
import pytest

from mailrunner.events import Authentication, EmailEvent
from mailrunner.mime.attachments import MemoryStorage
from mailrunner.mime.build import Arrival, EventBuilder
from mailrunner.mime.parse import ParseOptions

_SCHEMA = json.loads(
    resources.files("mailrunner")
    .joinpath("schema/email_received.v1.json")
    .read_text(encoding="utf-8")
)
EVENT_VALIDATOR = jsonschema.Draft202012Validator(
    _SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def validate_event(event: dict[str, Any]) -> None:
    """Fail the test with the schema's own explanation when an event is malformed."""
    errors = sorted(EVENT_VALIDATOR.iter_errors(event), key=lambda e: list(e.path))
    if errors:
        details = "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
        pytest.fail(f"event does not match email_received.v1.json: {details}")


def decode_event(event: EmailEvent) -> dict[str, Any]:
    """Encode as the server would, check it round-trips as UTF-8 JSON and matches the schema."""
    decoded: dict[str, Any] = json.loads(event.to_json().decode("utf-8"))
    validate_event(decoded)
    return decoded


BUILDER = EventBuilder(
    hostname="mx.test",
    options=ParseOptions(max_depth=8),
    storage=MemoryStorage(),
    include_raw=True,
    offload_bytes=1 << 30,
)


def arrival() -> Arrival:
    """What a session would know about a message, for building events without a server."""
    return Arrival(
        event_id=str(uuid.uuid4()),
        connection_id=str(uuid.uuid4()),
        remote_addr="127.0.0.1:2525",
        remote_host="127.0.0.1",
        received_at=datetime.now(UTC),
        helo="client.example",
        esmtp=True,
        mail_from="a@example.com",
        rcpt_to=("b@example.com",),
        authentication=Authentication("PLAIN", "u", "p"),
    )
