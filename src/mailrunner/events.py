"""The EMAIL_RECEIVED event (version 1): what application code receives for every message.

Plain slotted dataclasses rather than pydantic models: one event is built per accepted
message on the hot path, and its shape is fixed by `schema/email_received.v1.json`. The
parts a worker reads back as they are (`Address`, `Envelope`, `Message`, `Attachment`) are
declared once in `mailrunner.wire.event`, for the server and the worker SDK; the parts that
differ on the server (the captured AUTH, a `datetime` for `received_at`, orjson) are here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from mailrunner.wire.event import Address, Attachment, Envelope, Message
from mailrunner.wire.protocol import EVENT_NAME, EVENT_VERSION

__all__ = ["Address", "Attachment", "Authentication", "EmailEvent", "Envelope", "Message"]


@dataclass(frozen=True, slots=True)
class Authentication:
    """A captured AUTH exchange; the password is data for the event, never for a log."""

    mechanism: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempted": True,
            "mechanism": self.mechanism,
            "username": self.username,
            "password": self.password,
        }


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """One accepted message; `id` is also the job id on the Jobs path."""

    id: str
    uuid: str
    remote_addr: str
    received_at: datetime
    envelope: Envelope
    authentication: Authentication | None
    message: Message
    attachments: tuple[Attachment, ...] = ()
    parse_errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        received = self.received_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "event": EVENT_NAME,
            "version": EVENT_VERSION,
            "id": self.id,
            "uuid": self.uuid,
            "remote_addr": self.remote_addr,
            "received_at": received,
            "envelope": self.envelope.to_dict(),
            "authentication": self.authentication.to_dict() if self.authentication else None,
            "message": self.message.to_dict(),
            "attachments": [a.to_dict() for a in self.attachments],
            "parse_errors": list(self.parse_errors),
        }

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON. Every string in the event is already valid Unicode, so this
        cannot fail; orjson because this runs once per message on the hot path, where the
        standard encoder cost a third of what building the event costs."""
        return orjson.dumps(self.to_dict())
