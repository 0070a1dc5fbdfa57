"""A blocking reader of a server-sent event stream, for tests: raw HTTP over a socket, so
a test sees exactly what a browser's EventSource would."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from support.waiting import WAIT_SECONDS


class EventStream:
    """`GET /events` on one connection; read events by name, or see the stream end."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self._connection = http.client.HTTPConnection(host, port, timeout=WAIT_SECONDS)
        self._connection.request("GET", "/events", headers=headers or {})
        self.response = self._connection.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.headers["Content-Type"] == "text/event-stream"

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()

    def next_event(self) -> tuple[str, str] | None:
        """The next event's name and data; None when the stream ended."""
        name, data = "", ""
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                name = text[len("event: ") :]
            elif text.startswith("data: "):
                data = text[len("data: ") :]
            elif not text and name:
                return name, data

    def next_named(self, wanted: str, timeout: float = WAIT_SECONDS) -> Any:
        """The data of the next `wanted` event (others are skipped), parsed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.next_event()
            assert event is not None, f"the stream ended before a {wanted!r} event"
            if event[0] == wanted:
                return json.loads(event[1])
        raise AssertionError(f"no {wanted!r} event within {timeout} s")

    def ended(self, timeout: float) -> bool:
        """Whether the stream ends (events before the end are skipped) within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.next_event() is None:
                return True
        return False
