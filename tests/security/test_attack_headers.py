"""Hostile headers sent to a running `mailrunner serve`: the server keeps serving, and every
message is stored (250) with what went wrong in `parse_errors`.

Before the linear header decoding, a `To:` of folded whitespace froze the whole server (a
regex with a lazy name before optional spaces is cubic there; it holds the GIL, so the API
stopped answering too), a `To:` of 2,000 `(` made `getaddresses` raise RecursionError and a
Subject in the `zlib` charset made `bytes.decode` raise: 451 for ever, the sender retrying.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

from mailrunner.config import ParseConfig
from support.hostile_headers import hostile_header
from support.processes import ServeProcess

HEALTH_WITHIN = 1.0
SMTP_TIMEOUT = 30.0
KIB = 1024
NO_CHARSETS = [
    "zlib",
    "base64",
    "hex",
    "rot13",
    "undefined",
    "bz2",
    "uu",
    "quopri",
    "punycode",
    "idna",
    "unicode_escape",
    "",
    "x" * 900,
    "utf-8\x00",
]
"""Charset names in a Subject's encoded word that are unknown or no character set."""


class HostileSender(threading.Thread):
    """Sends one message over a raw socket and waits for the reply, on its own thread so the
    test can ask the API meanwhile; every step is bounded by a socket timeout."""

    def __init__(self, port: int, message: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.message = message
        self.data_sent = threading.Event()
        self.reply = b""

    def run(self) -> None:
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=SMTP_TIMEOUT) as sock,
                sock.makefile("rb") as lines,
            ):
                lines.readline()
                sock.sendall(
                    b"HELO attacker.example\r\nMAIL FROM:<a@example.com>\r\n"
                    b"RCPT TO:<b@example.com>\r\nDATA\r\n"
                )
                for _ in range(4):
                    lines.readline()
                sock.sendall(self.message + b".\r\n")
                self.data_sent.set()
                self.reply = lines.readline()
        except OSError as error:  # the test reports the missing reply
            self.reply = f"no reply: {error!r}".encode()


def health_seconds(api_port: int) -> float:
    """How long `/health` took to answer 200; fails the test past `HEALTH_WITHIN`."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{api_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_WITHIN) as response:
            assert response.status == 200
    except TimeoutError as error:
        raise AssertionError(f"/health did not answer within {HEALTH_WITHIN}s") from error
    return time.monotonic() - started


def assert_health_answers_while_sent(server: ServeProcess, message: bytes) -> None:
    """Send `message` from a thread and ask /health again and again until its reply came:
    250, and every /health answered within HEALTH_WITHIN."""
    sender = HostileSender(server.port, message)
    sender.start()
    assert sender.data_sent.wait(SMTP_TIMEOUT), "the message could not be sent"
    answers = [health_seconds(server.api_port)]
    while sender.is_alive() and sum(answers) < SMTP_TIMEOUT:
        answers.append(health_seconds(server.api_port))
    sender.join(SMTP_TIMEOUT)
    assert sender.reply.startswith(b"250 "), sender.reply
    assert max(answers) < HEALTH_WITHIN


def test_the_api_answers_while_a_huge_hostile_header_is_parsed_and_the_message_gets_250(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(logs={"level": "warning"})
    message = (
        b"From: sender@example.com\r\n"
        + hostile_header("folded whitespace", 256 * KIB)
        + hostile_header("mix", 64 * KIB)
        + hostile_header("encoded word openers", 64 * KIB)
        + b"\r\nbody\r\n"
    )
    assert_health_answers_while_sent(server, message)
    (event,) = server.wait_events(1)
    addresses = [address["email"] for address in event["message"]["to"]]
    assert addresses[0] == "someone@example.com"
    assert "To: an <address> is not closed" in event["parse_errors"]


def test_a_to_of_two_thousand_parentheses_is_stored_with_a_parse_error(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(logs={"level": "warning"})
    message = hostile_header("parentheses", 2000) + b"Subject: parentheses\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", server.port, timeout=SMTP_TIMEOUT) as client:
        client.ehlo()
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, reply = client.data(message)
    assert code == 250, reply
    (event,) = server.wait_events(1)
    assert event["message"]["subject"] == "parentheses"
    assert event["message"]["to"] == []
    assert "To: a comment is not closed" in event["parse_errors"]


def test_subjects_in_charsets_that_are_no_charset_are_stored_decoded_as_utf8(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(logs={"level": "warning"})
    subjects = [f"=?{name}?q?caf=C3=A9?=" for name in NO_CHARSETS] + ["=?utf-8?b?A?= x"]
    with smtplib.SMTP("127.0.0.1", server.port, timeout=SMTP_TIMEOUT) as client:
        client.ehlo()
        for subject in subjects:
            client.mail("a@example.com")
            client.rcpt("b@example.com")
            code, reply = client.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
            assert code == 250, f"{subject[:40]!r}: {code} {reply!r}"
    events = server.wait_events(len(subjects))
    for name, event in zip(NO_CHARSETS, events[: len(NO_CHARSETS)], strict=True):
        assert event["message"]["subject"] == "café", name
        wanted = f"header Subject: charset {name[:40]!r} is unknown or not a text charset"
        assert any(error.startswith(wanted) for error in event["parse_errors"]), event
    broken = events[-1]
    assert broken["message"]["subject"] == "=?utf-8?b?A?= x"
    assert broken["parse_errors"] == [
        "header Subject: an encoded word is not valid base64, kept as written"
    ]


def punycode_charset_message(size: int) -> bytes:
    """A text body whose RFC 2231 charset value, about `size` bytes in continuations of
    under 1,000-byte lines, is in charset `punycode`: `email` joins the continuations and
    decoded the whole value by it, in quadratic time."""
    continuations = "".join(
        f";\r\n charset*{number}*=" + ("punycode''-" if number == 0 else "") + "9" * 900
        for number in range(size // 900)
    )
    return (
        b"From: sender@example.com\r\nSubject: punycode\r\n"
        + f"Content-Type: text/plain{continuations}\r\n\r\n".encode()
        + b"the body\r\n"
    )


def test_the_api_answers_while_a_charset_in_charset_punycode_is_parsed(
    serve: Callable[..., ServeProcess],
) -> None:
    """Under `offload_bytes` the parse runs on the event loop: /health waited 5 s."""
    server = serve(logs={"level": "warning"})
    message = punycode_charset_message(ParseConfig().offload_bytes * 9 // 10)
    assert len(message) < ParseConfig().offload_bytes
    assert_health_answers_while_sent(server, message)
    (event,) = server.wait_events(1)
    assert event["message"]["body"] == "the body\n"
    assert "part 1: InvalidHeaderDefect" in event["parse_errors"]
