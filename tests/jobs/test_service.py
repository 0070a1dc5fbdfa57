"""The Jobs RPC service: pipelines from config and at run time, and its clear errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from mailrunner.config import PipelineConfig, config_from_mapping
from mailrunner.errors import InvalidJob, InvalidPipeline, PipelineConflict, PipelineNotFound
from mailrunner.jobs.model import MAX_DELAY, Job, JobOptions
from mailrunner.jobs.service import JobHooks, JobsService

ADAPTER: TypeAdapter[PipelineConfig] = TypeAdapter(PipelineConfig)


def service_for(
    tmp_path: Path, pipelines: dict[str, Any], hooks: JobHooks | None = None
) -> JobsService:
    settings = {
        "data_dir": str(tmp_path),
        "smtp": {"use_jobs": False},
        "server": {"command": "never-started"},
        "jobs": {"pipelines": pipelines},
    }
    return JobsService(config_from_mapping(settings), hooks=hooks or JobHooks())


def job(job_id: str = "j1", pipeline: str = "q", **options: Any) -> Job:
    return Job(job_id, "test.job", b"payload", JobOptions(pipeline, **options))


def run(service: JobsService, scenario: Any) -> Any:
    async def wrapped() -> Any:
        await service.start()
        try:
            return await scenario()
        finally:
            await service.stop()

    return asyncio.run(wrapped())


def test_configured_pipelines_are_listed_and_stat_has_every_field(tmp_path: Path) -> None:
    service = service_for(
        tmp_path, {"q": {"driver": "sqlite", "priority": 3}, "m": {"driver": "memory"}}
    )

    async def scenario() -> dict[str, Any]:
        assert service.list_pipelines() == ["m", "q"]
        await service.push(job())
        return (await service.stat("q")).to_dict()

    stat = run(service, scenario)
    assert stat | {"capabilities": {}} == {
        "pipeline": "q",
        "driver": "sqlite",
        "priority": 3,
        "durable": True,
        "paused": False,
        "consuming": False,
        "queued": 1,
        "delayed": 0,
        "reserved": 0,
        "failed": 0,
        "capabilities": {},
    }
    assert stat["capabilities"]["durable"] is True


def test_memory_pipelines_say_they_are_not_durable(tmp_path: Path) -> None:
    service = service_for(tmp_path, {"m": {"driver": "memory"}})

    async def scenario() -> bool:
        return (await service.stat("m")).durable

    assert run(service, scenario) is False


def test_a_job_without_priority_gets_the_pipeline_priority(tmp_path: Path) -> None:
    service = service_for(tmp_path, {"q": {"driver": "memory", "priority": 7}})

    async def scenario() -> list[int]:
        await service.push(job("a"))
        await service.push(job("b", priority=2))
        return [j.options.priority for j in await service.peek("q")]

    assert run(service, scenario) == [2, 7]


def test_unknown_pipeline_and_bad_jobs_are_refused_with_clear_errors(tmp_path: Path) -> None:
    service = service_for(tmp_path, {"q": {"driver": "memory"}})

    async def scenario() -> None:
        with pytest.raises(PipelineNotFound, match=r"unknown pipeline 'nope' \(declared: q\)"):
            await service.push(job(pipeline="nope"))
        with pytest.raises(InvalidJob, match="id must not be empty"):
            await service.push(job(""))
        with pytest.raises(InvalidJob, match="priority must be >= 0"):
            await service.push(job(priority=-1))
        with pytest.raises(InvalidJob, match="delay must be from 0 to 2592000 seconds"):
            await service.push(job(delay=-1))
        with pytest.raises(InvalidJob, match="delay must be from 0 to 2592000 seconds"):
            await service.push(job(delay=MAX_DELAY + 1))
        with pytest.raises(PipelineNotFound):
            await service.stat("nope")

    run(service, scenario)


def test_declare_is_idempotent_and_conflicts_on_other_settings(tmp_path: Path) -> None:
    service = service_for(tmp_path, {})
    memory = ADAPTER.validate_python({"driver": "memory"})
    other = ADAPTER.validate_python({"driver": "memory", "priority": 1})

    async def scenario() -> None:
        assert await service.declare("rt", memory) is True
        assert await service.declare("rt", memory) is False
        with pytest.raises(PipelineConflict, match="other settings"):
            await service.declare("rt", other)
        assert service.list_pipelines() == ["rt"]

    run(service, scenario)


def test_runtime_sqlite_path_must_lie_under_data_dir(tmp_path: Path) -> None:
    service = service_for(tmp_path / "data", {})
    outside = ADAPTER.validate_python(
        {"driver": "sqlite", "config": {"path": str(tmp_path / "x.db")}}
    )
    inside = ADAPTER.validate_python(
        {"driver": "sqlite", "config": {"path": str(tmp_path / "data/x.db")}}
    )

    async def scenario() -> None:
        with pytest.raises(InvalidPipeline, match="must lie under data_dir"):
            await service.declare("out", outside)
        assert await service.declare("in", inside) is True

    run(service, scenario)
    assert (tmp_path / "data" / "x.db").exists()


def test_destroy_keeps_stored_jobs_unless_purged(tmp_path: Path) -> None:
    service = service_for(tmp_path, {"q": {"driver": "sqlite"}})
    settings = ADAPTER.validate_python({"driver": "sqlite"})

    async def scenario() -> tuple[int, int]:
        await service.push(job("kept"))
        await service.destroy("q")
        assert service.list_pipelines() == []
        await service.declare("q", settings)
        kept = (await service.stat("q")).queued
        await service.destroy("q", purge=True)
        await service.declare("q", settings)
        return kept, (await service.stat("q")).queued

    assert run(service, scenario) == (1, 0)


def test_push_batch_is_all_or_nothing_and_checks_every_job_first(tmp_path: Path) -> None:
    service = service_for(tmp_path, {"q": {"driver": "sqlite"}})

    async def scenario() -> int:
        results = await service.push_batch([job("a"), job("b")])
        assert [(r.id, r.error) for r in results] == [("a", None), ("b", None)]
        with pytest.raises(InvalidJob):
            await service.push_batch([job("c"), job("", priority=1)])
        return (await service.stat("q")).queued

    assert run(service, scenario) == 2


def test_pause_and_resume_show_in_stat(tmp_path: Path) -> None:
    service = service_for(tmp_path, {"q": {"driver": "memory"}})

    async def scenario() -> list[bool]:
        seen = []
        await service.pause("q")
        seen.append((await service.stat("q")).paused)
        await service.resume("q")
        seen.append((await service.stat("q")).paused)
        return seen

    assert run(service, scenario) == [True, False]


def test_purge_failed_returns_the_ids_it_removed_and_frees_exactly_those(
    tmp_path: Path,
) -> None:
    freed: list[str] = []

    async def on_job_removed(job_id: str, pipeline: str) -> None:
        assert pipeline == "q"
        freed.append(job_id)

    service = service_for(tmp_path, {"q": {"driver": "sqlite"}}, JobHooks(on_job_removed))

    async def never_read(limit: int) -> list[Any]:
        raise AssertionError(f"purge read failed jobs (limit {limit}): payloads must not load")

    async def scenario() -> list[str]:
        driver = service.pipeline("q").driver
        for job_id in ("a", "b", "c", "kept"):
            await service.push(job(job_id))
        leases = await driver.reserve(3, 1.0)
        for lease in leases:
            await lease.nack(requeue=False, error="failed")
        driver.failed = never_read  # type: ignore[method-assign]
        purged = await service.purge_failed("q", ["c", "a", "kept", "unknown"])
        assert sorted(purged) == ["a", "c"], f"purge_failed returned {purged}"
        assert sorted(freed) == ["a", "c"], f"attachments were freed for {freed}"
        assert await service.purge_failed("q") == ["b"]
        return freed

    assert sorted(run(service, scenario)) == ["a", "b", "c"]
