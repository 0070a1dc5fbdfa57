"""The `auth` stage's context on the wire: the password travels in it and in no other stage's,
and a context's repr never shows it."""

from __future__ import annotations

import json

import pytest

from mailrunner.wire.hooks import (
    HOOK_STAGES,
    HookAuth,
    HookContext,
    decode_context,
    encode_context,
)


def test_the_auth_context_carries_the_password_and_its_repr_does_not() -> None:
    context = HookContext(
        hook="auth",
        uuid="u",
        remote_addr="192.0.2.1:2525",
        auth=HookAuth("alice", verified=False),
        password="wonder land",
    )
    wire = encode_context(context)
    assert json.loads(wire)["password"] == "wonder land"
    assert decode_context(wire) == context
    assert "wonder" not in repr(context)
    assert "wonder" not in repr(decode_context(wire))


@pytest.mark.parametrize("stage", HOOK_STAGES)
def test_no_other_stage_sends_or_reads_a_password(stage: str) -> None:
    context = HookContext(hook=stage, uuid="u", remote_addr="a", password="leak")  # type: ignore[arg-type]
    assert b"password" not in encode_context(context)
    forged = json.loads(encode_context(context))
    forged["password"] = "leak"
    assert decode_context(json.dumps(forged).encode()).password is None
