"""Attacks on MIME structure, against a running `mailrunner serve` (issue #11).

Before the pre-scan, a 10 MB message of a million empty parts cost 18 s of parsing, over
600 MB and a 105 MB job; Content-Type parameters cost time quadratic in their size (the
stdlib copies the rest of the header at every `;`); a preamble-only multipart/mixed
was stored as an attachment; and a boundary in charset `idna`, RFC 2231 parameters that
cannot be ordered, or a raw UTF-8 filename made the parser raise: 451, forever.
"""

from __future__ import annotations

import json
import os
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from support.processes import ServeProcess

MIB = 1024 * 1024
LINEAR_WITH_HEADROOM = 48
"""16 times the parameters may take 48 times as long: three times linear, so a busy machine
passes, and far under the 256 times a quadratic parse takes."""


def with_attachment(size: int) -> bytes:
    message = EmailMessage()
    message["Subject"] = "one attachment"
    message.set_content("see the attachment")
    message.add_attachment(
        os.urandom(size), maintype="application", subtype="octet-stream", filename="a.bin"
    )
    return message.as_bytes().replace(b"\n", b"\r\n")


def multipart(parts: list[bytes]) -> bytes:
    head = b"Subject: structure\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    return head + b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + b"--b--\r\n"


def deliver(server: ServeProcess, raw: bytes) -> str:
    """Send one message; the id from `250 ... queued as <id>`."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
        client.ehlo("attacker.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, reply = client.data(raw)
    assert code == 250, f"{code} {reply!r}"
    return reply.decode().rsplit(" ", 1)[-1]


def handling_ms(server: ServeProcess, event_id: str) -> float:
    """What the server logged as the time from the final dot to its 250: parse, store, push."""
    for line in server.logs().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "message accepted" and entry.get("id") == event_id:
                return float(entry["ms"])
    pytest.fail(f"no 'message accepted' log line for {event_id}")


def stored(server: ServeProcess, count: int) -> dict[str, dict[str, Any]]:
    return {event["id"]: event for event in server.wait_events(count)}


def test_a_million_empty_parts_are_cut_at_max_parts_fast_and_into_a_small_job(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(logs={"format": "json"})
    many = multipart([b""] * 1_400_000)
    assert 9 * MIB < len(many) < 10 * MIB
    baseline = deliver(server, with_attachment(len(many) * 3 // 4 - 64 * 1024))
    cut = deliver(server, many)
    event = stored(server, 2)[cut]
    assert len(event["attachments"]) == 999
    assert any(e.startswith("MIME parts over 1000: the last ") for e in event["parse_errors"])
    job = len(json.dumps(event))
    assert job < MIB, f"the event of a million empty parts is {job / MIB:.0f} MiB"
    took, usual = handling_ms(server, cut), handling_ms(server, baseline)
    assert took <= 2 * usual + 250, (
        f"a million empty parts took {took:.0f} ms from the dot to 250;"
        f" one attachment of the same size took {usual:.0f} ms"
    )


def with_parameters(size: int) -> bytes:
    """A multipart whose Content-Type carries `size` bytes of parameters: the parser itself
    asks for its boundary."""
    parameters = b"".join(b";\r\n p%d=v" % n for n in range(size // 13))
    return multipart(
        [
            b"Content-Type: multipart/alternative; boundary=c" + parameters + b"\r\n\r\n"
            b"--c\r\nContent-Type: text/plain\r\n\r\nthe body\r\n--c--"
        ]
    )


def test_header_parameters_cost_time_linear_in_their_size(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(logs={"format": "json"})

    def best_ms(size: int) -> float:
        ids = [deliver(server, with_parameters(size)) for _ in range(3)]
        return min(handling_ms(server, event_id) for event_id in ids)

    small, large = best_ms(64 * 1024), best_ms(MIB - 4096)
    events = stored(server, 6).values()
    assert all(event["message"]["body"] == "the body" for event in events)
    assert large <= LINEAR_WITH_HEADROOM * small, (
        f"16x the parameters took {large / small:.0f}x the time ({small:.0f} -> {large:.0f} ms)"
    )


UNREADABLE = "multipart/mixed without readable parts"


@pytest.mark.parametrize(
    ("message", "unreadable"),
    [
        pytest.param(
            b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\nno parts here\r\n",
            True,
            id="preamble-only",
        ),
        pytest.param(
            b"Content-Type: multipart/mixed; boundary*=idna''%FF\r\n\r\n--b\r\n\r\nx\r\n",
            True,
            id="boundary-in-charset-idna",
        ),
        pytest.param(
            b"Content-Type: multipart/mixed; boundary*=b; boundary*0=b\r\n\r\n--b\r\n\r\nx\r\n",
            True,
            id="unorderable-rfc2231-boundary",
        ),
        pytest.param(
            multipart(
                [
                    b"Content-Type: text/plain\r\n\r\nbody",
                    'Content-Disposition: attachment; filename="名前.txt"\r\n\r\nx'.encode(),
                ]
            ),
            False,
            id="raw-utf8-filename",
        ),
    ],
)
def test_a_multipart_is_never_an_attachment_and_never_a_451(
    serve: Callable[..., ServeProcess], message: bytes, unreadable: bool
) -> None:
    server = serve()
    event_id = deliver(server, message)
    event = stored(server, 1)[event_id]
    types = [attachment["content_type"] for attachment in event["attachments"]]
    assert not [t for t in types if t.startswith("multipart/")], types
    assert unreadable == any(UNREADABLE in e for e in event["parse_errors"]), event["parse_errors"]
