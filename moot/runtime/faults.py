"""Network faults injected by the transport: for tests and admins only.

This machine has no ``tc netem``, so latency, loss, duplication and
partitions between real processes come from here, as etcd's failpoints do.
It is **off unless** the environment variable ``MOOT_FAULTS_FILE`` names a
JSON file (``Faults.from_environment``) or a test passes a ``Faults`` to the
transport; nothing in a default start-up enables it.

Rules apply per *directed* pair of addresses, on the sending side, just
before a frame is written: the sender's advertised address is ``source``,
the address it sends to is ``destination``; ``"*"`` matches any address. The
most specific rule wins: (source, destination), then (source, ``*``), then
(``*``, destination), then (``*``, ``*``). The file::

    {"seed": 7,
     "rules": [
       {"source": "127.0.0.1:7001", "destination": "127.0.0.1:7002", "delay_ms": 50, "jitter_ms": 20},
       {"source": "127.0.0.1:7003", "destination": "*", "cut": true},
       {"source": "*", "destination": "*", "drop_probability": 0.05, "duplicate_probability": 0.01}]}

A running node re-reads the file when it changes (its mtime, size or inode;
one ``stat`` per frame, a cost paid only while faults are configured),
so a test can partition and heal live nodes. Write it with
``write_faults_file``, which replaces it atomically: a reader never sees half
a file, and the new inode is noticed even within one mtime tick. A file that
fails to parse is reported once and the previous rules stay in force.

Decisions are deterministic given the seed: each directed pair draws from its
own ``random.Random`` seeded with (seed, source, destination), so the n-th
frame on a pair gets the same fate in every run whatever other pairs do.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import msgspec

from moot.runtime.logs import StructuredLogger

ENVIRONMENT_VARIABLE: Final = "MOOT_FAULTS_FILE"
ANY_ADDRESS: Final = "*"

# Caps: a fault file is written by a test or an admin, but it is still input.
DELAY_MS_MAX: Final = 3_600_000  # an hour: anything longer is a cut
RULES_COUNT_MAX: Final = 10_000
FAULT_FILE_BYTES_MAX: Final = 4 * 1024 * 1024

Milliseconds = Annotated[float, msgspec.Meta(ge=0, le=DELAY_MS_MAX)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
AddressPattern = Annotated[str, msgspec.Meta(min_length=1, max_length=261)]


class FaultRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What happens to frames sent from ``source`` to ``destination``.

    ``delay_ms`` plus a uniform draw in ``[0, jitter_ms]`` is added before the
    frame is written (frames may then overtake each other, as with netem);
    ``drop_probability`` discards a frame; ``duplicate_probability`` writes it
    twice; ``cut`` discards every frame (a partition in that direction).
    """

    source: AddressPattern = ANY_ADDRESS
    destination: AddressPattern = ANY_ADDRESS
    delay_ms: Milliseconds = 0.0
    jitter_ms: Milliseconds = 0.0
    drop_probability: Probability = 0.0
    duplicate_probability: Probability = 0.0
    cut: bool = False


class FaultConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A seed and a list of rules: the content of a fault file."""

    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    rules: Annotated[tuple[FaultRule, ...], msgspec.Meta(max_length=RULES_COUNT_MAX)] = ()


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """The fate of one frame: written ``copies`` times (0 = discarded) after ``delay_ms``."""

    copies: int
    delay_ms: float
    cut: bool = False

    def __post_init__(self) -> None:
        assert 0 <= self.copies <= 2
        assert self.delay_ms >= 0
        if self.cut:
            assert self.copies == 0


PASS: Final = FaultDecision(copies=1, delay_ms=0.0)
_CUT: Final = FaultDecision(copies=0, delay_ms=0.0, cut=True)


def parse_fault_config(data: bytes | str) -> FaultConfig:
    """Decode and validate a fault file's JSON; ``msgspec.ValidationError``/``DecodeError`` if bad."""
    config = msgspec.json.decode(data, type=FaultConfig)
    pairs = [(rule.source, rule.destination) for rule in config.rules]
    if len(set(pairs)) != len(pairs):
        raise msgspec.ValidationError("two rules name the same (source, destination) pair")
    return config


def write_faults_file(path: Path, config: FaultConfig) -> None:
    """Replace ``path`` with ``config`` atomically, so a running node sees all of it or none."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temporary.write_bytes(msgspec.json.encode(config))
    os.replace(temporary, path)


class Faults:
    """Decides each frame's fate from rules set in code or read from a file."""

    def __init__(
        self,
        config: FaultConfig | None = None,
        *,
        path: Path | None = None,
        logger: StructuredLogger | None = None,
    ) -> None:
        self._path = path
        self._logger = logger or StructuredLogger()
        self._file_signature: tuple[int, int, int] | None = None
        self._rules: Mapping[tuple[str, str], FaultRule] = {}
        self._seed = 0
        self._generators: dict[tuple[str, str], random.Random] = {}
        self.set_config(config or FaultConfig())
        if path is not None:
            self._reload_if_changed()

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, logger: StructuredLogger | None = None
    ) -> Faults | None:
        """Faults read from ``$MOOT_FAULTS_FILE``, or ``None`` when it is unset (the default)."""
        value = (os.environ if environ is None else environ).get(ENVIRONMENT_VARIABLE, "")
        if not value:
            return None
        faults = cls(path=Path(value), logger=logger)
        faults._logger.warning(
            "faults_enabled", path=value, reason=f"{ENVIRONMENT_VARIABLE} is set"
        )
        return faults

    def set_config(self, config: FaultConfig) -> None:
        """Replace the rules (and restart every pair's random sequence from the seed)."""
        rules = {(rule.source, rule.destination): rule for rule in config.rules}
        assert len(rules) == len(config.rules), "duplicate (source, destination) rule"
        self._rules = rules
        self._seed = config.seed
        self._generators = {}

    def decide(self, source: str, destination: str) -> FaultDecision:
        """The fate of the next frame from ``source`` to ``destination``."""
        if self._path is not None:
            self._reload_if_changed()
        rule = self._match(source, destination)
        if rule is None:
            return PASS
        if rule.cut:
            return _CUT
        generator = self._generator(source, destination)
        # Always three draws, whatever the outcome, so one frame's fate never
        # shifts the random sequence of the frames after it.
        drop_draw = generator.random()
        duplicate_draw = generator.random()
        jitter_draw = generator.random()
        if drop_draw < rule.drop_probability:
            return FaultDecision(copies=0, delay_ms=0.0)
        copies = 2 if duplicate_draw < rule.duplicate_probability else 1
        delay_ms = rule.delay_ms + jitter_draw * rule.jitter_ms
        if copies == 1 and delay_ms == 0:
            return PASS
        return FaultDecision(copies=copies, delay_ms=delay_ms)

    def _match(self, source: str, destination: str) -> FaultRule | None:
        rules = self._rules
        if not rules:
            return None
        for key in (
            (source, destination),
            (source, ANY_ADDRESS),
            (ANY_ADDRESS, destination),
            (ANY_ADDRESS, ANY_ADDRESS),
        ):
            rule = rules.get(key)
            if rule is not None:
                return rule
        return None

    def _generator(self, source: str, destination: str) -> random.Random:
        generator = self._generators.get((source, destination))
        if generator is None:
            # Seeding with a str is stable across processes (it is hashed with
            # SHA-512, not with the randomized str hash).
            generator = random.Random(f"{self._seed}|{source}|{destination}")
            self._generators[(source, destination)] = generator
        return generator

    def _reload_if_changed(self) -> None:
        assert self._path is not None
        try:
            status = os.stat(self._path)
        except FileNotFoundError:
            if self._file_signature != (0, 0, 0):
                self._file_signature = (0, 0, 0)
                self.set_config(FaultConfig())
            return
        signature = (status.st_mtime_ns, status.st_size, status.st_ino)
        if signature == self._file_signature:
            return
        self._file_signature = signature
        try:
            if status.st_size > FAULT_FILE_BYTES_MAX:
                raise ValueError(f"file is {status.st_size} bytes, over {FAULT_FILE_BYTES_MAX}")
            config = parse_fault_config(self._path.read_bytes())
        except (OSError, ValueError, msgspec.MsgspecError) as error:
            self._logger.warning_once(
                ("faults_file_invalid", signature),
                "faults_file_invalid",
                path=str(self._path),
                reason=str(error),
                action="previous fault rules kept",
            )
            return
        self.set_config(config)
        self._logger.info(
            "faults_loaded", path=str(self._path), rules=len(config.rules), seed=config.seed
        )
