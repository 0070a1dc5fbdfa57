"""`mailrunner messages …` against a running server: list and search, show, raw bytes,
delete and clear, as tables and as --json."""

from __future__ import annotations

import json
import subprocess
import sys

from inbox_api_support import WITH_PDF, InboxServer, plain

from support.processes import run_cli


def cli(server: InboxServer, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli("messages", *args, "--server", server.api_url)
    assert result.returncode == 0, result.stderr
    return result


def test_list_shows_a_table_or_the_json_and_searches(inbox_server: InboxServer) -> None:
    first = inbox_server.add(plain("first note"))
    second = inbox_server.add(WITH_PDF)
    table = cli(inbox_server, "list").stdout
    assert table.index(second) < table.index(first), "newest first"
    assert "Invoice" in table
    assert "2 of 2 shown" in table
    answer = json.loads(cli(inbox_server, "list", "--json").stdout)
    assert answer == inbox_server.ok("GET", "/messages")
    found = json.loads(cli(inbox_server, "list", "has:attachment", "--json").stdout)
    assert [m["id"] for m in found["messages"]] == [second]
    paged = json.loads(cli(inbox_server, "list", "--limit", "1", "--offset", "1", "--json").stdout)
    assert [m["id"] for m in paged["messages"]] == [first]


def test_a_bad_query_exits_1_with_the_servers_message(inbox_server: InboxServer) -> None:
    result = run_cli("messages", "list", "before:someday", "--server", inbox_server.api_url)
    assert result.returncode == 1
    assert "position 7" in result.stderr


def test_show_prints_the_envelope_attachments_and_text(inbox_server: InboxServer) -> None:
    message_id = inbox_server.add(WITH_PDF)
    shown = cli(inbox_server, "show", message_id).stdout
    assert "subject: Invoice" in shown
    assert "carol@example.com" in shown
    assert "0: résumé.pdf (application/pdf, 13 bytes)" in shown
    assert shown.rstrip().endswith("please pay")
    event = json.loads(cli(inbox_server, "show", message_id, "--json").stdout)
    assert (event["id"], event["read"]) == (message_id, False)


def test_raw_writes_the_exact_bytes(inbox_server: InboxServer) -> None:
    message_id = inbox_server.add(WITH_PDF)
    command = ["messages", "raw", message_id, "--server", inbox_server.api_url]
    result = subprocess.run(
        [sys.executable, "-m", "mailrunner", *command], capture_output=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout) == (0, WITH_PDF)


def test_an_unknown_message_exits_1(inbox_server: InboxServer) -> None:
    for command in ("show", "raw", "delete"):
        result = run_cli("messages", command, "nope", "--server", inbox_server.api_url)
        assert result.returncode == 1, command
        assert "no message 'nope'" in result.stderr


def test_delete_and_clear(inbox_server: InboxServer) -> None:
    keep = inbox_server.add(plain("keep"))
    doomed = inbox_server.add(plain("doomed"))
    inbox_server.add(plain("spam"))
    assert json.loads(cli(inbox_server, "delete", doomed, "--json").stdout) == {"ok": True}
    assert "count: 1" in cli(inbox_server, "clear", "subject:spam").stdout
    assert [m["id"] for m in inbox_server.ok("GET", "/messages")["messages"]] == [keep]
    assert json.loads(cli(inbox_server, "clear", "--json").stdout) == {"count": 1}
    assert inbox_server.ok("GET", "/messages")["total"] == 0
