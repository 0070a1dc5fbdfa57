"""SMTP hook frames, each direction through each side's code: the server's `HookRunner` and
`decode_delivery_answer`, the SDK's `serve(hooks=…, emails=…)` over in-memory streams.

What the server encodes the SDK's hooks read back field for field; every verdict the SDK
writes the server reads back as the same reply; anything else a worker might answer (a 2xx,
a delivery decision at a hook, an oversized or malformed reply) is refused, never applied.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from mailrunner.pool.hooks import HookRunner
from mailrunner.wire.errors import BadContext, BadVerdict
from mailrunner.wire.frame import encode, payload_frame, read_frame, split_payload
from mailrunner.wire.hooks import (
    ACCEPT,
    HOOK_STAGES,
    MAX_VERDICT_BYTES,
    HookAuth,
    HookContext,
    Reply,
    decode_context,
    decode_verdict,
    encode_context,
    is_hook_context,
)
from mailrunner.wire.protocol import MODE_ENV, SMTP_MODE
from mailrunner.wire.smtp import CLOSE, CONTINUE, decode_delivery_answer
from mailrunner.worker import Email, Hooks, Worker, serve
from support.events import BUILDER, arrival

RAW = b"From: A <a@example.com>\r\nTo: b@example.com\r\nSubject: hooks\r\n\r\nbody\r\n"
ERROR_VERDICT = Reply(451, "4.3.0", "Temporary failure, try again later")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user")


@pytest.fixture(autouse=True)
def _smtp_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODE_ENV, SMTP_MODE)


class _RelayPool:
    """A pool whose one worker is the SDK's `serve`, run over in-memory streams."""

    name = "smtp"

    def __init__(self, **serving: Any) -> None:
        self._serving = serving

    async def exec(self, context: bytes, body: bytes = b"", **_: float) -> tuple[bytes, bytes]:
        requests = io.BytesIO(encode(payload_frame(context, body)))
        answers = io.BytesIO()
        serve(**self._serving, worker=Worker(requests, answers))
        answers.seek(0)
        frame = read_frame(answers)
        assert frame is not None
        return split_payload(frame)


class _Recorder(Hooks):
    """Records what each stage saw and answers what the test set for it."""

    def __init__(self, verdict: Reply | None = None) -> None:
        self.seen: list[tuple[HookContext, Email | None]] = []
        self.verdict = verdict

    def on_connect(self, context: HookContext) -> Reply | None:
        return self._record(context)

    def on_helo(self, context: HookContext) -> Reply | None:
        return self._record(context)

    def on_mail(self, context: HookContext) -> Reply | None:
        return self._record(context)

    def on_rcpt(self, context: HookContext) -> Reply | None:
        return self._record(context)

    def on_data(self, context: HookContext, email: Email) -> Reply | None:
        return self._record(context, email)

    def _record(self, context: HookContext, email: Email | None = None) -> Reply | None:
        self.seen.append((context, email))
        return self.verdict


def _runner(pool: _RelayPool) -> HookRunner:
    return HookRunner(pool, HOOK_STAGES, timeout=5.0, on_error=ERROR_VERDICT)  # type: ignore[arg-type]


def _context(stage: Any) -> HookContext:
    return HookContext(
        hook=stage,
        uuid="c0ffee",
        remote_addr="127.0.0.1:40000",
        helo="client.example" if stage != "connect" else None,
        auth=HookAuth(username="ann", verified=True),
        mail_from="" if stage in ("mail", "rcpt", "data") else None,
        mail_options=("SIZE=100", "BODY=8BITMIME") if stage != "connect" else (),
        rcpt="bob@example.com" if stage == "rcpt" else None,
        recipients=("alice@example.com",) if stage in ("rcpt", "data") else (),
    )


@pytest.mark.parametrize("stage", HOOK_STAGES)
@pytest.mark.parametrize("verdict", [None, NO_SUCH_USER, Reply(421, "4.7.0", "Go away")])
def test_each_stage_reaches_its_hook_with_the_context_and_the_verdict_comes_back(
    stage: str, verdict: Reply | None
) -> None:
    hooks = _Recorder(verdict)
    event = asyncio.run(BUILDER.build(arrival(), RAW))
    body = event.to_json() if stage == "data" else b""
    sent = _context(stage)

    answered = asyncio.run(_runner(_RelayPool(hooks=hooks)).verdict(sent, body))

    assert answered == verdict
    [(seen, email)] = hooks.seen
    assert seen == sent
    assert (email.id if email is not None else None) == (event.id if stage == "data" else None)


def test_a_context_without_auth_or_envelope_reads_back_as_nones() -> None:
    bare = HookContext(hook="connect", uuid="u", remote_addr="[::1]:25")

    assert decode_context(encode_context(bare)) == bare


def test_the_default_hooks_accept_every_stage() -> None:
    event = asyncio.run(BUILDER.build(arrival(), RAW))
    runner = _runner(_RelayPool(hooks=Hooks()))

    for stage in HOOK_STAGES:
        body = event.to_json() if stage == "data" else b""
        assert asyncio.run(runner.verdict(_context(stage), body)) is None, stage


def test_hook_and_email_frames_are_told_apart_by_their_context() -> None:
    event = asyncio.run(BUILDER.build(arrival(), RAW))

    assert is_hook_context(encode_context(_context("rcpt")))
    assert not is_hook_context(event.to_json())


@pytest.mark.parametrize(
    ("decision", "read"),
    [(CONTINUE, CONTINUE), (CLOSE, CLOSE), (None, CONTINUE), (NO_SUCH_USER, NO_SUCH_USER)],
)
def test_the_email_answer_may_be_a_refusal_the_server_reads_back(
    decision: str | Reply | None, read: str | Reply
) -> None:
    event = asyncio.run(BUILDER.build(arrival(), RAW))
    pool = _RelayPool(emails=lambda email: decision)

    context, body = asyncio.run(pool.exec(event.to_json()))

    assert decode_delivery_answer(context, body) == read


def test_a_worker_without_hooks_fails_a_hook_frame_and_the_runner_gives_the_error_verdict() -> None:
    runner = _runner(_RelayPool(emails=lambda email: CONTINUE))

    assert asyncio.run(runner.verdict(_context("rcpt"))) == ERROR_VERDICT


def test_a_hook_returning_no_reply_fails_to_the_error_verdict() -> None:
    class Confused(Hooks):
        def on_rcpt(self, context: HookContext) -> Any:
            return "550 no"

    assert asyncio.run(_runner(_RelayPool(hooks=Confused())).verdict(_context("rcpt"))) == (
        ERROR_VERDICT
    )


BAD_VERDICTS = {
    "empty": b"",
    "lowercase accept": b"accept",
    "a delivery decision: CONTINUE": b"CONTINUE",
    "a delivery decision: CLOSE": b"CLOSE",
    "2xx": b'{"code":250,"enhanced":"2.0.0","text":"OK"}',
    "3xx": b'{"code":354,"enhanced":"3.0.0","text":"go on"}',
    "600": b'{"code":600,"enhanced":"5.0.0","text":"no"}',
    "code as text": b'{"code":"550","enhanced":"5.1.1","text":"no"}',
    "code as bool": b'{"code":true,"enhanced":"5.1.1","text":"no"}',
    "class mismatch": b'{"code":550,"enhanced":"4.1.1","text":"no"}',
    "enhanced malformed": b'{"code":550,"enhanced":"5.1","text":"no"}',
    "missing text": b'{"code":550,"enhanced":"5.1.1"}',
    "empty text": b'{"code":550,"enhanced":"5.1.1","text":""}',
    "extra key": b'{"code":550,"enhanced":"5.1.1","text":"no","close":true}',
    "CRLF injection": b'{"code":550,"enhanced":"5.1.1","text":"no\\r\\n250 OK"}',
    "non-ASCII text": '{"code":550,"enhanced":"5.1.1","text":"нет"}'.encode(),
    "line too long": json.dumps({"code": 550, "enhanced": "5.1.1", "text": "x" * 600}).encode(),
    "oversized": b'{"code":550,"enhanced":"5.1.1","text":"no"}' + b" " * MAX_VERDICT_BYTES,
    "a JSON array": b'[550,"5.1.1","no"]',
    "not JSON": b"\xff\xfe550",
}


@pytest.mark.parametrize("answer", BAD_VERDICTS.values(), ids=BAD_VERDICTS.keys())
def test_an_answer_that_is_no_verdict_is_refused(answer: bytes) -> None:
    with pytest.raises(BadVerdict):
        decode_verdict(answer, b"")


def test_accept_with_a_body_is_refused() -> None:
    with pytest.raises(BadVerdict):
        decode_verdict(ACCEPT.encode(), b"trailing")


@pytest.mark.parametrize(
    "answer", [ACCEPT.encode(), *(v for k, v in BAD_VERDICTS.items() if "decision" not in k)]
)
def test_an_email_answered_with_a_hook_verdict_or_garbage_is_refused(answer: bytes) -> None:
    with pytest.raises(BadVerdict):
        decode_delivery_answer(answer, b"")


@pytest.mark.parametrize(
    ("code", "enhanced", "text"),
    [
        (250, "2.0.0", "OK"),
        (550, "4.1.1", "mismatch"),
        (550, "5.1.1", "two\r\nlines"),
        (550, "5.1.1", ""),
        (550, "5.1.1", "x" * 600),
        (True, "5.1.1", "bool"),
        (550, None, "no enhanced"),
    ],
)
def test_the_sdk_refuses_to_build_a_reply_the_server_would_refuse(
    code: Any, enhanced: Any, text: str
) -> None:
    with pytest.raises((TypeError, ValueError)):
        Reply(code, enhanced, text)


BAD_CONTEXTS = {
    "not JSON": b"{hook",
    "unknown stage": b'{"hook":"quit","uuid":"u","remote_addr":"a"}',
    "missing uuid": b'{"hook":"rcpt","remote_addr":"a"}',
    "auth without verified": b'{"hook":"rcpt","uuid":"u","remote_addr":"a","auth":{}}',
    "recipients as text": b'{"hook":"rcpt","uuid":"u","remote_addr":"a","recipients":"b"}',
    "a list": b'["hook"]',
}


@pytest.mark.parametrize("context", BAD_CONTEXTS.values(), ids=BAD_CONTEXTS.keys())
def test_a_context_the_server_would_not_write_is_refused_by_name(context: bytes) -> None:
    with pytest.raises(BadContext, match="hook context"):
        decode_context(context)
