"""The message without MIME structure, read without feeding its body to the parser.

Most mail a server like this receives in bulk is one part: no Content-Type, or one that is
neither `multipart/*` nor `message/*`. For such a message `email.feedparser` does nothing
with the body but split it into lines and join them again (the payload is the body's text
as fed, line ends and all): at 100 KB that walk, and the pre-scan that guards it, are most
of a parse's cost. Here the parser is fed the header block alone, which it reads exactly as
in a full parse (defects, the envelope line, continuation lines), and the body's text is
set as its payload; everything after that (decoding by the transfer encoding and charset,
which leaf is the body, `parse_errors`) is the ordinary parse's, so the result is the same.
"""

from __future__ import annotations

from email.feedparser import BytesFeedParser
from email.message import Message

from mailrunner.mime.part import PARSER_POLICY, feed_range
from mailrunner.mime.prescan import plain_body_start


def plain_message(raw: bytes, max_header_bytes: int) -> Message | None:
    """The parsed message when `raw` is one part whose header block fits `max_header_bytes`,
    else None (the full parse reads it)."""
    body = plain_body_start(raw, max_header_bytes=max_header_bytes)
    if body is None:
        return None
    parser = BytesFeedParser(policy=PARSER_POLICY)
    feed_range(parser, raw, 0, body)  # a header block near `max_header_bytes` in pieces
    message = parser.close()
    # the feed parser's payload for a single part is every line after the header block as
    # BytesFeedParser decoded it; what the header block alone left there is the line the
    # parser handed back to the body (an envelope `From ` line ending the block)
    pushed_back = vars(message).get("_payload")  # as fed: get_payload() would decode it
    if not isinstance(pushed_back, str):
        return None
    text = raw[body:].decode("ascii", "surrogateescape")
    message.set_payload(pushed_back + text if pushed_back else text)
    return message
