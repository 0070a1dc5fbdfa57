"""The MAIL/RCPT path argument in its common form, read without the RFC 5322 header parser.

aiosmtpd reads every path with `email._header_value_parser.get_angle_addr` and defines a
`typing.Protocol` class on each call: about 60 µs per address, two addresses per message,
which made it the largest single cost of a message on the SMTP -> Jobs path. Almost every
client sends `<dot-atom@dot-atom>` followed by plain parameters; for exactly that shape the
answer is computed here, and anything else (comments, quoted local parts, domain literals,
non-ASCII, source routes, a missing `<`, anything like an RFC 2047 encoded word) goes to
aiosmtpd. The property test in
tests/smtp/test_addresses.py holds this to aiosmtpd's answer for any input it accepts.
"""

from __future__ import annotations

import re

NULL_SENDER = "<>"
"""MAIL FROM:<> as aiosmtpd hands it over; events and hooks carry "" instead."""

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>")
_FOLDING_SPACE = (" ", "\t")
"""get_angle_addr skips whitespace after `>` only when it starts with one of these."""


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) as aiosmtpd would return them, or None to let aiosmtpd decide."""
    match = _PLAIN_PATH.match(arg)
    if match is None or "=?" in match.group(1):
        return None  # the header parser decodes RFC 2047 encoded words in a dot-atom
    rest = arg[match.end() :]
    if "(" in rest:
        return None
    if rest[:1] in _FOLDING_SPACE:
        rest = rest.lstrip()
    return match.group(1), rest


def sender(address: str) -> str:
    """The MAIL FROM address as events and hooks carry it: "" for the null sender."""
    return "" if address == NULL_SENDER else address
