"""The objects the MIME parser builds: `email`'s compat32 `Message`, reading parameters in
linear time and without raising.

`Message.get_param` — behind `get_boundary`, `get_filename` and `get_content_charset` —
splits the whole header again on every call and copies the rest of it at every `;`, so a
megabyte of parameters costs seconds each time it is asked, and the parser itself asks for
every multipart's boundary. RFC 2231 parameters it cannot order (`boundary*` beside
`boundary*0`), number (`x*` and 5,000 digits: `int` refuses them) or decode (charset `idna`)
raise out of the parser and would lose the whole message, and a `boundary` or `charset` in
charset `punycode` takes time quadratic in its length to decode. Here a header's parameters
are split once, in one pass, and kept while the header is unchanged; what cannot be read is
absent, a charset `email` must not decode with is replaced by UTF-8, and a defect of the
part says so.
"""

from __future__ import annotations

import codecs
from email import errors, utils
from email.feedparser import BytesFeedParser
from email.message import Message
from email.policy import Policy, compat32
from typing import TYPE_CHECKING, TypeAlias, TypeVar, overload

from mailrunner.mime.headers import decode_bytes

if TYPE_CHECKING:
    from mailrunner.mime.stream import SpilledBody

Param: TypeAlias = str | tuple[str | None, str | None, str]
"""A parameter value as `Message.get_param` returns it: text, or RFC 2231's
(charset, language, text)."""

_T = TypeVar("_T")
_DECODED_BY_EMAIL = frozenset({"boundary", "charset"})
"""Parameters whose RFC 2231 value `email` decodes by its charset itself (`get_boundary`,
`get_content_charset`). `filename` and `name` are decoded by `headers.decode_octets`, which
screens the charset and names it in `parse_errors`."""
_READ_AS = "utf-8"
"""The charset an RFC 2231 value in a charset `email` must not decode with is read in."""


class MimePart(Message):
    """A message or MIME part whose parameter lookups cost one pass over the header."""

    def __init__(self, policy: Policy = compat32) -> None:
        super().__init__(policy)
        self._parameters: dict[str, tuple[str, list[tuple[str, Param]]]] = {}
        self.spilled: SpilledBody | None = None
        """Where the body is in a spooled message the parser was not fed it from
        (`stream.StandIns`); its payload is then a stand-in line."""

    @overload
    def get_param(
        self, param: str, failobj: None = None, header: str = "content-type", unquote: bool = True
    ) -> Param | None: ...

    @overload
    def get_param(
        self, param: str, failobj: _T, header: str = "content-type", unquote: bool = True
    ) -> Param | _T: ...

    def get_param(
        self,
        param: str,
        failobj: _T | None = None,
        header: str = "content-type",
        unquote: bool = True,
    ) -> Param | _T | None:
        """`Message.get_param`, same answers; nothing raised."""
        wanted = param.lower()
        for name, value in self._parameters_of(header) or ():
            if name.lower() == wanted:
                return _unquoted(value) if unquote else value
        return failobj

    @overload
    def get_boundary(self, failobj: None = None) -> str | None: ...

    @overload
    def get_boundary(self, failobj: _T) -> str | _T: ...

    def get_boundary(self, failobj: _T | None = None) -> str | _T | None:
        """`Message.get_boundary`; a boundary whose RFC 2231 charset cannot decode it is no
        boundary (the parser then reports the multipart as having none)."""
        try:
            return super().get_boundary(failobj)
        except ValueError:
            return failobj

    def _parameters_of(self, header: str) -> list[tuple[str, Param]] | None:
        value = self.get(header)
        if value is None:
            return None
        text = str(value)
        cached = self._parameters.get(header.lower())
        if cached is not None and cached[0] == text:
            return cached[1]
        parameters = self._read_parameters(text, header)
        self._parameters[header.lower()] = (text, parameters)
        return parameters

    def _read_parameters(self, text: str, header: str) -> list[tuple[str, Param]]:
        pairs: list[tuple[str, str]] = []
        for item in split_parameters(text):
            name, equals, value = item.partition("=")
            pairs.append((name.strip(), value.strip()) if equals else (item.strip(), ""))
        try:
            decoded = utils.decode_params(pairs)
        # TypeError: `name*` beside `name*0`, continuations that cannot be ordered;
        # ValueError: a continuation number of more digits than `int` reads
        except (TypeError, ValueError):
            self.defects.append(
                errors.InvalidHeaderDefect(f"{header}: unreadable RFC 2231 parameters ignored")
            )
            plain = [pairs[0], *(pair for pair in pairs[1:] if "*" not in pair[0])]
            return list(utils.decode_params(plain))
        return [(name, self._screened(name, value, header)) for name, value in decoded]

    def _screened(self, name: str, value: Param, header: str) -> Param:
        """`value`, or for an RFC 2231 value `email` would decode by a codec that is no
        character set (`punycode` is quadratic, `idna` raises), the same value in UTF-8."""
        charset = value[0] if isinstance(value, tuple) else None
        if not charset or name.lower() not in _DECODED_BY_EMAIL or not _email_decodes_by(charset):
            return value
        problems: list[str] = []
        decode_bytes(b"", charset, problems, f"{header} parameter {name}")
        if not problems:
            return value
        self.defects.extend(errors.InvalidHeaderDefect(problem) for problem in problems)
        return _READ_AS, value[1], value[2]


def _email_decodes_by(charset: str) -> bool:
    """Whether `email` decodes an RFC 2231 value by `charset`: an unknown one (LookupError)
    it reads around, keeping the value undecoded."""
    try:
        codecs.lookup(charset)
    except LookupError:
        return False
    except ValueError:
        return True  # a NUL or a lone surrogate in the name: decoding by it raises
    return True


def split_parameters(text: str) -> list[str]:
    """`email.message._parseparam` in one pass: the same items, a `;` inside an open quote
    (counting `\\"` as no quote) splitting nothing, names lower-cased and stripped."""
    text = ";" + text
    items: list[str] = []
    start = 0
    while text.startswith(";", start):
        start += 1
        end = text.find(";", start)
        quotes = 0
        counted = start
        while end > start:
            quotes += text.count('"', counted, end) - text.count('\\"', counted, end)
            counted = end
            if quotes % 2 == 0:
                break
            end = text.find(";", end + 1)
        if end < 0:
            end = len(text)
        item = text[start:end]
        if "=" in item:
            name, _, value = item.partition("=")
            item = name.strip().lower() + "=" + value.strip()
        items.append(item.strip())
        start = end
    return items


def _unquoted(value: Param) -> Param:
    if isinstance(value, tuple):
        return value[0], value[1], utils.unquote(value[2])
    return utils.unquote(value)


PARSER_POLICY = compat32.clone(message_factory=MimePart)
FEED_CHUNK = 64 * 1024
"""What the parser is fed at a time: `message_from_bytes` decodes a whole message to one
string and splits all of it into lines first, which peaks near eight times its size."""


def feed_range(
    parser: BytesFeedParser, raw: bytes, start: int, end: int, chunk: int = FEED_CHUNK
) -> None:
    """Feed `raw[start:end]` to `parser` a `chunk` at a time."""
    with memoryview(raw) as view:
        for piece in range(start, end, chunk):
            parser.feed(bytes(view[piece : min(piece + chunk, end)]))


"""compat32 (about twenty times cheaper than `policy.default`), building `MimePart`s."""
