"""The inbox store: what it keeps of an event, search through FTS5 and LIKE, retention,
idempotent inserts, private files and a locked database."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailrunner.inbox.errors import FtsUnavailable, InboxError, InboxLocked, QueryError
from mailrunner.inbox.message import StoredMessage, cap_utf8
from mailrunner.inbox.query import parse
from mailrunner.inbox.sql import where
from mailrunner.inbox.store import InboxStore, Stats, check_fts5
from support.events import BUILDER, arrival, decode_event, validate_event

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

MIXED = (
    b"From: Alice Example <alice@example.com>\r\nTo: bob@example.com\r\n"
    b"Cc: Carol <carol@example.com>\r\nSubject: Quarterly report\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/html\r\n\r\n<p>Figures &amp; totals</p><script>evil()</script>\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=q.pdf"
    b"\r\n\r\n%PDF-1.4\r\n--b--\r\n"
)


def event_dict(
    *,
    subject: str = "hello",
    body: str = "",
    html: str = "",
    sender: str = "sender@example.com",
    to: str = "rcpt@example.com",
    received_at: datetime = START,
    attachments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A schema-valid EMAIL_RECEIVED event with the given facts."""
    event_id = str(uuid.uuid4())
    event = {
        "event": "EMAIL_RECEIVED",
        "version": 1,
        "id": event_id,
        "uuid": event_id,
        "remote_addr": "127.0.0.1:40000",
        "received_at": received_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "envelope": {"from": sender, "to": [to], "helo": "client", "size": 10},
        "authentication": None,
        "message": {
            "id": None,
            "subject": subject,
            "from": [{"email": sender, "name": ""}],
            "to": [{"email": to, "name": ""}],
            "cc": [],
            "reply_to": [],
            "headers": {"subject": [subject]},
            "body": body,
            "html_body": html,
            "raw": base64.b64encode(b"raw").decode(),
        },
        "attachments": attachments or [],
        "parse_errors": [],
    }
    validate_event(event)
    return event


def attachment_entry(filename: str, content_type: str) -> dict[str, Any]:
    """An event's attachment holding the one byte `A`, inline in base64."""
    return {"filename": filename, "content_type": content_type, "size": 1,
            "content_id": None, "inline": False, "content": "QQ=="}  # fmt: skip


def message(**facts: Any) -> StoredMessage:
    return StoredMessage.from_event(event_dict(**facts), b"raw bytes of " + os.urandom(4))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InboxStore]:
    with InboxStore(tmp_path / "inbox.db") as opened:
        yield opened


def found(store: InboxStore, query: str) -> set[str]:
    """The subjects of every message `query` selects."""
    page = store.list(parse(query), limit=1000)
    assert page.total == len(page.messages)
    return {summary.subject for summary in page.messages}


# --- what is kept of an event ---------------------------------------------------------------


def test_a_built_event_keeps_cc_bcc_html_text_and_attachment_bytes(store: InboxStore) -> None:
    envelope = dataclasses.replace(arrival(), rcpt_to=("bob@example.com", "hidden@example.com"))
    event = decode_event(asyncio.run(BUILDER.build(envelope, MIXED)))
    kept = StoredMessage.from_event(event, MIXED)
    assert kept.from_ == "Alice Example <alice@example.com>"
    assert kept.to == "bob@example.com, Carol <carol@example.com>, hidden@example.com"
    assert kept.snippet == "Figures & totals"
    assert kept.size == len(MIXED)
    assert store.insert(kept)

    event_json, read = store.get(event["id"]) or pytest.fail("the message was not kept")
    stored_event = orjson.loads(event_json)
    assert not read
    assert "raw" not in stored_event["message"], "the raw bytes are kept once, not in the event"
    assert [sorted(entry) for entry in stored_event["attachments"]] == [
        ["content_id", "content_type", "filename", "inline", "size"]
    ]
    assert store.raw(event["id"]) == MIXED
    assert store.attachment(event["id"], 0) == ("q.pdf", "application/pdf", b"%PDF-1.4")
    assert store.attachment(event["id"], 1) is None
    assert found(store, "to:hidden") == {"Quarterly report"}, "an envelope-only rcpt is a to:"
    assert found(store, "totals") == {"Quarterly report"}, "the HTML's text is searched"
    assert found(store, "evil") == set(), "script content is not text"


def test_an_attachment_given_by_path_is_never_read_from_that_path(tmp_path: Path) -> None:
    """Any API client can push to the inbox pipeline: a path in the event must not become a
    way to read the server's files."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the inbox")
    entry = {"filename": None, "content_type": "application/octet-stream", "size": 17,
             "content_id": None, "inline": False, "path": str(secret)}  # fmt: skip
    with pytest.raises(ValueError, match="not in the event"):
        StoredMessage.from_event(event_dict(attachments=[entry]), b"raw")


def test_bodies_are_capped_for_preview_and_the_raw_bytes_kept_whole(store: InboxStore) -> None:
    raw = b"x" * 5000
    event = event_dict(body="é" * 3000, html="<p>" + "ü" * 3000 + "</p>")
    kept = StoredMessage.from_event(event, raw, max_preview_bytes=1001)
    assert kept.text_body == "é" * 500, "cut at a character boundary under the cap"
    assert len(kept.html_body.encode()) <= 1001
    store.insert(kept)
    stored_event = orjson.loads(store.get(kept.id)[0])  # type: ignore[index]
    assert stored_event["message"]["body"] == "é" * 500
    assert store.raw(kept.id) == raw
    assert cap_utf8("日本", 4) == "日"


# --- insert, read, delete -------------------------------------------------------------------


def test_a_second_insert_of_the_same_id_changes_nothing(store: InboxStore) -> None:
    entry = attachment_entry("a.txt", "text/plain")
    kept = message(subject="once", attachments=[entry])
    assert store.insert(kept) is True
    store.set_read(kept.id, True)
    assert store.insert(dataclasses.replace(kept, subject="twice")) is False
    page = store.list(parse(""), 10)
    assert (page.total, page.messages[0].subject, page.messages[0].read) == (1, "once", True)
    assert store.attachment(kept.id, 0) == ("a.txt", "text/plain", b"A")


def test_a_batch_is_kept_in_one_go_and_skips_ids_already_kept(store: InboxStore) -> None:
    first, second = message(subject="first"), message(subject="second")
    assert store.insert(first)
    assert store.insert_many([second, first, second]) == [True, False, False]
    assert found(store, "") == {"first", "second"}


def test_the_list_is_newest_first_and_pages(store: InboxStore) -> None:
    for minute in (3, 1, 4, 2, 0):
        store.insert(message(subject=f"m{minute}", received_at=START + timedelta(minutes=minute)))
    first = store.list(parse(""), limit=2)
    second = store.list(parse(""), limit=2, offset=2)
    assert first.total == second.total == 5
    assert [s.subject for s in first.messages + second.messages] == ["m4", "m3", "m2", "m1"]
    assert first.messages[0].received_at == START + timedelta(minutes=4)
    searched = store.list(parse("after:2024-05-01T12:01Z"), limit=2, offset=1)
    assert (searched.total, [s.subject for s in searched.messages]) == (4, ["m3", "m2"])
    assert store.list(parse("after:2024-05-01T12:01Z"), limit=2, offset=9) == (4, [])
    with pytest.raises(ValueError, match="must not be negative"):
        store.list(parse(""), limit=-1)


def test_read_flags_deletes_and_stats(store: InboxStore) -> None:
    kept = [message(subject=f"s{n}") for n in range(3)]
    for one in kept:
        store.insert(one)
    assert store.set_read(kept[0].id, True)
    assert not store.set_read("no-such-id", True)
    assert store.stats() == Stats(count=3, unread=2)
    assert found(store, "is:unread") == {"s1", "s2"}
    assert found(store, "is:read") == {"s0"}
    assert store.delete(kept[1].id)
    assert not store.delete(kept[1].id)
    assert store.get(kept[1].id) is None
    assert store.raw(kept[1].id) is None
    assert store.stats() == Stats(count=2, unread=1)


def test_delete_matching_deletes_what_the_query_selects(store: InboxStore) -> None:
    keep, drop = message(subject="keep me"), message(subject="drop me", sender="spam@x.test")
    entry = attachment_entry("a", "a/b")
    dropped_too = message(subject="also", attachments=[entry], sender="spam@x.test")
    for one in (keep, drop, dropped_too):
        store.insert(one)
    assert sorted(store.delete_matching(parse("from:spam"))) == sorted([drop.id, dropped_too.id])
    assert store.attachment(dropped_too.id, 0) is None, "attachments go with their message"
    assert found(store, "") == {"keep me"}
    assert found(store, "also") == set(), "the search index forgot the deleted rows"
    store._writer.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
    assert store.delete_matching(None) == [keep.id]
    assert store.stats() == Stats(0, 0)


# --- search ---------------------------------------------------------------------------------


@pytest.fixture
def searchable(store: InboxStore) -> InboxStore:
    entry = attachment_entry("x.pdf", "application/pdf")
    for kept in (
        message(subject="Invoice 42", body="please pay", sender="billing@shop.test"),
        message(subject="Lunch", html="<b>Pizza</b> at noon", to="team@corp.test"),
        message(subject="日本語のお知らせ", body="東京タワーで会いましょう", attachments=[entry]),
        message(subject="50% off_sale", body="AB test", received_at=START + timedelta(days=2)),
        message(subject="Rentrée", body="ÉCOLE ПРИВЕТ", received_at=START - timedelta(days=1)),
    ):
        store.insert(kept)
    return store


@pytest.mark.parametrize(
    ("query", "subjects"),
    [
        ("invoice", {"Invoice 42"}),
        ("INVOICE", {"Invoice 42"}),
        ("pay", {"Invoice 42"}),
        ("pizza", {"Lunch"}),
        ("shop.test", {"Invoice 42"}),
        ("team@corp", {"Lunch"}),
        ("from:billing", {"Invoice 42"}),
        ("from:team", set()),
        ("to:team", {"Lunch"}),
        ("subject:lunch", {"Lunch"}),
        ("subject:pizza", set()),
        ('subject:"invoice 42"', {"Invoice 42"}),
        ("東京タワー", {"日本語のお知らせ"}),
        ("お知らせ", {"日本語のお知らせ"}),
        ("has:attachment", {"日本語のお知らせ"}),
        ("-has:attachment pay", {"Invoice 42"}),
        ("-invoice -lunch", {"日本語のお知らせ", "50% off_sale", "Rentrée"}),
        ("after:2024-05-02", {"50% off_sale"}),
        ("before:2024-05-02 invoice", {"Invoice 42"}),
        ("before:2024-05-01T12:00Z", {"Rentrée"}),
        ("after:2024-05-01T12:00Z", {"Invoice 42", "Lunch", "日本語のお知らせ", "50% off_sale"}),
        ("before:2024-05-01", {"Rentrée"}),
        ("école привет", {"Rentrée"}),
        ("42", {"Invoice 42"}),
        ("ab", {"50% off_sale"}),
        ("-ab invoice", {"Invoice 42"}),
        ("東京", {"日本語のお知らせ"}),
        ("%", {"50% off_sale"}),
        ("_s", {"50% off_sale"}),
        ("to:rp", {"Lunch"}),
    ],
)
def test_a_query_finds_exactly_its_messages(
    searchable: InboxStore, query: str, subjects: set[str]
) -> None:
    assert found(searchable, query) == subjects


HOSTILE = [
    "NEAR(abc def)",
    "abc OR def",
    "abc*",
    "subject:abc",
    '"abc',
    'a"b"c',
    "^abc",
    "abc AND NOT def",
    "{subject body}: abc",
    "(abc",
    "'); DROP TABLE messages; --",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_fts_syntax_in_a_query_is_text_to_find(store: InboxStore, text: str) -> None:
    store.insert(message(subject="abc def plain"))
    store.insert(message(subject=f"literal {text} here"))
    store.insert(message(subject="other"))
    escaped = '"' + text.replace('"', '""') + '"'
    assert found(store, escaped) == {f"literal {text} here"}
    assert found(store, f"-{escaped}") == {"abc def plain", "other"}


@pytest.mark.parametrize("text", ["NEAR(abc", "abc OR", "abc AND *", "subject:", '"abc', "^"])
def test_the_hostile_text_would_break_or_widen_a_raw_match(store: InboxStore, text: str) -> None:
    """The oracle for the test above: each of these, unquoted, is an FTS5 error."""
    with pytest.raises(sqlite3.OperationalError):
        store._reader.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?", (text,))


def test_a_raw_or_would_match_both_sides_but_the_quoted_phrase_matches_one(
    store: InboxStore,
) -> None:
    store.insert(message(subject="alpha only"))
    store.insert(message(subject="omega only"))
    raw = store._reader.execute(
        "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", ("alpha OR omega",)
    ).fetchone()
    assert raw == (2,)
    assert found(store, '"alpha OR omega"') == set()
    clause, parameters = where(parse('"alpha OR omega" subject:"x""y"'))
    assert parameters == ['"alpha OR omega" AND subject : "x""y"']
    assert "alpha" not in clause


_QUERY_TEXT = st.text(
    alphabet=st.sampled_from("abc xyz\"-:*^(){}%_\\'日本NEARORfromtosubjecthasis\x00\x01\u00e9"),
    max_size=40,
)


def test_any_text_is_a_query_error_or_a_search_sqlite_accepts(tmp_path: Path) -> None:
    """Whatever a user types, parsing refuses it with a position or the search runs: user
    text never becomes FTS5 or SQL syntax that SQLite rejects."""
    with InboxStore(tmp_path / "inbox.db") as store:
        store.insert(message(subject='abc "xyz" NEAR(ab) 日本 50% a_b'))

        @settings(max_examples=400, deadline=None)
        @given(_QUERY_TEXT)
        def search(text: str) -> None:
            try:
                query = parse(text)
            except QueryError as error:
                fault = error.position
            else:
                store.list(query, limit=10)
                return
            assert 0 <= fault <= len(text), f"{fault} is outside {text!r}"

        search()


@pytest.mark.parametrize("wildcard", ["%", "__", "\\", "%%"])
def test_like_wildcards_in_a_short_term_match_only_themselves(
    store: InboxStore, wildcard: str
) -> None:
    store.insert(message(subject="nothing special"))
    assert found(store, wildcard) == set()


# --- retention ------------------------------------------------------------------------------


def test_retention_drops_the_oldest_beyond_max_messages(tmp_path: Path) -> None:
    with InboxStore(tmp_path / "inbox.db", max_messages=3) as store:
        ids, removed = {}, []
        for minute in (5, 0, 3, 1, 4):  # insertion order is not age order
            one = message(subject=f"m{minute}x", received_at=START + timedelta(minutes=minute))
            store.insert(one)
            ids[minute] = one.id
            removed += store.enforce_retention()
        assert found(store, "") == {"m5x", "m4x", "m3x"}
        assert removed == [ids[0], ids[1]]
        assert store.enforce_retention() == []
        assert found(store, "m0x") == set(), "the index forgot the dropped rows"


def test_retention_drops_messages_older_than_max_age(tmp_path: Path) -> None:
    with InboxStore(tmp_path / "inbox.db", max_messages=None, max_age=3600) as store:
        old = message(subject="old", received_at=START - timedelta(hours=2))
        new = message(subject="new", received_at=START - timedelta(minutes=30))
        store.insert(old)
        store.insert(new)
        assert store.enforce_retention(now=START.timestamp()) == [old.id]
        assert found(store, "") == {"new"}


# --- files and failures ---------------------------------------------------------------------


def test_the_database_is_private_whatever_the_umask(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "inbox"
    previous = os.umask(0o022)
    try:
        with InboxStore(folder / "inbox.db") as store:
            store.insert(message())
            modes = {
                name: stat.S_IMODE(os.stat(folder / name).st_mode)
                for name in ("inbox.db", "inbox.db-wal", "inbox.db-shm")
            }
    finally:
        os.umask(previous)
    assert modes == dict.fromkeys(modes, 0o600)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder.parent).st_mode) == 0o700


def test_a_locked_database_raises_inbox_locked_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    with InboxStore(path, busy_timeout=0.3) as store:
        store.insert(message(subject="before the lock"))
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with pytest.raises(InboxLocked, match="locked by another connection"):
                store.insert(message(subject="while locked"))
            waited = time.monotonic() - started
            assert found(store, "") == {"before the lock"}, "readers are not blocked (WAL)"
        finally:
            holder.rollback()
            holder.close()
        assert 0.25 <= waited < 3, f"waited {waited:.2f} s for a 0.3 s busy timeout"
        assert store.insert(message(subject="after the lock"))


def test_the_lock_is_waited_for_when_it_is_released_in_time(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    with InboxStore(path, busy_timeout=5) as store:
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(0.2, holder.rollback)
        release.start()
        try:
            assert store.insert(message(subject="waited"))
        finally:
            release.join()
            holder.close()


def test_a_file_that_is_not_a_database_is_an_inbox_error(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    path.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(InboxError, match=str(path)):
        InboxStore(path)


class _NoFts5:
    def execute(self, sql: str) -> None:
        raise sqlite3.OperationalError("no such module: fts5")


def test_missing_fts5_is_reported_as_such() -> None:
    with pytest.raises(FtsUnavailable, match="no FTS5 full-text search"):
        check_fts5(_NoFts5())  # type: ignore[arg-type]


def test_a_closed_store_raises_inbox_error(tmp_path: Path) -> None:
    store = InboxStore(tmp_path / "inbox.db")
    store.close()
    with pytest.raises(InboxError, match="closed"):
        store.stats()
    with pytest.raises(InboxError, match="closed"):
        store.insert(message())


def test_threads_share_one_store(store: InboxStore) -> None:
    """What asyncio.to_thread does to it: calls from many threads at once."""

    async def insert_and_list(number: int) -> int:
        await asyncio.to_thread(store.insert, message(subject=f"thread {number}"))
        page = await asyncio.to_thread(store.list, parse("thread"), 5)
        return page.total

    async def main() -> list[int]:
        return await asyncio.gather(*(insert_and_list(n) for n in range(40)))

    totals = asyncio.run(main())
    assert all(1 <= total <= 40 for total in totals)
    assert store.stats() == Stats(count=40, unread=40)
