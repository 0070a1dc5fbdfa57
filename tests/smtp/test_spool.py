"""The disk spool as a client meets it: DATA past `smtp.spool_bytes` goes to a private file in
`<data_dir>/spool/<pid>/` while it arrives and is delivered byte for byte, and the file is gone
once the reply is decided, whatever it is (250, 451, 552, a lost client, a stopping server);
a full disk is a 451 that stores nothing; leftovers of an earlier run go at start."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import smtplib
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mailrunner.errors import DeliveryError
from support.disk import small_tmpfs
from support.faults import add_fault, injected
from support.raw_smtp import ENVELOPE, RawSmtp, raw_smtp
from support.sample_mail import TEMP_FAILURE
from support.server import LOOPS, RunningServer, on_loop
from support.waiting import WAIT_SECONDS, wait_until

Start = Callable[..., RunningServer]

SPOOL_BYTES = 64 * 1024
"""The tests' threshold: small, so a few hundred KiB is a spooled message."""
SMALL = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: small\r\n\r\nunder the threshold\r\n"


def message(size: int) -> bytes:
    """A message of about `size` octets: random base64 lines (none starts with a dot, so the
    wire and the message are the same octets) under a header, CRLF throughout."""
    body = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return b"From: a@example.com\r\nTo: b@example.com\r\nSubject: spooled\r\n\r\n" + body


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spool_folder(server: RunningServer) -> Path:
    """This process's spool folder, as the docs name it (the server runs in this process)."""
    return Path(server.config.data_dir) / "spool" / str(os.getpid())


def spool_files(server: RunningServer) -> list[Path]:
    return sorted(spool_folder(server).iterdir())


def spooling_server(start_server: Start, **smtp: Any) -> RunningServer:
    return start_server(smtp={"spool_bytes": SPOOL_BYTES, "faults_api": True, **smtp})


def wait_for_a_spool_file(server: RunningServer) -> Path:
    wait_until(lambda: bool(spool_files(server)), "a file in the spool folder")
    (file,) = spool_files(server)
    return file


def wait_for_an_empty_spool(server: RunningServer) -> None:
    wait_until(lambda: not spool_files(server), "the spool folder to be empty")


def raw_event(server: RunningServer) -> bytes:
    (event,) = server.delivery.wait_for(1)
    return base64.b64decode(event["message"]["raw"])


def test_a_large_message_is_spooled_to_a_private_file_and_delivered_byte_identical(
    start_server: Start,
) -> None:
    server = spooling_server(start_server, include_raw=True)
    add_fault(server, stage="data", action="delay", delay=1)
    sent = message(600 * 1024)
    with raw_smtp(server.port) as client:
        client.start_data()
        client.send(sent + b".\r\n")
        wait_until(lambda: injected(server).get(("data", "delay")) == 1, "the delay to hold it")
        (file,) = spool_files(server)
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, "the spool file is private"
        assert stat.S_IMODE(spool_folder(server).stat().st_mode) == 0o700
        assert file.stat().st_size == len(sent), "the whole message is in the file"
        assert client.code() == b"250"
    assert sha256(raw_event(server)) == sha256(sent)
    (event,) = server.delivery.events
    assert event["envelope"]["size"] == len(sent)
    assert event["message"]["subject"] == "spooled"
    assert not spool_files(server), "the spool file outlived its 250"


def test_the_inbox_keeps_a_spooled_message_byte_identical(start_server: Start) -> None:
    server = start_server(record=False, inbox={"enabled": True}, smtp={"spool_bytes": SPOOL_BYTES})
    sent = message(400 * 1024)
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.sendmail("a@example.com", ["b@example.com"], sent)
    host, port = server.app.api.address

    def get(path: str) -> bytes:
        connection = http.client.HTTPConnection(host, port, timeout=WAIT_SECONDS)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200, (path, response.status)
            return response.read()
        finally:
            connection.close()

    listed: list[dict[str, Any]] = []
    wait_until(
        lambda: bool(listed.extend(json.loads(get("/messages"))["messages"]) or listed),
        "the message to reach the inbox",
    )
    assert sha256(get(f"/messages/{listed[0]['id']}/raw")) == sha256(sent)
    assert not spool_files(server)


def test_a_message_under_spool_bytes_writes_nothing_to_the_spool(start_server: Start) -> None:
    server = spooling_server(start_server, include_raw=True)
    add_fault(server, stage="data", action="delay", delay=1)
    sent = message(SPOOL_BYTES // 2)
    assert len(sent) < SPOOL_BYTES
    with raw_smtp(server.port) as client:
        client.start_data()
        client.send(sent + b".\r\n")
        wait_until(lambda: injected(server).get(("data", "delay")) == 1, "the delay to hold it")
        assert not spool_files(server), "a message under spool_bytes was spooled"
        assert client.code() == b"250"
    assert raw_event(server) == sent


def test_spooled_octets_leave_the_in_flight_budget_to_other_sessions(start_server: Start) -> None:
    """Two messages of 900 KiB at once in a 1 MiB budget: held in memory, the second would
    get 452 (tests/smtp/test_data_reader.py); spooled, both are accepted."""
    server = spooling_server(start_server, max_inflight_bytes=1024 * 1024, max_message_size=0)
    first, second = message(900 * 1024), message(900 * 1024)
    with raw_smtp(server.port) as holder:
        holder.start_data()
        holder.send(first)
        wait_until(
            lambda: sum(file.stat().st_size for file in spool_files(server)) >= 800 * 1024,
            "most of the first message to be spooled",
        )
        with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
            client.sendmail("a@example.com", ["b@example.com"], second)
        holder.send(b".\r\n")
        assert holder.code() == b"250"
    assert len(server.delivery.wait_for(2)) == 2


def fail_delivery(server: RunningServer) -> None:
    server.delivery.failure = DeliveryError("the test's pipeline is down")


def reply_451_at_data(server: RunningServer) -> None:
    add_fault(server, stage="data", action="reply", reply="451 4.3.0 x")


@pytest.mark.parametrize("refuse", [fail_delivery, reply_451_at_data])
def test_the_spool_file_goes_after_a_451(
    start_server: Start, refuse: Callable[[RunningServer], None]
) -> None:
    server = spooling_server(start_server)
    refuse(server)
    release = server.hold_deliveries()
    with raw_smtp(server.port) as client:
        client.start_data()
        client.send(message(300 * 1024) + b".\r\n")
        if refuse is fail_delivery:
            assert server.delivery.entered.wait(WAIT_SECONDS), "the delivery never started"
            assert len(spool_files(server)) == 1, "the message is spooled during delivery"
            release()
        assert client.code() == b"451"
    assert not spool_files(server), "the spool file outlived its 451"
    assert server.delivery.events == []


def test_a_message_over_max_message_size_is_refused_and_its_spool_file_goes(
    start_server: Start,
) -> None:
    server = spooling_server(start_server, max_message_size=256 * 1024)
    sent = message(1024 * 1024)
    with raw_smtp(server.port) as client:
        client.start_data()
        client.send(sent[: 128 * 1024])
        wait_for_a_spool_file(server)
        client.send(sent[128 * 1024 :])
        # refused once past max_message_size: the file goes then, the rest is only drained
        wait_for_an_empty_spool(server)
        client.send(b".\r\n")
        assert client.code() == b"552"
        assert not spool_files(server), "the refused message was spooled again"
        client.send(ENVELOPE[len(b"EHLO client.example\r\n") :] + b"DATA\r\n")
        assert client.codes(3) == [b"250", b"250", b"354"]
        client.send(SMALL + b".\r\n")
        assert client.code() == b"250", "the session goes on after the drained message"


def test_a_client_that_disconnects_mid_data_leaves_no_spool_file(start_server: Start) -> None:
    server = spooling_server(start_server)
    client = RawSmtp(server.port)
    try:
        client.start_data()
        client.send(message(300 * 1024))
        wait_for_a_spool_file(server)
    finally:
        client.sock.close()
    wait_for_an_empty_spool(server)


@pytest.mark.parametrize("kind", LOOPS)
def test_stopping_the_server_mid_data_removes_the_spool(start_server: Start, kind: str) -> None:
    server = start_server(
        server=on_loop(kind), smtp={"spool_bytes": SPOOL_BYTES, "shutdown_timeout": 0}
    )
    with raw_smtp(server.port) as client:
        client.start_data()
        client.send(message(300 * 1024))
        wait_for_a_spool_file(server)
        with capture_logs() as logs:
            server.stop()
    assert not spool_folder(server).exists(), "a stopped server left its spool folder"
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert errors == [], "the aborted session's spool file was not removed cleanly"


def test_leftovers_of_an_earlier_run_go_at_start_and_other_processes_files_stay(
    tmp_path: Path, start_server: Start
) -> None:
    data_dir = tmp_path / "data0"  # the first server's data_dir (conftest's start_server)
    own = data_dir / "spool" / str(os.getpid())
    other = data_dir / "spool" / "4194305"  # above any pid_max: never a live process here
    for folder in (own, other):
        folder.mkdir(parents=True)
        (folder / "left-by-a-crash").write_bytes(b"partial message")
    server = spooling_server(start_server)
    assert Path(server.config.data_dir) == data_dir
    assert list(own.iterdir()) == [], "this pid's leftovers were kept"
    assert (other / "left-by-a-crash").exists(), "another process's spool was touched"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs where the first server's data_dir will be: a disk that fills up."""
    with small_tmpfs(tmp_path / "data0") as mountpoint:
        yield mountpoint


def test_a_full_disk_answers_451_drains_the_message_and_stores_nothing(
    small_disk: Path, start_server: Start
) -> None:
    server = spooling_server(start_server)
    assert Path(server.config.data_dir) == small_disk
    with capture_logs() as logs, smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        assert client.data(message(3 * 1024 * 1024)) == TEMP_FAILURE
        assert not spool_files(server), "a half-written spool file was left"
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        assert client.data(SMALL)[0] == 250, "the session goes on after the drained message"
    failures = [entry for entry in logs if entry["event"] == "spool write failed: message refused"]
    assert len(failures) == 1, failures
    assert "No space left on device" in failures[0]["reason"]
    (event,) = server.delivery.wait_for(1)
    assert event["message"]["subject"] == "small", "only the small message was delivered"
