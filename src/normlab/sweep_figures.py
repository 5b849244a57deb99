"""A sweep's table and figures, drawn from summary.json alone (no model in memory).

    results.md      one row per group of seeds: mean test error, std and 95% interval
    batch_size.png  test error against batch size (log axis), a band per variant for the
                    95% interval over seeds and a dot per seed (when the batch size varies)
    heatmap.png     mean test error over l1 x l2, one panel per norm (when l1 or l2 varies)

Figures show test *error* (100 - accuracy), as the GroupNorm paper does, so small numbers are
good and the small-batch collapse reads upwards.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from normlab.atomic import write_atomic
from normlab.norms import NORM_NAMES
from normlab.results import read_json


def error(acc: float) -> float:
    """Test error in percent from accuracy in percent."""
    return 100.0 - acc


def results_table(summary: dict) -> str:
    """Markdown table, one row per group; the interval is (nan) with a single seed."""
    lines = [
        "| run group | seeds | test error % (mean) | std | 95% interval | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for g in summary["variants"]:
        if "final_test_acc" not in g:
            continue
        std = g.get("final_test_acc_std")
        lo, hi = g.get("final_test_acc_ci95", (math.nan, math.nan))
        interval = f"{error(hi):.2f} to {error(lo):.2f}" if std is not None else "one seed"
        lines.append(
            f"| {g['name']} | {len(g['seeds'])} | {error(g['final_test_acc']):.2f} | "
            f"{'-' if std is None else f'{std:.2f}'} | {interval} | {g['status']} |"
        )
    return "\n".join(lines) + "\n"


def _save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path


def batch_size_figure(summary: dict, path: Path) -> Path:
    """Test error vs batch size per variant: mean line, 95% band over seeds, seed dots."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by_variant: dict[str, list[dict]] = {}
    for g in summary["variants"]:
        if "final_test_acc" in g:
            by_variant.setdefault(g["variant"], []).append(g)
    sizes = sorted({g["batch_size"] for g in summary["variants"]})
    for name, groups in by_variant.items():
        groups.sort(key=lambda g: g["batch_size"])
        xs = [g["batch_size"] for g in groups]
        norm = groups[0]["norm"]
        label = NORM_NAMES.get(norm, norm) + (name[len(norm) :] if name != norm else "")
        (line,) = ax.plot(xs, [error(g["final_test_acc"]) for g in groups], "o-", label=label)
        banded = [g for g in groups if "final_test_acc_ci95" in g]
        if banded:
            # Few seeds give intervals beyond what an error can be: draw them cut to [0, 100].
            ax.fill_between(
                [g["batch_size"] for g in banded],
                [max(0.0, error(g["final_test_acc_ci95"][1])) for g in banded],
                [min(100.0, error(g["final_test_acc_ci95"][0])) for g in banded],
                color=line.get_color(),
                alpha=0.18,
                linewidth=0,
            )
        for g in groups:
            seeds = [error(s["final_test_acc"]) for s in g["seeds"] if "final_test_acc" in s]
            ax.scatter(
                [g["batch_size"]] * len(seeds), seeds, s=9, color=line.get_color(), alpha=0.5
            )
    ax.set_ylim(0, 100)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("test error % (final epoch)")
    ax.set_title("Test error vs batch size: mean, 95% interval over seeds (band), each seed")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def heatmap_figure(summary: dict, path: Path) -> Path:
    """Mean test error over the l1 x l2 grid, one panel per norm, each cell annotated."""
    norms: dict[str, dict[tuple[float, float], dict]] = {}
    for g in summary["variants"]:
        if "final_test_acc" in g:
            norms.setdefault(g["norm"], {})[(g["l1"], g["l2"])] = g
    fig, axes = plt.subplots(
        1, len(norms), figsize=(3.4 * len(norms), 3.2), squeeze=False, layout="constrained"
    )
    values = [error(g["final_test_acc"]) for cells in norms.values() for g in cells.values()]
    vmin, vmax = min(values), max(values)
    for ax, (norm, cells) in zip(axes[0], norms.items(), strict=True):
        l1s = sorted({k[0] for k in cells})
        l2s = sorted({k[1] for k in cells})
        grid = [
            [error(cells[(a, b)]["final_test_acc"]) if (a, b) in cells else math.nan for b in l2s]
            for a in l1s
        ]
        im = ax.imshow(grid, cmap="viridis_r", vmin=vmin, vmax=vmax, aspect="auto")
        for i, a in enumerate(l1s):
            for j, b in enumerate(l2s):
                if (a, b) in cells:
                    std = cells[(a, b)].get("final_test_acc_std")
                    text = f"{grid[i][j]:.2f}" + (f"\n±{std:.2f}" if std is not None else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="w")
        ax.set_xticks(range(len(l2s)), [f"{b:g}" for b in l2s])
        ax.set_yticks(range(len(l1s)), [f"{a:g}" for a in l1s])
        ax.set_xlabel("l2 (weight decay)")
        ax.set_ylabel("l1")
        ax.set_title(NORM_NAMES.get(norm, norm))
    fig.colorbar(im, ax=axes[0].tolist(), label="test error %")
    return _save(fig, path)


def write_sweep_report(out: Path) -> list[Path]:
    """Write results.md and whichever figures the sweep's axes call for; returns the paths."""
    out = Path(out)
    summary = read_json(out / "summary.json")
    table = out / "results.md"
    write_atomic(table, results_table(summary).encode())
    written = [table]
    groups = [g for g in summary["variants"] if "final_test_acc" in g]
    if len({g["batch_size"] for g in groups}) > 1:
        written.append(batch_size_figure(summary, out / "batch_size.png"))
    per_norm: dict[str, set] = {}
    for g in groups:
        per_norm.setdefault(g["norm"], set()).add((g["l1"], g["l2"]))
    if any(len(cells) > 1 for cells in per_norm.values()):
        written.append(heatmap_figure(summary, out / "heatmap.png"))
    return written
