"""The claim-check tests' messages, their SMTP client and their reading of what the SDK
worker (`tests/e2e/claim_check_worker.py`) found in each job."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import smtplib
from pathlib import Path
from typing import Any

from support.server import RunningServer
from support.waiting import wait_until

TESTS = Path(__file__).parent.parent
WORKER = TESTS / "e2e" / "claim_check_worker.py"
"""Appends what each job carried to $CLAIM_LOG, then acks."""
ATTACHMENT = random.Random(15).randbytes(7_000_000)
"""Base64 in 76-character lines makes it 9.6 MB: with the text part, a 10 MB message."""
SMALL_JOB = 1024 * 1024


def mime(subject: str, attachment: bytes) -> bytes:
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (
        (
            f"From: a@example.com\r\nTo: b@example.com\r\nSubject: {subject}\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--b1\r\nContent-Type: application/octet-stream\r\n"
            'Content-Disposition: attachment; filename="data.bin"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + encoded
        + b"--b1--\r\n"
    )


BIG = mime("big", ATTACHMENT)
SMALL = mime("small", b"tiny attachment")
MEDIUM = mime("medium", ATTACHMENT[:500_000])
"""Over claim_check_bytes (256 KiB), under spool_bytes (1 MiB): claim-checked from memory."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def send(server: RunningServer, message: bytes) -> tuple[int, str]:
    """The reply to DATA and, when accepted, the event id it names."""
    return send_to(server.port, message, server.host)


def send_to(port: int, message: bytes, host: str = "127.0.0.1") -> tuple[int, str]:
    """`send` to a server by its port (one in a child process)."""
    with smtplib.SMTP(host, port, timeout=60) as client:
        client.ehlo("client.example")
        client.mail("a@example.com", [f"SIZE={len(message)}"])
        client.rcpt("b@example.com")
        code, reply = client.data(message)
    return code, reply.decode().rpartition(" ")[2]


def event_folders(server: RunningServer) -> list[Path]:
    folder = server.config.attachments_dir
    return sorted(folder.iterdir()) if folder.exists() else []


def spooled(server: RunningServer) -> list[str]:
    return sorted(os.listdir(server.app.spool.folder))


def consumed(log: Path, event_id: str) -> dict[str, Any]:
    """What the worker found in the job of `event_id`, once it has handled it."""
    found: list[dict[str, Any]] = []

    def handled() -> bool:
        lines = log.read_text().splitlines() if log.exists() else []
        found[:] = [entry for line in lines if (entry := json.loads(line))["id"] == event_id]
        return bool(found)

    wait_until(handled, f"the worker to handle {event_id}", 60)
    return found[0]
