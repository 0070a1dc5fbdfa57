"""Headers built to make a header parser slow: the patterns that made the standard library's
helpers, or regexes with overlapping quantifiers, take quadratic (or worse) time or recurse.

Each value is folded into lines of under 1,000 bytes, so an SMTP server takes it as DATA.
"""

from __future__ import annotations

FOLD_AT = 900
"""Line length before a fold: under SMTP's 1,000-byte line limit."""

PATTERNS: dict[str, tuple[str, str]] = {
    "folded whitespace": ("To", " " * 60),
    "angle brackets": ("To", "<"),
    "quotes": ("To", '"'),
    "parentheses": ("To", "("),
    "nested groups": ("To", "a:"),
    "encoded word openers": ("Subject", "=?"),
    "unclosed encoded words": ("Subject", "=?utf-8?q?x"),
    "encoded words": ("Subject", "=?utf-8?q?caf=C3=A9?= "),
    "mix": ("To", '<"(=?q?b?:\\ ,@;[ '),
    "quoted parameter separators": ("Content-Type", ";"),
}
"""Header name and the text repeated in its value, by what the text attacks."""


def hostile_header(kind: str, size: int) -> bytes:
    """A `Name: value` header line of about `size` bytes, folded, CRLF-terminated."""
    name, unit = PATTERNS[kind]
    body = unit * (size // len(unit))
    if kind == "folded whitespace":  # a name, then whitespace, then no address after all
        value = "Name" + body + "<someone@example.com"
    elif kind == "quoted parameter separators":  # a `;` inside an open quote, many times
        value = 'text/plain; charset="' + body
    else:
        value = body
    lines = [value[start : start + FOLD_AT] for start in range(0, len(value), FOLD_AT)]
    return (f"{name}: " + "\r\n ".join(lines) + "\r\n").encode()


def hostile_message(kinds: list[str], size: int) -> bytes:
    """A message whose headers are the given hostile ones, each about `size` bytes."""
    headers = b"".join(hostile_header(kind, size) for kind in kinds)
    return b"From: sender@example.com\r\n" + headers + b"\r\nbody\r\n"
