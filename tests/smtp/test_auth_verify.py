"""`smtp.auth.mode: verify` end to end: smtplib and aiosmtplib log in over STARTTLS and on the
implicit-TLS port against a bcrypt credentials file; wrong credentials get 535, AUTH without
TLS 538 (and is not offered), MAIL before AUTH 530 with `required`, one failure too many 421
and a close; the file is re-read when it changes and kept when it becomes unusable; the
event says `verified: true` and never holds the password.

TLS tests run on both event loops (STARTTLS is aiosmtpd's wrapper, implicit TLS the loop's).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import smtplib
import socket
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aiosmtplib
import bcrypt
import pytest
from structlog.testing import capture_logs

from mailrunner.app import App
from mailrunner.config import config_from_mapping
from mailrunner.errors import ConfigError
from support.server import LOOPS, RunningServer, on_loop
from support.tls import connection_lost, implicit_port, self_signed, trusting
from support.waiting import WAIT_SECONDS, wait_until

MESSAGE = b"Subject: auth\r\nFrom: a@example.com\r\n\r\nbody\r\n"
ALICE_PASSWORD = "correct horse"
Start = Callable[..., RunningServer]


def hashed(password: str) -> str:
    """The cheapest bcrypt cost keeps the tests fast; the server reads any cost."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plain(user: str, password: bytes) -> str:
    """AUTH PLAIN's argument: the mechanism and the initial response."""
    return "PLAIN " + b64(b"\0" + user.encode() + b"\0" + password)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"# test users\nalice:{hashed(ALICE_PASSWORD)}\n")
    return path


@pytest.fixture
def verifying(start_server: Start, credentials: Path, certificate: tuple[Path, Path]) -> Start:
    """Servers in verify mode with STARTTLS and an implicit-TLS listener; `auth` and `loop`
    adjust them, the rest goes to `smtp`."""

    def start(*, loop: str = "asyncio", auth: dict[str, Any] | None = None, **smtp: Any) -> Any:
        tls = {
            "cert_file": str(certificate[0]),
            "key_file": str(certificate[1]),
            "implicit_addr": "127.0.0.1:0",
        }
        return start_server(
            server=on_loop(loop),
            smtp={
                "auth": {"mode": "verify", "credentials_file": str(credentials), **(auth or {})},
                "tls": tls,
                **smtp,
            },
        )

    return start


def starttls_client(server: RunningServer, certificate: tuple[Path, Path]) -> smtplib.SMTP:
    client = smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS)
    client.starttls(context=trusting(certificate[0]))
    client.ehlo("client.example")
    return client


def login_code(server: RunningServer, user: str, password: str, **smtp: Any) -> int:
    """The code smtplib's login ends with, over a plain session (`allow_insecure` servers)."""
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        try:
            return client.login(user, password)[0]
        except smtplib.SMTPAuthenticationError as error:
            return error.smtp_code


@pytest.mark.parametrize("loop", LOOPS)
def test_smtplib_logs_in_after_starttls_and_the_event_says_verified_without_the_password(
    verifying: Start, certificate: tuple[Path, Path], loop: str
) -> None:
    server = verifying(loop=loop)
    with starttls_client(server, certificate) as client:
        assert client.login("alice", ALICE_PASSWORD) == (235, b"2.7.0 Authentication successful")
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"] == {
        "attempted": True,
        "mechanism": "PLAIN",
        "username": "alice",
        "password": None,
        "verified": True,
    }
    assert " with ESMTPSA id " in event["message"]["headers"]["Received"][0]
    assert ALICE_PASSWORD not in repr(event)


@pytest.mark.parametrize("loop", LOOPS)
def test_aiosmtplib_logs_in_on_the_implicit_port_and_a_wrong_password_gets_535(
    verifying: Start, certificate: tuple[Path, Path], loop: str
) -> None:
    server = verifying(loop=loop)

    async def session(password: str) -> int:
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=implicit_port(server),
            use_tls=True,
            tls_context=trusting(certificate[0]),
            timeout=WAIT_SECONDS,
        )
        await client.connect()
        try:
            code = (await client.login("alice", password)).code
            await client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        except aiosmtplib.SMTPAuthenticationError as error:
            code = error.code
        protocol = client.protocol
        await client.quit()
        await connection_lost(protocol)
        return code

    assert asyncio.run(session("wrong")) == 535
    assert asyncio.run(session(ALICE_PASSWORD)) == 235
    (event,) = server.delivery.wait_for(1)
    assert (event["authentication"]["username"], event["authentication"]["verified"]) == (
        "alice",
        True,
    )


@pytest.mark.parametrize("loop", LOOPS)
def test_smtp_ssl_on_the_implicit_port_offers_auth_and_refuses_an_unknown_user(
    verifying: Start, certificate: tuple[Path, Path], loop: str
) -> None:
    server = verifying(loop=loop)
    context = trusting(certificate[0])
    with smtplib.SMTP_SSL(
        server.host, implicit_port(server), context=context, timeout=WAIT_SECONDS
    ) as client:
        client.ehlo("client.example")
        assert client.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("mallory", ALICE_PASSWORD)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
        assert client.login("alice", ALICE_PASSWORD)[0] == 235


def test_without_tls_auth_is_not_offered_and_gets_538(verifying: Start) -> None:
    server = verifying()
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", plain("alice", ALICE_PASSWORD.encode())) == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"] is None


def test_allow_insecure_offers_and_checks_auth_in_the_clear(verifying: Start) -> None:
    server = verifying(auth={"allow_insecure": True})
    assert login_code(server, "alice", "wrong") == 535
    assert login_code(server, "alice", ALICE_PASSWORD) == 235
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        as_herself = b64(b"alice\0alice\0" + ALICE_PASSWORD.encode())
        assert client.docmd("AUTH", "PLAIN " + as_herself)[0] == 235, "authzid = user is fine"


def test_required_refuses_mail_rcpt_and_data_before_auth_with_530(verifying: Start) -> None:
    server = verifying(auth={"required": True, "allow_insecure": True})
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        required = (530, b"5.7.0 Authentication required")
        assert client.mail("a@example.com") == required
        assert client.rcpt("b@example.com") == required
        assert client.docmd("DATA") == required
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
        assert client.mail("a@example.com") == required, "a failed AUTH authenticates nobody"
        assert client.login("alice", ALICE_PASSWORD)[0] == 235
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
        assert client.docmd("AUTH", "PLAIN") == (503, b"5.5.1 Already authenticated")
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"]["verified"] is True


def test_a_failed_auth_is_recorded_as_unverified_without_the_password(verifying: Start) -> None:
    server = verifying(auth={"allow_insecure": True})
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert client.docmd("AUTH", plain("alice", b"nope"))[0] == 535
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"] == {
        "attempted": True,
        "mechanism": "PLAIN",
        "username": "alice",
        "password": None,
        "verified": False,
    }


def test_bad_input_gets_501_or_535_and_the_session_goes_on(verifying: Start) -> None:
    server = verifying(auth={"allow_insecure": True})
    right = ALICE_PASSWORD.encode()
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert client.docmd("AUTH", "PLAIN not-base64!") == (501, b"5.5.2 Cannot decode base64")
        assert client.docmd("AUTH", plain("", right))[0] == 535, "empty user"
        assert client.docmd("AUTH", plain("alice", b""))[0] == 535, "empty password"
        assert client.docmd("AUTH", "PLAIN " + b64(b"bob\0alice\0" + right))[0] == 535, "as bob"
        assert client.docmd("AUTH", "PLAIN " + b64(b"alice\0alice\0" + right + b"x"))[0] == 535
        over = right + b"x" * (73 - len(right))
        assert client.docmd("AUTH", plain("alice", over))[0] == 535, "73 bytes"
        # a 10 KB password as LOGIN's answer: read to the end of its line, refused
        assert client.docmd("AUTH", f"LOGIN {b64(b'alice')}")[0] == 334
        assert client.docmd(b64(b"p" * 10240)) == (535, b"5.7.8 Authentication credentials invalid")
        assert client.noop()[0] == 250, "the rest of the long line is not read as commands"
        assert client.login("alice", ALICE_PASSWORD)[0] == 235


def test_a_10_kb_password_through_smtplib_login_ends_in_535(verifying: Start) -> None:
    """smtplib sends PLAIN's initial response on the command line (500: too long for one),
    then tries LOGIN, whose answer line is read and refused."""
    server = verifying(auth={"allow_insecure": True})
    assert login_code(server, "alice", "p" * 10240) == 535
    assert login_code(server, "alice", ALICE_PASSWORD) == 235


def test_one_failure_too_many_gets_421_and_closes_the_connection(verifying: Start) -> None:
    server = verifying(auth={"allow_insecure": True, "max_failures": 2}, limit_loopback=True)
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        for _ in range(2):
            assert client.docmd("AUTH", plain("alice", b"wrong"))[0] == 535
        code, text = client.docmd("AUTH", plain("alice", b"wrong"))
        assert code == 421
        assert b"4.7.0" in text
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        code, _ = client.docmd("AUTH", plain("alice", ALICE_PASSWORD.encode()))
        assert code == 421, "the address stays locked out for the minute, right password or not"


def test_loopback_is_exempt_from_the_lockout_by_default(verifying: Start) -> None:
    server = verifying(auth={"allow_insecure": True, "max_failures": 1})
    for _ in range(3):
        assert login_code(server, "alice", "wrong") == 535
    assert login_code(server, "alice", ALICE_PASSWORD) == 235


def test_a_changed_file_is_read_again(verifying: Start, credentials: Path) -> None:
    server = verifying(auth={"allow_insecure": True})
    assert login_code(server, "bob", "bob's") == 535
    bob = "bob:" + hashed("bob's")
    credentials.write_text(f"alice:{hashed(ALICE_PASSWORD)}\n{bob}\n")
    wait_until(lambda: login_code(server, "bob", "bob's") == 235, "bob's login")
    credentials.write_text(f"{bob}\n")
    wait_until(lambda: login_code(server, "alice", ALICE_PASSWORD) == 535, "alice removed")


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as captured:
        yield captured


def logged(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in list(logs) if entry["event"].startswith(event)]


def test_an_unusable_file_keeps_the_last_good_users(
    verifying: Start, credentials: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    server = verifying(auth={"allow_insecure": True})

    def noticed(count: int) -> Callable[[], bool]:
        def check() -> bool:
            assert login_code(server, "alice", ALICE_PASSWORD) == 235, "the last good users"
            return len(logged(logs, "credentials file unusable")) == count

        return check

    credentials.write_text("alice has no colon\n")
    wait_until(noticed(1), "the invalid file to be noticed")
    credentials.unlink()
    wait_until(noticed(2), "the removal to be noticed")
    first, second = logged(logs, "credentials file unusable")
    assert "line 1" in first["reason"]
    assert "cannot read" in second["reason"]


def test_plain_passwords_work_and_are_warned_about_once_per_user_without_the_secret(
    verifying: Start, credentials: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    credentials.write_text("carol:{PLAIN}s3cret-carol\ndave:{PLAIN}s3cret-dave\n")
    server = verifying(auth={"allow_insecure": True})
    warnings = logged(logs, "credentials file holds a plain-text password")
    assert sorted(entry["user"] for entry in warnings) == ["carol", "dave"]
    assert login_code(server, "carol", "s3cret-carol") == 235
    assert login_code(server, "carol", "s3cret-dave") == 535
    assert "s3cret" not in repr(list(logs))


def test_a_missing_credentials_file_stops_the_start_with_a_config_error(tmp_path: Path) -> None:
    config = config_from_mapping(
        {
            "data_dir": str(tmp_path / "data"),
            "smtp": {
                "addr": "127.0.0.1:0",
                "auth": {"mode": "verify", "credentials_file": str(tmp_path / "absent")},
            },
        },
        "test",
    )
    with pytest.raises(ConfigError, match=r"smtp\.auth\.credentials_file: cannot read .*absent"):
        App(config, "test")


def test_a_raw_client_cannot_get_a_password_echoed_or_logged(
    verifying: Start, logs: list[MutableMapping[str, Any]]
) -> None:
    server = verifying(auth={"allow_insecure": True})
    with socket.create_connection((server.host, server.port), timeout=WAIT_SECONDS) as raw:
        stream = raw.makefile("rwb")
        stream.readline()
        stream.write(f"EHLO x\r\nAUTH LOGIN {b64(b'alice')}\r\n".encode())
        stream.flush()
        while not stream.readline().startswith(b"334"):
            pass
        stream.write(b64(b"hunter2-secret").encode() + b"\r\n")
        stream.flush()
        assert stream.readline().startswith(b"535 5.7.8")
    assert "hunter2" not in repr(list(logs))


def test_the_connections_api_shows_a_verified_user_and_tls_but_never_a_refused_user(
    verifying: Start, certificate: tuple[Path, Path]
) -> None:
    server = verifying()
    with starttls_client(server, certificate) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("mallory", "guess")
        (refused,) = server.app.smtp.connections
        assert (refused.auth_user, refused.tls) == (None, True)
        client.login("alice", ALICE_PASSWORD)
        (verified,) = server.app.smtp.connections
        assert (verified.auth_user, verified.tls) == ("alice", True)


@pytest.fixture
def fifo_unblocked(credentials: Path) -> Iterator[None]:
    """Wakes a thread stuck opening the FIFO the test puts in the file's place (only a server
    without the fix has one), so the test process can still exit."""
    yield
    with contextlib.suppress(OSError):  # ENXIO: no reader is waiting, nothing to wake
        os.close(os.open(credentials, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.usefixtures("fifo_unblocked")
def test_a_file_replaced_by_a_fifo_non_utf8_text_or_a_directory_keeps_the_last_good_users(
    verifying: Start, credentials: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """A FIFO (or a symlink to one) would block the thread that reads the file forever, and
    every AUTH after it: the file is read only if it is a regular file."""
    server = verifying(auth={"allow_insecure": True})
    credentials.unlink()
    os.mkfifo(credentials)

    def noticed(count: int) -> Callable[[], bool]:
        def check() -> bool:
            assert login_code(server, "alice", ALICE_PASSWORD) == 235, "the last good users"
            return len(logged(logs, "credentials file unusable")) == count

        return check

    wait_until(noticed(1), "the FIFO to be noticed")
    credentials.unlink()
    credentials.write_bytes(b"# users\nalice:{PLAIN}zq-secr\xe9t\n")
    wait_until(noticed(2), "the non-UTF-8 line to be noticed")
    credentials.unlink()
    credentials.mkdir()
    wait_until(noticed(3), "the directory to be noticed")
    credentials.rmdir()
    fifo, latin1, directory = logged(logs, "credentials file unusable")
    assert "not a regular file" in fifo["reason"]
    assert latin1["reason"].endswith("line 2: not UTF-8")
    assert directory["reason"] == f"cannot read {credentials}: Is a directory"
    assert "zq-secr" not in repr(list(logs))


def uncheckable(hash_: str) -> list[str]:
    """Hashes of the right shape that bcrypt cannot check: a cost beyond its range, a salt
    whose last character has bits set that a salt never has."""
    return [hash_[:4] + "99" + hash_[6:], hash_[:28] + "z" + hash_[29:]]


@pytest.mark.parametrize("which", [0, 1], ids=["cost 99", "bad salt"])
def test_a_hash_bcrypt_cannot_check_is_an_unusable_file_not_a_broken_auth(
    verifying: Start, credentials: Path, logs: list[MutableMapping[str, Any]], which: int
) -> None:
    """Such a line used to pass the file's check and raise at every AUTH (or when the file's
    stand-in hash was made): 451 for every user, the last good users unused."""
    server = verifying(auth={"allow_insecure": True})
    bad = uncheckable(hashed("bob's"))[which]
    credentials.write_text(f"alice:{hashed(ALICE_PASSWORD)}\nbob:{bad}\n")

    def noticed() -> bool:
        assert login_code(server, "alice", ALICE_PASSWORD) == 235, "the last good users"
        return bool(logged(logs, "credentials file unusable"))

    wait_until(noticed, "the uncheckable hash to be noticed")
    (entry,) = logged(logs, "credentials file unusable")
    assert "line 2: 'bob' has neither a bcrypt hash" in entry["reason"]


def test_a_right_password_queued_behind_a_burst_of_guesses_is_locked_out_too(
    verifying: Start, credentials: Path
) -> None:
    """Guesses on parallel connections all pass the lock-out check before the first is
    decided; each waits its turn for bcrypt (cost 10: about 60 ms each here), so the right
    one, last in line, is decided only after the lock-out."""
    slow = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    credentials.write_text(f"alice:{slow}\n")
    server = verifying(auth={"allow_insecure": True, "max_failures": 2}, limit_loopback=True)
    guesses = [b"wrong-1", b"wrong-2", b"wrong-3", b"wrong-4", ALICE_PASSWORD.encode()]
    clients = [socket.create_connection((server.host, server.port), WAIT_SECONDS) for _ in guesses]
    try:
        streams = [client.makefile("rwb") for client in clients]
        for stream in streams:
            assert stream.readline().startswith(b"220")
            stream.write(b"EHLO client.example\r\n")
            stream.flush()
            while stream.readline()[3:4] == b"-":
                pass
        for stream, guess in zip(streams, guesses, strict=True):
            stream.write(f"AUTH {plain('alice', guess)}\r\n".encode())
            stream.flush()
        codes = [stream.readline()[:3] for stream in streams]
    finally:
        for client in clients:
            client.close()
    assert codes[:2] == [b"535", b"535"]
    assert codes[-1] == b"421", codes


def test_verify_without_a_certificate_or_allow_insecure_is_warned_about_at_start(
    start_server: Start, credentials: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    auth = {"mode": "verify", "credentials_file": str(credentials)}
    server = start_server(smtp={"auth": auth})
    (warning,) = logged(logs, "smtp.auth: credentials are checked only over TLS")
    assert warning["mode"] == "verify"
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert client.docmd("AUTH", plain("alice", ALICE_PASSWORD.encode()))[0] == 538
    allowed = start_server(smtp={"auth": {**auth, "allow_insecure": True}})
    assert len(logged(logs, "smtp.auth: credentials are checked only over TLS")) == 1
    assert login_code(allowed, "alice", ALICE_PASSWORD) == 235
