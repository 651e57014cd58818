"""moot: a federation of equal nodes where no computer is essential.

>>> import moot
>>> with moot.local(nodes=3) as federation:
...     client = federation.client()
...     print([m.state for m in client.members()])

The public names are imported lazily so that ``moot.core`` (the sans-IO
protocol code) and the simulator import nothing from the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moot.client.client import Client, connect, get_client
    from moot.client.errors import (
        BadRequest,
        MootError,
        NoQuorum,
        NotFound,
        RemoteError,
        TaskFailed,
        TaskOutOfMemory,
        TaskTimedOut,
        Timeout,
        Unavailable,
        WorkerCrashed,
    )
    from moot.client.local import LocalFederation, local
    from moot.client.objects import ObjectRef
    from moot.client.tasks import Executor, Future, Job, as_completed, progress

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "moot.client.client",
    "connect": "moot.client.client",
    "get_client": "moot.client.client",
    "BadRequest": "moot.client.errors",
    "MootError": "moot.client.errors",
    "NoQuorum": "moot.client.errors",
    "NotFound": "moot.client.errors",
    "ObjectRef": "moot.client.objects",
    "Timeout": "moot.client.errors",
    "Unavailable": "moot.client.errors",
    "TaskFailed": "moot.client.errors",
    "WorkerCrashed": "moot.client.errors",
    "TaskTimedOut": "moot.client.errors",
    "TaskOutOfMemory": "moot.client.errors",
    "RemoteError": "moot.client.errors",
    "Executor": "moot.client.tasks",
    "Future": "moot.client.tasks",
    "Job": "moot.client.tasks",
    "as_completed": "moot.client.tasks",
    "progress": "moot.client.tasks",
    "LocalFederation": "moot.client.local",
    "local": "moot.client.local",
}

__all__ = [
    "BadRequest",
    "Client",
    "Executor",
    "Future",
    "Job",
    "LocalFederation",
    "MootError",
    "NoQuorum",
    "NotFound",
    "ObjectRef",
    "RemoteError",
    "TaskFailed",
    "TaskOutOfMemory",
    "TaskTimedOut",
    "Timeout",
    "Unavailable",
    "WorkerCrashed",
    "__version__",
    "as_completed",
    "connect",
    "get_client",
    "local",
    "progress",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'moot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
