"""The server's stop is not held up by a parse that never ends (issue #11): App wires the
daemon parse threads and stops them within smtp.shutdown_timeout."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from test_parse_threads import GRACE, StuckParse

from support.server import RunningServer
from support.waiting import wait_until


@pytest.fixture
def stuck() -> Iterator[StuckParse]:
    parse = StuckParse()
    yield parse
    parse.release.set()


def test_the_server_stops_within_shutdown_timeout_while_a_message_is_stuck_in_its_parse(
    start_server: Callable[..., RunningServer],
    stuck: StuckParse,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mailrunner.mime.build.parse", stuck)
    server = start_server(smtp={"shutdown_timeout": GRACE, "parse": {"offload_bytes": 0}})
    replies: list[str] = []

    def send() -> None:
        try:
            with smtplib.SMTP(server.host, server.port, timeout=30) as client:
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")
        except smtplib.SMTPException as error:
            replies.append(repr(error))

    client = threading.Thread(target=send)
    client.start()
    wait_until(stuck.entered.is_set, "the message to reach its parse")
    started = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - started
    assert elapsed < GRACE + 2.0, f"stop took {elapsed:.2f} s with shutdown_timeout {GRACE}"
    client.join(10)
    assert replies, "the client's connection was closed without a 250"
    assert server.delivery.events == [], "the stuck parse never finished: nothing delivered"
