"""Retention against a running server: beyond `inbox.max_messages` the oldest messages go,
and past `inbox.max_age` a message goes even when no new mail arrives; the API answers 404
for what went and the live feed names it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from support.sample_mail import accepted_id
from support.server import RunningServer
from support.waiting import wait_until

Start = Callable[..., RunningServer]


def send(server: RunningServer, subject: str) -> str:
    """Send one message; the event id the 250 names."""
    message = f"Subject: {subject}\r\nFrom: a@example.com\r\nTo: b@example.com\r\n\r\nbody\r\n"
    return accepted_id(server, message.encode())


def get(server: RunningServer, path: str) -> Any:
    with urllib.request.urlopen(server.api_url + path, timeout=10) as response:
        return json.loads(response.read())


def listed_subjects(server: RunningServer) -> list[str]:
    return [summary["subject"] for summary in get(server, "/messages")["messages"]]


def test_beyond_max_messages_the_oldest_go_first(start_server: Start) -> None:
    server = start_server(record=False, inbox={"max_messages": 3})
    ids = [send(server, f"number {n}") for n in range(5)]
    wait_until(
        lambda: listed_subjects(server) == ["number 4", "number 3", "number 2"],
        "the inbox to keep the newest three",
    )
    for gone in ids[:2]:
        with pytest.raises(urllib.error.HTTPError) as answer:
            get(server, f"/messages/{gone}")
        answer.value.close()
        assert answer.value.code == 404


def test_past_max_age_a_message_goes_without_new_mail(start_server: Start) -> None:
    server = start_server(record=False, inbox={"max_age": "3s"})
    send(server, "short-lived")
    wait_until(lambda: listed_subjects(server) == ["short-lived"], "the message in the inbox")
    wait_until(lambda: get(server, "/messages")["total"] == 0, "the message to age out", 15)
