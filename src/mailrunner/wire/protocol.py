"""Names both ends of the relay must spell the same way, whatever the frame kind.

Per frame kind, the payload codecs live beside this module (`smtp.py`, `jobs.py`).
"""

from __future__ import annotations

from typing import Final

__all__ = ["EMAIL_JOB", "EVENT_NAME", "EVENT_VERSION", "JOBS_MODE", "MODE_ENV", "SMTP_MODE"]

MODE_ENV: Final = "MAILRUNNER_MODE"
"""Environment variable the pool sets in every worker it starts: which pool that is."""
SMTP_MODE: Final = "smtp"
"""`MODE_ENV` of the legacy SMTP worker pool (`smtp.use_jobs: false`)."""
JOBS_MODE: Final = "jobs"
"""`MODE_ENV` of the jobs worker pool (`jobs.consume`)."""

EVENT_NAME: Final = "EMAIL_RECEIVED"
"""The `event` field of every accepted message's JSON."""
EVENT_VERSION: Final = 1
"""The `version` field: the event shape the server writes and the SDK reads."""

EMAIL_JOB: Final = "smtp.email"
"""The job name the SMTP server gives every accepted message."""
