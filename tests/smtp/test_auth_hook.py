"""`smtp.auth.mode: hook` end to end: a real worker process (`auth_worker.py`, written with
the SDK) decides on AUTH in its `on_auth`; its ACCEPT authenticates the session, its reply is
the client's; the password is in the `auth` stage's context only; a failing hook refuses
(451), whatever `hooks_on_error` says. The SMTP pool starts for the auth stage alone, on the
Jobs path too.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from support.server import LOOPS, RunningServer, on_loop
from support.tls import connection_lost, self_signed, trusting
from support.waiting import WAIT_SECONDS

WORKER = Path(__file__).parent / "auth_worker.py"
MESSAGE = b"Subject: hook auth\r\nFrom: a@example.com\r\n\r\nbody\r\n"
Start = Callable[..., RunningServer]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def hooked(start_server: Start, tmp_path: Path, certificate: tuple[Path, Path]) -> Start:
    """Servers whose AUTH asks the test worker (with STARTTLS offered); `auth` adjusts
    `smtp.auth`, the rest goes to `smtp`."""

    def start(
        *,
        loop: str = "asyncio",
        auth: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        **smtp: Any,
    ) -> Any:
        return start_server(
            server={
                **on_loop(loop),
                "command": [sys.executable, str(WORKER)],
                "env": {"AUTH_LOG": str(tmp_path / "auth.log"), **(env or {})},
            },
            smtp={
                "auth": {"mode": "hook", **(auth or {})},
                "tls": {"cert_file": str(certificate[0]), "key_file": str(certificate[1])},
                "pool": {"num_workers": 1, "allocate_timeout": 5, "destroy_timeout": 2},
                **smtp,
            },
        )

    return start


def contexts(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "auth.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line) for line in lines]


def login_code(server: RunningServer, user: str, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        try:
            return client.login(user, password)
        except smtplib.SMTPAuthenticationError as error:
            return error.smtp_code, error.smtp_error


@pytest.mark.parametrize("loop", LOOPS)
def test_the_workers_accept_logs_in_after_starttls_and_only_the_auth_stage_sees_the_password(
    hooked: Start, certificate: tuple[Path, Path], tmp_path: Path, loop: str
) -> None:
    server = hooked(loop=loop, hooks=["mail"])
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.starttls(context=trusting(certificate[0]))
        client.ehlo("client.example")
        assert client.login("alice", "wonderland")[0] == 235
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"] == {
        "attempted": True,
        "mechanism": "PLAIN",
        "username": "alice",
        "password": None,
        "verified": True,
    }
    auth, mail = contexts(tmp_path)
    assert auth == {
        "stage": "auth",
        "username": "alice",
        "verified": False,
        "password": "wonderland",
        "repr_has_password": False,
    }
    assert mail["stage"] == "mail"
    assert (mail["username"], mail["verified"], mail["password"]) == ("alice", True, None)


@pytest.mark.parametrize("loop", LOOPS)
def test_aiosmtplib_gets_the_workers_535_over_starttls(
    hooked: Start, certificate: tuple[Path, Path], loop: str
) -> None:
    server = hooked(loop=loop)

    async def session() -> int:
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            start_tls=True,
            tls_context=trusting(certificate[0]),
            timeout=WAIT_SECONDS,
        )
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await client.login("alice", "not wonderland")
        protocol = client.protocol
        await client.quit()
        await connection_lost(protocol)
        return refused.value.code

    assert asyncio.run(session()) == 535


def test_without_tls_auth_gets_538_and_the_worker_is_not_asked(
    hooked: Start, tmp_path: Path
) -> None:
    server = hooked()
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=")[0] == 538
    assert contexts(tmp_path) == []


def test_the_workers_own_reply_reaches_the_client(hooked: Start) -> None:
    server = hooked(auth={"allow_insecure": True})
    assert login_code(server, "temp", "x") == (454, b"4.7.0 Temporary authentication failure")
    assert login_code(server, "mallory", "x") == (
        535,
        b"5.7.8 Authentication credentials invalid",
    )


def test_a_failing_hook_refuses_even_when_hooks_on_error_accepts(hooked: Start) -> None:
    server = hooked(auth={"allow_insecure": True}, hooks_on_error="accept")
    assert login_code(server, "raise", "x") == (451, b"4.3.0 Temporary failure, try again later")
    assert login_code(server, "alice", "wonderland")[0] == 235, "the worker keeps serving"


def test_required_auth_with_the_worker_deciding(hooked: Start) -> None:
    server = hooked(auth={"allow_insecure": True, "required": True})
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.com") == (530, b"5.7.0 Authentication required")
        client.login("alice", "wonderland")
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    (event,) = server.delivery.wait_for(1)
    assert event["authentication"]["verified"] is True


def test_worker_refusals_count_toward_the_lockout(hooked: Start) -> None:
    server = hooked(auth={"allow_insecure": True, "max_failures": 1}, limit_loopback=True)
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert client.docmd("AUTH", "PLAIN AG1hbGxvcnkAeA==")[0] == 535  # mallory, x
        code, text = client.docmd("AUTH", "PLAIN AG1hbGxvcnkAeA==")
        assert code == 421
        assert b"4.7.0" in text


def test_a_verdict_slower_than_the_read_timeout_still_reaches_the_client(hooked: Start) -> None:
    """The client waits for the server, not the other way round: no 421 timeout meanwhile."""
    server = hooked(auth={"allow_insecure": True}, env={"SLOW_SECONDS": "1.5"}, read_timeout=0.5)
    assert login_code(server, "slow", "wonderland")[0] == 235
