"""A jobs-pool worker for the claim-check tests, written with the SDK as a consumer would be:
for each email it appends one JSON line to $CLAIM_LOG saying what the job carried and what
the files held, then acks (which frees the files)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

from mailrunner.worker import Consumer
from mailrunner.worker.event import Email

LOG = os.environ["CLAIM_LOG"]


def file_mode(path: str | None) -> int | None:
    return None if path is None else stat.S_IMODE(os.stat(path).st_mode)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def account(payload: bytes) -> dict[str, object]:
    email = Email.from_json(payload)
    raw_path = email.message.raw_path
    carries_raw = email.message.raw is not None or raw_path is not None
    return {
        "id": email.id,
        "payload_bytes": len(payload),
        "raw_inline": email.message.raw is not None,
        "raw_path": raw_path,
        "raw_mode": file_mode(raw_path),
        "raw_links": None if raw_path is None else os.stat(raw_path).st_nlink,
        "raw_sha256": sha256(email.raw_bytes()) if carries_raw else None,
        "attachments": [
            {
                "inline": attachment.content is not None,
                "path": attachment.path,
                "mode": file_mode(attachment.path),
                "size": attachment.size,
                "sha256": sha256(attachment.read()),
            }
            for attachment in email.attachments
        ],
    }


consumer = Consumer()
while (task := consumer.wait_task()) is not None:
    line = json.dumps(account(task.payload))
    with open(LOG, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    task.ack()
