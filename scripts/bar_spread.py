"""How far a search's runs sit from its bar, from the committed study folders alone.

A run's score is its lowest test accuracy over the last `--last` epochs (what the bar reads).
Per study: the mean score, how many runs fall below the bar, and the lr at the start of each of
those epochs as a fraction of the peak (the `lr` column of metrics.csv). Over all the studies
given: the standard deviation of the scores, the share of runs a normal spread of that size
puts below the bar, and the chance that a study of as many runs as the first has none below it.
With `--paired A B`, the mean score difference B - A over the runs both studies hold (same
variant and seed) and the study report's paired t-test on it:

    S=docs/results/mnist-8k/search
    python scripts/bar_spread.py $S/bs64-lr0{2,1}-cos-h3 --paired $S/bs64-lr02{,-cos}-h3
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from budget_table import finished_runs
from scipy import stats

from normlab.report.stats import seeds_test


def scores(study: Path, last_n: int) -> dict[str, float]:
    """Each finished run's lowest test accuracy over its last `last_n` epochs, by run path."""
    return {
        path: min(m["test_acc"] for m in metrics[-last_n:])
        for path, _, metrics in finished_runs(study)
    }


def lr_fractions(study: Path, last_n: int) -> list[float]:
    """The lr at the start of each of the last `last_n` epochs over the peak, of the first run."""
    _, run, metrics = finished_runs(study)[0]
    return [m["lr"] / run["config"]["train"]["lr"] for m in metrics[-last_n:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study folders")
    parser.add_argument("--bar", type=float, default=99.4, help="test accuracy %% to reach")
    parser.add_argument("--last", type=int, default=3, help="final epochs that must reach it")
    parser.add_argument("--paired", nargs=2, type=Path, metavar=("A", "B"), help="compare B to A")
    args = parser.parse_args()
    pooled, runs_per_study = [], None
    for study in args.studies:
        s = list(scores(study, args.last).values())
        runs_per_study = runs_per_study or len(s)
        pooled += s
        lrs = " / ".join(f"{f:.1%}" for f in lr_fractions(study, args.last))
        below = sum(x < args.bar for x in s)
        print(f"{study.name}: mean {statistics.mean(s):.3f}, {below} of {len(s)} below, ", end="")
        print(f"lr at start {lrs}")
    mean, sd = statistics.mean(pooled), statistics.stdev(pooled) if len(pooled) > 1 else 0.0
    below = stats.norm.cdf(args.bar, mean, sd) if sd else 0.0
    print(
        f"all: {len(pooled)} runs, mean {mean:.3f}, sd {sd:.3f}, "
        f"{below:.1%} below {args.bar} under a normal spread, "
        f"{(1 - below) ** runs_per_study:.1%} chance of {runs_per_study} runs all above"
    )
    if args.paired:
        a, b = (scores(study, args.last) for study in args.paired)
        both = [path for path in a if path in b]
        test = seeds_test([b[path] for path in both], [a[path] for path in both])
        print(
            f"paired {args.paired[1].name} - {args.paired[0].name}: {test.diff:+.3f} over ", end=""
        )
        print(f"{len(both)} runs, {test.method} p = {test.p:.2f}")


if __name__ == "__main__":
    main()
