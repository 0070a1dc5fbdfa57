"""The EMAIL_RECEIVED event (version 1): what application code receives for every message.

Plain slotted dataclasses rather than pydantic models: one event is built per accepted
message on the hot path, and its shape is fixed by `schema/email_received.v1.json`. Classes
and fields are named as the JSON and the worker SDK (`mailrunner.worker.event`) name them,
`from` becoming `from_`; bytes stay bytes here and become base64 only in `to_dict`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from mailrunner.wire.protocol import EVENT_NAME, EVENT_VERSION


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox of an address header; `name` is "" when the header had none."""

    email: str
    name: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name}


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP client said, as opposed to what the message headers claim."""

    from_: str
    """MAIL FROM address; "" for the null sender <>."""
    to: tuple[str, ...]
    helo: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.from_,
            "to": list(self.to),
            "helo": self.helo,
            "size": self.size,
        }


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
class Attachment:
    """An attachment as the event carries it: its bytes inline (`content`) or a stored file."""

    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    inline: bool
    content: bytes | None = field(default=None, repr=False)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "content_id": self.content_id,
            "inline": self.inline,
        }
        if self.content is not None:
            data["content"] = base64.b64encode(self.content).decode("ascii")
        if self.path is not None:
            data["path"] = self.path
        return data


@dataclass(frozen=True, slots=True)
class Message:
    """What the message itself says (headers and bodies), after MIME decoding."""

    id: str | None
    """The Message-ID header, None when the message has none."""
    subject: str
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    headers: dict[str, list[str]]
    body: str
    html_body: str
    raw: bytes | None = field(default=None, repr=False)
    """The exact bytes received; None unless the server runs with `smtp.include_raw`."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "subject": self.subject,
            "from": [a.to_dict() for a in self.from_],
            "to": [a.to_dict() for a in self.to],
            "cc": [a.to_dict() for a in self.cc],
            "reply_to": [a.to_dict() for a in self.reply_to],
            "headers": self.headers,
            "body": self.body,
            "html_body": self.html_body,
        }
        if self.raw is not None:
            data["raw"] = base64.b64encode(self.raw).decode("ascii")
        return data


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
