"""McNemar's exact test, variant by variant, between two studies of the same test set: which
test images only one of the two got right. It says whether two trained models differ beyond
what the test set can resolve; how much a result moves from seed to seed it does not measure:

    python scripts/paired_test.py docs/results/mnist-head/h1 docs/results/mnist-head/h3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from normlab.report.stats import mcnemar_exact
from normlab.store.results import read_json, read_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="study folder")
    parser.add_argument("b", type=Path, help="study folder with the same variants and test set")
    parser.add_argument("--seed", type=int, default=0, help="the seed compared")
    args = parser.parse_args()
    print(f"| variant | {args.a.name} % | {args.b.name} % | right only in a / b | McNemar p |")
    print("|---|---:|---:|---:|---:|")
    runs = [r for r in read_json(args.a / "study.json")["runs"] if r.endswith(f"/seed{args.seed}")]
    for run in runs:
        variant = run.rsplit("/seed", 1)[0]
        if not all((study / run / "predictions.npz").exists() for study in (args.a, args.b)):
            print(f"| {variant} | skipped: a study has no predictions.npz | | | |")
            continue
        a, b = (read_predictions(study / run) for study in (args.a, args.b))
        if not np.array_equal(a["target"], b["target"]):
            raise SystemExit(f"{variant}: the two studies were tested on different images")
        right_a, right_b = a["pred"] == a["target"], b["pred"] == b["target"]
        test = mcnemar_exact(right_a, right_b)
        only_a, only_b = test.discordant
        print(
            f"| {variant} | {100 * right_a.mean():.2f} | {100 * right_b.mean():.2f} | "
            f"{only_a} / {only_b} | {test.p:.3g} |"
        )


if __name__ == "__main__":
    main()
