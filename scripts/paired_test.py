"""McNemar's exact test, variant by variant, between two studies of the same test set: which
test images only one of the two got right. One seed each, so this is what says whether two
networks (or two recipes) differ beyond the noise of one run:

    python scripts/paired_test.py docs/results/mnist-head/h1 docs/results/mnist-head/h3
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    for run in read_json(args.a / "study.json")["runs"]:
        variant, seed = run.rsplit("/seed", 1)
        if int(seed) != args.seed or not (args.b / run).exists():
            continue
        a, b = (read_predictions(study / run) for study in (args.a, args.b))
        right_a, right_b = a["pred"] == a["target"], b["pred"] == b["target"]
        test = mcnemar_exact(right_a, right_b)
        only_a, only_b = test.discordant
        print(
            f"| {variant} | {100 * right_a.mean():.2f} | {100 * right_b.mean():.2f} | "
            f"{only_a} / {only_b} | {test.p:.3g} |"
        )


if __name__ == "__main__":
    main()
