"""A worker for `smtp.auth.mode: hook` tests, written with the SDK: the username says what
`on_auth` does. `alice` with password `wonderland` → ACCEPT; `slow` with `wonderland` → ACCEPT
after $SLOW_SECONDS; `temp` → 454 4.7.0; `raise` → the hook raises; anyone else → the SDK's
535 5.7.8. `on_mail` accepts. Each hook call appends a JSON line `{"stage", "username",
"verified", "password"}` to $AUTH_LOG, so the tests see what each stage's context carried.
"""

from __future__ import annotations

import json
import os
import time

from mailrunner.worker import CONTINUE, Email, HookContext, Hooks, Reply, serve
from mailrunner.worker.hooks import WRONG_CREDENTIALS

LOG = os.environ.get("AUTH_LOG", "")


def record(context: HookContext) -> None:
    auth = context.auth
    line = {
        "stage": context.hook,
        "username": None if auth is None else auth.username,
        "verified": None if auth is None else auth.verified,
        "password": context.password,
        "repr_has_password": "wonderland" in repr(context),
    }
    with open(LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


class AuthHooks(Hooks):
    def on_auth(self, context: HookContext) -> Reply | None:
        record(context)
        username = context.auth.username if context.auth is not None else None
        if username == "temp":
            return Reply(454, "4.7.0", "Temporary authentication failure")
        if username == "slow":
            time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
            return None if context.password == "wonderland" else WRONG_CREDENTIALS
        if username == "raise":
            raise RuntimeError("the auth hook failed on purpose")
        if (username, context.password) == ("alice", "wonderland"):
            return None
        return WRONG_CREDENTIALS

    def on_mail(self, context: HookContext) -> Reply | None:
        record(context)
        return None


def on_email(email: Email) -> str:
    return CONTINUE


if __name__ == "__main__":
    serve(hooks=AuthHooks(), emails=on_email)
