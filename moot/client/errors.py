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
