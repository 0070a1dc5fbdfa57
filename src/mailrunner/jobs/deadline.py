"""The timing budget of a push: every grace and margin that "a 451 is never stored later"
rests on, in one place, so that changing one shows what it must stay under or over.

A push carries a deadline. A driver stores nothing whose storing has not begun by then, and
its answer may come a little later (a broker's verdict follows an fsync). Every party that
waits for that answer waits a little longer than the party it waits for, so that a definite
"not stored" (PushTimeout, answered 451) is never overtaken by a store:

    driver        answers by  deadline + VERDICT_GRACE
    remote node   deadline =  arrival + push_timeout - CALLER_MARGIN   (api/http.py)
    ApiClient     waits       push_timeout + REPLY_GRACE from sending   (api/client.py)
    SMTP side     waits       push_timeout + PUSH_GRACE                  (smtp/delivery.py)

A storing that has begun and cannot be withdrawn (a sqlite COMMIT) names the instant its
outcome comes by, up to COMMIT_WAIT after it began; the SMTP side then waits until that
instant + PUSH_GRACE. Whoever gives up without an answer treats the outcome as unknown
(451, attachment files kept): the client's retry makes a duplicate, never a loss.

The graces are multiples of one unit, GRACE; tests/jobs/test_deadline_budget.py checks the
inequalities between them. Stdlib only, imported by config, drivers, api and smtp alike.
"""

from __future__ import annotations

GRACE = 0.25
"""The unit of slack: what one hop is allowed (a request's way to a node or its answer's way
back, the SMTP side's own scheduling)."""

CALLER_MARGIN = GRACE
"""Seconds a remote node takes off a push request's push_timeout for the request's way to it
(counted from its arrival): the node gives up before its caller does."""

VERDICT_GRACE = 2 * GRACE
"""Seconds past a push's deadline a broker driver (redis, amqp, nats) waits for the broker's
verdict: the broker decided in time, but its answer follows an fsync, which a busy disk makes
slow. A driver without a verdict by then raises PushOutcomeUnknown, or withdraws the job."""

REPLY_GRACE = VERDICT_GRACE + CALLER_MARGIN
"""Seconds past its push_timeout the ApiClient awaits a node's answer: the node's deadline is
CALLER_MARGIN before the caller's (less the request's way there), its driver's verdict may
take VERDICT_GRACE more, and the answer needs one more hop back. So a request and its answer
may take 2 * CALLER_MARGIN between them before a verdict the node gave is missed. A node whose
sqlite COMMIT began before its deadline answers only once the COMMIT is done (up to
COMMIT_WAIT later), which may be after this grace: the push then raises
RequestOutcomeUnknown, and the SMTP side answers 451 and keeps the email's attachment files
for the job the node may still store."""

PUSH_GRACE = REPLY_GRACE + GRACE
"""Seconds past push_timeout, or past the instant a driver named for its outcome, that the
SMTP side waits before answering 451 on its own: a driver's verdict (VERDICT_GRACE) and the
ApiClient's answer or giving up (REPLY_GRACE) both come first."""

MIN_PUSH_TIMEOUT = 2 * GRACE
"""The shortest push_timeout a caller may ask for: a remote node still has time to store
after taking CALLER_MARGIN off it."""

MAX_PUSH_TIMEOUT = 3600.0
"""The longest push_timeout: an SMTP client does not wait an hour for its reply anyway."""

DEFAULT_PUSH_TIMEOUT = 5.0
"""Seconds a push may take when its caller names none (`SmtpJobsConfig.push_timeout`, the
API's `push_timeout`, `JobsService.push`)."""

COMMIT_WAIT = 5.0
"""Seconds from the start of its transaction that a push to the sqlite driver asks its caller
to wait for the COMMIT: the driver's busy timeout, what any other statement may wait for a
lock. A WAL commit takes no lock of its own, so only a stalled disk makes it slower. Not a
multiple of GRACE: it bounds a disk, not a hop."""
