"""The live feed behind /events on its own: fan-out, a slow stream losing its oldest events,
periodic events only while someone listens, and close."""

from __future__ import annotations

import asyncio

from mailrunner.inbox.feed import QUEUE_SIZE, Event, Feed, Subscription


async def drain(stream: Subscription) -> list[Event]:
    return [event async for event in stream]


def test_every_stream_gets_every_event_until_close() -> None:
    async def scenario() -> tuple[list[Event], list[Event], bool]:
        feed = Feed()
        first, second = feed.subscribe(), feed.subscribe()
        feed.publish("message", {"id": "a"})
        feed.publish("deleted", {"ids": ["a"]})
        got = [[await anext(stream) for _ in range(2)] for stream in (first, second)]
        feed.publish("message", {"id": "dropped"})
        await feed.close()  # what was not read yet is dropped: the streams end now
        await feed.close()  # idempotent
        async with first, second:
            assert await drain(first) == await drain(second) == []
        late = feed.subscribe()
        async with late:
            ended_at_once = await asyncio.wait_for(drain(late), 1) == []
        return got[0], got[1], ended_at_once

    first, second, ended_at_once = asyncio.run(scenario())
    expected = [Event("message", b'{"id":"a"}'), Event("deleted", b'{"ids":["a"]}')]
    assert first == second == expected
    assert expected[0].encode() == b'event: message\ndata: {"id":"a"}\n\n'
    assert ended_at_once, "a stream opened after close ends at once"


def test_a_stream_that_falls_behind_loses_its_oldest_events() -> None:
    async def scenario() -> list[int]:
        feed = Feed()
        async with feed.subscribe() as stream:
            for number in range(QUEUE_SIZE + 10):
                feed.publish("message", number)
            return [int((await anext(stream)).data) for _ in range(QUEUE_SIZE)]

    assert asyncio.run(scenario()) == list(range(10, QUEUE_SIZE + 10))


def test_periodic_events_tick_only_while_someone_listens() -> None:
    async def scenario() -> tuple[int, int, list[str]]:
        feed = Feed()
        ticks = 0

        async def compute() -> dict[str, int]:
            nonlocal ticks
            ticks += 1
            return {"tick": ticks}

        feed.every("stats", 0.01, compute)
        await asyncio.sleep(0.05)
        before = ticks
        names = []
        async with feed.subscribe() as stream:
            async for event in stream:
                names.append(event.name)
                if len(names) == 3:
                    break
        after = ticks
        await asyncio.sleep(0.05)
        return before, ticks - after, names

    before, after_leaving, names = asyncio.run(scenario())
    assert before == 0, "nothing is computed before anyone listens"
    assert names == ["stats"] * 3
    assert after_leaving == 0, "nothing is computed once the last stream is gone"
