"""A MiniLM eval set for the optimiser's docs: 256 templated English sentences, one JSON
object per line (``{"TEXT": ...}``), the same every time (shuffled with seed 0)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

SUBJECTS = ["The cat", "A doctor", "My neighbour", "The committee", "Our team", "The old train", "A small bird",
            "The new phone", "This recipe", "The river"]
VERBS = ["quietly crossed", "refused to approve", "was praised for", "slowly repaired", "loudly complained about",
         "carefully measured", "happily shared", "never forgot", "quickly sold", "barely noticed"]
OBJECTS = ["the broken bridge", "a plan for the summer", "the quarterly budget", "an unusual melody",
           "the muddy field", "her grandmother's letters", "the server outage", "a bowl of soup", "the final exam",
           "the city lights"]


def sentences(rows: int = 256) -> list[str]:
    every = [f"{s} {v} {o}." for s, v, o in itertools.product(SUBJECTS, VERBS, OBJECTS)]
    random.Random(0).shuffle(every)
    return every[:rows]


def write(path: Path, rows: int = 256) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"TEXT": t}) + "\n" for t in sentences(rows)))
    return path


if __name__ == "__main__":
    import sys

    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "minilm-sentences.jsonl")))
