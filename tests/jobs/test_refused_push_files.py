"""A message whose push was refused leaves no attachment files behind.

The client gets 451 and sends the message again, so files kept for it would only pile up in
the attachments folder. Here the refusal is certain and in process: a memory pipeline that
holds one job at most refuses the second message, while the first one's files stay with its
job (a refused push from a remote node is in tests/jobs/test_push_outcome_unknown.py).
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

from support.sample_mail import WITH_ATTACHMENT
from support.server import RunningServer


def send(server: RunningServer) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        return client.data(WITH_ATTACHMENT)


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (attachments and the folders' markers) with its content."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_a_push_refused_by_a_full_pipeline_answers_451_and_removes_only_its_own_files(
    start_server: Callable[..., RunningServer],
) -> None:
    memory = {"driver": "memory", "config": {"max_queued": 1}}
    server = start_server(
        record=False,
        smtp={"attachment_storage": {"mode": "tempfile"}},
        jobs={"pipelines": {"smtp-emails": memory}},
    )
    folder = server.config.attachments_dir
    assert send(server)[0] == 250
    stored = files_under(folder)
    assert b"DATA" in stored.values(), f"the stored job's attachment is not on disk: {stored}"
    reply = send(server)
    assert reply[0] == 451, f"a full pipeline answered {reply}"
    assert files_under(folder) == stored, "the refused message left files behind"
