"""The fast MAIL/RCPT path reader gives aiosmtpd's answer whenever it answers at all."""

from __future__ import annotations

import string

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mailrunner.smtp.addresses import plain_path
from mailrunner.smtp.protocol import MailrunnerSMTP
from support.perturbed import FastPathCount, perturbed

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
AWKWARD = ' \t\x0b\u2003<>()@.,;:"[]\\é\x00=?'
LOCAL_PART_LIMIT = 8
DELIMITERS = "<@.> \t"
FRAGMENTS = ["(c)", " (c) ", "=?utf-8?q?x?="]
"""A comment and an encoded word: after a delimiter each makes aiosmtpd's answer differ from a
naive reading, so the fast path must step aside for them."""
FAST_PATH_SHARE = 0.5
"""At least this share of one-edit variants of a plain path must still take the fast path, so
the equality assertion below is reached in most examples instead of almost none."""


def aiosmtpd(arg: str, local_part_limit: int = 0) -> tuple[str | None, str | None]:
    stock = SMTP.__new__(SMTP)
    stock.local_part_limit = local_part_limit
    return stock._getaddr(arg)


def ours(arg: str, local_part_limit: int = 0) -> tuple[str | None, str | None]:
    server = MailrunnerSMTP.__new__(MailrunnerSMTP)
    server.local_part_limit = local_part_limit
    return server._getaddr(arg)


atoms = st.text(alphabet=ATEXT, min_size=1, max_size=6)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
parameters = st.text(alphabet=ATEXT + AWKWARD + "=", max_size=20)


awkward_text = st.text(alphabet=ATEXT[:6] + AWKWARD, max_size=12)

keywords = st.sampled_from(["SIZE", "BODY", "SMTPUTF8", "NOTIFY", "RET", "ENVID", "AUTH", "X-Y"])
values = st.text(alphabet=ATEXT + "=", max_size=8)
plain_parameters = st.lists(
    st.tuples(keywords, values).map(lambda pair: "=".join(pair) if pair[1] else pair[0]),
    max_size=3,
)
separators = st.sampled_from(["", " ", "  ", "\t", " \t", "\t\x0b ", "\x0b", "\u2003"])


@st.composite
def plain_paths(draw: st.DrawFn) -> str:
    """`<dot-atom@dot-atom>` and ESMTP parameters: the shape the fast path exists for."""
    address = draw(st.tuples(dot_atoms, dot_atoms).map("@".join).filter(lambda a: "=?" not in a))
    words = draw(plain_parameters)
    gap = draw(separators)
    return f"<{address}>{gap}{' '.join(words)}" if words else f"<{address}>{gap}"


@given(st.text(alphabet=ATEXT[:6] + AWKWARD, max_size=30))
def test_any_answer_is_aiosmtpds(arg: str) -> None:
    plain = plain_path(arg)
    if plain is not None:
        assert plain == aiosmtpd(arg)


@given(awkward_text, awkward_text, awkward_text, awkward_text)
def test_near_miss_answers_are_aiosmtpds(lead: str, local: str, domain: str, rest: str) -> None:
    arg = f"{lead}<{local}@{domain}>{rest}"
    plain = plain_path(arg)
    if plain is not None:
        assert plain == aiosmtpd(arg)


@given(dot_atoms, dot_atoms, parameters)
def test_plain_paths_are_read_without_aiosmtpd(local: str, domain: str, rest: str) -> None:
    """Only a comment after the path, or text that may be an RFC 2047 encoded word, goes on."""
    arg = f"<{local}@{domain}>{rest}"
    plain = plain_path(arg)
    if "(" in rest or "=?" in f"{local}@{domain}":
        assert plain is None
    else:
        assert plain == aiosmtpd(arg)


@given(dot_atoms, dot_atoms, parameters)
def test_the_server_answers_like_aiosmtpd(local: str, domain: str, rest: str) -> None:
    """The local-part limit still applies on the fast path."""
    arg = f"<{local}@{domain}>{rest}"
    assert ours(arg, LOCAL_PART_LIMIT) == aiosmtpd(arg, LOCAL_PART_LIMIT)


@given(plain_paths())
def test_plain_paths_with_parameters_always_take_the_fast_path(arg: str) -> None:
    assert plain_path(arg) == aiosmtpd(arg), f"fast path refused or misread {arg!r}"
    assert ours(arg, LOCAL_PART_LIMIT) == aiosmtpd(arg, LOCAL_PART_LIMIT)


def test_edited_plain_paths_are_answered_like_aiosmtpd_mostly_on_the_fast_path() -> None:
    count = FastPathCount()

    @settings(max_examples=400)
    @given(perturbed(plain_paths(), ATEXT[:6] + AWKWARD, FRAGMENTS, DELIMITERS))
    def check(arg: str) -> None:
        plain = plain_path(arg)
        count.record(plain is not None)
        if plain is not None:
            assert plain == aiosmtpd(arg), f"fast path disagrees with aiosmtpd on {arg!r}"

    check()
    count.require_share(FAST_PATH_SHARE)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<bench@example.com>", ("bench@example.com", "")),
        (
            "<a.b+tag@mail.example.com> SIZE=1000 BODY=8BITMIME",
            ("a.b+tag@mail.example.com", "SIZE=1000 BODY=8BITMIME"),
        ),
        ("<a@b>\t \x0bX", ("a@b", "X")),
    ],
)
def test_common_paths(arg: str, expected: tuple[str, str]) -> None:
    assert plain_path(arg) == expected == aiosmtpd(arg)


@pytest.mark.parametrize(
    "arg",
    [
        "<>",
        " <a@b>",
        "<a@[127.0.0.1]>",
        '<"a b"@c>',
        "<a..b@c>",
        "<@relay:a@b>",
        "<é@b>",
        "<a@b> (comment) SIZE=1",
        "<=?utf-8?q?abc?=@example.com>",
        "<a@=?x?q?b?=>",
        "a@b",
    ],
)
def test_other_shapes_go_to_aiosmtpd(arg: str) -> None:
    assert plain_path(arg) is None
    assert ours(arg) == aiosmtpd(arg)
