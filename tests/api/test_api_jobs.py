"""The Jobs RPC routes of the management API against a running server and real pipelines."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api_support import Api, start_jobs_node, wire_job

from support.server import RunningServer
from support.waiting import wait_until

SQLITE_CAPABILITIES = {
    "durable": True,
    "idempotent_push": True,
    "atomic_batch": True,
    "priority": True,
    "delay": True,
    "peek": True,
    "max_payload": None,
}


def jobs_server(start_server: Callable[..., RunningServer]) -> tuple[RunningServer, Api]:
    """A server on the real Jobs path with a sqlite pipeline `q` and a memory pipeline `mem`."""
    server = start_server(
        record=False,
        jobs={"pipelines": {"q": {"driver": "sqlite"}, "mem": {"driver": "memory", "priority": 7}}},
    )
    return server, Api(server.api_url)


def test_push_answers_with_the_id_and_the_job_is_then_in_stat_and_peek(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)
    job_id = api.push("q", {"n": 1}, headers={"trace": ["a", "b"]}, options={"priority": 3})

    assert api.stat("q")["queued"] == 1
    (peeked,) = api.ok("GET", "/jobs/pipelines/q/peek")["jobs"]
    assert peeked == {
        "id": job_id,
        "job": "test.job",
        "payload": '{"n": 1}',
        "payload_base64": None,
        "headers": {"trace": ["a", "b"]},
        "options": {"pipeline": "q", "priority": 3, "delay": 0.0, "auto_ack": False},
    }


def test_stat_reports_every_field_of_the_pipeline(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)
    api.push("q")
    api.push("q", options={"delay": 600})

    assert api.stat("q") == {
        "pipeline": "q",
        "driver": "sqlite",
        "priority": 10,
        "durable": True,
        "paused": False,
        "consuming": False,
        "queued": 1,
        "delayed": 1,
        "reserved": 0,
        "failed": 0,
        "capabilities": SQLITE_CAPABILITIES,
    }
    memory = api.stat("mem")
    assert (memory["driver"], memory["priority"], memory["durable"]) == ("memory", 7, False)
    assert memory["capabilities"]["durable"] is False


def test_peek_serves_priority_order_and_honours_the_limit(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)
    late = [api.push("mem", {"i": i}, options={"priority": 50}) for i in range(3)]
    early = [api.push("mem", {"i": i}, options={"priority": 1}) for i in range(2)]
    default = api.push("mem")

    peek = "/jobs/pipelines/mem/peek"
    assert [job["id"] for job in api.ok("GET", f"{peek}?limit=2")["jobs"]] == early
    everything = api.ok("GET", f"{peek}?limit=100")["jobs"]
    assert [job["id"] for job in everything] == [*early, default, *late]
    assert everything[2]["options"]["priority"] == 7, "priority 0 takes the pipeline's"
    assert len(api.ok("GET", peek)["jobs"]) == 6, "the default limit (10) covers all six"
    assert api.stat("mem")["queued"] == 6, "peek leaves the jobs where they are"


def test_push_batch_stores_every_job_and_reports_each(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)
    jobs = [wire_job("q"), wire_job("mem"), wire_job("q")]

    results = api.ok("POST", "/jobs/push_batch", {"jobs": jobs})["results"]

    assert sorted(results, key=lambda r: r["id"]) == sorted(
        ({"id": job["id"], "error": None} for job in jobs), key=lambda r: r["id"]
    )
    assert (api.stat("q")["queued"], api.stat("mem")["queued"]) == (2, 1)


def test_push_batch_naming_an_unknown_pipeline_stores_nothing(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)

    reply = api.post("/jobs/push_batch", {"jobs": [wire_job("q"), wire_job("nope")]})

    assert (reply.status, reply.body["type"]) == (404, "PipelineNotFound")
    assert api.stat("q")["queued"] == 0


def test_list_pipelines_names_configured_and_declared_pipelines(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)
    assert api.ok("GET", "/jobs/pipelines") == {"pipelines": ["mem", "q", "smtp-emails"]}

    api.ok("POST", "/jobs/pipelines", {"name": "added", "driver": "memory"})

    assert api.ok("GET", "/jobs/pipelines") == {"pipelines": ["added", "mem", "q", "smtp-emails"]}


def test_declare_creates_once_accepts_the_same_settings_and_refuses_others(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)
    settings = {"name": "rt", "driver": "memory", "priority": 4, "retries": 2}

    assert api.ok("POST", "/jobs/pipelines", settings) == {"pipeline": "rt", "created": True}
    assert api.ok("POST", "/jobs/pipelines", settings) == {"pipeline": "rt", "created": False}
    conflict = api.post("/jobs/pipelines", {**settings, "priority": 5})
    assert (conflict.status, conflict.body["type"]) == (409, "PipelineConflict")
    configured = api.post("/jobs/pipelines", {"name": "q", "driver": "memory"})
    assert configured.status == 409, "a configured pipeline conflicts with other settings too"

    assert api.stat("rt")["priority"] == 4, "the first settings stay"
    api.push("rt")
    assert api.stat("rt")["queued"] == 1


def test_declare_of_a_sqlite_path_outside_data_dir_is_refused(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server, api = jobs_server(start_server)
    outside = tmp_path / "elsewhere" / "jobs.db"
    inside = server.config.data_dir / "runtime" / "rt.db"

    refused = api.post(
        "/jobs/pipelines", {"name": "out", "driver": "sqlite", "config": {"path": str(outside)}}
    )
    assert (refused.status, refused.body["type"]) == (403, "Forbidden")
    assert "data_dir" in refused.body["error"]
    assert not outside.exists()
    assert "out" not in api.ok("GET", "/jobs/pipelines")["pipelines"]

    declared = {"name": "in", "driver": "sqlite", "config": {"path": str(inside)}}
    assert api.ok("POST", "/jobs/pipelines", declared)["created"] is True
    api.push("in")
    assert inside.exists()
    assert api.stat("in")["queued"] == 1


def test_destroy_keeps_stored_jobs_unless_purge_is_asked(
    start_server: Callable[..., RunningServer],
) -> None:
    server, api = jobs_server(start_server)
    path = server.config.data_dir / "keep.db"
    settings = {"name": "keep", "driver": "sqlite", "config": {"path": str(path)}}
    api.ok("POST", "/jobs/pipelines", settings)
    kept = {api.push("keep") for _ in range(2)}

    assert api.ok("POST", "/jobs/pipelines/keep/destroy") == {"ok": True}
    assert "keep" not in api.ok("GET", "/jobs/pipelines")["pipelines"]
    assert api.get("/jobs/pipelines/keep/stat").status == 404
    assert api.ok("POST", "/jobs/pipelines", settings)["created"] is True
    assert {job["id"] for job in api.ok("GET", "/jobs/pipelines/keep/peek")["jobs"]} == kept

    assert api.ok("POST", "/jobs/pipelines/keep/destroy", {"purge": True}) == {"ok": True}
    api.ok("POST", "/jobs/pipelines", settings)
    assert api.stat("keep")["queued"] == 0, "purge removed the stored jobs"


def test_text_payload_comes_back_as_text_and_binary_as_base64(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)
    text = "héllo, мир ✓ \x00 {json: no}"
    binary = b"\xff\xfe\x00\x80 not utf-8 \xc3"
    text_id = api.push("q", text)
    binary_id = api.push("q", payload_base64=base64.b64encode(binary).decode("ascii"))
    utf8_id = api.push("q", payload_base64=base64.b64encode("ünïcode".encode()).decode("ascii"))

    peeked = {job["id"]: job for job in api.ok("GET", "/jobs/pipelines/q/peek")["jobs"]}

    assert (peeked[text_id]["payload"], peeked[text_id]["payload_base64"]) == (text, None)
    assert peeked[binary_id]["payload"] is None
    assert base64.b64decode(peeked[binary_id]["payload_base64"]) == binary
    assert peeked[utf8_id]["payload"] == "ünïcode", "valid UTF-8 bytes read back as text"


def test_paused_pipeline_stores_pushes_and_resume_lets_the_consumer_run_them(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(start_server, tmp_path)
    api = node.api

    assert api.ok("POST", "/jobs/pipelines/work/pause") == {"ok": True}
    assert api.stat("work")["paused"] is True
    pushed = [api.push("work") for _ in range(3)]
    wait_until(lambda: api.stat("work")["queued"] == 3, "the paused pipeline to hold 3 jobs")
    assert node.executed() == [], "a paused pipeline is not consumed"

    assert api.ok("POST", "/jobs/pipelines/work/resume") == {"ok": True}
    stat = api.stat("work")
    assert (stat["paused"], stat["consuming"]) == (False, True)
    assert sorted(job_id for job_id, _ in node.wait_executed(3)) == sorted(pushed)
    wait_until(
        lambda: api.stat("work")["queued"] + api.stat("work")["reserved"] == 0,
        "the consumed jobs to be acked",
    )


def test_declare_with_consume_starts_a_consumer_for_the_new_pipeline(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(start_server, tmp_path)
    api = node.api

    declared = {"name": "later", "driver": "memory", "consume": True}
    assert api.ok("POST", "/jobs/pipelines", declared) == {"pipeline": "later", "created": True}
    assert api.stat("later")["consuming"] is True
    job_id = api.push("later")

    assert node.wait_executed(1) == [(job_id, 1)]


def test_declare_with_consume_on_a_server_without_a_jobs_pool_is_refused(
    start_server: Callable[..., RunningServer],
) -> None:
    _, api = jobs_server(start_server)
    refused = api.post("/jobs/pipelines", {"name": "later", "driver": "memory", "consume": True})
    assert (refused.status, refused.body["type"]) == (422, "InvalidPipeline")
    assert "no jobs worker pool" in refused.body["error"]
    assert "later" not in api.ok("GET", "/jobs/pipelines")["pipelines"]


def failed_list(api: Api, limit: int = 100) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = api.ok("GET", f"/jobs/pipelines/work/failed?limit={limit}")[
        "failed"
    ]
    return listed


def test_failed_jobs_can_be_listed_retried_and_purged(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(start_server, tmp_path)
    api = node.api
    doomed = api.push("work", {"do": "nack-final"})
    other = api.push("work", {"do": "nack-final"})
    node.wait_executed(2)
    wait_until(lambda: api.stat("work")["failed"] == 2, "both jobs in the failed list")

    listed = {entry["job"]["id"]: entry for entry in failed_list(api)}
    assert set(listed) == {doomed, other}
    entry = listed[doomed]
    assert (entry["error"], entry["attempts"]) == ("asked to fail for good", 1)
    assert json.loads(entry["job"]["payload"]) == {"do": "nack-final"}
    assert isinstance(entry["failed_at"], float)
    assert len(failed_list(api, limit=1)) == 1

    retry = "/jobs/pipelines/work/failed/retry"
    assert api.ok("POST", retry, {"ids": ["no-such-job"]}) == {"count": 0}
    assert api.ok("POST", retry, {"ids": [doomed]}) == {"count": 1}
    assert node.wait_executed(3)[2] == (doomed, 1), "a retried job runs again, attempts reset"
    wait_until(lambda: api.stat("work")["failed"] == 2, "the retried job to fail again")

    purge = "/jobs/pipelines/work/failed/purge"
    assert api.ok("POST", purge, {"ids": [other]}) == {"count": 1}
    assert [entry["job"]["id"] for entry in failed_list(api)] == [doomed]
    assert api.ok("POST", purge) == {"count": 1}, "no ids: purge the whole list"
    assert failed_list(api) == []
    assert api.stat("work")["failed"] == 0
