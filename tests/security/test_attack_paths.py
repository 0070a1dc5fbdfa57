"""Attacks on the paths a running `mailrunner serve` deletes and the files it writes.

Job ids come from anyone who can reach the API, and `temp_dir` may be shared with other
programs: a folder goes only when it is an event folder this server wrote (a UUID-named real
directory under temp_dir holding a `.mailrunner` marker naming that id). Everything here runs
as an attacker would: jobs pushed through the API, mail sent over SMTP, files checked on disk.
"""

from __future__ import annotations

import base64
import json
import os
import smtplib
import stat
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from support.processes import ServeProcess
from support.waiting import wait_until

TESTS = Path(__file__).resolve().parents[1]
JOB_WORKER = TESTS / "jobs" / "job_worker.py"
POOL_WORKER = TESTS / "pool" / "behaviour_worker.py"
NAME_MAX = 255
CJK_NAME = "報告書" * 40 + ".pdf"
"""120 CJK characters: 360 bytes of UTF-8, more than a file name can hold."""
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(server: ServeProcess, method: str, path: str, body: Any = None) -> Any:
    """One management API call as a script makes it; raises on an error status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.api_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with _NO_PROXY.open(request, timeout=20) as response:
        return json.loads(response.read())


def push_email_job(server: ServeProcess, job_id: str, order: str) -> None:
    """A job named like the server's own email jobs; the payload tells the test worker what
    to answer (see tests/jobs/job_worker.py)."""
    job = {
        "id": job_id,
        "job": "smtp.email",
        "payload": json.dumps({"do": order}),
        "options": {"pipeline": "smtp-emails"},
    }
    api(server, "POST", "/jobs/push", {"job": job})


def victim(folder: Path) -> Path:
    """A directory somebody else owns, with a file in it."""
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("not mailrunner's")
    return folder


def hostile_ids(spool: Path, outside: Path, tag: str) -> dict[str, Path]:
    """Job ids that name a directory, and the directory each one names."""
    unmarked = str(uuid.uuid4())
    return {
        f"../{tag}-parent": victim(spool.parent / f"{tag}-parent"),
        str(outside / f"{tag}-absolute"): victim(outside / f"{tag}-absolute"),
        f"a/../../{tag}-dotdot": victim(spool.parent / f"{tag}-dotdot"),
        unmarked: victim(spool / unmarked),
    }


def send(port: int, message: EmailMessage | bytes) -> str:
    """Send over SMTP; returns the event id from the 250 reply."""
    raw = message if isinstance(message, bytes) else message.as_bytes()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("attacker.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, reply = client.data(raw)
    assert code == 250, f"expected 250, got {code} {reply!r}"
    return reply.decode().rsplit(" ", 1)[-1]


def with_attachment(filename: str, content: bytes = b"attached") -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "ok"
    message.set_content("see attached")
    message.add_attachment(content, "application", "octet-stream", filename=filename)
    return message


def with_long_filename(filename: str, content: bytes) -> bytes:
    """An attachment whose name is sent as mail clients send long names: RFC 2231
    continuations (`filename*0*`, `filename*1*`, ...), percent-encoded UTF-8."""
    encoded = filename.encode()
    pieces = [quote_from_bytes(encoded[i : i + 21], safe="") for i in range(0, len(encoded), 21)]
    pieces[0] = "utf-8''" + pieces[0]
    parameters = ";\r\n".join(f" filename*{n}*={piece}" for n, piece in enumerate(pieces))
    return (
        b"Subject: long name\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment;\r\n"
        + parameters.encode()
        + b"\r\n\r\n"
        + base64.b64encode(content)
        + b"\r\n--b--\r\n"
    )


def survivors(victims: dict[str, Path]) -> dict[str, bool]:
    return {job_id: (folder / "precious.txt").exists() for job_id, folder in victims.items()}


def test_hostile_job_ids_delete_nothing_when_acked_purged_or_destroyed(
    serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    (spool / "a").mkdir(parents=True)  # lets a/../../x resolve, as it would in a busy temp_dir
    acked = hostile_ids(spool, tmp_path / "outside", "acked")
    failed = hostile_ids(spool, tmp_path / "outside", "failed")
    planted = victim(spool / "planted")
    (planted / ".pipeline").write_text("smtp-emails")
    log = tmp_path / "jobs.log"
    server = serve(
        server={"command": [sys.executable, str(JOB_WORKER)], "env": {"JOB_LOG": str(log)}},
        smtp={"attachment_storage": {"mode": "tempfile", "temp_dir": str(spool)}},
        jobs={
            "pipelines": {"smtp-emails": {"driver": "sqlite", "retries": 1}},
            "consume": ["smtp-emails"],
            "pool": {"num_workers": 1},
        },
    )
    for job_id in acked:
        push_email_job(server, job_id, "ack")
    for job_id in failed:
        push_email_job(server, job_id, "nack-final")

    def settled(job_id: str, folder: Path) -> bool:
        """Its removal was decided: refused and logged, or (before the fix) done."""
        return repr(job_id) in server.logs() or not folder.exists()

    wait_until(lambda: all(settled(i, f) for i, f in acked.items()), "the acked jobs to be removed")
    stat = "/jobs/pipelines/smtp-emails/stat"
    wait_until(lambda: api(server, "GET", stat)["failed"] == 4, "4 jobs in the failed list")
    api(server, "POST", "/jobs/pipelines/smtp-emails/failed/purge", {"ids": None})
    assert survivors(acked) == dict.fromkeys(acked, True), "an acked job deleted a directory"
    assert survivors(failed) == dict.fromkeys(failed, True), "a purged job deleted a directory"

    api(server, "POST", "/jobs/pipelines/smtp-emails/pause", {})
    own = spool / send(server.port, with_attachment("report.pdf"))
    assert own.is_dir(), "the server's own email has its attachment folder"
    api(server, "POST", "/jobs/pipelines/smtp-emails/destroy", {"purge": True})
    assert not own.exists(), "destroy --purge deletes the folders of the pipeline's emails"
    assert (planted / "precious.txt").exists(), "destroy --purge deleted a folder it never wrote"
    assert (spool / "a").is_dir()
    warned = server.logs()
    assert all(repr(job_id) in warned for job_id in [*acked, *failed]), "refusals are logged"


def aged(folder: Path) -> Path:
    day_ago = time.time() - 86400
    os.utime(folder, (day_ago, day_ago))
    return folder


def test_age_cleanup_in_a_shared_temp_dir_deletes_only_its_own_folders(
    serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    shared = tmp_path / "tmp"  # stands in for /tmp: other programs' folders, old ones too
    foreign = [
        victim(shared / "build-cache"),
        victim(shared / str(uuid.uuid4())),
        victim(shared / str(uuid.uuid4())),
    ]
    (foreign[2] / ".mailrunner").write_text(str(uuid.uuid4()))
    (shared / "notes.txt").write_text("someone's file")
    for folder in [*foreign, shared / "notes.txt"]:
        aged(folder)
    server = serve(
        server={"command": [sys.executable, str(POOL_WORKER)]},
        smtp={
            "use_jobs": False,
            "pool": {"num_workers": 1},
            "attachment_storage": {"mode": "tempfile", "temp_dir": str(shared), "cleanup_after": 2},
        },
    )
    own = shared / send(server.port, with_attachment("report.pdf"))
    assert own.is_dir(), "the email's attachments are written under temp_dir"
    aged(own)
    wait_until(lambda: not own.exists(), "age cleanup to delete the server's own old folder")
    kept = [folder.name for folder in foreign if (folder / "precious.txt").exists()]
    assert kept == [folder.name for folder in foreign], "age cleanup deleted foreign folders"
    assert (shared / "notes.txt").exists()


@contextmanager
def umask(value: int) -> Iterator[None]:
    """The server inherits the umask it is started with."""
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_an_attachment_named_with_120_cjk_characters_is_stored(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(smtp={"attachment_storage": {"mode": "tempfile"}})
    event_id = send(server.port, with_long_filename(CJK_NAME, b"cjk"))
    (event,) = server.wait_events(1)
    assert event["id"] == event_id
    (attachment,) = event["attachments"]
    path = Path(attachment["path"])
    assert attachment["filename"] == CJK_NAME
    assert path.read_bytes() == b"cjk"
    assert len(path.name.encode()) <= NAME_MAX
    assert sorted(p.name for p in path.parent.iterdir()) == [".mailrunner", ".pipeline", path.name]


def test_mail_on_disk_is_private_whatever_the_umask(
    serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    with umask(0):
        server = serve(smtp={"attachment_storage": {"mode": "tempfile"}})
    send(server.port, with_attachment("report.pdf"))
    (event,) = server.wait_events(1)
    stored = Path(event["attachments"][0]["path"])
    data_dir = tmp_path / "var"
    modes = {
        "data_dir": mode(data_dir),
        "attachments": mode(data_dir / "attachments"),
        "event folder": mode(stored.parent),
        "attachment file": mode(stored),
    }
    assert modes == {
        "data_dir": "0o700",
        "attachments": "0o700",
        "event folder": "0o700",
        "attachment file": "0o600",
    }
