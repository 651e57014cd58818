"""Running ``python -m moot.sim`` as a user would, for the simulator tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def run_sim(*arguments: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    """``python -m moot.sim ARGUMENTS`` in a fresh process with ``PYTHONHASHSEED=hash_seed``."""
    return subprocess.run(
        [sys.executable, "-m", "moot.sim", *arguments],
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        timeout=120,
    )


def trace_hashes(*arguments: str) -> list[str]:
    """The trace hash a run prints, under two different ``PYTHONHASHSEED``s
    (iterating a set of strings anywhere would make them differ)."""
    hashes = []
    for hash_seed in ("1", "2"):
        completed = run_sim(*arguments, hash_seed=hash_seed)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        match = re.search(r"^trace_hash=([0-9a-f]{64})$", completed.stdout, re.MULTILINE)
        assert match is not None, completed.stdout + completed.stderr
        hashes.append(match.group(1))
    return hashes
