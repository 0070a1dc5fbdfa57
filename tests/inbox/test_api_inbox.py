"""The inbox's HTTP API against a running server: list and search, open, mark, raw bytes,
the HTML preview's CSP and images, attachments, deletes, and the /events stream."""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any

import pytest
from inbox_api_support import HTML_WITH_IMAGES, WITH_PDF, InboxServer, plain
from sse_client import EventStream

from mailrunner.inbox.preview import HTML_CSP
from support.waiting import wait_until

TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_the_list_is_newest_first_with_summaries_pages_and_searches(
    inbox_server: InboxServer,
) -> None:
    first = inbox_server.add(plain("first report", "quarterly figures"))
    second = inbox_server.add(WITH_PDF)
    listed = inbox_server.ok("GET", "/messages")
    assert listed["total"] == 2
    assert [m["id"] for m in listed["messages"]] == [second, first]
    summary = listed["messages"][0]
    assert set(summary) == {
        "id", "received_at", "from", "to", "subject", "size", "attachments", "read", "snippet"
    }  # fmt: skip
    assert TIME_FORMAT.fullmatch(summary["received_at"]), summary["received_at"]
    # the From header, not the envelope sender (a@example.com) beside it
    assert (summary["from"], summary["subject"]) == ("carol@example.com", "Invoice")
    assert (summary["size"], summary["attachments"], summary["read"]) == (len(WITH_PDF), 1, False)
    assert summary["snippet"] == "please pay"
    page = inbox_server.ok("GET", "/messages?limit=1&offset=1")
    assert (page["total"], [m["id"] for m in page["messages"]]) == (2, [first])
    found = inbox_server.ok("GET", "/messages?q=" + "subject%3Areport%20quarterly")
    assert [m["id"] for m in found["messages"]] == [first]
    assert inbox_server.ok("GET", "/messages?q=has%3Aattachment")["total"] == 1


def test_an_invalid_query_is_422_with_its_position(inbox_server: InboxServer) -> None:
    response = inbox_server.request("GET", "/messages?q=" + "from%3Aa%20before%3Anot-a-date")
    assert response.status == 422
    error = response.json()
    assert error["type"] == "QueryError"
    assert error["position"] == len("from:a before:")
    limit = inbox_server.request("GET", "/messages?limit=0")
    assert limit.status == 422
    assert "position" not in limit.json()


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("GET", "/raw"),
        ("GET", "/html"),
        ("GET", "/attachments/0"),
        ("POST", "/read"),
        ("POST", "/unread"),
        ("DELETE", ""),
    ],
)
def test_a_message_route_answers_404_for_a_non_uuid_or_unknown_id(
    inbox_server: InboxServer, method: str, suffix: str
) -> None:
    kept = inbox_server.add(plain("kept"))
    for message_id in ("not-a-uuid", kept.upper(), "../messages", str(uuid.uuid4())):
        response = inbox_server.request(method, f"/messages/{message_id}{suffix}")
        assert response.status == 404, (message_id, response)
    assert inbox_server.ok("GET", "/messages")["total"] == 1


def test_a_message_is_its_event_plus_read_and_marks_read_and_unread(
    inbox_server: InboxServer,
) -> None:
    message_id = inbox_server.add(WITH_PDF)
    event = inbox_server.ok("GET", f"/messages/{message_id}")
    assert (event["id"], event["event"], event["read"]) == (message_id, "EMAIL_RECEIVED", False)
    assert event["message"]["subject"] == "Invoice"
    assert event["attachments"][0]["content_type"] == "application/pdf"
    assert inbox_server.ok("POST", f"/messages/{message_id}/read") == {"ok": True}
    assert inbox_server.ok("GET", f"/messages/{message_id}")["read"] is True
    assert inbox_server.ok("GET", "/messages")["messages"][0]["read"] is True
    inbox_server.ok("POST", f"/messages/{message_id}/unread")
    assert inbox_server.ok("GET", f"/messages/{message_id}")["read"] is False


def test_raw_is_the_exact_bytes_to_save_as_eml(inbox_server: InboxServer) -> None:
    message_id = inbox_server.send(WITH_PDF)
    response = inbox_server.request("GET", f"/messages/{message_id}/raw")
    assert response.status == 200
    assert response.body == WITH_PDF
    assert response.headers["Content-Type"] == "message/rfc822"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{message_id}.eml"'


def test_the_html_preview_embeds_cid_images_and_blocks_remote_ones(
    inbox_server: InboxServer,
) -> None:
    message_id = inbox_server.add(HTML_WITH_IMAGES)
    response = inbox_server.request("GET", f"/messages/{message_id}/html")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Security-Policy"] == (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'none';"
        " base-uri 'none'; frame-ancestors 'self'; sandbox"
    )
    assert "X-Frame-Options" not in response.headers
    html = response.body.decode()
    png = base64.b64encode(base64.b64decode("iVBORw0KGgo=")).decode()
    assert f'<img src="data:image/png;base64,{png}">' in html
    assert "cid:" not in html
    # left in the HTML, and the CSP's img-src (data: only) keeps the browser from loading it
    assert "https://tracker.example/p.gif" in html
    remote = inbox_server.request("GET", f"/messages/{message_id}/html?remote=1")
    assert remote.headers["Content-Security-Policy"] == HTML_CSP.replace(
        "img-src data:", "img-src data: https: http:"
    )


def test_a_message_without_html_previews_as_empty(inbox_server: InboxServer) -> None:
    message_id = inbox_server.add(plain("text only"))
    response = inbox_server.request("GET", f"/messages/{message_id}/html")
    assert (response.status, response.body) == (200, b"")


def test_an_attachment_is_served_to_save_never_to_render(inbox_server: InboxServer) -> None:
    message_id = inbox_server.add(WITH_PDF)
    response = inbox_server.request("GET", f"/messages/{message_id}/attachments/0")
    assert response.status == 200
    assert response.body == b"%PDF-1.4 fake"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
    )
    for index in ("1", "-1", "x"):
        missing = inbox_server.request("GET", f"/messages/{message_id}/attachments/{index}")
        assert missing.status == 404, index


def test_delete_one_and_clear_all_or_matching(inbox_server: InboxServer) -> None:
    keep = inbox_server.add(plain("keep me"))
    doomed = inbox_server.add(plain("spam one"))
    inbox_server.add(plain("spam two"))
    assert inbox_server.ok("DELETE", f"/messages/{doomed}") == {"ok": True}
    assert inbox_server.request("GET", f"/messages/{doomed}").status == 404
    assert inbox_server.request("DELETE", f"/messages/{doomed}").status == 404
    assert inbox_server.ok("DELETE", "/messages?q=subject%3Aspam") == {"count": 1}
    assert [m["id"] for m in inbox_server.ok("GET", "/messages")["messages"]] == [keep]
    bad = inbox_server.request("DELETE", "/messages?q=before%3Ax")
    assert bad.status == 422
    assert inbox_server.ok("DELETE", "/messages") == {"count": 1}
    assert inbox_server.ok("GET", "/messages")["total"] == 0


def test_a_deletion_must_be_sent_as_json(inbox_server: InboxServer) -> None:
    message_id = inbox_server.add(plain("stay"))
    response = inbox_server.request(
        "DELETE", f"/messages/{message_id}", data=b"", headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415
    assert inbox_server.ok("GET", "/messages")["total"] == 1


def test_events_stream_new_and_deleted_messages_and_stats(inbox_server: InboxServer) -> None:
    with EventStream(inbox_server.host, inbox_server.port) as stream:
        stats = stream.next_named("stats")
        names = {stat["pipeline"] for stat in stats["pipelines"]}
        assert "smtp-emails" in names
        assert {"queued", "reserved", "delayed", "failed", "paused"} <= set(stats["pipelines"][0])
        message_id = inbox_server.send(plain("live"))
        summary = stream.next_named("message")
        assert (summary["id"], summary["subject"]) == (message_id, "live")
        assert summary == inbox_server.ok("GET", "/messages")["messages"][0]
        inbox_server.ok("DELETE", f"/messages/{message_id}")
        assert stream.next_named("deleted") == {"ids": [message_id]}


def test_stats_come_every_two_seconds(inbox_server: InboxServer) -> None:
    with EventStream(inbox_server.host, inbox_server.port) as stream:
        stream.next_named("stats")
        started = time.monotonic()
        stream.next_named("stats")
        assert 1.5 < time.monotonic() - started < 3.5


@pytest.mark.parametrize("closing", ["api", "inbox"])
def test_stopping_ends_every_stream_at_once(inbox_server: InboxServer, closing: str) -> None:
    streams = [EventStream(inbox_server.host, inbox_server.port) for _ in range(2)]
    for stream in streams:
        stream.next_named("stats")
    started = time.monotonic()
    stop = inbox_server.api.stop if closing == "api" else inbox_server.inbox.close
    inbox_server.server.call(stop())
    for stream in streams:
        assert stream.ended(timeout=5)
        stream.close()
    assert time.monotonic() - started < 2


def test_nobody_listening_costs_no_stats(inbox_server: InboxServer) -> None:
    calls: list[float] = []
    feed = inbox_server.inbox.feed

    async def count() -> dict[str, Any]:
        calls.append(time.monotonic())
        return {}

    feed.every("counted", 0.05, count)
    inbox_server.add(plain("unheard"))
    assert not feed.listening
    with EventStream(inbox_server.host, inbox_server.port) as stream:
        stream.next_named("counted")
    wait_until(lambda: not feed.listening, "the stream to be let go")
    ticked = len(calls)
    time.sleep(0.3)  # six ticks' time: none may come with nobody listening
    assert len(calls) == ticked


def test_the_inbox_routes_are_in_the_openapi_document(inbox_server: InboxServer) -> None:
    paths = inbox_server.ok("GET", "/openapi.json")["paths"]
    assert set(paths["/messages"]) == {"get", "delete"}
    assert set(paths["/messages/{id}"]) == {"get", "delete"}
    for path in ("/read", "/unread", "/raw", "/html", "/attachments/{index}"):
        assert f"/messages/{{id}}{path}" in paths
    assert "/events" in paths
    listed = paths["/messages"]["get"]
    assert [p["name"] for p in listed["parameters"]] == ["q", "since", "limit", "offset"]
    assert listed["security"] == [{"bearer": []}]
    assert "position" in str(paths["/messages"]["get"]["responses"]["422"])
    assert not any(path.startswith("/ui") for path in paths)
