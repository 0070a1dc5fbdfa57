"""Tempfile attachment folders on the Jobs path with several pipelines: the folder's mark lists
every pipeline but the inbox's, and the folder goes when the last of them is done with it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from mailrunner.files import PRIVATE_FILE
from mailrunner.mime.attachments import PIPELINE_MARK, TempfileStorage
from mailrunner.mime.parse import ParsedPart

PART = [ParsedPart("f.txt", "text/plain", b"f", None, False)]


def stored(directory: Path, pipelines: list[str]) -> tuple[TempfileStorage, str]:
    storage = TempfileStorage(directory, pipelines, file_mode=PRIVATE_FILE)
    event_id = str(uuid.uuid4())
    asyncio.run(storage.store(event_id, PART))
    return storage, event_id


def test_the_folder_goes_with_the_last_listed_pipeline_s_job(tmp_path: Path) -> None:
    storage, event_id = stored(tmp_path, ["a", "b"])
    folder = tmp_path / event_id
    assert (folder / PIPELINE_MARK).read_text() == "a\nb\n"

    assert storage.release(event_id, "a") is False, "b's job still points at the files"
    assert (folder / "001-f.txt").read_bytes() == b"f"
    assert storage.release(event_id, "b") is True
    assert not folder.exists()


def test_a_purged_pipeline_releases_its_folders_and_the_last_one_takes_them(
    tmp_path: Path,
) -> None:
    storage, shared = stored(tmp_path, ["a", "b"])
    stored(tmp_path, ["a"])

    assert storage.remove_pipeline("a") == 1, "only the folder no other pipeline holds"
    assert sorted(path.name for path in tmp_path.iterdir()) == [shared]
    assert storage.remove_pipeline("b") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_refused_message_keeps_its_files_only_for_the_pipelines_that_stored_it(
    tmp_path: Path,
) -> None:
    storage, kept = stored(tmp_path, ["a", "b"])
    _, refused = stored(tmp_path, ["a", "b"])

    storage.keep_for(kept, ["a"])
    storage.keep_for(refused, [])
    assert [path.name for path in tmp_path.iterdir()] == [kept]
    assert storage.release(kept, "a") is True, "a was the only pipeline left"


def test_a_folder_no_pipeline_but_the_inbox_got_goes_at_its_first_release(tmp_path: Path) -> None:
    storage, event_id = stored(tmp_path, [])

    assert storage.release(event_id, "inbox") is True
    assert not (tmp_path / event_id).exists()


def test_a_pipeline_counts_once_and_one_the_mark_does_not_name_not_at_all(
    tmp_path: Path,
) -> None:
    """Delivery is at least once: a job acked late (its lease expired) and then acked again
    on redelivery, or a job pushed into another pipeline with the email's id, must not take
    the files from under b's job."""
    storage, event_id = stored(tmp_path, ["a", "b"])

    assert storage.release(event_id, "a") is False
    assert storage.release(event_id, "a") is False, "a's second removal counted"
    assert storage.release(event_id, "elsewhere") is False, "an unlisted pipeline counted"
    assert (tmp_path / event_id / "001-f.txt").read_bytes() == b"f"
    assert storage.release(event_id, "b") is True
