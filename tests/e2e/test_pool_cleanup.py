"""The worker-pool path's age cleanup, through a running server.

With `smtp.use_jobs: false` no job says when an email's attachment folder is done with, so
the server deletes its own folders once they are older than `cleanup_after`; a folder
younger than that is still in use by a worker and must stay.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support.sample_mail import WITH_ATTACHMENT, accepted_id
from support.server import RunningServer
from support.waiting import wait_until

POOL_WORKER = Path(__file__).parent.parent / "pool" / "behaviour_worker.py"
CLEANUP_AFTER = 10.0
"""Seconds; the sweep runs every CLEANUP_AFTER / 2, so the fresh folder is checked by a sweep
while it is at most about half that old, and an old folder goes within WAIT_SECONDS."""


def send(server: RunningServer) -> str:
    """Send an email with one attachment; returns the event id the 250 reply names."""
    return accepted_id(server, WITH_ATTACHMENT)


def attachment(folder: Path) -> bytes:
    """The one attachment file in an event's folder (named `NNN-data.bin`)."""
    (path,) = folder.glob("*-data.bin")
    return path.read_bytes()


def test_age_cleanup_removes_an_old_folder_of_this_server_and_keeps_a_fresh_one(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    attachments = tmp_path / "attachments"
    server = start_server(
        record=False,
        server={"command": [sys.executable, str(POOL_WORKER)]},
        smtp={
            "use_jobs": False,
            "pool": {"num_workers": 1},
            "attachment_storage": {
                "mode": "tempfile",
                "temp_dir": str(attachments),
                "cleanup_after": CLEANUP_AFTER,
            },
        },
    )
    old = attachments / send(server)
    fresh = attachments / send(server)
    assert attachment(old) == b"DATA"
    assert attachment(fresh) == b"DATA"
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    wait_until(lambda: not old.exists(), "age cleanup to delete the server's old folder")
    assert fresh.is_dir(), "age cleanup deleted a folder younger than cleanup_after"
    assert attachment(fresh) == b"DATA"
