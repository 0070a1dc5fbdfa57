"""The parts of the EMAIL_RECEIVED event (version 1), declared once for both ends.

The server builds them for every accepted message (`mailrunner.events`, which adds the
session's parts and encodes the whole with orjson); the worker SDK reads the JSON back into
the same classes (`mailrunner.worker.event`). Classes and fields are named as in
`schema/email_received.v1.json`, except `from`, a Python keyword, which becomes `from_`.
Bytes stay bytes here and become base64 only in `to_dict`.

Raw message bytes and attachment contents are left out of reprs: they can be megabytes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Address", "Attachment", "Envelope", "Message"]


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox of a From/To/Cc/Reply-To header; `name` is "" when there is none."""

    email: str
    name: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name}


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP client said in MAIL FROM / RCPT TO / HELO, which may differ from headers."""

    from_: str
    """MAIL FROM address; "" for the null sender <>."""
    to: tuple[str, ...]
    helo: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.from_, "to": list(self.to), "helo": self.helo, "size": self.size}


@dataclass(frozen=True, slots=True)
class Message:
    """What the message itself says: decoded headers, bodies and, when enabled, the raw bytes."""

    id: str | None
    """The Message-ID header; None when the message has none."""
    subject: str
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    headers: Mapping[str, Sequence[str]]
    """Header name (case of its first occurrence) → values in order, unfolded and decoded."""
    body: str
    html_body: str
    raw: bytes | None = field(default=None, repr=False)
    """The exact bytes received; None unless the server runs with `smtp.include_raw`."""
    raw_path: str | None = None
    """The exact bytes received, as a file: `include_raw` with claim-check (`smtp.
    attachment_storage.mode: auto`) for a message over `claim_check_bytes`; never with `raw`."""

    def header(self, name: str) -> str | None:
        """Return the first value of header `name`, matched case-insensitively, or None."""
        wanted = name.lower()
        for key, values in self.headers.items():
            if key.lower() == wanted and values:
                return values[0]
        return None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "subject": self.subject,
            "from": [a.to_dict() for a in self.from_],
            "to": [a.to_dict() for a in self.to],
            "cc": [a.to_dict() for a in self.cc],
            "reply_to": [a.to_dict() for a in self.reply_to],
            "headers": dict(self.headers),  # the SDK reads it into a read-only proxy
            "body": self.body,
            "html_body": self.html_body,
        }
        if self.raw is not None:
            data["raw"] = base64.b64encode(self.raw).decode("ascii")
        if self.raw_path is not None:
            data["raw_path"] = self.raw_path
        return data


@dataclass(frozen=True, slots=True)
class Attachment:
    """One non-body MIME leaf; its bytes are inline (`content`) or in a file (`path`)."""

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
