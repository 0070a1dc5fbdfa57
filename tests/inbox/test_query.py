"""The inbox search language: what each query parses to, and each fault with its position."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailrunner.inbox.errors import QueryError
from mailrunner.inbox.query import (
    MAX_TERMS,
    Field,
    HasAttachment,
    Query,
    ReadState,
    Received,
    Term,
    Text,
    parse,
)

MAY_1 = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("", ()),
        ("   \t ", ()),
        ("invoice", (Text(Field.ANY, "invoice"),)),
        ("invoice  paid", (Text(Field.ANY, "invoice"), Text(Field.ANY, "paid"))),
        ('"two words"', (Text(Field.ANY, "two words"),)),
        ("from:alice@example.com", (Text(Field.FROM, "alice@example.com"),)),
        ("FROM:Alice", (Text(Field.FROM, "Alice"),)),
        ("to:bob", (Text(Field.TO, "bob"),)),
        ('subject:"q3 report"', (Text(Field.SUBJECT, "q3 report"),)),
        ("has:attachment", (HasAttachment(present=True),)),
        ("-has:attachment", (HasAttachment(present=False),)),
        ("is:unread", (ReadState(read=False),)),
        ("is:read", (ReadState(read=True),)),
        ("-is:unread", (ReadState(read=True),)),
        ("after:2024-05-01", (Received(MAY_1, before=False),)),
        ("before:2024-05-01", (Received(MAY_1, before=True),)),
        ("-before:2024-05-01", (Received(MAY_1, before=False),)),
        ("before:2024-05-01T12:30", (Received(MAY_1 + timedelta(hours=12, minutes=30), True),)),
        ("after:2024-05-01T02:00:00+02:00", (Received(MAY_1, before=False),)),
        ("after:2024-05-01T00:00:00Z", (Received(MAY_1, before=False),)),
        ("-spam", (Text(Field.ANY, "spam", negated=True),)),
        ("-from:noreply", (Text(Field.FROM, "noreply", negated=True),)),
        ("e-mail", (Text(Field.ANY, "e-mail"),)),
        ("10:30", (Text(Field.ANY, "10:30"),)),
        ("日本語", (Text(Field.ANY, "日本語"),)),
        ('"say ""hi"""', (Text(Field.ANY, 'say "hi"'),)),
        ('subject:""""', (Text(Field.SUBJECT, '"'),)),
    ],
)
def test_a_query_parses_to_its_terms(query: str, terms: tuple[Term, ...]) -> None:
    assert parse(query) == Query(terms)


def test_an_offset_date_is_kept_as_the_same_instant_in_utc() -> None:
    (term,) = parse("after:2024-05-01T09:00+09:00").terms
    assert isinstance(term, Received)
    assert term.at == MAY_1
    assert term.at.tzinfo is UTC


@pytest.mark.parametrize(
    "query",
    [
        '"subject:x"',
        '"from:a OR to:b"',
        '"-negated"',
        '"NEAR(a b)"',
        '"has:attachment"',
    ],
)
def test_inside_quotes_keys_and_negation_are_text(query: str) -> None:
    assert parse(query) == Query((Text(Field.ANY, query[1:-1]),))


@pytest.mark.parametrize(
    ("query", "position", "message"),
    [
        ('subject:"a b', 8, "unclosed quote"),
        ('ok "never closed', 3, "unclosed quote"),
        ('"ab""', 0, "unclosed quote"),
        ("foo:bar", 0, "unknown key 'foo:'"),
        ("x -Bogus:1", 3, "unknown key 'Bogus:'"),
        ("re:hello", 0, "unknown key 're:'"),
        ("before:yesterday", 7, "'yesterday' is not an ISO date (YYYY-MM-DD) or datetime"),
        ("a after:2024-13-01", 8, "'2024-13-01' is not an ISO date (YYYY-MM-DD) or datetime"),
        (
            "before:0001-01-01T00:00+14:00",
            7,
            "'0001-01-01T00:00+14:00' is out of the range of dates",
        ),
        ("from:", 5, "'from:' needs a value"),
        ("from: alice", 5, "'from:' needs a value"),
        ('subject:""', 8, "empty value"),
        ('""', 0, "empty value"),
        ("has:pdf", 4, "'has:' takes 'attachment'"),
        ("is:starred", 3, "'is:' takes 'read' or 'unread'"),
        ("a - b", 2, "'-' must be followed by a term"),
        ("a -", 2, "'-' must be followed by a term"),
        ('ab"cd', 2, "a quote may only open a value"),
        ('"ab"cd', 4, "a closing quote must be followed by a space"),
        ("ok\x00", 2, "a NUL character is not allowed"),
    ],
)
def test_a_fault_is_reported_with_its_position(query: str, position: int, message: str) -> None:
    with pytest.raises(QueryError) as raised:
        parse(query)
    assert (raised.value.position, raised.value.message) == (position, message)
    assert f"(at position {position})" in str(raised.value)


def test_more_than_the_term_limit_is_refused_at_the_first_term_too_many() -> None:
    assert len(parse(" ".join(["ab"] * MAX_TERMS)).terms) == MAX_TERMS
    with pytest.raises(QueryError) as raised:
        parse(" ".join(["ab"] * (MAX_TERMS + 1)))
    assert raised.value.position == 3 * MAX_TERMS
