"""A running server with its inbox, and an HTTP client that keeps the bytes and headers.

Messages reach the inbox over SMTP (`send`, the whole path) or, where a test is about the
API rather than the path, straight from the real event builder into `Inbox.add` (`add`).
"""

from __future__ import annotations

import http.client
import json
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailrunner.inbox.message import StoredMessage
from support.events import BUILDER, arrival, decode_event
from support.server import RunningServer
from support.waiting import wait_until

HTML_WITH_IMAGES = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: Pictures\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=r\r\n\r\n--r\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b'<p>logo <img src="cid:logo@x"> remote <img src="https://tracker.example/p.gif">'
    b"<script>document.title='ran'</script></p>\r\n--r\r\nContent-Type: image/png\r\n"
    b"Content-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: inline\r\n\r\niVBORw0KGgo=\r\n--r--\r\n"
)
"""An HTML message with an inline cid image (8 bytes of PNG signature), a remote image and a
script."""
WITH_PDF = (
    b"From: carol@example.com\r\nTo: dave@example.com\r\nSubject: Invoice\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain\r\n\r\nplease pay\r\n--b\r\nContent-Type: application/pdf\r\n"
    b"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf\r\n\r\n"
    b"%PDF-1.4 fake\r\n--b--\r\n"
)
"""A text message with a PDF attachment whose name is not ASCII."""


def plain(subject: str, body: str = "hello") -> bytes:
    return (
        f"From: a@example.com\r\nTo: b@example.com\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()
    )


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("Content-Type", "").startswith("application/json"), self
        return json.loads(self.body)


class InboxServer:
    """A running server with an inbox; `request` calls its API over real TCP."""

    def __init__(self, server: RunningServer) -> None:
        assert server.app.inbox is not None, "the server runs an inbox"
        self.server = server
        self.inbox = server.app.inbox
        self.api = server.app.api
        self.host, self.port = self.api.address
        self.api_url = server.api_url

    def send(self, raw: bytes) -> str:
        """Send a message over SMTP and wait until the inbox has it; its id."""
        before = {m["id"] for m in self.ok("GET", "/messages")["messages"]}
        with smtplib.SMTP(self.server.host, self.server.port, timeout=20) as client:
            client.sendmail("a@example.com", ["b@example.com"], raw)
        new: list[str] = []

        def arrived() -> bool:
            new[:] = [m["id"] for m in self.ok("GET", "/messages")["messages"]]
            return bool(set(new) - before)

        wait_until(arrived, "the message to reach the inbox")
        return new[0]

    def add(self, raw: bytes) -> str:
        """Keep a message as the inbox's consumer would; its id."""

        async def build() -> StoredMessage:
            event = decode_event(await BUILDER.build(arrival(), raw))
            return StoredMessage.from_event(event, raw)

        message: StoredMessage = self.server.call(build())
        assert self.server.call(self.inbox.add(message)) is True
        return message.id

    def waits(self) -> int:
        """How many `GET /messages/wait` are armed on the server: send only once one is."""

        async def count() -> int:
            return self.inbox.waiting

        result: int = self.server.call(count())
        return result

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> Response:
        """One call; `body` goes as JSON (a change sends `{}` by default), `data` as is."""
        sent = dict(headers or {})
        if data is None and (body is not None or method not in {"GET", "HEAD"}):
            data = json.dumps(body if body is not None else {}).encode()
            sent.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            connection.request(method, path, body=data, headers=sent)
            reply = connection.getresponse()
            return Response(reply.status, dict(reply.headers.items()), reply.read())
        finally:
            connection.close()

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        response = self.request(method, path, body)
        assert response.status == 200, (method, path, response)
        return response.json()
