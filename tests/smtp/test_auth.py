"""AUTH PLAIN and LOGIN are captured without verification; `auth.mode: off` hides AUTH."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable

from support.server import RunningServer

MESSAGE = b"Subject: auth\r\n\r\nbody\r\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auth_plain_is_captured_in_the_event(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        assert client.docmd("AUTH", f"PLAIN {b64(chr(0) + 'alice' + chr(0) + 'pw')}") == (
            235,
            b"2.7.0 Authentication successful",
        )
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"] == {
        "attempted": True,
        "mechanism": "PLAIN",
        "username": "alice",
        "password": "pw",
    }
    assert "with ESMTPA id" in event["message"]["headers"]["Received"][0]


def test_auth_login_is_captured_with_smtplib(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        client.esmtp_features["auth"] = "LOGIN"
        assert client.login("erin", "pw-login")[0] == 235
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"]["mechanism"] == "LOGIN"
    assert event["authentication"]["username"] == "erin"
    assert event["authentication"]["password"] == "pw-login"


def test_auth_login_challenge_exchange_captures_both_fields(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        assert client.docmd("AUTH", "LOGIN") == (334, b64("Username:").encode())
        assert client.docmd(b64("bob")) == (334, b64("Password:").encode())
        assert client.docmd(b64("hunter2"))[0] == 235
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"]["mechanism"] == "LOGIN"
    assert (event["authentication"]["username"], event["authentication"]["password"]) == (
        "bob",
        "hunter2",
    )


def test_cancelled_auth_is_recorded_as_attempted_with_what_was_received(
    server: RunningServer,
) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        assert client.docmd("AUTH", f"LOGIN {b64('carol')}")[0] == 334
        assert client.docmd("*") == (501, b"5.7.0 Auth aborted")
        assert client.noop()[0] == 250, "a cancelled AUTH must be answered exactly once"
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"] == {
        "attempted": True,
        "mechanism": "LOGIN",
        "username": "carol",
        "password": None,
    }


def test_malformed_auth_plain_gets_501_and_is_recorded(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        assert client.docmd("AUTH", "PLAIN not-base64!")[0] == 501
        assert client.docmd("AUTH", f"PLAIN {b64('no-separators')}")[0] == 501
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"]["attempted"] is True
    assert event["authentication"]["mechanism"] == "PLAIN"


def test_rset_clears_the_envelope_but_keeps_the_auth(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.login("dave", "pw")
        client.mail("x@example.com")
        client.rset()
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["from"] == "a@example.com"
    assert event["authentication"]["username"] == "dave"


def test_auth_off_hides_auth_and_refuses_it(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(smtp={"auth": {"mode": "off"}})
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN") == (502, b"5.5.1 AUTH not available")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"] is None
