"""What the inbox keeps of a message, built from its EMAIL_RECEIVED event and raw bytes.

The stored event is the event as consumers receive it, less what the inbox keeps elsewhere:
`message.raw` (the raw bytes are a column of their own, served whole) and each attachment's
`content` or `path` (the inbox keeps its own copy of the bytes, served by index; a path points
at a file the inbox does not own and which goes when other pipelines' jobs are acked). Text
and HTML bodies are cut to `max_preview_bytes` in the stored event and in the search text:
they are for a preview, and the raw bytes always hold the whole message.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from mailrunner.config import DEFAULT_INBOX_MAX_PREVIEW_BYTES
from mailrunner.inbox.html_text import html_to_text

SNIPPET_CHARS = 200


class InboxAttachment(NamedTuple):
    """One attachment as the inbox keeps it, in the event's order (its 0-based index)."""

    filename: str | None
    content_type: str
    content_id: str | None
    inline: bool
    content: bytes


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message ready for `InboxStore.insert`.

    `from_` and `to` are display lists ("Name <email>, ..."); `to` holds To, Cc and every
    envelope recipient, so a Bcc recipient is found by `to:`. `event_json` is the stored
    event described in the module docstring.
    """

    id: str
    received_at: datetime
    from_: str
    to: str
    subject: str
    text_body: str
    html_body: str
    size: int
    snippet: str
    event_json: bytes
    raw: bytes = field(repr=False)
    attachments: list[InboxAttachment] = field(default_factory=list, repr=False)

    @property
    def search_body(self) -> str:
        """The words a bare search term looks at in the body: the text part, then the
        HTML part's text."""
        return "\n".join(part for part in (self.text_body, html_to_text(self.html_body)) if part)

    @classmethod
    def from_event(
        cls,
        event: Mapping[str, Any],
        raw: bytes,
        attachment_bytes: Callable[[Mapping[str, Any]], bytes] | None = None,
        max_preview_bytes: int = DEFAULT_INBOX_MAX_PREVIEW_BYTES,
    ) -> StoredMessage:
        """Build from a decoded EMAIL_RECEIVED event (schema v1) and the exact bytes received.

        `attachment_bytes` returns one attachment entry's content; the default decodes its
        base64 `content`. ValueError (no content, bad base64) propagates: the message cannot
        be kept whole.
        """
        read = attachment_bytes or attachment_content
        message = event["message"]
        text_body = cap_utf8(message["body"], max_preview_bytes)
        html_body = cap_utf8(message["html_body"], max_preview_bytes)
        return cls(
            id=event["id"],
            received_at=datetime.fromisoformat(event["received_at"]),
            from_=_senders(event),
            to=_recipients(event),
            subject=message["subject"],
            text_body=text_body,
            html_body=html_body,
            size=len(raw),
            snippet=_snippet(text_body or html_to_text(html_body)),
            event_json=_stored_event(event, text_body, html_body),
            raw=raw,
            attachments=[
                InboxAttachment(
                    entry["filename"],
                    entry["content_type"],
                    entry["content_id"],
                    entry["inline"],
                    read(entry),
                )
                for entry in event["attachments"]
            ],
        )


def attachment_content(entry: Mapping[str, Any]) -> bytes:
    """An event attachment's bytes, from its base64 `content`. An entry with a `path` has
    none: its bytes come from the raw message (`inbox.consumer`), never from a file a job
    names — any API client can push to the inbox pipeline, so reading that path would
    serve it any file the server can read."""
    if "content" not in entry:
        raise ValueError("the attachment's bytes are not in the event")
    return base64.b64decode(entry["content"], validate=True)


def cap_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, never inside a character."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def _display(address: Mapping[str, str]) -> str:
    name, email = address["name"], address["email"]
    return f"{name} <{email}>" if name else email


def _join_unique(header_addresses: list[Mapping[str, str]], envelope: list[str]) -> str:
    """Header addresses as displayed, then envelope addresses no header named."""
    named = {address["email"].lower() for address in header_addresses}
    shown = [_display(address) for address in header_addresses]
    shown += [email for email in envelope if email and email.lower() not in named]
    return ", ".join(dict.fromkeys(shown))


def _senders(event: Mapping[str, Any]) -> str:
    """The From header as people read it; the envelope sender only when there is none (a
    bounce address beside every From would be noise in the list, and `from:` means From)."""
    header = event["message"]["from"]
    return _join_unique(header, [] if header else [event["envelope"]["from"]])


def _recipients(event: Mapping[str, Any]) -> str:
    message = event["message"]
    return _join_unique([*message["to"], *message["cc"]], event["envelope"]["to"])


def _snippet(text: str) -> str:
    return " ".join(text[: SNIPPET_CHARS * 4].split())[:SNIPPET_CHARS]


def _stored_event(event: Mapping[str, Any], text_body: str, html_body: str) -> bytes:
    message = {key: value for key, value in event["message"].items() if key != "raw"}
    message.update(body=text_body, html_body=html_body)
    attachments = [
        {key: value for key, value in entry.items() if key not in {"content", "path"}}
        for entry in event["attachments"]
    ]
    return orjson.dumps({**event, "message": message, "attachments": attachments})
