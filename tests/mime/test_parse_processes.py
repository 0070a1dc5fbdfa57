"""Parse children (`ParseProcesses`, `mailrunner.mime.parse_child`): a child's parse is the
in-process parse, children start only once the server is busy, a dead child costs its
messages nothing but a second parse, and nothing outlives a stop: neither in the unit nor in
`mailrunner serve` as users run it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import random
import signal
import smtplib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailrunner.errors import ParseChildLost
from mailrunner.mime import parse_processes
from mailrunner.mime.attachments import MemoryStorage
from mailrunner.mime.build import CHILD_PLAIN_BYTES, Arrival, EventBuilder
from mailrunner.mime.parse import ParsedMessage, ParseOptions, parse
from mailrunner.mime.parse_processes import BUSY_AFTER, ParseProcesses
from support.processes import ServeProcess
from support.waiting import WAIT_SECONDS, wait_until

_Children = TypeVar("_Children", bound=ParseProcesses)
CORPUS = Path(__file__).parent / "corpus"
CHILD_MODULE = b"mailrunner.mime.parse_child"
RANDOM = random.Random(20260117)


# --- messages -------------------------------------------------------------------------------


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def plain_1kb() -> bytes:
    body = ("The quick brown fox jumps over the lazy dog. " * 23)[:1000]
    return crlf(
        b"From: Alice <alice@example.com>\nTo: bob@example.com\nSubject: plain\n"
        b"Message-ID: <plain@example.com>\n\n" + body.encode()
    )


def alternative_with_pdf(pdf: bytes) -> bytes:
    message = MIMEMultipart("mixed")
    message["From"] = "Sender <sender@example.com>"
    message["To"] = "rcpt@example.com"
    message["Subject"] = "report attached"
    alternative = MIMEMultipart("alternative")
    alternative.attach(MIMEText("plain text version\n", "plain", "utf-8"))
    alternative.attach(MIMEText("<p>html <b>version</b></p>\n", "html", "utf-8"))
    message.attach(alternative)
    attachment = MIMEApplication(pdf, "pdf")
    attachment.add_header("Content-Disposition", "attachment", filename="report.pdf")
    message.attach(attachment)
    return crlf(message.as_bytes())


def encoded_headers() -> bytes:
    return crlf(
        b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>\n"
        b"To: =?iso-8859-1?q?Fran=E7ois?= <francois@example.fr>\n"
        b"Subject: =?utf-8?b?0J/RgNC40LLQtdGCLCDQvNC40YA=?= =?utf-8?q?_=E2=9C=93?=\n"
        + "X-Raw: déjà vu, 日本語\n".encode()
        + "Comments: naïve UTF-8 without encoding\n".encode()
        + b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        + "Grüße aus Köln\n".encode()
    )


def malformed() -> bytes:
    return crlf(
        b"From: broken\nSubject: malformed\nContent-Type: multipart/mixed; boundary=zz\n\n"
        b"--zz\nContent-Type: text/plain\n\nno closing boundary\n"
        b"--zz\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        b"Content-Disposition: attachment; filename=bad.bin\n\n@@@not base64!!!\n"
    )


def nested(depth: int, leaves: int) -> bytes:
    """`depth` nested multipart/mixed containers, `leaves` text attachments in the deepest."""
    inner = MIMEMultipart("mixed")
    for number in range(leaves):
        leaf = MIMEText(f"leaf {number}\n")
        leaf.add_header("Content-Disposition", "attachment", filename=f"leaf{number}.txt")
        inner.attach(leaf)
    for _ in range(depth - 1):
        outer = MIMEMultipart("mixed")
        outer.attach(inner)
        inner = outer
    inner["Subject"] = f"nested {depth}x{leaves}"
    return crlf(inner.as_bytes())


def addresses() -> bytes:
    return crlf(
        b'From: "Doe, John" <john@example.com>\n'
        b"To: a@example.com, B <b@example.com>, undisclosed-recipients:;\n"
        b"Cc: =?utf-8?q?Z=C3=B6e?= <zoe@example.org>, c@example.net\n"
        b"Reply-To: Replies <replies@example.com>\n"
        b"Subject: addresses\n\nbody\n"
    )


def inline_image(png: bytes) -> bytes:
    message = MIMEMultipart("related")
    message["From"] = "art@example.com"
    message["Subject"] = "inline image"
    message.attach(MIMEText('<p><img src="cid:logo@example.com"></p>', "html"))
    image = MIMEImage(png, "png")
    image.add_header("Content-ID", "<logo@example.com>")
    image.add_header("Content-Disposition", "inline", filename="logo.png")
    message.attach(image)
    return crlf(message.as_bytes())


def made_messages() -> dict[str, bytes]:
    return {
        "plain_1kb": plain_1kb(),
        "alternative_with_pdf": alternative_with_pdf(b"%PDF-1.4\n" + RANDOM.randbytes(20_000)),
        # larger than a pipe's buffer both ways: the request and the pickled reply
        "big_attachment": alternative_with_pdf(RANDOM.randbytes(200_000)),
        "encoded_headers": encoded_headers(),
        "malformed": malformed(),
        "addresses": addresses(),
        "inline_image": inline_image(b"\x89PNG\r\n\x1a\n" + RANDOM.randbytes(3000)),
        "nested": nested(4, 3),
        "empty": b"",
    }


def corpus_messages() -> dict[str, bytes]:
    return {path.stem: crlf(path.read_bytes()) for path in sorted(CORPUS.glob("*.eml"))}


# --- processes ------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (any thread's), zombies left out."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children.extend(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return [child for child in children if alive(child)]


def alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def parse_children_of(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if CHILD_MODULE in command:
            found.append(child)
    return found


def said_ready(logs: str, pid: int) -> bool:
    """The server logged that this child answered READY (it read its options)."""
    return any(
        "parse child ready" in line and f"pid={pid}" in line.replace('"', "").replace(": ", "=")
        for line in logs.splitlines()
    )


def bytes_read(pid: int) -> int:
    """What `pid` has read so far (files and pipes): /proc/PID/io's rchar."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn in /proc/{pid}/status")


def differences(got: ParsedMessage, expected: ParsedMessage) -> dict[str, str]:
    """The fields that differ, each with both values shortened (a whole parse with a 200 KB
    attachment is no message to read)."""
    return {
        name: f"{_short(getattr(got, name))} != {_short(getattr(expected, name))}"
        for name in (field.name for field in dataclasses.fields(ParsedMessage))
        if getattr(got, name) != getattr(expected, name)
    }


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


async def let_the_loop_run() -> None:
    """A few turns of the loop: a task `parse` created would have forked its child by now
    (the fork is in the task's first step)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def parse_on_child(children: ParseProcesses, raw: bytes) -> ParsedMessage:
    """Ask until a child answers (it starts and reads its options first)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while (parsed := await children.parse(raw)) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"no parse child answered within {WAIT_SECONDS} s")
        await asyncio.sleep(0.01)
    return parsed


@contextlib.asynccontextmanager
async def running(children: _Children) -> AsyncIterator[_Children]:
    """`children`, stopped however the block ends."""
    try:
        yield children
    finally:
        await children.stop()


def building_with(children: ParseProcesses, executor: Executor | None = None) -> EventBuilder:
    """An event builder as the server's, with these children (and parse threads)."""
    return EventBuilder(
        hostname="mx.example",
        options=ParseOptions(),
        storage=MemoryStorage(),
        include_raw=False,
        offload_bytes=1024 * 1024,
        executor=executor,
        children=children,
    )


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """`wait_until` for a coroutine: the loop keeps running while it waits."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_SECONDS}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def no_child_left() -> Iterator[None]:
    """Every test stops what it started: no parse child of this process outlives it."""
    before = set(parse_children_of(os.getpid()))
    yield
    left = set(parse_children_of(os.getpid())) - before
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"parse children left running: {sorted(left)}"


# --- the unit -------------------------------------------------------------------------------


def test_a_child_parses_every_message_as_the_process_itself_would() -> None:
    default = ParseOptions()
    tight = ParseOptions(max_parts=2, max_depth=2)
    messages = {**corpus_messages(), **made_messages()}
    # the cuts are what this test says they are: the tight limits do cut these
    assert parse(nested(4, 3), tight).parse_errors
    assert parse(nested(1, 4), tight).parse_errors
    assert parse(malformed(), default).parse_errors

    async def compare(options: ParseOptions, raws: dict[str, bytes]) -> None:
        async with running(ParseProcesses(1, options, busy_after=0)) as children:
            await parse_on_child(children, b"Subject: warm-up\r\n\r\nx\r\n")
            # all at once: each answer must reach the message it belongs to
            parsed = await asyncio.gather(*(children.parse(raw) for raw in raws.values()))
            assert len(children.pids) == 1
        for (name, raw), on_child in zip(raws.items(), parsed, strict=True):
            assert on_child is not None, f"{name}: the ready child gave no answer"
            differing = differences(on_child, parse(raw, options))
            assert not differing, f"{name}: the child's parse differs in {differing}"

    async def main() -> None:
        cut = {"nested": nested(4, 3), "wide": nested(1, 4), "malformed": malformed()}
        async with asyncio.TaskGroup() as group:
            group.create_task(compare(default, messages))
            group.create_task(compare(tight, cut))

    asyncio.run(main())

    parsed = parse(messages["alternative_with_pdf"])
    assert parsed.html_body
    assert parsed.body
    assert [part.filename for part in parsed.attachments] == ["report.pdf"]


def test_no_child_runs_before_busy_after_messages_were_parsed_in_process() -> None:
    raw = plain_1kb()

    async def main() -> None:
        async with running(ParseProcesses(1, ParseOptions(), busy_after=5)) as children:
            for _ in range(4):
                assert await children.parse(raw) is None
            await let_the_loop_run()
            assert children.pids == []
            assert parse_children_of(os.getpid()) == []
            assert await children.parse(raw) is None  # the fifth starts the child
            await wait_for(lambda: len(parse_children_of(os.getpid())) == 1, "the child")
            assert not differences(await parse_on_child(children, raw), parse(raw))
            assert children.pids == parse_children_of(os.getpid())

    asyncio.run(main())


def test_a_killed_child_raises_child_lost_and_is_replaced_no_sooner_than_restart_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = alternative_with_pdf(RANDOM.randbytes(5000))

    async def main() -> None:
        async with running(ParseProcesses(1, ParseOptions(), busy_after=0)) as children:
            await parse_on_child(children, raw)
            (first,) = children.pids
            monkeypatch.setattr(parse_processes, "RESTART_AFTER", 3600.0)
            os.kill(first, signal.SIGSTOP)  # it reads nothing more: the next parses wait
            waiting = [asyncio.create_task(children.parse(raw)) for _ in range(3)]
            await let_the_loop_run()
            assert not any(task.done() for task in waiting)
            os.kill(first, signal.SIGKILL)
            answers = await asyncio.wait_for(
                asyncio.gather(*waiting, return_exceptions=True), WAIT_SECONDS
            )
            assert [type(answer) for answer in answers] == [ParseChildLost] * 3
            for _ in range(3):
                assert await children.parse(raw) is None
            await let_the_loop_run()
            assert children.pids == [], "replaced within RESTART_AFTER"
            assert parse_children_of(os.getpid()) == []

            monkeypatch.setattr(parse_processes, "RESTART_AFTER", 0.0)
            assert not differences(await parse_on_child(children, raw), parse(raw))
            (second,) = children.pids
            assert second != first

    asyncio.run(main())


def test_a_stalled_child_is_killed_and_its_messages_raise_child_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child that spends STALLED_AFTER on one message (here: stopped, as a parse that never
    ends would look) is killed; the message and those queued behind it raise, so the server
    parses them on its parse threads."""
    raw = addresses()

    async def main() -> None:
        monkeypatch.setattr(parse_processes, "STALLED_AFTER", 0.5)
        monkeypatch.setattr(parse_processes, "RESTART_AFTER", 3600.0)
        async with running(ParseProcesses(1, ParseOptions(), busy_after=0)) as children:
            await parse_on_child(children, raw)
            (child,) = children.pids
            os.kill(child, signal.SIGSTOP)
            waiting = [asyncio.create_task(children.parse(raw)) for _ in range(2)]
            answers = await asyncio.wait_for(
                asyncio.gather(*waiting, return_exceptions=True), WAIT_SECONDS
            )
            assert [type(answer) for answer in answers] == [ParseChildLost] * 2
            wait_until(lambda: not alive(child), "the stalled child to be killed")

    asyncio.run(main())


def test_a_message_a_child_stalled_on_is_parsed_on_a_parse_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the server does with `ParseChildLost`: the event is still built, from a parse on
    the builder's executor, never on the event loop."""
    raw = addresses()
    on_threads: list[str] = []

    class Threads(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            on_threads.append(fn.__name__)
            return super().submit(fn, *args, **kwargs)

    async def main() -> None:
        monkeypatch.setattr(parse_processes, "STALLED_AFTER", 0.5)
        monkeypatch.setattr(parse_processes, "RESTART_AFTER", 3600.0)
        with Threads(1) as executor:
            async with running(ParseProcesses(1, ParseOptions(), busy_after=0)) as children:
                builder = building_with(children, executor)
                await parse_on_child(children, raw)
                (child,) = children.pids
                os.kill(child, signal.SIGSTOP)
                event = await asyncio.wait_for(builder.build(ARRIVAL, raw), WAIT_SECONDS)
                assert on_threads == ["parse"]
                assert event.message.reply_to == tuple(parse(raw).reply_to)
                assert event.message.headers["Received"][0].startswith("from client.example")

    asyncio.run(main())


def test_large_plain_messages_stay_on_the_loop_and_structured_ones_go_to_the_child() -> None:
    """A message without MIME structure over CHILD_PLAIN_BYTES costs the loop less to parse
    than to send to a child; a small one, or one with MIME structure, goes to the child."""
    plain_small = b"Subject: small\r\n\r\n" + b"x" * 70 + b"\r\n"
    plain_large = b"Subject: large\r\n\r\n" + (b"y" * 70 + b"\r\n") * 400
    structured = alternative_with_pdf(RANDOM.randbytes(30_000))
    assert len(plain_large) > CHILD_PLAIN_BYTES < len(structured)
    sent: list[bytes] = []

    class Counted(ParseProcesses):
        async def parse(self, raw: bytes) -> ParsedMessage | None:
            sent.append(raw)
            return await super().parse(raw)

    async def main() -> None:
        async with running(Counted(1, ParseOptions(), busy_after=0)) as children:
            builder = building_with(children)
            await parse_on_child(children, plain_small)
            sent.clear()
            for raw in (plain_small, plain_large, structured):
                event = await builder.build(ARRIVAL, raw)
                assert event.message.subject == parse(raw).subject
            assert sent == [plain_small, structured]

    asyncio.run(main())


def test_a_busy_child_is_not_taken_for_a_stalled_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The time counts from the start of the message the child works on, not from when a
    message was queued: a backlog longer than STALLED_AFTER is no stall."""
    raw = alternative_with_pdf(RANDOM.randbytes(60_000))

    async def main() -> None:
        async with running(ParseProcesses(1, ParseOptions(), busy_after=0)) as children:
            await parse_on_child(children, raw)
            started = time.monotonic()
            await children.parse(raw)
            one = time.monotonic() - started
            stalled_after = max(one * 20, 0.3)
            monkeypatch.setattr(parse_processes, "STALLED_AFTER", stalled_after)
            queued = int(stalled_after / one * 3) + 1  # three times longer than one stall
            backlog = [children.parse(raw) for _ in range(queued)]
            answers = await asyncio.wait_for(asyncio.gather(*backlog), WAIT_SECONDS * 4)
            assert all(answer is not None for answer in answers)
            assert len(children.pids) == 1, "a busy child was killed"

    asyncio.run(main())


def test_a_child_ignores_sigint_and_keeps_parsing() -> None:
    raw = addresses()

    async def main() -> None:
        async with running(ParseProcesses(1, ParseOptions(), busy_after=0)) as children:
            await parse_on_child(children, raw)
            (pid,) = children.pids
            assert ignored_signals(pid) & (1 << (signal.SIGINT - 1))
            os.kill(pid, signal.SIGINT)
            for _ in range(3):
                parsed = await children.parse(raw)
                assert parsed is not None, "the child no longer answers"
                assert not differences(parsed, parse(raw))
            assert children.pids == [pid]
            assert alive(pid)

    asyncio.run(main())


def test_stop_ends_the_child_and_later_parses_start_none() -> None:
    raw = plain_1kb()
    children = ParseProcesses(1, ParseOptions(), busy_after=0)

    async def run_then_stop() -> int:
        async with running(children):
            await parse_on_child(children, raw)
            (pid,) = children.pids
        return pid

    pid = asyncio.run(run_then_stop())
    assert children.pids == []
    assert not Path(f"/proc/{pid}").exists(), "the child was neither ended nor reaped"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

    async def parse_after_stop() -> None:
        for _ in range(3):
            assert await children.parse(raw) is None
        await let_the_loop_run()
        assert children.pids == []
        assert parse_children_of(os.getpid()) == []
        await children.stop()  # a second stop is harmless

    asyncio.run(parse_after_stop())


def test_no_child_is_started_with_a_count_of_zero() -> None:
    raw = plain_1kb()

    async def main() -> None:
        async with running(ParseProcesses(0, ParseOptions(), busy_after=0)) as children:
            for _ in range(20):
                assert await children.parse(raw) is None
            await let_the_loop_run()
            assert children.pids == []
            assert parse_children_of(os.getpid()) == []

    asyncio.run(main())


def test_child_count_setting() -> None:
    assert parse_processes.child_count(0) == 0
    assert parse_processes.child_count(3) == 3
    assert parse_processes.child_count("auto") == (1 if (os.cpu_count() or 1) > 1 else 0)


ARRIVAL = Arrival(
    event_id="01JSTALLEDCHILD0000000000",
    connection_id="c0ffee",
    remote_addr="127.0.0.1:40000",
    remote_host="127.0.0.1",
    received_at=datetime(2026, 12, 3, tzinfo=UTC),
    helo="client.example",
    esmtp=True,
    mail_from="sender@example.com",
    rcpt_to=("rcpt@example.com",),
    authentication=None,
)


# --- mailrunner serve -----------------------------------------------------------------------

TRAFFIC = BUSY_AFTER + 20
"""Past the server's own parses: the child starts on message BUSY_AFTER."""
PER_SESSION = 60


def send_traffic(port: int, count: int) -> None:
    """`count` small messages over a few sessions, several per session."""
    sent = 0
    while sent < count:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for _ in range(min(PER_SESSION, count - sent)):
                message = f"Subject: traffic {sent}\r\n\r\nmessage {sent}\r\n"
                client.sendmail("load@example.com", ["rcpt@example.com"], message.encode())
                sent += 1


def attachment_bytes(attachment: dict[str, Any]) -> bytes:
    if "content" in attachment:
        return base64.b64decode(attachment["content"])
    return Path(attachment["path"]).read_bytes()


def test_a_busy_serve_parses_on_its_child_and_its_sigterm_ends_the_child(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(smtp={"parse": {"processes": 1}})
    send_traffic(server.port, TRAFFIC)
    wait_until(lambda: len(parse_children_of(server.process.pid)) == 1, "the parse child")
    (child,) = parse_children_of(server.process.pid)
    wait_until(lambda: said_ready(server.logs(), child), "the parse child to say it is ready")

    pdf = b"%PDF-1.4\n" + RANDOM.randbytes(30_000)
    png = b"\x89PNG\r\n\x1a\n" + RANDOM.randbytes(2000)
    distinctive = [
        alternative_with_pdf(pdf),
        encoded_headers(),
        inline_image(png),
        addresses(),
    ]
    read_before = bytes_read(child)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        for raw in distinctive:
            client.sendmail("sender@example.com", ["rcpt@example.com"], raw)
    assert bytes_read(child) - read_before >= sum(map(len, distinctive)), (
        "the child did not read the messages: they were parsed in the server"
    )

    events = server.wait_events(TRAFFIC + len(distinctive))
    by_subject = {event["message"]["subject"]: event for event in events}
    assert len(by_subject) == TRAFFIC + len(distinctive)

    report = by_subject["report attached"]["message"]
    assert report["from"] == [{"email": "sender@example.com", "name": "Sender"}]
    assert report["body"] == "plain text version\n"
    assert report["html_body"] == "<p>html <b>version</b></p>\n"
    (attachment,) = by_subject["report attached"]["attachments"]
    assert attachment["filename"] == "report.pdf"
    assert attachment["content_type"] == "application/pdf"
    assert attachment_bytes(attachment) == pdf

    encoded = by_subject["Привет, мир ✓"]["message"]
    assert encoded["from"] == [{"email": "juergen@example.de", "name": "Jürgen Müller"}]
    assert encoded["to"] == [{"email": "francois@example.fr", "name": "François"}]
    assert encoded["headers"]["X-Raw"] == ["déjà vu, 日本語"]
    assert encoded["body"] == "Grüße aus Köln\n"

    (image,) = by_subject["inline image"]["attachments"]
    assert image["content_id"] == "<logo@example.com>" or image["content_id"] == "logo@example.com"
    assert image["inline"] is True
    assert attachment_bytes(image) == png

    listed = by_subject["addresses"]["message"]
    assert listed["from"] == [{"email": "john@example.com", "name": "Doe, John"}]
    assert [a["email"] for a in listed["to"]] == ["a@example.com", "b@example.com"]
    assert listed["cc"] == [
        {"email": "zoe@example.org", "name": "Zöe"},
        {"email": "c@example.net", "name": ""},
    ]
    assert listed["reply_to"] == [{"email": "replies@example.com", "name": "Replies"}]

    assert server.terminate() == 0
    wait_until(lambda: not alive(child), "the parse child to exit with its server")
    logs = server.logs()
    assert "parse child ready" in logs
    assert "parse child exited" not in logs, "the child died before the server stopped it"


def test_serve_with_processes_0_starts_no_child(serve: Callable[..., ServeProcess]) -> None:
    server = serve(smtp={"parse": {"processes": 0}})
    send_traffic(server.port, TRAFFIC)
    events = server.wait_events(TRAFFIC)
    assert {event["message"]["subject"] for event in events} == {
        f"traffic {number}" for number in range(TRAFFIC)
    }
    assert parse_children_of(server.process.pid) == []
    assert server.terminate() == 0
    assert "parse child" not in server.logs()
