"""`Email.links()` and `Email.search()`: what a test finds in a message, read from events
the server's own builder makes of real MIME."""

from __future__ import annotations

import asyncio

import pytest

from mailrunner.testing import Email
from support.events import BUILDER, arrival


def email_of(mime: str) -> Email:
    event = asyncio.run(BUILDER.build(arrival(), mime.replace("\n", "\r\n").encode()))
    return Email.from_json(event.to_json())


ALTERNATIVE = """\
Subject: Confirm your address
Content-Type: multipart/alternative; boundary=b

--b
Content-Type: text/plain; charset=utf-8

Confirm: https://app.example/confirm?token=abc123&u=7.
Or mail (https://help.example/contact) about code 481516.

--b
Content-Type: text/html; charset=utf-8

<html><head><title>Code 999999</title><style>.x{}</style></head><body>
<p>Hello <a href="https://app.example/confirm?token=abc123&amp;u=7">confirm</a></p>
<a href=" https://app.example/unsubscribe ">unsubscribe</a> <a name="top">no link</a>
<p>Your PIN is <b>2718</b></p>
</body></html>
--b--
"""


def test_links_are_the_html_hrefs_first_then_the_text_urls_each_once_entities_decoded() -> None:
    email = email_of(ALTERNATIVE)

    assert email.links() == [
        "https://app.example/confirm?token=abc123&u=7",
        "https://app.example/unsubscribe",
        "https://help.example/contact",
    ]


def test_a_text_only_message_has_the_urls_of_its_text_without_trailing_punctuation() -> None:
    email = email_of(
        "Subject: t\n\nSee <https://a.example/x>, then https://b.example/y?z=1!\n"
        "Again: https://a.example/x\n"
    )

    assert email.links() == ["https://a.example/x", "https://b.example/y?z=1"]


def test_search_gives_the_first_group_or_the_whole_match_from_the_text_body_first() -> None:
    email = email_of(ALTERNATIVE)

    assert email.search(r"token=(\w+)") == "abc123"
    assert email.search(r"code \d+") == "code 481516"


def test_search_falls_back_to_the_html_text_never_its_markup_or_hidden_parts() -> None:
    email = email_of(ALTERNATIVE)

    assert email.search(r"PIN is (\d+)") == "2718"
    assert email.search(r"href") is None, "markup is not text"
    assert email.search(r"999999") is None, "the title is not shown text"


def test_search_finds_nothing_in_a_message_without_the_pattern() -> None:
    assert email_of("Subject: t\n\nnothing here\n").search(r"\d{6}") is None


def test_the_view_keeps_the_sdk_fields_and_stays_read_only() -> None:
    email = email_of(ALTERNATIVE)

    assert email.message.subject == "Confirm your address"
    assert email.envelope.to == ("b@example.com",)
    with pytest.raises(AttributeError):
        email.id = "other"  # type: ignore[misc]
