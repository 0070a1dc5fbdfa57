"""The EMAIL_RECEIVED event (version 1): what application code receives for every message.

Plain slotted dataclasses rather than pydantic models: one event is built per accepted
message on the hot path, and its shape is fixed by `schema/email_received.v1.json`. The
parts a worker reads back as they are (`Address`, `Envelope`, `Message`, `Attachment`) are
declared once in `mailrunner.wire.event`, for the server and the worker SDK; the parts that
differ on the server (the captured AUTH, a `datetime` for `received_at`, orjson) are here.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from mailrunner.wire.event import Address, Attachment, Envelope, Message
from mailrunner.wire.protocol import EVENT_NAME, EVENT_VERSION

__all__ = ["Address", "Attachment", "Authentication", "EmailEvent", "Envelope", "Message"]


def _base64_json(data: bytes) -> orjson.Fragment:
    """`data` as the JSON string of its base64, which orjson writes as it is: base64 needs no
    escaping, and orjson's buffer for a `str` value peaks near ten times its length (a 10 MB
    attachment's event cost 133 MB to encode, 17 MB this way)."""
    return orjson.Fragment(b'"' + base64.b64encode(data) + b'"')


def _message_dict(message: Message) -> dict[str, Any]:
    if message.raw is None:
        return message.to_dict()
    data = replace(message, raw=None).to_dict()
    data["raw"] = _base64_json(message.raw)  # last, where Message.to_dict puts it
    return data


def _attachment_dict(attachment: Attachment) -> dict[str, Any]:
    if attachment.content is None:
        return attachment.to_dict()
    data = replace(attachment, content=None).to_dict()
    # after `inline` as in Attachment.to_dict: storage gives an attachment content or a path
    data["content"] = _base64_json(attachment.content)
    return data


@dataclass(frozen=True, slots=True)
class Authentication:
    """An AUTH exchange: captured (any credentials, the password kept for the event, never
    for a log) or checked (`verified` is then True or False and no password is kept)."""

    mechanism: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verified: bool | None = None
    """None when the server only captured the exchange (`smtp.auth.mode: capture`)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "attempted": True,
            "mechanism": self.mechanism,
            "username": self.username,
            "password": self.password,
        }
        if self.verified is not None:
            data["verified"] = self.verified
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

    @property
    def has_files(self) -> bool:
        """Whether the event points at files of this server's (attachments in tempfile mode,
        a claim-checked message's `raw_path`): a refused message must take them with it."""
        return self.message.raw_path is not None or any(a.path for a in self.attachments)

    def to_dict(self) -> dict[str, Any]:
        """The event as orjson encodes it: raw bytes and attachment contents as
        `orjson.Fragment`s of their base64 (see `_base64_json`), not as `str`."""
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
            "message": _message_dict(self.message),
            "attachments": [_attachment_dict(a) for a in self.attachments],
            "parse_errors": list(self.parse_errors),
        }

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON. Every string in the event is already valid Unicode, so this
        cannot fail; orjson because this runs once per message on the hot path, where the
        standard encoder cost a third of what building the event costs."""
        return orjson.dumps(self.to_dict())
