"""Final test accuracy of every seed, one row per study and variant, from committed study folders.

For short runs whose one number is the final epoch's test accuracy, where what matters is how
it moves from seed to seed: each row lists the seeds in order, their mean, the lowest, and how
many reach the bar (`--bar`, 90% by default: issue 14's bar for one epoch of 2,000 MNIST images):

    python scripts/seed_table.py docs/results/one-epoch-2000/search/* > table.md
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from budget_table import finished_runs

from normlab.store.results import read_json


def rows(study: Path, bar: float) -> list[str]:
    """One markdown row per variant of `study`, in the study's order."""
    network = read_json(study / "study.json")["data"]["network"]
    finals: dict[str, list[float]] = defaultdict(list)
    params: dict[str, int] = {}
    for path, run, metrics in finished_runs(study):  # seeds in order within each variant
        variant = path.rsplit("/", 1)[0]
        finals[variant].append(metrics[-1]["test_acc"])
        params[variant] = run["params"]
    out = []
    for variant, accs in finals.items():
        seeds = " / ".join(f"{a:.2f}" for a in accs)
        reached = f"{sum(a >= bar for a in accs)} of {len(accs)}"
        out.append(
            f"| {study.name} | `{network}` | {params[variant]:,} | {variant} | {seeds} "
            f"| {statistics.mean(accs):.2f} | {min(accs):.2f} | {reached} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--bar", type=float, default=90.0)
    args = parser.parse_args()
    print(
        "| study | network | params | variant | final test acc % by seed | mean | lowest "
        f"| runs >= {args.bar:g}% |"
    )
    print("|---|---|--:|---|---|--:|--:|--:|")
    for study in args.studies:
        print("\n".join(rows(study, args.bar)))


if __name__ == "__main__":
    main()
