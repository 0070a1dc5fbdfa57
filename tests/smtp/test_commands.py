"""Every SMTP command a client uses, driven over TCP with smtplib and aiosmtplib."""

from __future__ import annotations

import asyncio
import smtplib
import socket

import aiosmtplib

from support.server import RunningServer

MESSAGE = b"From: A <a@example.com>\r\nTo: b@example.com\r\nSubject: hello\r\n\r\nbody\r\n"


def test_ehlo_advertises_pipelining_8bitmime_smtputf8_size_and_auth(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        code, _ = client.ehlo("client.example")
        assert code == 250
        for feature in ("pipelining", "8bitmime", "smtputf8", "size", "auth"):
            assert client.has_extn(feature), f"EHLO does not advertise {feature}"
        assert client.esmtp_features["size"] == str(server.config.smtp.max_message_size)
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}


def test_greeting_names_the_configured_hostname(start_server: object) -> None:
    running = start_server(smtp={"hostname": "mx.test.example"})  # type: ignore[operator]
    with smtplib.SMTP(running.host, running.port) as client:
        code, reply = client.helo("me")
        assert (code, reply) == (250, b"mx.test.example")


def test_helo_session_delivers_with_smtp_protocol(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.helo("old.client")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["helo"] == "old.client"
    assert "with SMTP id" in event["message"]["headers"]["Received"][0]


def test_message_becomes_event_with_envelope_and_headers(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("client.example")
        refused = client.sendmail("a@example.com", ["b@example.com", "c@example.com"], MESSAGE)
        assert refused == {}
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"] == {
        "from": "a@example.com",
        "to": ["b@example.com", "c@example.com"],
        "helo": "client.example",
        "size": len(MESSAGE),
    }
    assert event["message"]["subject"] == "hello"
    assert event["message"]["from"] == [{"email": "a@example.com", "name": "A"}]
    assert event["message"]["body"] == "body\n"
    assert event["authentication"] is None
    received = event["message"]["headers"]["Received"][0]
    assert received.startswith("from client.example ([127.0.0.1])")
    assert f"with ESMTP id {event['id']}" in received
    assert event["remote_addr"].startswith("127.0.0.1:")


def test_reply_names_the_event_id(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, reply = client.data(MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert code == 250
    assert reply.decode() == f"2.0.0 OK: queued as {event['id']}"


def test_null_sender_is_accepted_as_empty_from(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("<>", ["b@example.com"], MESSAGE)
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["from"] == ""


def test_smtputf8_addresses_reach_the_event(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        client.sendmail(
            "jürgen@exämple.com", ["ünï@example.com"], MESSAGE, mail_options=["SMTPUTF8"]
        )
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["from"] == "jürgen@exämple.com"
    assert event["envelope"]["to"] == ["ünï@example.com"]


def test_noop_rset_and_quit(server: RunningServer) -> None:
    client = smtplib.SMTP(server.host, server.port)
    client.ehlo("c")
    assert client.noop()[0] == 250
    client.mail("a@example.com")
    client.rcpt("b@example.com")
    assert client.rset()[0] == 250
    assert client.docmd("DATA")[0] == 503, "RSET must clear the recipients"
    code, reply = client.quit()
    assert (code, reply) == (221, b"2.0.0 Bye")


def test_sequence_errors_have_clear_replies(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 503, "MAIL before EHLO"
        client.ehlo("c")
        assert client.docmd("RCPT TO:<b@example.com>")[0] == 503, "RCPT before MAIL"
        assert client.docmd("DATA")[0] == 503, "DATA before RCPT"
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 250
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 503, "nested MAIL"
        assert client.docmd("RSET")[0] == 250
        assert client.docmd("MAIL TO:<a@example.com>")[0] == 501
        assert client.docmd("VRFY")[0] == 501
        assert client.docmd("BOGUS")[0] == 500


def test_two_messages_on_one_connection_share_the_connection_uuid(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        client.sendmail("a@example.com", ["c@example.com"], MESSAGE)
    first, second = server.delivery.wait_for(2)
    assert first["uuid"] == second["uuid"]
    assert first["id"] != second["id"]


def test_aiosmtplib_pipelined_sends_over_parallel_connections(server: RunningServer) -> None:
    async def send(index: int) -> None:
        message = MESSAGE.replace(b"hello", f"hello {index}".encode())
        async with aiosmtplib.SMTP(hostname=server.host, port=server.port) as client:
            assert client.supports_extension("pipelining")
            await client.sendmail("a@example.com", [f"r{index}@example.com"], message)

    async def main() -> None:
        await asyncio.gather(*(send(i) for i in range(20)))

    asyncio.run(main())
    events = server.delivery.wait_for(20)
    assert sorted(e["message"]["subject"] for e in events) == sorted(
        f"hello {i}" for i in range(20)
    )


def test_invalid_utf8_in_helo_and_addresses_is_replaced_and_recorded(server: RunningServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        commands = [b"EHLO h\xff", b"MAIL FROM:<\xfe@example.com>", b"RCPT TO:<b@example.com>"]
        for command in [*commands, b"DATA"]:
            stream.write(command + b"\r\n")
            stream.flush()
            while (line := stream.readline())[3:4] == b"-":
                pass
            assert line[:1] in (b"2", b"3"), f"{command!r} refused: {line!r}"
        stream.write(MESSAGE + b".\r\n")
        stream.flush()
        assert stream.readline().startswith(b"250")
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["helo"] == "h\ufffd"
    assert event["envelope"]["from"] == "\ufffd@example.com"
    assert any(error.startswith("HELO") for error in event["parse_errors"])
    assert any(error.startswith("MAIL FROM") for error in event["parse_errors"])
