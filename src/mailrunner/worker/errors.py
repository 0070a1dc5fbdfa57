"""The worker SDK's exceptions, apart from the server's tree because the SDK is stdlib-only.

    WorkerError
     ├── ProtocolError         the server sent something the relay protocol does not allow
     ├── TaskAlreadyAnswered   a second ack / nack / requeue for one task
     └── EventError            (also a ValueError) the EMAIL_RECEIVED JSON has the wrong shape

Frame-level corruption raises `mailrunner.wire.frame.FrameError` unchanged; a job context the
SDK cannot read (`mailrunner.wire.errors.BadContext`) becomes a `ProtocolError`.
"""

from __future__ import annotations

__all__ = ["EventError", "ProtocolError", "TaskAlreadyAnswered", "WorkerError"]


class WorkerError(Exception):
    """Base of every error the worker SDK raises itself."""


class ProtocolError(WorkerError):
    """The server broke the relay protocol, or the worker was started by the wrong pool."""


class TaskAlreadyAnswered(WorkerError):
    """A task takes exactly one answer: the server reads one frame per task."""


class EventError(WorkerError, ValueError):
    """The event JSON is not an EMAIL_RECEIVED version 1 event; the message names the field."""
