"""Listing and searching a full inbox: p95 per query over 10,000 messages (target ≤ 50 ms).

The store is filled with 10,000 messages of about 1.5 KB of text each (a tenth with an HTML
part, a tenth with an attachment, some with Japanese text), spread over 30 days. Each query
below then asks for the first page of 50 with the total (as the UI does) many times, and the
last page is asked for once more without a query. Inserts are timed as they happen: one
durable transaction each, then BATCH per transaction, as the inbox consumer stores a reserved
batch of jobs.
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailrunner.inbox.message import InboxAttachment, StoredMessage
from mailrunner.inbox.query import parse
from mailrunner.inbox.store import InboxStore

MESSAGES = 10_000
RUNS = 60
PAGE = 50
TARGET_P95_MS = 50.0
QUERIES = [
    "",
    "invoice",
    "zebra-777",
    "from:sender17@",
    "to:team",
    'subject:"weekly report"',
    "has:attachment is:unread",
    "after:2026-01-20 before:2026-01-25",
    "-invoice -report",
    "ab",
    "ü",
    "東京タワー",
    "invoice paid -report has:attachment",
]
"""Common words (many hits), a rare one, each key, CJK, and words too short for the trigram
index: one found in most messages, one found nowhere (every body is read)."""
BATCH = 10

_LETTERS = random.Random(7)
_WORDS = [
    "".join(_LETTERS.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2 + n % 8))
    for n in range(3000)
]
_TOPICS = ["invoice", "weekly report", "lunch", "deploy", "password reset", "newsletter"]


def _message(number: int, rng: random.Random, start: datetime) -> StoredMessage:
    topic = rng.choice(_TOPICS)
    body = " ".join(rng.choice(_WORDS) for _ in range(250))
    if number % 13 == 0:
        body += " 東京タワーで会いましょう"
    if number == MESSAGES // 2:
        body += " zebra-777"
    if topic == "invoice":
        body += " paid"
    html = f"<html><body><p>{body}</p></body></html>" if number % 10 == 0 else ""
    attachments = (
        [InboxAttachment("a.pdf", "application/pdf", None, False, b"%PDF" * 256)]
        if number % 10 == 3
        else []
    )
    raw = f"Subject: {topic} {number}\r\n\r\n{body}\r\n".encode()
    return StoredMessage(
        id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        received_at=start + timedelta(seconds=number * 259),  # 10,000 over 30 days
        from_=f"Sender {number % 200} <sender{number % 200}@example.com>",
        to="team@example.com" if number % 4 == 0 else f"user{number % 50}@example.com",
        subject=f"{topic} {number}",
        text_body="" if html else body,
        html_body=html,
        size=len(raw),
        snippet=body[:200],
        event_json=b"{}",
        raw=raw,
        attachments=attachments,
    )


def fill(store: InboxStore) -> float:
    """Insert MESSAGES messages one by one; inserts per second."""
    rng = random.Random(13)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    for number in range(MESSAGES):
        message = _message(number, rng, start)
        store.insert(message)
        if number % 7 == 0:
            store.set_read(message.id, True)
    return MESSAGES / (time.perf_counter() - started)


def fill_in_batches(store: InboxStore, count: int) -> float:
    """Insert `count` more messages BATCH at a time; inserts per second."""
    rng = random.Random(17)
    start = datetime(2026, 2, 1, tzinfo=UTC)
    messages = [_message(number, rng, start) for number in range(count)]
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        store.insert_many(messages[first : first + BATCH])
    return count / (time.perf_counter() - started)


def p95_ms(store: InboxStore, query: str, offset: int = 0) -> tuple[float, float, int]:
    """p50 and p95 in ms of parsing `query` and listing a page; and its total."""
    timings = []
    total = 0
    for _ in range(RUNS):
        started = time.perf_counter()
        total = store.list(parse(query), limit=PAGE, offset=offset).total
        timings.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(timings, n=20)
    return statistics.median(timings), cuts[18], total


def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="mailrunner-bench-", dir="."))
    try:
        with InboxStore(directory / "inbox.db", max_messages=None) as store:
            rate = fill(store)
            print(f"inbox store: {MESSAGES} messages inserted at {rate:.0f}/s (durable, one each)")
            print(f"a page of {PAGE} with its total, {RUNS} runs each:")
            worst = 0.0
            cases = [(query, 0) for query in QUERIES] + [("", MESSAGES - PAGE)]
            for query, offset in cases:
                median, p95, total = p95_ms(store, query, offset)
                worst = max(worst, p95)
                label = f"{query!r} offset {offset}" if offset else repr(query)
                print(f"  {label:42} {total:6} hits  p50 {median:6.2f} ms  p95 {p95:6.2f} ms")
            rate = fill_in_batches(store, 1000)
            print(f"1000 more inserted {BATCH} per transaction at {rate:.0f}/s")
    finally:
        shutil.rmtree(directory)
    verdict = "ok" if worst <= TARGET_P95_MS else "MISSED"
    print(f"worst p95 {worst:.2f} ms (target ≤ {TARGET_P95_MS:.0f} ms): {verdict}")
    return 0 if worst <= TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
