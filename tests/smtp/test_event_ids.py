"""Event ids come from a pool of random bytes (`smtp.event_ids`): each is a canonical random
UUID, none repeats across batches, and a forked child never repeats its parent's."""

from __future__ import annotations

import os
import uuid

from mailrunner.smtp.event_ids import event_id

MANY = 3000
"""Over ten batches of the pool."""


def test_every_id_is_a_canonical_random_uuid() -> None:
    for _ in range(MANY):
        text = event_id()
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # lower case, hyphenated: what attachments.py accepts


def test_ids_do_not_repeat_across_batches() -> None:
    ids = [event_id() for _ in range(MANY)]
    assert len(set(ids)) == MANY


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    event_id()  # the pool holds unread bytes when the process forks
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and exits
        os.write(writing, "\n".join(event_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        childs = set(pipe.read().split("\n"))
    os.waitpid(child, 0)
    parents = {event_id() for _ in range(10)}
    assert len(childs) == 10
    assert not childs & parents
