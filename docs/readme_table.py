"""Print the README's results table for a study folder, from its stored files only.

python docs/readme_table.py docs/results/mnist
"""

from __future__ import annotations

import sys
from pathlib import Path

from normlab.store.results import read_json, read_metrics, run_dir


def main(out: Path) -> None:
    summary = read_json(out / "summary.json")
    print("| variant | params | final test acc % | last 3 epochs % | best % (epoch) | s / epoch |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in summary["variants"]:
        if "final_test_acc" not in v:  # every seed diverged: no final result to show
            print(f"| {v['name']} | {v['params']:,} | diverged | - | - | - |")
            continue
        rows = read_metrics(run_dir(out, v["name"], 0))
        last3 = " / ".join(f"{r['test_acc']:.2f}" for r in rows[-3:])
        per_epoch = sum(r["seconds"] for r in rows) / len(rows)
        print(
            f"| {v['name']} | {v['params']:,} | {v['final_test_acc']:.2f} | {last3} | "
            f"{v['best_test_acc']:.2f} ({v['best_epoch']:g}) | {per_epoch:.1f} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
