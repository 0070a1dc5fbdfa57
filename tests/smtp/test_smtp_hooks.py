"""`smtp.hooks` end to end: smtplib, aiosmtplib and swaks against a server whose SMTP pool runs
`tests/pool/hooks_worker.py` (written with the SDK). Each stage's refusal reaches the client
with the worker's code and text; refusals are per recipient; a refused message goes nowhere
(on the Jobs path it is never pushed and its attachment folder goes); fault rules act first;
a hook that overruns `smtp.hooks_timeout` answers 451 4.3.0, or accepts if so configured.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from support.faults import add_fault
from support.server import RunningServer
from support.waiting import WAIT_SECONDS

WORKER = Path(__file__).parents[1] / "pool" / "hooks_worker.py"
ALL_STAGES = ["connect", "helo", "mail", "rcpt", "data"]
Start = Callable[..., RunningServer]


@pytest.fixture
def hooked(start_server: Start, tmp_path: Path) -> Callable[..., RunningServer]:
    """A server whose hooks run the test worker; `env` reaches the worker, the rest `smtp`."""

    def start(env: dict[str, str] | None = None, record: bool = True, **smtp: Any) -> RunningServer:
        return start_server(
            record=record,
            server={
                "command": [sys.executable, str(WORKER)],
                "env": {"HOOKS_LOG": str(tmp_path / "hooks.log"), **(env or {})},
            },
            smtp={
                "hooks": ALL_STAGES,
                "pool": {"num_workers": 1, "allocate_timeout": 5, "destroy_timeout": 2},
                **smtp,
            },
        )

    return start


def asked(tmp_path: Path) -> list[str]:
    log = tmp_path / "hooks.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def filler(size: int) -> bytes:
    """`size` bytes of body text in lines SMTP allows."""
    return b"\r\n".join(b"x" * 70 for _ in range(size // 70 + 1))


def message(subject: str = "hello", size: int = 10) -> bytes:
    return f"Subject: {subject}\r\nFrom: a@example.com\r\n\r\n".encode() + filler(size)


def test_a_refused_recipient_is_left_out_and_the_message_goes_to_the_accepted_one(
    hooked: Callable[..., RunningServer],
) -> None:
    server = hooked()
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert client.mail("ann@example.com")[0] == 250
        assert client.rcpt("bob@example.com") == (550, b"5.1.1 No such user")
        assert client.rcpt("alice@example.com")[0] == 250
        code, _ = client.data(message())

    assert code == 250
    [event] = server.delivery.wait_for(1)
    assert event["envelope"]["to"] == ["alice@example.com"]


def test_a_blocked_sender_is_refused_and_the_session_goes_on(
    hooked: Callable[..., RunningServer],
) -> None:
    server = hooked()
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        assert client.mail("blocked@example.com") == (550, b"5.7.1 Sender blocked")
        assert client.rcpt("alice@example.com")[0] == 503, "no sender was accepted"
        assert client.mail("ann@example.com")[0] == 250
        assert client.rcpt("alice@example.com")[0] == 250
        assert client.data(message())[0] == 250

    [event] = server.delivery.wait_for(1)
    assert event["envelope"]["from"] == "ann@example.com"


def test_a_message_the_data_hook_refuses_is_not_delivered(
    hooked: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = hooked(env={"MAX_SIZE": "2000"})
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        client.mail("ann@example.com")
        client.rcpt("alice@example.com")
        refused = client.data(message(size=5000))
        client.mail("ann@example.com")
        client.rcpt("alice@example.com")
        accepted = client.data(message("small"))

    assert refused == (552, b"5.3.4 Message too big for this mailbox")
    assert accepted[0] == 250
    [event] = server.delivery.wait_for(1)
    assert event["message"]["subject"] == "small"
    assert asked(tmp_path) == [*ALL_STAGES, "mail", "rcpt", "data"]


def test_a_refused_connection_gets_the_hook_s_reply_instead_of_the_greeting(
    hooked: Callable[..., RunningServer],
) -> None:
    server = hooked(env={"REFUSE_CONNECT": "1"})
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS)

    assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.7.1 Not welcome")


def test_a_refused_helo_leaves_the_client_without_one(
    hooked: Callable[..., RunningServer],
) -> None:
    server = hooked()
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        assert client.ehlo("refused.example") == (550, b"5.7.1 Bad HELO")
        assert client.docmd("MAIL", "FROM:<ann@example.com>")[0] == 503
        assert client.helo("client.example")[0] == 250
        assert client.mail("ann@example.com")[0] == 250


def test_a_fault_rule_answers_before_the_hook_is_asked(
    hooked: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = hooked(faults_api=True)
    add_fault(server, stage="rcpt", reply="451 4.7.1 Injected", times=1)
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        client.mail("ann@example.com")
        assert client.rcpt("alice@example.com") == (451, b"4.7.1 Injected")

    assert "rcpt" not in asked(tmp_path), "the fault rule acts first; the hook is not asked"


@pytest.mark.parametrize(("on_error", "expected"), [("reject", 451), ("accept", 250)])
def test_a_hook_past_its_timeout_answers_451_or_accepts_and_the_next_stage_is_not_its(
    hooked: Callable[..., RunningServer], on_error: str, expected: int
) -> None:
    """`slow@` would be refused 550 after 3 s: past the 0.5 s timeout the worker is killed, so
    its 550 never answers `bob`'s successor `alice` either."""
    server = hooked(hooks_timeout="0.5s", hooks_on_error=on_error)
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        client.mail("ann@example.com")
        slow = client.rcpt("slow@example.com")
        assert client.rcpt("alice@example.com")[0] == 250

    assert slow[0] == expected, slow
    if expected == 451:
        assert slow[1] == b"4.3.0 Temporary failure, try again later"


def test_aiosmtplib_sends_to_the_accepted_recipients_and_reports_the_refused(
    hooked: Callable[..., RunningServer],
) -> None:
    server = hooked()
    mail = EmailMessage()
    mail["From"], mail["Subject"] = "ann@example.com", "async"
    mail.set_content("hi")

    refused, _ = asyncio.run(
        aiosmtplib.send(
            mail,
            hostname=server.host,
            port=server.port,
            recipients=["bob@example.com", "alice@example.com"],
            timeout=WAIT_SECONDS,
        )
    )

    assert {rcpt: reply.code for rcpt, reply in refused.items()} == {"bob@example.com": 550}
    [event] = server.delivery.wait_for(1)
    assert event["envelope"]["to"] == ["alice@example.com"]


@pytest.mark.swaks
def test_swaks_to_bob_and_alice_delivers_to_alice_only(
    hooked: Callable[..., RunningServer], swaks: str
) -> None:
    server = hooked()
    result = subprocess.run(
        [
            swaks,
            "--server",
            f"{server.host}:{server.port}",
            "--from",
            "ann@example.com",
            "--to",
            "bob@example.com,alice@example.com",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS * 3,
        check=False,
    )

    assert "<** 550 5.1.1 No such user" in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    [event] = server.delivery.wait_for(1)
    assert event["envelope"]["to"] == ["alice@example.com"]


def test_the_delivery_worker_may_refuse_a_message_with_its_own_reply(
    hooked: Callable[..., RunningServer],
) -> None:
    server = hooked(record=False, use_jobs=False, hooks=["rcpt"])
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        client.mail("ann@example.com")
        client.rcpt("alice@example.com")
        refused = client.data(message("spam"))
        client.mail("ann@example.com")
        client.rcpt("alice@example.com")
        accepted = client.data(message("ham"))

    assert refused == (554, b"5.7.1 Spam")
    assert accepted[0] == 250


ATTACHED = (
    b"From: a@example.com\r\nSubject: {subject}\r\nContent-Type: multipart/mixed; boundary=b\r\n"
    b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\n"
    b"Content-Disposition: attachment; filename=a.pdf\r\n\r\n{pdf}\r\n--b--\r\n"
)


def test_on_the_jobs_path_a_refused_message_is_never_pushed_and_its_files_go(
    hooked: Callable[..., RunningServer],
) -> None:
    server = hooked(
        env={"MAX_SIZE": "2000"},
        record=False,
        hooks=["data"],
        attachment_storage={"mode": "tempfile"},
    )
    big = ATTACHED.replace(b"{subject}", b"big").replace(b"{pdf}", b"%PDF" + filler(4000))
    small = ATTACHED.replace(b"{subject}", b"small").replace(b"{pdf}", b"%PDF")
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        refused = _send(client, big)
        accepted = _send(client, small)

    assert refused[0] == 552
    assert accepted[0] == 250
    jobs = server.call(server.app.jobs.peek("smtp-emails"))
    assert [json.loads(job.payload)["message"]["subject"] for job in jobs] == ["small"]
    folders = sorted(p.name for p in server.config.attachments_dir.iterdir() if p.is_dir())
    assert folders == [jobs[0].id], "only the pushed message keeps an attachment folder"


def _send(client: smtplib.SMTP, raw: bytes) -> tuple[int, bytes]:
    client.ehlo("client.example")
    client.mail("ann@example.com")
    client.rcpt("alice@example.com")
    return client.data(raw)
