"""`GET /messages/wait` and `GET /messages?since=` against a running server: a wait in flight
is answered by the message sent meanwhile, a match already there at once, `since` as a
message id or a time, query filters, the timeout with what did arrive, the 422s, and the
inbox's close ending a wait."""

from __future__ import annotations

import dataclasses
import http.client
import json
import smtplib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from inbox_api_support import InboxServer, Response, plain

from mailrunner.api import inbox_http
from mailrunner.inbox.message import StoredMessage
from mailrunner.inbox.sql import sql_time
from support.events import BUILDER, arrival, decode_event
from support.server import RunningServer
from support.waiting import WAIT_SECONDS, wait_until


def send(inbox_server: InboxServer, subject: str, to: str = "b@example.com") -> str:
    """Send one message over SMTP to `to`; the id its 250 names (it may not be stored yet)."""
    raw = f"From: a@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    with smtplib.SMTP(inbox_server.server.host, inbox_server.server.port, timeout=20) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt(to)
        code, reply = client.data(raw)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


def stored(inbox_server: InboxServer, subject: str, received_at: datetime) -> str:
    """Keep a message received at `received_at`, as the inbox's consumer would; its id."""

    async def build() -> StoredMessage:
        raw = plain(subject)
        event = decode_event(await BUILDER.build(arrival(), raw))
        message = StoredMessage.from_event(event, raw)
        return dataclasses.replace(message, received_at=received_at)

    message: StoredMessage = inbox_server.server.call(build())
    assert inbox_server.server.call(inbox_server.inbox.add(message)) is True
    return message.id


def wait_path(**parameters: str) -> str:
    return "/messages/wait?" + urlencode(parameters)


def waited(inbox_server: InboxServer, **parameters: str) -> Any:
    """The 200 answer to a wait (the HTTP client gives up after 20 s)."""
    return inbox_server.ok("GET", wait_path(**parameters))


def ids(summaries: list[dict[str, Any]]) -> list[str]:
    return [summary["id"] for summary in summaries]


def in_flight(inbox_server: InboxServer, path: str) -> Callable[[], Response]:
    """Start `GET path` on a thread and return once the server's wait is armed; the returned
    function joins it and gives the answer."""
    answers: list[Response] = []
    thread = threading.Thread(target=lambda: answers.append(inbox_server.request("GET", path)))
    thread.start()
    wait_until(lambda: inbox_server.waits() == 1, "the wait to be armed on the server")

    def answer() -> Response:
        thread.join(WAIT_SECONDS * 2)
        assert answers, "the wait request did not finish"
        return answers[0]

    return answer


def test_a_wait_in_flight_returns_the_message_sent_meanwhile(inbox_server: InboxServer) -> None:
    answer = in_flight(inbox_server, wait_path(q="subject:welcome", timeout="60"))
    sent = send(inbox_server, "welcome aboard")
    response = answer()
    assert response.status == 200, response
    body = response.json()
    assert body == {"message": body["message"], "timed_out": False}, "no `seen` on a match"
    assert (body["message"]["id"], body["message"]["subject"]) == (sent, "welcome aboard")
    assert inbox_server.waits() == 0, "the waiter is gone once answered"


def test_a_match_already_there_is_answered_at_once(inbox_server: InboxServer) -> None:
    started = sql_time(datetime.now(UTC))
    first = inbox_server.send(plain("reset your password"))
    inbox_server.send(plain("reset your password again"))
    # a 300 s wait answered within the client's 20 s: the match was found, not waited out
    body = waited(inbox_server, q="subject:reset", since=started, timeout="300")
    assert (body["message"]["id"], body["timed_out"]) == (first, False), "the oldest match"


def test_without_since_a_wait_ignores_what_came_before_it(inbox_server: InboxServer) -> None:
    inbox_server.send(plain("earlier"))
    body = waited(inbox_server, timeout="0")
    assert body == {"message": None, "timed_out": True, "seen": []}


def test_since_a_message_id_excludes_it_and_every_older_one(inbox_server: InboxServer) -> None:
    first = inbox_server.send(plain("code 1"))
    second = inbox_server.send(plain("code 2"))
    third = inbox_server.send(plain("code 3"))
    assert waited(inbox_server, q="subject:code", since=first, timeout="5")["message"]["id"] == (
        second
    )
    assert waited(inbox_server, since=second)["message"]["id"] == third
    last = waited(inbox_server, since=third, timeout="0")
    assert (last["message"], last["seen"]) == (None, [])


def test_since_an_id_follows_received_at_then_storage_order(inbox_server: InboxServer) -> None:
    """Messages of one millisecond come in the order they were stored; one stored later but
    received earlier counts as earlier: "since" is by reception, not by the inbox's timing."""
    moment = datetime(2030, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
    first = stored(inbox_server, "tie 1", moment)
    second = stored(inbox_server, "tie 2", moment)
    third = stored(inbox_server, "tie 3", moment)
    late_but_earlier = stored(inbox_server, "tie 0", moment - timedelta(milliseconds=1))
    assert waited(inbox_server, since=first)["message"]["id"] == second
    assert waited(inbox_server, since=second)["message"]["id"] == third
    assert waited(inbox_server, since=late_but_earlier)["message"]["id"] == first
    listed = inbox_server.ok("GET", "/messages?" + urlencode({"since": late_but_earlier}))
    assert (listed["total"], ids(listed["messages"])) == (3, [third, second, first])
    listed = inbox_server.ok("GET", "/messages?" + urlencode({"since": first}))
    assert ids(listed["messages"]) == [third, second], "newest first, the tie by storage order"
    timed_out = waited(inbox_server, since=first, q="subject:nothing-like-it", timeout="0")
    assert ids(timed_out["seen"]) == [second, third], "oldest first"


def test_since_a_time_is_at_or_after_it_to_the_millisecond(inbox_server: InboxServer) -> None:
    moment = datetime(2031, 6, 1, 8, 0, 0, tzinfo=UTC)
    before = stored(inbox_server, "before", moment - timedelta(milliseconds=1))
    at = stored(inbox_server, "at", moment)
    after = stored(inbox_server, "after", moment + timedelta(seconds=1))
    for written in (
        "2031-06-01T08:00:00Z",
        "2031-06-01T08:00:00.000+00:00",
        "2031-06-01T10:00:00+02:00",  # an offset is honoured
        "2031-06-01T08:00:00",  # no offset: UTC
        "2031-06-01T08:00:00.000999Z",  # microseconds below the stored milliseconds
    ):
        assert waited(inbox_server, since=written)["message"]["id"] == at, written
    listed = inbox_server.ok("GET", "/messages?" + urlencode({"since": "2031-06-01T08:00:00Z"}))
    assert ids(listed["messages"]) == [after, at]
    everything = inbox_server.ok("GET", "/messages?" + urlencode({"since": "2031-06-01"}))
    assert ids(everything["messages"]) == [after, at, before], "a date is its 00:00 UTC"


def test_the_query_picks_the_first_match_among_other_arrivals(inbox_server: InboxServer) -> None:
    started = sql_time(datetime.now(UTC))
    for_bob = send(inbox_server, "Your invoice", to="bob@example.com")
    for_carol = send(inbox_server, "Your invoice", to="carol@example.com")
    reset = send(inbox_server, "Password reset", to="carol@example.com")
    body = waited(inbox_server, q="to:carol@example.com", since=started, timeout="20")
    assert body["message"]["id"] == for_carol
    body = waited(inbox_server, q="to:carol subject:reset", since=started, timeout="20")
    assert body["message"]["id"] == reset
    body = waited(inbox_server, q="subject:invoice -to:carol", since=started, timeout="20")
    assert body["message"]["id"] == for_bob


def test_a_timeout_answers_what_did_arrive(inbox_server: InboxServer) -> None:
    started = sql_time(datetime.now(UTC))
    newsletter = inbox_server.send(plain("newsletter"))
    digest = inbox_server.send(plain("digest"))
    answer = in_flight(inbox_server, wait_path(q="subject:confirm", since=started, timeout="1"))
    response = answer()
    assert response.status == 200, response
    body = response.json()
    assert (body["message"], body["timed_out"]) == (None, True)
    assert ids(body["seen"]) == [newsletter, digest], "what arrived, oldest first"
    assert body["seen"][0]["subject"] == "newsletter"


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"timeout": "-1"}, "timeout"),
        ({"timeout": "301"}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": "nan"}, "timeout"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-13-01"}, "since"),
        ({"since": "00000000-0000-4000-8000-000000000000"}, "since"),  # no such message
        ({"q": "before:someday"}, "position"),
        ({"q": "subjet:x"}, "position"),
    ],
)
def test_a_bad_parameter_is_422_naming_it(
    inbox_server: InboxServer, parameters: dict[str, str], named: str
) -> None:
    response = inbox_server.request("GET", wait_path(**parameters))
    assert response.status == 422, response
    error = response.json()
    if named == "position":
        assert error["type"] == "QueryError"
        assert isinstance(error["position"], int)
    else:
        assert named in error["error"], error
    if "since" in parameters:
        listed = inbox_server.request("GET", "/messages?" + urlencode(parameters))
        assert listed.status == 422, listed


def test_wait_is_not_taken_for_a_message_id(inbox_server: InboxServer) -> None:
    response = inbox_server.request("GET", "/messages/wait?timeout=0")
    assert response.status == 200, response
    assert response.json()["timed_out"] is True
    assert inbox_server.request("GET", "/messages/wait/raw").status == 404
    assert inbox_server.request("DELETE", "/messages/wait").status in {404, 405}


def test_closing_the_inbox_ends_a_wait_with_503(inbox_server: InboxServer) -> None:
    answer = in_flight(inbox_server, wait_path(timeout="300"))
    inbox_server.server.call(inbox_server.inbox.close())
    response = answer()
    assert response.status == 503, response
    assert "server is stopping" in response.json()["error"]


def test_a_wait_is_404_when_the_inbox_is_off(server: RunningServer) -> None:
    host, port = server.app.api.address
    connection = http.client.HTTPConnection(host, port, timeout=20)
    connection.request("GET", "/messages/wait?timeout=0")
    assert connection.getresponse().status == 404
    connection.close()


def test_openapi_documents_the_wait_and_its_parameters(inbox_server: InboxServer) -> None:
    document = inbox_server.ok("GET", "/openapi.json")
    paths = list(document["paths"])
    assert paths.index("/messages/wait") < paths.index("/messages/{id}")
    operation = document["paths"]["/messages/wait"]["get"]
    parameters = {entry["name"]: entry["schema"] for entry in operation["parameters"]}
    assert set(parameters) == {"q", "since", "timeout"}
    assert (parameters["timeout"]["maximum"], parameters["timeout"]["default"]) == (300, 30)
    listed = document["paths"]["/messages"]["get"]["parameters"]
    assert "since" in {entry["name"] for entry in listed}


def test_a_wait_whose_client_hangs_up_is_released(inbox_server: InboxServer) -> None:
    """A client that gives up (a test interrupted, a CLI's Ctrl-C) leaves no waiter behind to
    hold a task and run a query at every store until its 300 s are over."""
    connection = http.client.HTTPConnection(inbox_server.host, inbox_server.port, timeout=20)
    connection.request("GET", wait_path(q="subject:never", timeout="300"))
    wait_until(lambda: inbox_server.waits() == 1, "the wait to be armed on the server")
    connection.close()
    wait_until(lambda: inbox_server.waits() == 0, "the abandoned wait to be released")


def test_waits_beyond_the_limit_are_refused_with_429(
    inbox_server: InboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each open wait holds a task and a query per store: one client must not open them
    without end."""
    monkeypatch.setattr(inbox_http, "MAX_OPEN_WAITS", 3)
    connections = []
    for _ in range(3):
        connection = http.client.HTTPConnection(inbox_server.host, inbox_server.port, timeout=20)
        connection.request("GET", wait_path(q="subject:never", timeout="300"))
        connections.append(connection)
    wait_until(lambda: inbox_server.waits() == 3, "three waits to be armed on the server")
    refused = http.client.HTTPConnection(inbox_server.host, inbox_server.port, timeout=20)
    refused.request("GET", wait_path(q="subject:never", timeout="300"))
    answer = refused.getresponse()
    assert answer.status == 429, answer.read()
    assert "3 waits are open" in json.loads(answer.read())["error"]
    for connection in (*connections, refused):
        connection.close()
    wait_until(lambda: inbox_server.waits() == 0, "the abandoned waits to be released")


def test_many_waits_look_one_at_a_time(
    inbox_server: InboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every store wakes every wait: were each to take a thread for its look, a client holding
    many open waits would keep the inbox's own writes, and so SMTP's 250s, queued behind
    them. The looks take turns instead."""
    store = inbox_server.inbox.store
    look = store.oldest
    looking = [0]
    most = [0]
    lock = threading.Lock()

    def counted(*args: Any) -> Any:
        with lock:
            looking[0] += 1
            most[0] = max(most[0], looking[0])
        try:
            return look(*args)
        finally:
            with lock:
                looking[0] -= 1

    monkeypatch.setattr(store, "oldest", counted)
    connections = []
    for _ in range(40):
        connection = http.client.HTTPConnection(inbox_server.host, inbox_server.port, timeout=20)
        connection.request("GET", wait_path(q="subject:never", timeout="300"))
        connections.append(connection)
    wait_until(lambda: inbox_server.waits() == 40, "the waits to be armed on the server")
    for number in range(5):
        send(inbox_server, f"wake {number}")
    for connection in connections:
        connection.close()
    wait_until(lambda: inbox_server.waits() == 0, "the abandoned waits to be released")
    assert most[0] == 1, f"{most[0]} looks ran at once"
