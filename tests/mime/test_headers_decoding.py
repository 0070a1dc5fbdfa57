"""Header decoding agrees with the standard library where it answers, and never raises.

The RFC 2047 decoder and the address splitter replace `email.header.decode_header` and
`email.utils.getaddresses`, which are quadratic or recursive on hostile input; property tests
hold them to the standard library's answers on the small inputs it handles, and every
charset name Python knows, and the names that are no charset, is tried where a message can
name one: an encoded word, a body part's Content-Type, an RFC 2231 filename.
"""

from __future__ import annotations

import base64
import codecs
import encodings.aliases
import inspect
from collections.abc import Callable
from email.errors import HeaderParseError
from email.header import decode_header, ecre
from email.utils import getaddresses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailrunner.mime.addresses import split_addresses
from mailrunner.mime.headers import decode_encoded_words
from mailrunner.mime.parse import ParsedMessage, parse, simple_addresses

PAYLOAD = b"caf\xc3\xa9 \xff"
"""UTF-8 text and one byte no UTF-8 holds: every charset decodes it to something."""
UNUSABLE = [
    "zlib",
    "zip",
    "base64",
    "hex",
    "rot13",
    "rot_13",
    "bz2",
    "uu",
    "quopri",
    "quoted_printable",
    "undefined",
    "punycode",
    "idna",
    "unicode_escape",
    "raw_unicode_escape",
    "x-unknown",
    "",
    "a" * 900,
    "utf-8\x00",
    "\x00",
]
"""Unknown names, codecs that are no character set, empty, over-long and NUL-bearing ones."""
USABLE = ["utf-8", "iso-8859-1", "latin1", "koi8-r", "shift_jis", "gb18030", "cp1252", "utf-16"]
ALL_NAMES = sorted(
    set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values()) | set(UNUSABLE)
)
UNUSABLE_MARK = "is unknown or not a text charset"


def _stdlib_getaddresses() -> Callable[[list[str]], list[tuple[str, str]]]:
    """`getaddresses` as it behaved before CPython's strict mode (3.13, backported to some
    3.11/3.12 releases), which refuses what the permissive parser reads."""
    if "strict" in inspect.signature(getaddresses).parameters:
        return lambda texts: getaddresses(texts, strict=False)  # type: ignore[call-arg]
    return getaddresses


STDLIB_GETADDRESSES = _stdlib_getaddresses()


def stdlib_decoded(text: str) -> str:
    """What the parser gave before: `decode_header`'s chunks joined, an unknown charset
    decoded as UTF-8 (declared ASCII too), bytes not in the charset as U+FFFD."""
    pieces: list[str] = []
    for chunk, charset in decode_header(text):
        if isinstance(chunk, str):
            pieces.append(chunk)
        elif charset is None:
            pieces.append(chunk.decode("raw-unicode-escape"))
        else:
            pieces.append(chunk.decode(_codec_or_utf8(charset), "replace"))
    return "".join(pieces)


def _codec_or_utf8(charset: str) -> str:
    try:
        name = codecs.lookup(charset.strip().strip('"')).name
        b"a".decode(name, "replace")
    except (LookupError, ValueError):
        return "utf-8"
    return "utf-8" if name == "ascii" else name


# Plain text without CR or LF (the parser unfolds before decoding) and without backslashes
# (`decode_header` passes plain text through raw-unicode-escape, so a written `\u00e9`
# comes back as `é`: a stdlib bug the decoder does not copy).
plain_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",), blacklist_characters="\\\r\n", max_codepoint=0x3000
    ),
    max_size=12,
)
fragments = st.sampled_from(["=?", "?=", "?q?", "?B?", "?", "=", "_", " ", "\t", "\x0b", "\x85"])
charset_names = st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii", "koi8-r", "x-bad", ""])


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    data = draw(st.binary(max_size=8))
    charset = draw(charset_names)
    if draw(st.booleans()):
        text = "".join(chr(b) if chr(b).isalnum() and b < 128 else f"={b:02X}" for b in data)
        return f"=?{charset}?{draw(st.sampled_from('qQ'))}?{text}?="
    encoded = base64.b64encode(data).decode()
    if draw(st.booleans()):
        encoded = encoded.rstrip("=")  # decode_header pads what is missing
    return f"=?{charset}?{draw(st.sampled_from('bB'))}?{encoded}?="


headers = st.lists(st.one_of(plain_text, fragments, encoded_words()), max_size=8).map("".join)


@settings(max_examples=600, deadline=None)
@given(headers)
def test_encoded_words_decode_to_the_text_decode_header_gives(text: str) -> None:
    # Non-ASCII inside an encoded word goes through raw-unicode-escape in decode_header
    # (another stdlib bug): only headers without any are compared.
    assume(all(m["encoded"].isascii() for line in text.splitlines() for m in ecre.finditer(line)))
    try:
        expected = stdlib_decoded(text)
    except HeaderParseError:  # a base64 word it cannot decode fails the whole header
        assume(False)
    assert decode_encoded_words(text, [], "header Subject") == expected


address_texts = st.text(
    alphabet=st.sampled_from(list("abXY09.-_+=?@<>,:;\"'()[]\\ \t!#~é\xa0")), max_size=30
)


@settings(max_examples=800, deadline=None)
@given(st.lists(address_texts, min_size=1, max_size=3))
def test_address_lists_split_into_the_pairs_getaddresses_gives(texts: list[str]) -> None:
    assert split_addresses(texts, [], "To") == STDLIB_GETADDRESSES(texts)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet="ab@<> \t\xa0\u3000\x0b.,", max_size=20), min_size=1, max_size=3))
def test_the_fast_address_path_agrees_with_getaddresses_around_unicode_whitespace(
    texts: list[str],
) -> None:
    """Only spaces and tabs are folding whitespace: a no-break space is part of an atom."""
    fast = simple_addresses(texts)
    if fast is not None:
        assert fast == [pair for pair in STDLIB_GETADDRESSES(texts) if pair != ("", "")]


@pytest.mark.parametrize(
    ("text", "unclosed"),
    [
        ("(" * 2000, "a comment"),
        ("a:" * 2000, "a group"),
        ('Someone "quoted', "a quoted string"),
        ("<someone@example.com", "an <address>"),
        ("someone@[192.0.2.1", "a domain literal"),
    ],
)
def test_an_address_header_left_open_is_read_and_recorded(text: str, unclosed: str) -> None:
    errors: list[str] = []
    split_addresses([text], errors, "To")
    assert errors == [f"To: {unclosed} is not closed"]


def test_a_to_of_two_thousand_parentheses_is_delivered_with_a_parse_error() -> None:
    """getaddresses recursed once per `(` and raised RecursionError."""
    parsed = parse(b"To: " + b"(" * 2000 + b"\r\nSubject: hi\r\n\r\nbody\r\n")
    assert parsed.to == []
    assert parsed.subject == "hi"
    assert "To: a comment is not closed" in parsed.parse_errors


def test_addresses_after_a_hostile_one_are_still_read() -> None:
    parsed = parse(b"To: (((x))) <a@example.com>, b@example.com, <<c@example.com\r\n\r\n")
    emails = [address.email for address in parsed.to]
    assert emails == ["a@example.com", "b@example.com", "c@example.com"]


def test_a_base64_word_that_does_not_decode_is_kept_as_written() -> None:
    """decode_header raised HeaderParseError for the whole header (451 for the message)."""
    errors: list[str] = []
    text = decode_encoded_words("=?utf-8?b?A?= =?utf-8?q?caf=C3=A9?=", errors, "header Subject")
    assert text == "=?utf-8?b?A?= café"
    assert errors == ["header Subject: an encoded word is not valid base64, kept as written"]


def test_one_header_of_many_broken_words_adds_a_few_parse_errors() -> None:
    errors: list[str] = []
    words = " ".join(f"=?bad-{number}?q?x?=" for number in range(5000))
    assert decode_encoded_words(words, errors, "header Subject") == "x" * 5000
    assert 0 < len(errors) <= 10


def test_a_character_split_between_two_encoded_words_is_decoded_whole() -> None:
    assert decode_encoded_words("=?utf-8?q?caf=C3?= =?utf-8?q?=A9?=", [], "h") == "café"


def test_raw_8bit_bytes_in_an_rfc2231_filename_keep_the_attachment() -> None:
    """compat32 turns them into U+FFFD, which no octet stands for: the attachment was lost
    ("MIME structure could not be read")."""
    parsed = parse(
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''caf\xc3\xa9-%C3%A9.txt\r\n\r\nx"
    )
    assert [attachment.filename for attachment in parsed.attachments] == ["caf\ufffd\ufffd-é.txt"]
    assert "filename: 8-bit bytes outside the %-encoding, replaced with U+FFFD" in (
        parsed.parse_errors
    )


HEADER_PLACES = [
    b"Subject: NOISE\r\n\r\nbody",
    b"Subject: =?NOISE?q?x?= =?utf-8?b?NOISE?=\r\n\r\nbody",
    b"To: NOISE, x <NOISE>\r\nCc: (NOISE) a@b\r\n\r\nbody",
    b"Content-Type: text/plain; charset=NOISE\r\n\r\nbody \xff",
    b'Content-Type: text/plain; charset="NOISE"\r\n\r\nbody',
    b"Content-Type: text/plain; charset*=NOISE\r\n\r\nbody",
    b'Content-Type: application/x; name="NOISE"\r\n\r\nx',
    b"Content-Type: application/x\r\nContent-Disposition: attachment; filename*=NOISE\r\n\r\nx",
    b"Content-Type: application/x\r\n"
    b"Content-Disposition: attachment; filename*0*=NOISE; filename*1=NOISE\r\n\r\nx",
]
"""Where a header carries text the parser decodes; NOISE stands for the hostile bytes."""


@settings(max_examples=600, deadline=None)
@given(
    st.binary(max_size=40).map(lambda noise: noise.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from(HEADER_PLACES),
)
def test_any_bytes_where_a_header_is_decoded_never_lose_the_message(
    noise: bytes, template: bytes
) -> None:
    parsed = parse(template.replace(b"NOISE", noise))
    assert not [error for error in parsed.parse_errors if "could not be read" in error]


def _in_subject(charset: str) -> tuple[ParsedMessage, str]:
    quoted = "".join(f"={byte:02X}" for byte in PAYLOAD)
    raw = f"Subject: =?{charset}?q?{quoted}?=\r\n\r\nbody\r\n".encode("utf-8", "surrogateescape")
    parsed = parse(raw)
    return parsed, parsed.subject


def _in_body(charset: str) -> tuple[ParsedMessage, str]:
    header = f'Content-Type: text/plain; charset="{charset}"\r\n'.encode()
    parsed = parse(header + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + PAYLOAD)
    return parsed, parsed.body


def _in_filename(charset: str) -> tuple[ParsedMessage, str]:
    quoted = "".join(f"%{byte:02X}" for byte in PAYLOAD)
    header = f"Content-Disposition: attachment; filename*={charset}''{quoted}\r\n".encode()
    parsed = parse(b"Content-Type: application/octet-stream\r\n" + header + b"\r\nx")
    filename = parsed.attachments[0].filename
    assert filename is not None
    return parsed, filename


PLACES = {"encoded word": _in_subject, "body charset": _in_body, "rfc 2231 filename": _in_filename}
NOT_A_NAME_THERE = {"rfc 2231 filename": {""}}
"""An empty RFC 2231 charset is valid: the charset is unspecified, and the text is read as
UTF-8 without complaint."""


@pytest.mark.parametrize("place", PLACES)
def test_every_charset_name_decodes_by_its_codec_or_as_utf8_with_a_parse_error(
    place: str,
) -> None:
    """Every name in `encodings.aliases` (keys and values) and every kind of unusable name:
    the parse never raises, and the text is the charset's decoding, or UTF-8's with U+FFFD
    and a parse error naming the charset."""
    fell_back: set[str] = set()
    for name in ALL_NAMES:
        parsed, text = PLACES[place](name)
        if any(UNUSABLE_MARK in error for error in parsed.parse_errors):
            fell_back.add(name)
            assert text == PAYLOAD.decode("utf-8", "replace"), name
        else:
            assert text == PAYLOAD.decode(_codec_or_utf8(name), "replace"), name
    assert set(UNUSABLE) - NOT_A_NAME_THERE.get(place, set()) <= fell_back
    assert not fell_back & set(USABLE)
