"""Structured logs: one JSON object per line on stderr, on top of stdlib ``logging``.

A line looks like::

    {"ts":"2024-05-01T12:00:00.123Z","level":"warning","node":"a1b2","event":"peer_refused",
     "peer":"127.0.0.1:5555","reason":"tls: certificate verify failed"}

``event`` is a stable snake_case name a program can match on; the other
fields are data, never prose to parse. ``StructuredLogger`` attaches the
fields to the ``LogRecord`` (``record.moot_fields``), so pytest's ``caplog``
and any other handler see them without parsing.

``log_once`` keeps one misbehaving peer from flooding the log: the first
line for a key is written, repeats within ``once_interval_s`` are counted
and the count rides on the next line written for that key.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Final, TextIO

LOGGER_NAME: Final = "moot"
EventSink = Callable[[str, dict[str, Any]], int | None]  # (event, fields) -> its hybrid timestamp, if kept
FIELDS_ATTRIBUTE: Final = "moot_fields"

# A peer that reconnects every few milliseconds with a bad certificate
# produces one line a minute per reason: enough to notice, not a flood.
ONCE_INTERVAL_S_DEFAULT: Final = 60.0
# Distinct keys remembered by the once-guard; the oldest is forgotten first,
# so memory is bounded however many peers misbehave.
ONCE_KEYS_MAX_DEFAULT: Final = 4096

_LEVEL_NAMES: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


class JsonLinesFormatter(logging.Formatter):
    """Formats a record as one JSON object: ``ts``, ``level``, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record``; records from plain ``logging`` calls get ``event: "log"``."""
        timestamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "ts": timestamp.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{timestamp.microsecond // 1000:03d}Z",
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
        }
        fields = getattr(record, FIELDS_ATTRIBUTE, None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["logger"] = record.name
            entry["event"] = "log"
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"), ensure_ascii=False)


def configure_logging(
    level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send moot's logs as JSON lines to ``stream`` (stderr by default).

    Idempotent: a second call replaces the handler the first installed.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, "_moot_json", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLinesFormatter())
    handler._moot_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


class _OnceGuard:
    """Remembers, per key, when a line was last written and how many were held back."""

    def __init__(self, clock: Callable[[], float], interval_s: float, keys_max: int) -> None:
        assert interval_s >= 0
        assert keys_max >= 1
        self._clock = clock
        self._interval_s = interval_s
        self._keys_max = keys_max
        self._entries: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        """``None`` to suppress; else the count suppressed since the last line."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self._interval_s:
            self._entries[key] = (entry[0], entry[1] + 1)
            return None
        self._entries[key] = (now, 0)
        self._entries.move_to_end(key)
        while len(self._entries) > self._keys_max:
            self._entries.popitem(last=False)
        return 0 if entry is None else entry[1]


class StructuredLogger:
    """Writes events with fields; ``bind`` adds fields (such as ``node``) to every line.

    Loggers made by ``bind`` share the once-guard of their parent.
    """

    def __init__(
        self,
        node: str | None = None,
        *,
        logger: logging.Logger | None = None,
        fields: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        once_interval_s: float = ONCE_INTERVAL_S_DEFAULT,
        once_keys_max: int = ONCE_KEYS_MAX_DEFAULT,
        _guard: _OnceGuard | None = None,
        _sinks: list[EventSink] | None = None,
    ) -> None:
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._fields: dict[str, Any] = {} if node is None else {"node": node}
        self._fields.update(fields or {})
        self._guard = _guard or _OnceGuard(clock, once_interval_s, once_keys_max)
        self._sinks: list[EventSink] = _sinks if _sinks is not None else []

    def bind(self, **fields: Any) -> StructuredLogger:
        """A logger that adds ``fields`` to every line."""
        return StructuredLogger(
            logger=self._logger, fields={**self._fields, **fields}, _guard=self._guard, _sinks=self._sinks
        )

    def add_sink(self, sink: EventSink) -> None:
        """Show every event to ``sink`` too (this logger, its parent's and
        every ``bind`` share them), whatever the log level: the node's
        timeline. A sink that returns a hybrid timestamp has it written on
        the line as ``hlc``."""
        self._sinks.append(sink)

    def log(
        self, level: int, event: str, exc_info: bool | BaseException = False, **fields: Any
    ) -> None:
        """Write ``event`` with ``fields`` at ``level``."""
        for sink in self._sinks:
            stamp = sink(event, fields)
            if stamp is not None:
                fields = {**fields, "hlc": stamp}
        if not self._logger.isEnabledFor(level):
            return
        self._logger.log(
            level,
            event,
            exc_info=exc_info,
            extra={FIELDS_ATTRIBUTE: {**self._fields, "event": event, **fields}},
        )

    def debug(self, event: str, **fields: Any) -> None:
        """Write a debug line."""
        self.log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        """Write an info line."""
        self.log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Write a warning line."""
        self.log(logging.WARNING, event, **fields)

    def error(self, event: str, exc_info: bool | BaseException = False, **fields: Any) -> None:
        """Write an error line; ``exc_info`` adds a traceback (True: the one being handled)."""
        self.log(logging.ERROR, event, exc_info=exc_info, **fields)

    def log_once(self, key: Hashable, level: int, event: str, **fields: Any) -> bool:
        """Write ``event`` unless a line with ``key`` was written within the interval.

        Returns whether a line was written. A written line carries
        ``suppressed``: how many were held back for this key since the last.
        """
        suppressed = self._guard.admit(key)
        if suppressed is None:
            return False
        if suppressed:
            fields["suppressed"] = suppressed
        self.log(level, event, **fields)
        return True

    def warning_once(self, key: Hashable, event: str, **fields: Any) -> bool:
        """``log_once`` at warning level."""
        return self.log_once(key, logging.WARNING, event, **fields)


def get_logger(node: str | None = None, **fields: Any) -> StructuredLogger:
    """The structured logger of ``node`` (its lines carry ``"node": node``)."""
    return StructuredLogger(node, fields=fields)


def log_event(logger: StructuredLogger, level: int, event: str, **fields: Any) -> None:
    """Write ``event`` at ``level``: the function form of ``StructuredLogger.log``."""
    logger.log(level, event, **fields)
