"""The README's Python tour runs as written (against real node processes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_python_tour_in_the_readme_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python tour"
    tour = blocks[0]
    # The last line connects to an example address of someone else's federation.
    tour = "\n".join(line for line in tour.splitlines() if "10.0.0.5" not in line)
    exec(compile(tour, str(README), "exec"), {})
