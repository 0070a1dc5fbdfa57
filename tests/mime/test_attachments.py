"""Attachment storage: safe file names, exact modes, all-or-nothing writes, fsynced files,
folders deleted only when this server's marker proves them its own, parse offloading."""

from __future__ import annotations

import asyncio
import errno
import os
import smtplib
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from mailrunner.errors import StorageError
from mailrunner.files import PRIVATE_FILE
from mailrunner.mime import attachments as attachments_module
from mailrunner.mime.attachments import (
    NAME_MAX,
    OWNER_MARK,
    PIPELINE_MARK,
    MemoryStorage,
    TempfileStorage,
    safe_filename,
)
from mailrunner.mime.build import EventBuilder
from mailrunner.mime.parse import ParsedPart, ParseOptions
from support.events import arrival, decode_event
from support.server import RunningServer

CJK_NAME = "報告書" * 40 + ".pdf"
"""120 CJK characters: 360 bytes of UTF-8, over the 255-byte limit of a file name."""


def storage(directory: Path, pipeline: str | None = None) -> TempfileStorage:
    return TempfileStorage(directory, pipeline, file_mode=PRIVATE_FILE)


def files(*names: str) -> list[ParsedPart]:
    return [ParsedPart(name, "text/plain", name.encode(), None, False) for name in names]


def new_id() -> str:
    return str(uuid.uuid4())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize(
    ("filename", "stored"),
    [
        ("report.pdf", "001-report.pdf"),
        ("../../etc/passwd", "001-passwd"),
        ("C:\\Windows\\evil.exe", "001-evil.exe"),
        ("", "001-attachment"),
        (None, "001-attachment"),
        ("..", "001-attachment"),
        (".mailrunner", "001-mailrunner"),
        (".pipeline", "001-pipeline"),
        ("naïve résumé.txt", "001-naïve_résumé.txt"),
    ],
)
def test_a_filename_is_data_never_a_path(filename: str | None, stored: str) -> None:
    assert safe_filename(filename, 1) == stored


def test_a_long_name_is_cut_by_utf8_bytes_on_a_character_boundary_keeping_its_extension() -> None:
    name = safe_filename(CJK_NAME, 7)
    encoded = name.encode("utf-8")
    assert len(encoded) <= NAME_MAX, f"{len(encoded)} bytes cannot be a file name"
    assert len(encoded) > NAME_MAX - 3, "the cut keeps as much of the name as fits"
    prefix, kept, extension = name[:4], name[4:-4], name[-4:]
    assert (prefix, extension) == ("007-", ".pdf"), "the index and the extension stay"
    assert CJK_NAME.startswith(kept), "whole characters of the name, none of them broken"


@given(st.one_of(st.none(), st.text()), st.integers(min_value=1, max_value=1500))
def test_any_filename_becomes_one_creatable_name_that_is_never_a_mark(
    filename: str | None, index: int
) -> None:
    name = safe_filename(filename, index)
    assert len(name.encode("utf-8")) <= NAME_MAX
    assert name.startswith(f"{index:03d}-")
    assert "/" not in name
    assert "\0" not in name
    assert name not in {OWNER_MARK, PIPELINE_MARK, ".", ".."}


def test_tempfile_storage_writes_each_attachment_under_the_event_folder(tmp_path: Path) -> None:
    event_id = new_id()
    attachments = [
        ParsedPart("../a.txt", "text/plain", b"alpha", None, False),
        ParsedPart("a.txt", "text/plain", b"beta", "cid@x", True),
    ]
    stored = asyncio.run(storage(tmp_path).store(event_id, attachments))
    assert [Path(s.path or "").read_bytes() for s in stored] == [b"alpha", b"beta"]
    assert all(Path(s.path or "").parent == tmp_path / event_id for s in stored)
    assert [(s.size, s.content_id, s.inline) for s in stored] == [
        (5, None, False),
        (4, "cid@x", True),
    ]
    assert (tmp_path / event_id / OWNER_MARK).read_text() == event_id
    assert storage(tmp_path).remove(event_id)
    assert not (tmp_path / event_id).exists()


def test_an_attachment_with_a_120_cjk_character_name_is_stored(tmp_path: Path) -> None:
    (stored,) = asyncio.run(storage(tmp_path).store(new_id(), files(CJK_NAME)))
    path = Path(stored.path or "")
    assert path.read_bytes() == CJK_NAME.encode()
    assert len(path.name.encode("utf-8")) <= NAME_MAX
    assert stored.filename == CJK_NAME, "the event keeps the name as sent"


@pytest.mark.parametrize(
    ("file_mode", "folder_mode"), [(0o600, 0o700), (0o640, 0o750), (0o644, 0o755)]
)
@pytest.mark.parametrize("process_umask", [0o000, 0o077])
def test_files_get_exactly_file_mode_and_folders_are_private_whatever_the_umask(
    tmp_path: Path, file_mode: int, folder_mode: int, process_umask: int
) -> None:
    directory = tmp_path / "new" / "attachments"
    event_id = new_id()
    with umask(process_umask):
        stored = asyncio.run(
            TempfileStorage(directory, "p", file_mode=file_mode).store(event_id, files("a"))
        )
    assert mode(Path(stored[0].path or "")) == file_mode
    assert mode(directory / event_id) == folder_mode
    assert mode(directory) == folder_mode, "a temp_dir this server creates is private too"
    assert mode(directory / event_id / OWNER_MARK) == 0o600
    assert mode(directory / event_id / PIPELINE_MARK) == 0o600


def test_an_existing_temp_dir_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    asyncio.run(storage(shared).store(new_id(), files("a")))
    assert mode(shared) == 0o1777, "a shared temp_dir such as /tmp is not ours to change"


def fail_at_the_third_file(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make writing the third attachment fail as a full disk would; returns what was written."""
    written: list[str] = []
    real_write = attachments_module.write_new_file

    def write(path: Path, content: bytes, mode: int = PRIVATE_FILE) -> None:
        if path.name.startswith("003-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, content, mode)
        written.append(path.name)

    monkeypatch.setattr(attachments_module, "write_new_file", write)
    return written


def test_a_write_failing_after_the_second_of_three_files_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = fail_at_the_third_file(monkeypatch)
    with pytest.raises(StorageError, match="No space left") as raised:
        asyncio.run(storage(tmp_path, "p").store(new_id(), files("a", "b", "c")))
    assert isinstance(raised.value.__cause__, OSError), "the OS error is kept as the cause"
    assert written == [OWNER_MARK, PIPELINE_MARK, "001-a", "002-b"], "the failure came third"
    assert list(tmp_path.iterdir()) == [], "the half-written event folder must be removed"
    monkeypatch.undo()
    stored = asyncio.run(storage(tmp_path, "p").store(new_id(), files("a", "b", "c")))
    assert [Path(s.path or "").read_bytes() for s in stored] == [b"a", b"b", b"c"]


def test_a_store_cancelled_mid_write_takes_its_files_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiosmtpd cancels the session's handler when the client hangs up after its final dot."""
    entered, release = threading.Event(), threading.Event()
    real_write = attachments_module.write_new_file

    def write(path: Path, content: bytes, mode: int = PRIVATE_FILE) -> None:
        if path.name.startswith("002-"):
            entered.set()
            release.wait(10)
        real_write(path, content, mode)

    monkeypatch.setattr(attachments_module, "write_new_file", write)

    async def scenario() -> None:
        task = asyncio.create_task(storage(tmp_path).store(new_id(), files("a", "b", "c")))
        assert await asyncio.to_thread(entered.wait, 10), "the write never reached file 2"
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert list(tmp_path.iterdir()) == [], "a cancelled store must leave no folder"


MESSAGE_WITH_THREE_FILES = EmailMessage()
MESSAGE_WITH_THREE_FILES["Subject"] = "three files"
MESSAGE_WITH_THREE_FILES.set_content("see attached")
for _name in ("a.txt", "b.txt", "c.txt"):
    MESSAGE_WITH_THREE_FILES.add_attachment(_name.encode(), "text", "plain", filename=_name)


def test_a_storage_failure_is_451_with_no_folder_left_and_a_retry_stores_everything(
    start_server: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(smtp={"attachment_storage": {"mode": "tempfile"}})
    directory = server.config.attachments_dir
    fail_at_the_third_file(monkeypatch)
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.send_message(MESSAGE_WITH_THREE_FILES, "a@example.com", ["b@example.com"])
        assert refused.value.smtp_code == 451
        assert list(directory.iterdir()) == [], "a refused message must leave no files"
        monkeypatch.undo()
        client.send_message(MESSAGE_WITH_THREE_FILES, "a@example.com", ["b@example.com"])
    (event,) = server.delivery.wait_for(1)
    paths = [Path(a["path"]) for a in event["attachments"]]
    assert [p.read_bytes() for p in paths] == [b"a.txt", b"b.txt", b"c.txt"]
    assert [p.name for p in directory.iterdir()] == [event["id"]]


def test_data_dir_is_created_private_at_start_up(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "fresh" / "var"
    with umask(0):
        start_server(data_dir=str(data_dir))
    assert mode(data_dir) == 0o700
    assert mode(data_dir.parent) == 0o700, "every folder the server creates is private"


@pytest.mark.parametrize(
    "hostile_id",
    ["../victim", "a/../../victim", "..", ".", "", "victim/", "\0", "{00000000-0000-4000-8000-0}"],
)
def test_an_id_that_is_not_an_event_id_never_reaches_the_file_system(
    tmp_path: Path, hostile_id: str
) -> None:
    directory = tmp_path / "attachments"
    (directory / "a").mkdir(parents=True)
    victim = marked(tmp_path / "victim", hostile_id)
    with capture_logs() as logs:
        assert not storage(directory).remove(hostile_id)
        assert not storage(directory).remove(str(victim))
    assert (victim / "001-keep").exists()
    assert (directory / "a").is_dir()
    warned = [line["id"] for line in logs if line["log_level"] == "warning"]
    assert repr(str(victim)) in warned, "an absolute path as a job id is worth a warning"


def marked(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True)
    (folder / OWNER_MARK).write_text(content)
    (folder / "001-keep").write_bytes(b"keep")
    return folder


def impostors(directory: Path, elsewhere: Path) -> list[str]:
    """UUID-named entries that are not event folders this server wrote for that id."""
    unmarked, wrong, linked, linked_mark, fifo_mark, plain_file = (new_id() for _ in range(6))
    (directory / unmarked).mkdir(parents=True)
    marked(directory / wrong, new_id())
    (elsewhere / OWNER_MARK).write_text(linked)
    (directory / linked).symlink_to(elsewhere)
    (directory / linked_mark).mkdir()
    (elsewhere / "mark").write_text(linked_mark)
    (directory / linked_mark / OWNER_MARK).symlink_to(elsewhere / "mark")
    (directory / fifo_mark).mkdir()
    os.mkfifo(directory / fifo_mark / OWNER_MARK)
    (directory / plain_file).write_text(plain_file)
    return [unmarked, wrong, linked, linked_mark, fifo_mark, plain_file]


def test_a_uuid_entry_without_our_marker_is_left_alone_and_logged(tmp_path: Path) -> None:
    directory = tmp_path / "attachments"
    elsewhere = marked(tmp_path / "elsewhere", "")
    ids = impostors(directory, elsewhere)
    with capture_logs() as logs:
        for event_id in ids:
            assert not storage(directory).remove(event_id), event_id
    assert sorted(p.name for p in directory.iterdir()) == sorted(ids)
    assert (elsewhere / "001-keep").read_bytes() == b"keep", "a symlink is never followed"
    warned = [line["id"] for line in logs if line["log_level"] == "warning"]
    assert sorted(warned) == sorted(repr(i) for i in ids)


def test_an_event_without_attachments_has_no_folder_and_its_removal_logs_nothing(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        assert not storage(tmp_path).remove(new_id())
        assert not storage(tmp_path).remove("order-42")
    assert [line["log_level"] for line in logs] == ["debug"], "plain job ids are no alarm"


def age(folder: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(folder, (then, then), follow_symlinks=False)


def test_cleanup_removes_only_its_own_folders_older_than_the_limit(tmp_path: Path) -> None:
    attachment = files("f")
    old_id, new_id_, jobs_id = new_id(), new_id(), new_id()
    asyncio.run(storage(tmp_path).store(old_id, attachment))
    asyncio.run(storage(tmp_path).store(new_id_, attachment))
    asyncio.run(storage(tmp_path, "emails").store(jobs_id, attachment))
    foreign = [
        marked(tmp_path / "someone-else", "someone-else"),
        tmp_path / new_id(),
        marked(tmp_path / new_id(), "wrong"),
    ]
    foreign[1].mkdir()
    (tmp_path / new_id()).symlink_to(tmp_path / old_id)
    (tmp_path / "a-file").write_text("x")
    for folder in [tmp_path / old_id, tmp_path / jobs_id, *foreign]:
        age(folder, 3600)
    for link in (p for p in tmp_path.iterdir() if p.is_symlink()):
        age(link, 3600)
    everything_else = sorted(p.name for p in tmp_path.iterdir() if p.name != old_id)
    assert storage(tmp_path).remove_older_than(1800) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == everything_else
    assert all((folder / "001-keep").exists() for folder in (foreign[0], foreign[2]))


def test_a_purged_pipeline_takes_only_the_folders_marked_with_its_name(tmp_path: Path) -> None:
    attachment = files("f")
    doomed, kept, unmarked = [new_id(), new_id()], new_id(), new_id()
    for event_id in doomed:
        asyncio.run(storage(tmp_path, "doomed").store(event_id, attachment))
    asyncio.run(storage(tmp_path, "kept").store(kept, attachment))
    asyncio.run(storage(tmp_path).store(unmarked, attachment))
    (tmp_path / "stray-file").write_text("not a folder")
    impostor = marked(tmp_path / new_id(), "not its id")
    (impostor / PIPELINE_MARK).write_text("doomed")
    assert storage(tmp_path, "kept").remove_pipeline("doomed") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [kept, unmarked, "stray-file", impostor.name]
    )
    assert (tmp_path / kept / "001-f").read_bytes() == b"f"


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(("size", "offloaded"), [(100, 0), (5000, 1)])
def test_messages_over_offload_bytes_are_parsed_off_the_event_loop(
    size: int, offloaded: int
) -> None:
    executor = CountingExecutor()
    builder = EventBuilder(
        hostname="mx",
        options=ParseOptions(),
        storage=MemoryStorage(),
        include_raw=False,
        offload_bytes=1000,
        executor=executor,
    )
    raw = b"Subject: big\r\n\r\n" + b"x" * size + b"\r\n"
    event = decode_event(asyncio.run(builder.build(arrival(), raw)))
    executor.shutdown()
    assert executor.submitted == offloaded
    assert event["message"]["body"] == "x" * size + "\n"
