"""Zipf-distributed text for the MapReduce benchmark, the same bytes every time.

    .venv/bin/python bench/zipf_text.py DIR [--mb 200] [--files 64] [--seed 1]

Writes ``DIR/text-NN.txt``: lines of 8-16 words drawn from a 100,000-word
vocabulary (made-up lower-case words of 2-12 letters) with Zipf-distributed
ranks (exponent 1.1, as word frequencies in English roughly are). A file
``DIR/.made`` records the parameters: an existing corpus with the same ones is
reused.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from pathlib import Path

VOCABULARY = 100_000
EXPONENT = 1.1
WORDS_PER_LINE = (8, 16)


def make_corpus(directory: Path, *, megabytes: float = 200, files: int = 64, seed: int = 1) -> list[Path]:
    """The corpus's files (made now unless ``directory`` already holds this one)."""
    parameters = {"megabytes": megabytes, "files": files, "seed": seed, "vocabulary": VOCABULARY, "exponent": EXPONENT}
    marker = directory / ".made"
    paths = [directory / f"text-{index:02d}.txt" for index in range(files)]
    if marker.exists() and json.loads(marker.read_text()) == parameters and all(p.exists() for p in paths):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 12))) for _ in range(VOCABULARY)
    ]
    weights = [1 / (rank + 1) ** EXPONENT for rank in range(VOCABULARY)]
    cumulative = []
    running = 0.0
    for weight in weights:
        running += weight
        cumulative.append(running)
    per_file = int(megabytes * 1_000_000 / files)
    for path in paths:
        lines: list[str] = []
        size = 0
        while size < per_file:
            count = rng.randint(*WORDS_PER_LINE)
            line = " ".join(rng.choices(words, cum_weights=cumulative, k=count))
            lines.append(line)
            size += len(line) + 1
        path.write_text("\n".join(lines) + "\n")
    marker.write_text(json.dumps(parameters))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args(argv)
    paths = make_corpus(options.directory, megabytes=options.mb, files=options.files, seed=options.seed)
    print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB in {options.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
