"""An API client pushes an email job straight to the inbox pipeline, naming a file of the
server's as an attachment's `path`: the inbox must not read it.

Before the fix the inbox consumer read whatever `path` a job named and served the bytes at
`/messages/{id}/attachments/0` (a `serve` with no token gave out /etc/passwd this way; with a
token, any token holder could, e.g. a remote SMTP ingress). The inbox now takes such an
attachment from the raw message the job carries.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

from support.events import BUILDER, arrival, decode_event
from support.processes import ServeProcess
from support.sample_mail import WITH_ATTACHMENT
from support.waiting import wait_until

SECRET = b"the server's own secret"


def call(server: ServeProcess, method: str, path: str, body: Any = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.api_port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data is not None else {},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: bytes = response.read()
        return answer


def test_a_pushed_attachment_path_never_reads_the_servers_files(serve: Any, tmp_path: Path) -> None:
    server: ServeProcess = serve(inbox={"enabled": True})
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    event = decode_event(asyncio.run(BUILDER.build(arrival(), WITH_ATTACHMENT)))
    (entry,) = event["attachments"]
    del entry["content"]
    entry["path"] = str(secret)
    job = {
        "id": event["id"],
        "job": "smtp.email",
        "payload_base64": base64.b64encode(json.dumps(event).encode()).decode(),
        "options": {"pipeline": "inbox"},
    }
    call(server, "POST", "/jobs/push", {"job": job})

    def listed() -> bool:
        return json.loads(call(server, "GET", "/messages"))["total"] == 1

    wait_until(listed, "the pushed message in the inbox")
    served = call(server, "GET", f"/messages/{event['id']}/attachments/0")
    assert SECRET not in served
    assert served == b"DATA", "the attachment comes from the raw message the job carries"
