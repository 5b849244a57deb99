"""The results table of a network search: one row per run of the given study folders.

Each row names the network, its parameter count, the variant (with its group count when a grouped
norm ran with one of its own, `--groups`), the batch size, the peak learning rate, the schedule
(the shape of its ramps, `anneal`: linear, or cos, linear for a study from before the setting
existed; `+ SWA 5` when its last 5 epochs were weight-averaged, `swa_epochs`), the augmentation,
the seed, the test accuracy of the last three epochs (`--last`) and whether all of them reach the
bar (99.4% by default: the course's tier for MNIST networks under 8,000
parameters; CIFAR-10's bar is 80% in the final epoch, `--bar 80 --last 1`).
The rows come from the folders' own files (study.json, run.json, metrics.csv), so the table can
be regenerated from the committed studies at any time:

    python scripts/budget_table.py docs/results/mnist-8k/search/* > table.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from normlab.core.norms import GROUPED
from normlab.store.results import read_json, read_metrics


def finished_runs(study: Path) -> list[tuple[str, dict, list[dict[str, float]]]]:
    """(path, run.json, metrics rows) of each finished run of the study folder `study`, in the
    study's order."""
    out = []
    for path in read_json(study / "study.json")["runs"]:
        run_folder = study / path
        if (run_folder / "run.json").exists():
            out.append((path, read_json(run_folder / "run.json"), read_metrics(run_folder)))
    return out


def swa(epochs: int) -> str:
    """The schedule column's note of weight averaging over the last `epochs` epochs."""
    return f" + SWA {epochs}" if epochs else ""


def rows(study: Path, bar: float, last_n: int) -> list[list[str]]:
    """One table row per finished run of the study folder `study`."""
    network = read_json(study / "study.json")["data"].get(
        "network"
    )  # recorded since it could change
    out = []
    for path, run, metrics in finished_runs(study):
        train = run["config"]["train"]
        last = [m["test_acc"] for m in metrics[-last_n:]]
        groups = train.get("groups") if run["config"]["variant"]["norm"] in GROUPED else None
        out.append(
            [
                f"`{network or train['model']}`",
                f"{run['params']:,}",
                path.rsplit("/", 1)[0] + (f" ({groups} groups)" if groups is not None else ""),
                str(train["batch_size"]),
                f"{train['lr']:g}",
                train.get("anneal", "linear") + swa(train.get("swa_epochs", 0)),
                train["augment"],
                str(run["config"]["seed"]),
                " / ".join(f"{a:.2f}" for a in last),
                "yes" if min(last) >= bar else "no",
                study.name,
            ]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study folders")
    parser.add_argument("--bar", type=float, default=99.4, help="test accuracy %% to reach")
    parser.add_argument("--last", type=int, default=3, help="final epochs that must reach it")
    args = parser.parse_args()
    header = ["network", "params", "variant", "batch", "lr", "schedule", "augment", "seed"]
    header += [f"last {args.last} epoch{'s' if args.last > 1 else ''} %", "all >= bar", "study"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for study in args.studies:
        for row in rows(study, args.bar, args.last):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
