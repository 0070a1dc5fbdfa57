"""A raw SMTP client for protocol edges: it sends bytes as given and reads whole replies, so a
test states the exact bytes on both sides (smtplib would rewrite or refuse some of them)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

SOCKET_TIMEOUT = 10.0
ENVELOPE = b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"


class RawSmtp:
    """One connection; `greeting` is the server's first reply."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One reply: lines up to the first whose fourth octet is a space (b"" on close)."""
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            if end == -1:
                chunk = self.sock.recv(65536)
                if not chunk:
                    rest, self.buffer = self.buffer, b""
                    return rest
                self.buffer += chunk
                continue
            line, start = self.buffer[start:end], end + 2
            if len(line) < 4 or line[3:4] == b" ":
                reply, self.buffer = self.buffer[:start], self.buffer[start:]
                return reply

    def code(self) -> bytes:
        return self.reply()[:3]

    def codes(self, count: int) -> list[bytes]:
        return [self.code() for _ in range(count)]

    def start_data(self) -> None:
        self.send(ENVELOPE + b"DATA\r\n")
        assert self.codes(4) == [b"250", b"250", b"250", b"354"]

    def closed(self) -> bool:
        """True once the server has closed the connection (all it sent is in `buffer`)."""
        while chunk := self.sock.recv(65536):
            self.buffer += chunk
        return True


@contextmanager
def raw_smtp(port: int, host: str = "127.0.0.1") -> Iterator[RawSmtp]:
    connection = RawSmtp(port, host)
    try:
        yield connection
    finally:
        connection.sock.close()
