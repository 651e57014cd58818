"""A node's small durable state in its data dir: its id and incarnation.

The id is chosen once, on the first start with an empty data dir, and kept:
a node that restarts on the same data dir is the same member. The
incarnation is written (fsync'd, atomically renamed) *before* any message
that carries it is sent, as the membership core's effects contract demands.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgspec

NODE_STATE_FILE = "node.json"
NODE_ID_BYTES = 6  # 12 hex characters: unique enough for any federation


class DataDirError(Exception):
    """The data dir cannot be used; the message says what to fix."""


class _NodeStateFile(msgspec.Struct, frozen=True):
    node_id: str
    incarnation: int
    format: int = 1


@dataclass(slots=True)
class NodeState:
    """The node's persistent identity, bound to one data dir."""

    data_dir: Path
    node_id: str
    incarnation: int

    @classmethod
    def open(cls, data_dir: Path) -> NodeState:
        """Load the state in ``data_dir``, creating the dir and a new id if empty."""
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataDirError(
                f"cannot create data dir {data_dir}: {error.strerror}; choose a writable --data-dir"
            ) from error
        if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
            raise DataDirError(
                f"data dir {data_dir} is not readable and writable by this user; fix its permissions or choose another --data-dir"
            )
        path = data_dir / NODE_STATE_FILE
        if not path.exists():
            state = cls(data_dir, secrets.token_hex(NODE_ID_BYTES), 0)
            state.save_incarnation(0)
            return state
        try:
            stored = msgspec.json.decode(path.read_bytes(), type=_NodeStateFile)
        except (OSError, msgspec.DecodeError) as error:
            raise DataDirError(
                f"{path} is unreadable or corrupt ({error}); restore it or start with an empty --data-dir"
            ) from error
        return cls(data_dir, stored.node_id, stored.incarnation)

    def save_incarnation(self, incarnation: int) -> None:
        """Durably record ``incarnation`` (write, fsync, rename, fsync dir)."""
        assert incarnation >= self.incarnation or incarnation == 0
        path = self.data_dir / NODE_STATE_FILE
        temporary = path.with_suffix(".tmp")
        body = msgspec.json.encode(_NodeStateFile(self.node_id, incarnation))
        with open(temporary, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.incarnation = incarnation
