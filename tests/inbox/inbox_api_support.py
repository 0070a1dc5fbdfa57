"""A running server with an inbox, and an HTTP client that keeps the bytes and headers.

Until the App wires the inbox in itself, the fixture opens an Inbox on the running server's
loop and serves it from a second ApiServer over the App's own jobs, SMTP server and pools,
as the App will; messages are built from raw bytes by the real event builder.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailrunner.api.http import ApiServer
from mailrunner.inbox.message import StoredMessage
from mailrunner.inbox.service import Inbox
from support.events import BUILDER, arrival, decode_event
from support.server import RunningServer

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

    def __init__(self, server: RunningServer, inbox: Inbox, api: ApiServer) -> None:
        self.server = server
        self.inbox = inbox
        self.api = api
        self.host, self.port = api.address
        self.api_url = f"http://{self.host}:{self.port}"

    def add(self, raw: bytes) -> str:
        """Keep a message as the inbox's consumer would; its id."""

        async def build() -> StoredMessage:
            event = decode_event(await BUILDER.build(arrival(), raw))
            return StoredMessage.from_event(event, raw)

        message: StoredMessage = self.server.call(build())
        assert self.server.call(self.inbox.add(message)) is True
        return message.id

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
