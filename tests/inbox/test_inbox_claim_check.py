"""A claim-checked message (`auto`, over `claim_check_bytes`) in the inbox: its job carries
`raw_path`, not the raw bytes, so its folder waits for the inbox's job as for the other
pipelines', and the inbox keeps the message whole: raw download and attachments."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from inbox_api_support import InboxServer

from support.claim_check import ATTACHMENT, BIG, WORKER, consumed, send
from support.waiting import wait_until


def test_a_claim_checked_message_is_in_the_inbox_with_its_raw_bytes_and_attachment(
    start_inbox_server: Callable[..., InboxServer], tmp_path: Path
) -> None:
    log = tmp_path / "consumed.jsonl"
    inbox_server = start_inbox_server(
        server={"command": [sys.executable, str(WORKER)], "env": {"CLAIM_LOG": str(log)}},
        smtp={"attachment_storage": {"mode": "auto"}},
        jobs={"consume": ["smtp-emails"], "pool": {"num_workers": 1}},
    )
    server = inbox_server.server
    inbox_pipeline = server.config.inbox.pipeline
    server.call(server.app.jobs.pause(inbox_pipeline))

    code, event_id = send(server, BIG)
    assert code == 250
    job = consumed(log, event_id)
    assert job["raw_path"] is None, "smtp-emails did not ask for include_raw"
    folder = Path(job["attachments"][0]["path"]).parent
    assert folder.is_dir(), "acked by smtp-emails, the folder waits for the inbox's job"

    server.call(server.app.jobs.resume(inbox_pipeline))
    wait_until(lambda: inbox_server.ok("GET", "/messages")["total"] == 1, "the inbox to keep it")
    (listed,) = inbox_server.ok("GET", "/messages")["messages"]
    raw = inbox_server.request("GET", f"/messages/{listed['id']}/raw")
    assert (raw.status, raw.body) == (200, BIG)
    attachment = inbox_server.request("GET", f"/messages/{listed['id']}/attachments/0")
    assert (attachment.status, attachment.body) == (200, ATTACHMENT)
    wait_until(lambda: not folder.exists(), "the folder to go once the inbox stored it")


def test_a_claim_checked_message_waiting_for_the_inbox_is_kept_after_a_restart_in_tempfile_mode(
    start_inbox_server: Callable[..., InboxServer], tmp_path: Path
) -> None:
    """`auto` turned back to `tempfile` while the inbox's job of a claim-checked message still
    waits (its `raw_path` in this server's folder): the restarted inbox reads the file and
    keeps the message whole instead of failing the job."""
    shared = str(tmp_path / "shared")
    first = start_inbox_server(data_dir=shared, smtp={"attachment_storage": {"mode": "auto"}})
    inbox_pipeline = first.server.config.inbox.pipeline
    first.server.call(first.server.app.jobs.pause(inbox_pipeline))
    code, event_id = send(first.server, BIG)
    assert code == 250
    inbox_jobs = first.server.app.jobs.pipeline(inbox_pipeline).driver

    def waiting() -> bool:
        """Queued, not leased: a consumer that took it before the pause gives it back."""
        stat = first.server.call(inbox_jobs.stat())
        return (stat.queued, stat.reserved) == (1, 0)

    wait_until(waiting, "the inbox's job to wait in its paused pipeline")
    first.server.stop()

    second = start_inbox_server(data_dir=shared, smtp={"attachment_storage": {"mode": "tempfile"}})
    wait_until(lambda: second.ok("GET", "/messages")["total"] == 1, "the inbox to keep it")
    raw = second.request("GET", f"/messages/{event_id}/raw")
    assert (raw.status, raw.body) == (200, BIG)
    failed = second.server.call(second.server.app.jobs.pipeline(inbox_pipeline).driver.failed(10))
    assert failed == [], "the inbox's job failed"
