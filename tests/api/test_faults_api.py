"""/faults against a running server: off unless asked for, add/list/remove/clear, configured
rules, the 1,000-rule limit, a 422 naming each bad field, and the OpenAPI entries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_support import Api

from mailrunner.config import config_from_mapping
from mailrunner.errors import ConfigError
from mailrunner.faults import MAX_FAULT_RULES
from support.server import RunningServer

StartServer = Callable[..., RunningServer]
BOUNCE = {"stage": "rcpt", "match": "bounce@*", "reply": "550 5.1.1 No such user"}
BOUNCE_REPLY = {"code": 550, "enhanced": "5.1.1", "text": "No such user"}
TOKEN = "fault-token"


def faults_api(start_server: StartServer, **smtp: Any) -> Api:
    """The API of a server with the faults API on (and `smtp` settings)."""
    server = start_server(record=False, smtp={"faults_api": True, **smtp})
    return Api(server.api_url)


def listed(api: Api) -> list[dict[str, Any]]:
    faults: list[dict[str, Any]] = api.ok("GET", "/faults")["faults"]
    return faults


def calls_of_every_route() -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/faults", BOUNCE),
        ("GET", "/faults", None),
        ("DELETE", "/faults/f1", None),
        ("DELETE", "/faults", None),
    ]


def test_the_faults_api_is_not_there_unless_turned_on(start_server: StartServer) -> None:
    api = Api(start_server(record=False).api_url)

    for method, path, body in calls_of_every_route():
        reply = api.call(method, path, body)
        assert reply.status == 404, f"{method} {path} -> {reply.status} {reply.body}"
        assert "smtp.faults_api" in reply.body["error"], reply.body


def test_with_a_token_the_faults_routes_need_it(start_server: StartServer) -> None:
    for faults_on in (False, True):
        server = start_server(record=False, rpc={"token": TOKEN}, smtp={"faults_api": faults_on})
        anonymous, holder = Api(server.api_url), Api(server.api_url, TOKEN)

        for method, path, body in calls_of_every_route():
            assert anonymous.call(method, path, body).status == 401, (faults_on, method, path)
        assert holder.get("/faults").status == (200 if faults_on else 404)


def test_add_list_remove_and_clear_rules(start_server: StartServer) -> None:
    api = faults_api(start_server)
    forever = {"stage": "mail", "match": "*@spam.example", "action": "disconnect", "times": None}
    slow = {"stage": "data", "action": "delay", "delay": "2s", "times": 3}

    ids = [api.ok("POST", "/faults", rule)["id"] for rule in (BOUNCE, forever, slow)]

    assert len(set(ids)) == 3, ids
    assert listed(api) == [
        {
            "id": ids[0],
            "stage": "rcpt",
            "match": "bounce@*",
            "action": "reply",
            "reply": BOUNCE_REPLY,
            "delay": None,
            "times": 1,
            "remaining": 1,
        },
        {
            "id": ids[1],
            "stage": "mail",
            "match": "*@spam.example",
            "action": "disconnect",
            "reply": None,
            "delay": None,
            "times": None,
            "remaining": None,
        },
        {
            "id": ids[2],
            "stage": "data",
            "match": "*",
            "action": "delay",
            "reply": None,
            "delay": 2.0,
            "times": 3,
            "remaining": 3,
        },
    ]
    assert api.ok("DELETE", f"/faults/{ids[1]}") == {"ok": True}
    assert [fault["id"] for fault in listed(api)] == [ids[0], ids[2]]
    unknown = api.call("DELETE", f"/faults/{ids[1]}")
    assert unknown.status == 404, unknown.body
    assert ids[1] in unknown.body["error"]
    assert api.ok("DELETE", "/faults") == {"count": 2}
    assert listed(api) == []
    assert api.ok("DELETE", "/faults") == {"count": 0}


def test_a_reply_is_written_as_an_object_or_as_one_line(start_server: StartServer) -> None:
    api = faults_api(start_server)
    as_object = {**BOUNCE, "reply": BOUNCE_REPLY}
    short = {"stage": "helo", "reply": "421 4.7.0"}

    for rule in (BOUNCE, as_object, short):
        api.ok("POST", "/faults", rule)

    replies = [fault["reply"] for fault in listed(api)]
    assert replies == [
        BOUNCE_REPLY,
        BOUNCE_REPLY,
        {"code": 421, "enhanced": "4.7.0", "text": "Injected fault"},
    ]


def test_configured_rules_are_listed_from_the_start_and_turn_the_api_on(
    start_server: StartServer,
) -> None:
    configured = [BOUNCE, {"stage": "connect", "match": "127.0.0.*", "action": "disconnect"}]
    api = Api(start_server(record=False, smtp={"faults": configured}).api_url)

    faults = listed(api)

    assert [(fault["stage"], fault["action"]) for fault in faults] == [
        ("rcpt", "reply"),
        ("connect", "disconnect"),
    ]
    assert faults[0]["reply"] == BOUNCE_REPLY
    added = api.ok("POST", "/faults", {"stage": "mail", "action": "disconnect"})["id"]
    assert [fault["id"] for fault in listed(api)][-1] == added, "added after the configured"


def test_a_server_holds_at_most_the_rule_limit(start_server: StartServer) -> None:
    configured = [
        {"stage": "rcpt", "match": f"user{n}@*", "action": "disconnect"}
        for n in range(MAX_FAULT_RULES - 1)
    ]
    api = faults_api(start_server, faults=configured)

    api.ok("POST", "/faults", BOUNCE)
    over = api.call("POST", "/faults", BOUNCE)

    assert over.status == 422, over.body
    assert str(MAX_FAULT_RULES) in over.body["error"]
    assert len(listed(api)) == MAX_FAULT_RULES
    api.ok("DELETE", "/faults/f1")
    api.ok("POST", "/faults", BOUNCE)


def test_a_configuration_over_the_rule_limit_is_refused(tmp_path: Path) -> None:
    rules = [BOUNCE] * (MAX_FAULT_RULES + 1)

    with pytest.raises(ConfigError, match=r"smtp\.faults"):
        config_from_mapping({"data_dir": str(tmp_path), "smtp": {"faults": rules}}, "test")


BAD_RULES = [
    ("stage", {"stage": "quit", "reply": "550 No"}),
    ("stage", {"reply": "550 No"}),
    ("action", {"stage": "rcpt", "action": "bounce", "reply": "550 No"}),
    ("reply.code", {"stage": "rcpt", "reply": {"code": 250}}),
    ("reply.code", {"stage": "rcpt", "reply": {"code": 354}}),
    ("reply.code", {"stage": "rcpt", "reply": {"code": 600}}),
    ("reply", {"stage": "rcpt", "reply": "250 2.0.0 Fine"}),
    ("enhanced", {"stage": "rcpt", "reply": {"code": 550, "enhanced": "4.2.2"}}),
    ("enhanced", {"stage": "rcpt", "reply": "452 5.2.2 Mailbox full"}),
    ("reply.text", {"stage": "rcpt", "reply": {"code": 550, "text": "No\r\n250 OK"}}),
    ("delay", {"stage": "rcpt", "action": "delay", "delay": 301}),
    ("delay", {"stage": "rcpt", "action": "delay", "delay": "6m"}),
    ("delay", {"stage": "rcpt", "action": "delay", "delay": 0}),
    ("delay", {"stage": "rcpt", "action": "delay", "delay": -1}),
    ("delay", {"stage": "rcpt", "action": "delay"}),
    ("delay", {"stage": "rcpt", "reply": "550 No", "delay": 2}),
    ("times", {"stage": "rcpt", "reply": "550 No", "times": 0}),
    ("times", {"stage": "rcpt", "reply": "550 No", "times": True}),
    ("reply", {"stage": "rcpt", "action": "reply"}),
    ("reply", {"stage": "rcpt", "action": "disconnect", "reply": "550 No"}),
    ("match", {"stage": "rcpt", "match": "", "reply": "550 No"}),
    ("colour", {"stage": "rcpt", "reply": "550 No", "colour": "red"}),
]


@pytest.mark.parametrize(("field", "rule"), BAD_RULES, ids=[str(r) for _, r in BAD_RULES])
def test_a_bad_rule_is_a_422_naming_its_field(
    start_server: StartServer, field: str, rule: dict[str, Any]
) -> None:
    api = faults_api(start_server)

    reply = api.call("POST", "/faults", rule)

    assert reply.status == 422, reply.body
    assert field in reply.body["error"], reply.body
    assert listed(api) == [], "nothing was added"


def test_openapi_lists_the_faults_routes(start_server: StartServer) -> None:
    document = Api(start_server(record=False).api_url).ok("GET", "/openapi.json")

    operations = {
        (method, path): operation["operationId"]
        for path, entry in document["paths"].items()
        if path.startswith("/faults")
        for method, operation in entry.items()
    }

    assert operations == {
        ("post", "/faults"): "add_fault",
        ("get", "/faults"): "list_faults",
        ("delete", "/faults"): "clear_faults",
        ("delete", "/faults/{id}"): "delete_fault",
    }
    rule = document["components"]["schemas"]["FaultRule"]
    assert rule["properties"]["stage"]["enum"] == ["connect", "helo", "mail", "rcpt", "data"]
    delay = rule["properties"]["delay"]["anyOf"][0]
    assert (delay["exclusiveMinimum"], delay["maximum"]) == (0, 300), "JSON Schema keywords"
    assert "FaultReply" in document["components"]["schemas"]


def test_the_configuration_example_of_the_docs_starts_a_server(start_server: StartServer) -> None:
    page = (Path(__file__).parents[2] / "docs" / "faults.md").read_text(encoding="utf-8")
    example = yaml.safe_load(page.split("```yaml\n", 1)[1].split("```", 1)[0])
    api = Api(start_server(record=False, **example).api_url)

    assert len(listed(api)) == len(example["smtp"]["faults"])
