"""The one exception tree of mailrunner.

Every failure the server can meet is one of these, so the edges (SMTP replies, HTTP statuses,
CLI exit codes) map a class to an answer in one table and never show exception text to a
client::

    MailrunnerError
    ├── ConfigError            bad or unreadable configuration (carries every problem found)
    ├── DeliveryError          an accepted message could not be handed on (SMTP answers 451)
    │   ├── DeliveryTimeout
    │   └── StorageError       its attachment or raw files could not be written (disk full)
    ├── PoolError              the worker pool could not run a payload
    │   ├── NoFreeWorker
    │   ├── ExecTimeout
    │   ├── WorkerCrashed      (the worker died, or broke the frame protocol)
    │   ├── WorkerFailed       the worker answered with an ERROR frame
    │   ├── BadAnswer          the worker answered something the protocol does not allow
    │   ├── PoolStopped
    │   └── PoolLimit          the change would leave the pool without a worker, or grow it
    │                          beyond max_workers
    ├── DriverError            a Jobs driver could not store, lease or acknowledge
    │   ├── DriverUnavailable
    │   └── PushTimeout        not stored by its deadline, nor later
    │       └── PushOutcomeUnknown  (also an OutcomeUnknown) sent, unconfirmed: may be stored
    ├── JobsError              a Jobs RPC call was refused
    │   ├── PipelineNotFound
    │   ├── PipelineConflict
    │   ├── InvalidPipeline
    │   └── InvalidJob
    └── ApiError               a management API call failed (status and message kept)
        ├── NotFound           no such pool, connection or route
        ├── ApiUnavailable     the server could not be reached
        │   └── RequestOutcomeUnknown  (also an OutcomeUnknown) a change was sent, no answer
        ├── Forbidden          the API does not trust the request (Host, Origin) or refuses
        │                      what it asks for (a Declare beyond the configuration)
        └── UnsupportedMediaType  a change not sent as application/json

    OutcomeUnknown             the other side may have done it (see the class): never alone,
                               always with one of the classes above

Bytes on the relay that break the wire protocol raise `mailrunner.wire.errors.WireError`
instead: the wire is shared with worker processes, which must not import this tree. The pool
turns them into `WorkerCrashed` and replaces the worker.
"""

from __future__ import annotations


class MailrunnerError(Exception):
    """Base of every error mailrunner raises on purpose."""


class ConfigError(MailrunnerError):
    """The configuration cannot be used; `problems` lists each one as `key.path: message`."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n  " + "\n  ".join(problems))


class DeliveryError(MailrunnerError):
    """An accepted message could not be handed to its delivery path."""


class DeliveryTimeout(DeliveryError):
    """The delivery path did not confirm in time."""


class StorageError(DeliveryError):
    """The message's files could not be written (a full disk, a quota, an I/O error): the
    client is asked to try later, and nothing of the message is kept."""


class ParseChildLost(MailrunnerError):
    """A parse child died, or was killed for taking too long, with this message given to it:
    the message is parsed on a parse thread instead (never on the event loop, where a
    message that stalled a child would stall every session)."""


class PoolError(MailrunnerError):
    """The worker pool could not run a payload."""


class NoFreeWorker(PoolError):
    """No worker became free within allocate_timeout."""


class ExecTimeout(PoolError):
    """A worker did not answer within exec_timeout and was killed."""


class WorkerCrashed(PoolError):
    """A worker died or broke the protocol while running a payload."""


class WorkerFailed(PoolError):
    """The worker reported a failure of its own (an ERROR frame)."""


class BadAnswer(PoolError):
    """The worker answered, but not with anything the protocol allows."""


class PoolStopped(PoolError):
    """The pool is stopping and takes no more work."""


class PoolLimit(PoolError):
    """The pool refuses a change that would leave it unable to serve (no worker left) or
    grow it past its cap (`max_workers`)."""


class DriverError(MailrunnerError):
    """A Jobs driver failed to store, lease or acknowledge."""


class DriverUnavailable(DriverError):
    """The driver's storage or broker cannot be reached."""


class PushTimeout(DriverError):
    """A push was not confirmed before its deadline; the job will not be stored later
    (except a `PushOutcomeUnknown`)."""


class JobsError(MailrunnerError):
    """A Jobs RPC call was refused."""


class PipelineNotFound(JobsError):
    """No pipeline of that name is declared."""


class PipelineConflict(JobsError):
    """A pipeline of that name exists with other settings."""


class InvalidJob(JobsError):
    """A job or its options are malformed."""


class InvalidPipeline(JobsError):
    """Pipeline settings or a request on a pipeline are not allowed."""


class ApiError(MailrunnerError):
    """A management API call answered with an error; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 500) -> None:
        self.status = status
        super().__init__(message)


class NotFound(ApiError):
    """No such pool, connection or route."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 404)


class ApiUnavailable(ApiError):
    """The management API could not be reached."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 503)


class Forbidden(ApiError):
    """The API refuses the request whoever retries it: a caller it does not trust (another
    site's page, a rebound DNS name) or an action beyond what the configuration allows."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 403)


class UnsupportedMediaType(ApiError):
    """A request that changes something was not sent as `application/json`: unlike a form's
    types, a web page cannot send that to another site without a CORS preflight."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 415)


class OutcomeUnknown(MailrunnerError):
    """A change went out and no verdict came back: it may have been done, now or later.

    Mixed into the errors that mean it, so a caller that must not undo its side of a change
    that may have happened (the SMTP side keeps an email's attachment files for a job that may
    be stored) asks one question, whatever the path: the in-process service or the API."""


class PushOutcomeUnknown(PushTimeout, OutcomeUnknown):
    """A push gave up on its confirmation after its message had gone to the broker, where it
    cannot be withdrawn: the job may be stored (the amqp driver's unwithdrawn publish, a
    redis verdict later than its grace)."""


class RequestOutcomeUnknown(ApiUnavailable, OutcomeUnknown):
    """A change was sent to the API and no answer came (the call's own timeout, or the
    connection lost after sending): the server may have done it, or may still do it."""
