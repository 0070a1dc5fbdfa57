"""Attachment storage: safe file names, fsynced files, age-based and per-pipeline cleanup,
parse offloading."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import arrival, decode_event
from mailrunner.mime.attachments import MemoryStorage, TempfileStorage, safe_filename
from mailrunner.mime.build import EventBuilder
from mailrunner.mime.parse import Attachment, ParseOptions


@pytest.mark.parametrize(
    ("filename", "stored"),
    [
        ("report.pdf", "001-report.pdf"),
        ("../../etc/passwd", "001-passwd"),
        ("C:\\Windows\\evil.exe", "001-evil.exe"),
        ("", "001-attachment"),
        (None, "001-attachment"),
        ("..", "001-attachment"),
        ("naïve résumé.txt", "001-naïve_résumé.txt"),
    ],
)
def test_a_filename_is_data_never_a_path(filename: str | None, stored: str) -> None:
    assert safe_filename(filename, 1) == stored


def test_tempfile_storage_writes_each_attachment_under_the_event_folder(tmp_path: Path) -> None:
    storage = TempfileStorage(tmp_path)
    attachments = [
        Attachment("../a.txt", "text/plain", b"alpha", None, False),
        Attachment("a.txt", "text/plain", b"beta", "cid@x", True),
    ]
    stored = asyncio.run(storage.store("event-1", attachments))
    assert [Path(s.path or "").read_bytes() for s in stored] == [b"alpha", b"beta"]
    assert all(Path(s.path or "").parent == tmp_path / "event-1" for s in stored)
    assert [(s.size, s.content_id, s.inline) for s in stored] == [
        (5, None, False),
        (4, "cid@x", True),
    ]
    storage.remove("event-1")
    assert not (tmp_path / "event-1").exists()


def test_cleanup_removes_only_folders_older_than_the_limit(tmp_path: Path) -> None:
    storage = TempfileStorage(tmp_path)
    attachment = [Attachment("f", "text/plain", b"x", None, False)]
    asyncio.run(storage.store("old", attachment))
    asyncio.run(storage.store("new", attachment))
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "old", (an_hour_ago, an_hour_ago))
    assert storage.remove_older_than(1800) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_a_purged_pipeline_takes_only_the_folders_marked_with_its_name(tmp_path: Path) -> None:
    attachment = [Attachment("f", "text/plain", b"x", None, False)]
    asyncio.run(TempfileStorage(tmp_path, "doomed").store("a", attachment))
    asyncio.run(TempfileStorage(tmp_path, "doomed").store("b", attachment))
    asyncio.run(TempfileStorage(tmp_path, "kept").store("c", attachment))
    asyncio.run(TempfileStorage(tmp_path).store("unmarked", attachment))
    (tmp_path / "stray-file").write_text("not a folder")
    assert TempfileStorage(tmp_path, "kept").remove_pipeline("doomed") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "stray-file", "unmarked"]
    assert (tmp_path / "c" / "001-f").read_bytes() == b"x"


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
