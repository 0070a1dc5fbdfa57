"""The one-line job summary of `jobs peek`: emails by envelope and subject, else payload text."""

from __future__ import annotations

import asyncio

import pytest

from mailrunner.cli.remote import SUMMARY_LIMIT, job_summary
from mailrunner.worker import EMAIL_JOB
from support.events import BUILDER, arrival

WITH_ATTACHMENT = (
    b"Subject: Quarterly report\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
    b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=q.pdf\r\n\r\n"
    b"%PDF\r\n--b--\r\n"
)


def test_an_email_job_shows_its_envelope_subject_and_attachments() -> None:
    event = asyncio.run(BUILDER.build(arrival(), WITH_ATTACHMENT))
    job = {"job": EMAIL_JOB, "payload": event.to_json().decode()}
    assert job_summary(job) == (
        "a@example.com → b@example.com · 'Quarterly report' · 1 attachment(s)"
    )


@pytest.mark.parametrize(
    ("job", "summary"),
    [
        ({"job": "cli.job", "payload": '{"do":\n  "ack"}'}, '{"do": "ack"}'),
        ({"job": "cli.job", "payload": "x" * 500}, "x" * (SUMMARY_LIMIT - 1) + "…"),
        ({"job": "cli.job", "payload_base64": "AAEC"}, "(binary payload)"),
        ({"job": EMAIL_JOB, "payload": "not an event"}, "not an event"),
    ],
)
def test_other_jobs_show_their_payload_on_one_line(job: dict[str, str], summary: str) -> None:
    assert job_summary(job) == summary
