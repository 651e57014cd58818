"""Typed errors a moot client raises. Each message says what to do."""

from __future__ import annotations


class MootError(Exception):
    """Base of every error moot raises to a user."""


class Unavailable(MootError):
    """No node could be reached, or the node cannot serve the request now."""


class Timeout(MootError):
    """The operation did not finish within its deadline; it may or may not have happened."""


class NoQuorum(Unavailable):
    """A majority of voters is unreachable; linearizable operations cannot proceed."""


class NotFound(MootError):
    """No such object (or it was collected): check the id."""


class BadRequest(MootError):
    """The request is malformed or not allowed; nothing was changed."""


class TaskFailed(MootError):
    """A task did not return a value for a reason other than its own exception
    (which is re-raised as itself). ``job_id``/``index`` name it; ``node``
    is where it last ran."""

    def __init__(self, message: str, *, job_id: str = "", index: int = -1, node: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id
        self.index = index
        self.node = node


class WorkerCrashed(TaskFailed):
    """The task's worker process (or its node) died each time it ran, up to
    ``max_retries`` + 1 times: a segfault, ``os._exit``, the OOM killer, a
    lost node."""


class TaskTimedOut(TaskFailed):
    """The task ran over its ``timeout=`` and was killed."""


class TaskOutOfMemory(TaskFailed):
    """The task raised ``MemoryError`` under the node's worker memory limit."""


class RemoteError(TaskFailed):
    """The task raised an exception that could not be pickled back; its type
    name, message and remote traceback are here instead."""

    def __init__(
        self, error_type: str, message: str, remote_traceback: str, *, job_id: str = "", index: int = -1, node: str = ""
    ) -> None:
        super().__init__(f"{error_type}: {message}", job_id=job_id, index=index, node=node)
        self.error_type = error_type
        self.remote_traceback = remote_traceback


class RemoteTraceback(Exception):
    """The traceback of a task's exception where it ran; set as the re-raised
    exception's ``__cause__`` (as ``concurrent.futures.ProcessPoolExecutor`` does)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


ERROR_KINDS: dict[str, type[MootError]] = {
    "Unavailable": Unavailable,
    "Timeout": Timeout,
    "NoQuorum": NoQuorum,
    "BadRequest": BadRequest,
    "NotFound": NotFound,
}


def error_from_reply(kind: str, message: str) -> MootError:
    """The typed exception for an ``ErrorReply`` from a node."""
    return ERROR_KINDS.get(kind, MootError)(message)
