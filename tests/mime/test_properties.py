"""Whatever bytes arrive, parsing never raises and the event is schema-valid Unicode."""

from __future__ import annotations

import asyncio
import base64
from email import message_from_bytes
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import getaddresses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailrunner.mime.parse import (
    ParseOptions,
    clean_base64,
    parse,
    parse_in_chunks,
    simple_addresses,
)
from support.events import BUILDER, arrival, decode_event
from support.perturbed import FastPathCount, perturbed


def build(raw: bytes) -> dict[str, object]:
    return decode_event(asyncio.run(BUILDER.build(arrival(), raw)))


header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40
).filter(lambda text: "\n" not in text and "\r" not in text)
charsets = st.sampled_from(["utf-8", "iso-8859-1", "koi8-r", "shift_jis", "x-unknown", "us-ascii"])


@st.composite
def leaves(draw: st.DrawFn) -> MIMEBase:
    if draw(st.booleans()):
        text = draw(header_text)
        charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "us-ascii"]))
        part: MIMEBase = MIMEText(
            text.encode(charset, "replace").decode(charset),
            draw(st.sampled_from(["plain", "html"])),
            charset,
        )
    else:
        part = MIMEApplication(draw(st.binary(max_size=200)))
        part.add_header("Content-Disposition", "attachment", filename=draw(header_text) or "f")
    if draw(st.booleans()):
        part.replace_header("Content-Type", part["Content-Type"] + f"; charset={draw(charsets)}")
    return part


def trees(depth: int = 4) -> st.SearchStrategy[MIMEBase]:
    return st.recursive(
        leaves(),
        lambda children: st.builds(
            _multipart,
            st.sampled_from(["mixed", "alternative", "related"]),
            st.lists(children, min_size=1, max_size=3),
        ),
        max_leaves=depth * 3,
    )


def _multipart(subtype: str, parts: list[MIMEBase]) -> MIMEBase:
    message = MIMEMultipart(subtype)
    for part in parts:
        message.attach(part)
    return message


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_and_give_a_valid_event(raw: bytes) -> None:
    event = build(raw)
    assert isinstance(event["parse_errors"], list)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(trees(), header_text)
def test_arbitrary_mime_trees_give_a_valid_event_with_every_leaf(
    tree: MIMEBase, subject: str
) -> None:
    tree["Subject"] = subject
    raw = tree.as_bytes()
    parsed = parse(raw, ParseOptions(max_depth=8))
    leaf_count = sum(1 for part in tree.walk() if not part.is_multipart())
    bodies = int(bool(parsed.body)) + int(bool(parsed.html_body))
    assert len(parsed.attachments) + bodies <= leaf_count
    assert len(parsed.attachments) >= leaf_count - 2
    build(raw)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_arbitrary_bytes_in_headers_become_valid_unicode(noise: bytes) -> None:
    cleaned = noise.replace(b"\r", b" ").replace(b"\n", b" ")
    raw = b"Subject: " + cleaned + b"\r\nFrom: " + cleaned + b" <a@b>\r\n\r\nbody\r\n"
    event = build(raw)
    message = event["message"]
    assert isinstance(message, dict)
    assert message["body"] == "body\n"


def test_nesting_deeper_than_the_stdlib_recursion_limit_is_cut_and_recorded() -> None:
    depth = 3000
    raw = b"".join(
        f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
        for i in range(depth)
    )
    raw += b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    event = build(raw)
    errors = event["parse_errors"]
    assert isinstance(errors, list)
    assert any("depth" in error.lower() or "deep" in error.lower() for error in errors), errors


ADDRESS_CHARS = "abcXYZ019.-_+=?@<>, \t\"'()!#~"
address_text = st.text(alphabet=st.sampled_from(list(ADDRESS_CHARS)), min_size=1, max_size=40)


@settings(max_examples=500, deadline=None)
@given(st.lists(address_text, min_size=1, max_size=3))
def test_the_fast_address_path_agrees_with_getaddresses_whenever_it_answers(
    texts: list[str],
) -> None:
    fast = simple_addresses(texts)
    if fast is not None:
        assert fast == [pair for pair in getaddresses(texts) if pair != ("", "")]


ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=5)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
plain_addresses = st.tuples(dot_atoms, dot_atoms).map("@".join)
spaces = st.sampled_from([" ", "  ", "\t", " \t "])
display_names = st.builds(str.join, spaces, st.lists(atoms, min_size=1, max_size=3))
address_items = (
    plain_addresses
    | st.builds("{}{}<{}>".format, display_names, spaces | st.just(""), plain_addresses)
    | st.just("")
)
"""`a@b`, `Name <a@b>` (names spaced any way) and the empty item of `a@b,,c@d`."""
ADDRESS_DELIMITERS = "<@.>, "
ADDRESS_FRAGMENTS = ['"q"', "(c)", "g:", ";", "\\", "[1]", "<r@s>", "=?utf-8?q?x?="]
"""What turns a plain address list into one only `getaddresses` reads right: quotes, comments,
groups, escapes, domain literals, a second angle address and encoded words."""
SIMPLE_SHARE = 0.4
"""At least this share of edited plain lists must still take the fast path (about 60% do)."""


@st.composite
def plain_address_header(draw: st.DrawFn) -> str:
    """A header value listing `a@b` and `Name <a@b>` items."""
    items = draw(st.lists(address_items, min_size=1, max_size=3))
    return draw(st.sampled_from([",", ", ", " , ", ",\t"])).join(items)


@settings(max_examples=300, deadline=None)
@given(st.lists(plain_address_header(), min_size=1, max_size=3))
def test_plain_address_lists_always_take_the_fast_path(texts: list[str]) -> None:
    expected = [pair for pair in getaddresses(texts) if pair != ("", "")]
    assert simple_addresses(texts) == expected, f"fast path refused or misread {texts!r}"


def test_edited_address_lists_are_read_like_getaddresses_mostly_on_the_fast_path() -> None:
    count = FastPathCount()

    edited_header = perturbed(
        plain_address_header(), ADDRESS_CHARS, ADDRESS_FRAGMENTS, ADDRESS_DELIMITERS
    )

    @settings(max_examples=400, deadline=None)
    @given(st.lists(edited_header, min_size=1, max_size=2))
    def check(texts: list[str]) -> None:
        fast = simple_addresses(texts)
        count.record(fast is not None)
        if fast is not None:
            expected = [pair for pair in getaddresses(texts) if pair != ("", "")]
            assert fast == expected, f"fast path disagrees with getaddresses on {texts!r}"

    check()
    count.require_share(SIMPLE_SHARE)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(trees(), st.integers(min_value=1, max_value=9), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_feeding_the_parser_in_chunks_gives_the_same_message(
    tree: MIMEBase, chunk: int, linesep: bytes
) -> None:
    """Chunk edges fall inside CRLFs, boundaries and headers; the tree must not change."""
    raw = tree.as_bytes().replace(b"\n", linesep)
    whole = message_from_bytes(raw, policy=compat32)
    assert parse_in_chunks(raw, chunk).as_bytes() == whole.as_bytes()


base64_bodies = st.one_of(
    st.binary(max_size=300).map(lambda data: base64.encodebytes(data).decode()),
    st.binary(max_size=300).map(lambda data: base64.b64encode(data).decode().rstrip("=")),
    st.text(alphabet="ABCxyz019+/=\r\n -_!*", max_size=60),
)


@settings(max_examples=400, deadline=None)
@given(base64_bodies)
def testclean_base64_decodes_exactly_like_email_or_leaves_it_to_email(body: str) -> None:
    part = Message()
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(body)
    fast = clean_base64(part)
    if fast is not None:
        assert fast == part.get_payload(decode=True)
        assert not part.defects, "the shortcut must never hide a defect email reports"
