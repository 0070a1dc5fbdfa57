"""examples/hooks.yaml as a user runs it: `mailrunner serve` with examples/hooks.py deciding the
replies (a recipient allow-list, a sender block list, a size refusal), met by swaks and smtplib."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from support.processes import ServeProcess
from support.waiting import WAIT_SECONDS, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def example(serve: Callable[..., ServeProcess]) -> ServeProcess:
    settings = yaml.safe_load((ROOT / "examples" / "hooks.yaml").read_text())
    settings["server"]["command"] = f"python {ROOT / 'examples' / 'hooks.py'}"
    return serve(**settings)


def delivered(server: ServeProcess) -> list[str]:
    return [line for line in server.logs().splitlines() if "worker output" in line]


@pytest.mark.swaks
def test_swaks_to_bob_and_alice_is_refused_for_bob_and_delivered_to_alice(
    example: ServeProcess, swaks: str
) -> None:
    result = subprocess.run(
        [
            swaks,
            "--server",
            f"127.0.0.1:{example.port}",
            "--from",
            "ann@example.com",
            "--to",
            "bob@example.com,alice@example.com",
            "--header",
            "Subject: allow-list",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS * 3,
        check=False,
    )

    assert "<** 550 5.1.1 No such user" in result.stdout, result.stdout
    assert "<-  250 2.0.0 OK: queued as" in result.stdout, result.stdout
    wait_until(lambda: bool(delivered(example)), "the example worker to print the email")
    [line] = delivered(example)
    assert "for alice@example.com: 'allow-list'" in line, line


def test_a_blocked_sender_and_an_oversized_message_are_refused(example: ServeProcess) -> None:
    big = b"Subject: big\r\n\r\n" + b"\r\n".join(b"x" * 998 for _ in range(1100))
    with smtplib.SMTP("127.0.0.1", example.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        blocked = client.mail("someone@junk.example")
        client.mail("ann@example.com")
        client.rcpt("carol@example.com")
        oversized = client.data(big)

    assert blocked == (550, b"5.7.1 Sender blocked")
    assert oversized == (552, b"5.3.4 Messages here are at most 1048576 bytes")
    assert delivered(example) == []
