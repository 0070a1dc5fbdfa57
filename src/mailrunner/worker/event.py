"""A read-only view of the EMAIL_RECEIVED event (version 1) for worker code.

The server writes the event (`mailrunner.events`, which a worker must not have to import: it
needs orjson); this module reads the JSON with the standard library into frozen dataclasses.
`Address`, `Envelope` and `Message` are the very classes the server builds, declared once in
`mailrunner.wire.event`; `Attachment` is the wire's with `read()`; `Authentication` and `Email`
are the SDK's own (the server keeps a `datetime` and the AUTH it captured). Field names follow
the JSON, except `from`, which is a Python keyword and becomes `from_`. Unknown keys are
ignored so that a newer server can add fields; a missing or mistyped field raises
`EventError` naming its path (e.g. `message.from[0].email`).

Captured AUTH passwords, raw message bytes and attachment contents are left out of reprs: the
first must never reach a log, the others can be megabytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from mailrunner.wire import event as wire_event
from mailrunner.wire.event import Address, Envelope, Message
from mailrunner.wire.protocol import EVENT_NAME, EVENT_VERSION
from mailrunner.worker.errors import EventError

__all__ = [
    "Address",
    "Attachment",
    "Authentication",
    "Email",
    "Envelope",
    "Message",
    "raw_bytes",
]


@dataclass(frozen=True, slots=True)
class Authentication:
    """Captured SMTP AUTH. A cancelled or failed AUTH keeps what was received."""

    attempted: bool
    mechanism: str | None
    username: str | None
    password: str | None = field(repr=False)
    verified: bool | None = None
    """True or False when the server checked the credentials; None when it only captured them."""


@dataclass(frozen=True, slots=True)
class Attachment(wire_event.Attachment):
    """One non-body MIME leaf; its bytes are inline (`content`) or in a file (`path`)."""

    def read(self) -> bytes:
        """Return the attachment's bytes, wherever the server's storage mode put them."""
        if self.content is not None:
            return self.content
        if self.path is not None:
            with open(self.path, "rb") as stored:
                return stored.read()
        raise EventError(f"attachment {self.filename!r} has neither content nor path")


def raw_bytes(message: Message) -> bytes:
    """The exact bytes the server received, wherever it put them: in the event (`raw`), or
    in a file (`raw_path`: claim-check, `smtp.attachment_storage.mode: auto`, for a message
    over `claim_check_bytes`; the file is there until the job is acked). Raises `EventError`
    when the server ran without `smtp.include_raw`."""
    if message.raw is not None:
        return message.raw
    if message.raw_path is not None:
        with open(message.raw_path, "rb") as stored:
            return stored.read()
    raise EventError("the event carries no raw message (the server runs without include_raw)")


@dataclass(frozen=True, slots=True)
class Email:
    """One accepted message, as delivered to a worker or carried by an `smtp.email` job."""

    id: str
    """Per-message UUID; also the job id on the jobs path."""
    uuid: str
    """Connection UUID: one connection may carry many messages."""
    remote_addr: str
    received_at: str
    """ISO 8601 UTC timestamp, e.g. 2026-11-28T10:30:45.123Z."""
    envelope: Envelope
    authentication: Authentication | None
    message: Message
    attachments: tuple[Attachment, ...]
    parse_errors: tuple[str, ...]

    @classmethod
    def from_json(cls, data: bytes | str) -> Email:
        """Read an EMAIL_RECEIVED version 1 event; raise `EventError` if it is not one."""
        try:
            decoded: object = json.loads(data)
        except ValueError as exc:
            raise EventError(f"event is not valid JSON: {exc}") from exc
        return _read_email(_Fields(decoded, ""))

    def raw_bytes(self) -> bytes:
        """The exact bytes received, from `message.raw` or the file at `message.raw_path`."""
        return raw_bytes(self.message)


# --- reading --------------------------------------------------------------------------------


class _Fields:
    """Typed access to one JSON object that names the field's path in every error."""

    __slots__ = ("_data", "_path")

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise EventError(f"{path or 'event'}: expected an object, got {_kind(data)}")
        self._data: dict[str, object] = data
        self._path = path

    def where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def get(self, key: str) -> object:
        if key not in self._data:
            raise EventError(f"{self.where(key)}: missing")
        return self._data[key]

    def text(self, key: str) -> str:
        return _expect_text(self.get(key), self.where(key))

    def optional_text(self, key: str) -> str | None:
        value = self._data.get(key)
        return None if value is None else _expect_text(value, self.where(key))

    def number(self, key: str) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventError(f"{self.where(key)}: expected an integer, got {_kind(value)}")
        return value

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise EventError(f"{self.where(key)}: expected true or false, got {_kind(value)}")
        return value

    def optional_flag(self, key: str) -> bool | None:
        return None if self._data.get(key) is None else self.flag(key)

    def items(self, key: str) -> Iterator[tuple[object, str]]:
        """Yield each element of a JSON array with its path."""
        value = self.get(key)
        if not isinstance(value, list):
            raise EventError(f"{self.where(key)}: expected an array, got {_kind(value)}")
        for index, item in enumerate(value):
            yield item, f"{self.where(key)}[{index}]"

    def texts(self, key: str) -> tuple[str, ...]:
        return tuple(_expect_text(item, path) for item, path in self.items(key))

    def child(self, key: str) -> _Fields:
        return _Fields(self.get(key), self.where(key))

    def optional_child(self, key: str) -> _Fields | None:
        value = self._data.get(key)
        return None if value is None else _Fields(value, self.where(key))

    def optional_base64(self, key: str) -> bytes | None:
        encoded = self.optional_text(key)
        if encoded is None:
            return None
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise EventError(f"{self.where(key)}: invalid base64: {exc}") from exc

    def raw_items(self) -> Iterator[tuple[str, object]]:
        return iter(self._data.items())


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _expect_text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise EventError(f"{path}: expected a string, got {_kind(value)}")
    return value


def _read_email(fields: _Fields) -> Email:
    if fields.text("event") != EVENT_NAME:
        raise EventError(f"event: expected {EVENT_NAME!r}, got {fields.text('event')!r}")
    if fields.number("version") != EVENT_VERSION:
        raise EventError(
            f"version: this SDK reads version {EVENT_VERSION}, got {fields.number('version')}"
        )
    auth = fields.optional_child("authentication")
    return Email(
        id=fields.text("id"),
        uuid=fields.text("uuid"),
        remote_addr=fields.text("remote_addr"),
        received_at=fields.text("received_at"),
        envelope=_read_envelope(fields.child("envelope")),
        authentication=None if auth is None else _read_auth(auth),
        message=_read_message(fields.child("message")),
        attachments=tuple(
            _read_attachment(_Fields(item, path)) for item, path in fields.items("attachments")
        ),
        parse_errors=tuple(_error_text(item) for item, _ in fields.items("parse_errors")),
    )


def _error_text(entry: object) -> str:
    """Parse errors are strings; anything richer is kept as its JSON text, not dropped."""
    return entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False)


# Each reader passes the fields in their class's order; each JSON key is the field's name.


def _read_envelope(fields: _Fields) -> Envelope:
    return Envelope(
        fields.text("from"), fields.texts("to"), fields.text("helo"), fields.number("size")
    )


def _read_auth(fields: _Fields) -> Authentication:
    text = fields.optional_text
    return Authentication(
        fields.flag("attempted"),
        text("mechanism"),
        text("username"),
        text("password"),
        fields.optional_flag("verified"),
    )


def _read_message(fields: _Fields) -> Message:
    return Message(
        id=fields.optional_text("id"),
        subject=fields.text("subject"),
        from_=_read_addresses(fields, "from"),
        to=_read_addresses(fields, "to"),
        cc=_read_addresses(fields, "cc"),
        reply_to=_read_addresses(fields, "reply_to"),
        headers=_read_headers(fields.child("headers")),
        body=fields.text("body"),
        html_body=fields.text("html_body"),
        raw=fields.optional_base64("raw"),
        raw_path=fields.optional_text("raw_path"),
    )


def _read_addresses(fields: _Fields, key: str) -> tuple[Address, ...]:
    addresses = []
    for item, path in fields.items(key):
        address = _Fields(item, path)
        addresses.append(
            Address(email=address.text("email"), name=address.optional_text("name") or "")
        )
    return tuple(addresses)


def _read_headers(fields: _Fields) -> Mapping[str, Sequence[str]]:
    return MappingProxyType({name: fields.texts(name) for name, _ in fields.raw_items()})


def _read_attachment(fields: _Fields) -> Attachment:
    return Attachment(
        fields.optional_text("filename"),
        fields.text("content_type"),
        fields.number("size"),
        fields.optional_text("content_id"),
        fields.flag("inline"),
        fields.optional_base64("content"),
        fields.optional_text("path"),
    )
