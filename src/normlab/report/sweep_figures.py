"""A sweep's table and figures, drawn from summary.json alone (no model in memory).

    results.md      one row per group of seeds: mean test error, std and 95% interval
    batch_size.png  test error against batch size (log axis), a panel per learning rate and a
                    line per variant, a band for the 95% interval over seeds and a dot per seed
                    (when the batch size varies)
    heatmap.png     mean test error over l1 x l2, a panel per norm, batch size and learning
                    rate (when l1 or l2 varies)
    norm_batch.png  test error against the norm batch K, with its table and findings in
                    results.md (when a batch-dependent norm ran at several K; `norm_batch`)

Each figure is also written as SVG beside the PNG (by report.plotting.save_figure, as the
report's are).

Figures show test *error* (100 - accuracy), as the GroupNorm paper does, so small numbers are
good and the small-batch collapse reads upwards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from normlab.atomic import write_atomic
from normlab.core.norms import NORM_NAMES
from normlab.report.norm_batch import norm_batch_section
from normlab.report.plotting import pyplot, save_figure
from normlab.report.sweep_lines import (
    error,
    error_axis,
    error_line,
    line_label,
    line_name,
    log2_axis,
)
from normlab.store.results import read_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D


def _diverged(group: dict) -> str:
    """`seed 0 at epoch 3, seed 1 at epoch 2`: the group's diverged seeds, empty if none."""
    return ", ".join(
        f"seed {s['seed']} at epoch {s['diverged_epoch']}"
        for s in group["seeds"]
        if s.get("status") == "diverged"
    )


def results_table(summary: dict) -> str:
    """Markdown table, one row per group; the interval is (nan) with a single seed. Diverged
    seeds are named in the status column and left out of the error (they have no final one);
    a group whose every seed diverged has a row with no error."""
    lines = [
        "| run group | seeds | test error % (mean) | std | 95% interval | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for g in summary["variants"]:
        gone = _diverged(g)
        status = f"{g['status']} ({gone})" if gone else g["status"]
        if "final_test_acc" not in g:
            if gone:
                lines.append(f"| {g['name']} | {len(g['seeds'])} | - | - | - | {status} |")
            continue
        std = g.get("final_test_acc_std")
        low, high = error_interval(g)
        interval = f"{low:.2f} to {high:.2f}" if std is not None else "one seed"
        lines.append(
            f"| {g['name']} | {len(g['seeds'])} | {error(g['final_test_acc']):.2f} | "
            f"{'-' if std is None else f'{std:.2f}'} | {interval} | {status} |"
        )
    return "\n".join(lines) + "\n"


def batch_size_figure(summary: dict, path: Path) -> Path:
    """Test error vs batch size: a panel per learning rate (and any other setting the group
    names keep), a line per variant in the same colour in every panel, each with its mean, 95%
    band over seeds and seed dots. One panel holding every (variant, lr) line ran out of
    colours and hid the lines under its legend; small multiples on a shared error axis keep
    the norms comparable within a panel and the learning rates across them."""
    panels: dict[str, dict[str, list[dict]]] = {}
    for g in summary["variants"]:
        if "final_test_acc" in g:
            variant, _, rest = line_name(g, "bs").partition("/")
            panels.setdefault(rest, {}).setdefault(variant, []).append(g)
    variants = list(dict.fromkeys(v for lines in panels.values() for v in lines))
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    fig, axs = pyplot().subplots(
        1, len(panels), figsize=(max(6.4, 3.4 * len(panels) + 2.0), 4.2), sharey=True,
        squeeze=False, layout="constrained",
    )  # fmt: skip
    handles = {}
    for ax, (rest, lines) in zip(axs[0], panels.items(), strict=True):
        for variant, groups in lines.items():
            handles[variant] = _batch_size_line(ax, groups, colors[variant], variant)
        log2_axis(ax, sorted({g["batch_size"] for gs in lines.values() for g in gs}))
        ax.set_xlabel("batch size (images per step)")
        ax.set_title(rest.replace("-", ", "), fontsize=10)
        ax.grid(alpha=0.3)
    error_axis(max(axs[0], key=lambda a: a.dataLim.y1))  # the axis is shared: the highest
    axs[0][0].set_ylabel("test error % (final epoch)")
    fig.suptitle(
        "Test error vs batch size\nline: mean over seeds; band: 95% interval; dots: each seed"
    )
    fig.legend(handles=list(handles.values()), loc="outside right upper", fontsize=9)
    return save_figure(fig, path)[0]


def error_interval(group: dict) -> tuple[float, float]:
    """The group's 95% interval as test error, low to high (the accuracy interval turned
    over); (nan, nan) for a single seed, which has none."""
    lo, hi = group.get("final_test_acc_ci95", (math.nan, math.nan))
    return error(hi), error(lo)


def _batch_size_line(ax: Axes, groups: list[dict], color: str, variant: str) -> Line2D:
    """One variant's line in a batch-size panel: mean error, 95% band, a dot per seed."""
    groups.sort(key=lambda g: g["batch_size"])
    bands = [error_interval(g) for g in groups]
    seeds = [
        [error(s["final_test_acc"]) for s in g["seeds"] if "final_test_acc" in s] for g in groups
    ]
    return error_line(
        ax, [g["batch_size"] for g in groups], [error(g["final_test_acc"]) for g in groups],
        bands, seeds, color, line_label(groups[0], variant),
    )  # fmt: skip


MAX_PANELS = 24  # beyond this a heatmap's cells are too small to read their numbers

Panels = dict[tuple[str, int, float], dict[tuple[float, float], dict]]


def heatmap_panels(summary: dict) -> Panels:
    """Cells keyed by (l1, l2) in a panel per (norm, batch size, learning rate): groups that
    differ in anything but l1 and l2 must never overwrite one another's cell."""
    panels: Panels = {}
    for g in summary["variants"]:
        if "final_test_acc" in g:
            panels.setdefault((g["norm"], g["batch_size"], g["lr"]), {})[(g["l1"], g["l2"])] = g
    return panels


def heatmap_figure(summary: dict, path: Path) -> Path:
    """Mean test error over the l1 x l2 grid, each cell annotated: a column per norm and, when
    the sweep also varies them, a row per batch size and learning rate."""
    panels = heatmap_panels(summary)
    norms = list(dict.fromkeys(k[0] for k in panels))
    rows = sorted({k[1:] for k in panels})
    fig, axes = pyplot().subplots(
        len(rows),
        len(norms),
        figsize=(3.4 * len(norms), 3.2 * len(rows)),
        squeeze=False,
        layout="constrained",
    )
    values = [error(g["final_test_acc"]) for cells in panels.values() for g in cells.values()]
    vmin, vmax = min(values), max(values)
    for r, (bs, lr) in enumerate(rows):
        for ax, norm in zip(axes[r], norms, strict=True):
            cells = panels.get((norm, bs, lr))
            if cells is None:
                ax.axis("off")
                continue
            im = _heatmap_panel(ax, cells, vmin, vmax)
            title = NORM_NAMES.get(norm, norm)
            ax.set_title(title if len(rows) == 1 else f"{title}\nbatch {bs}, lr {lr:g}")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="test error %")
    return save_figure(fig, path)[0]


def _heatmap_panel(ax: Axes, cells: dict, vmin: float, vmax: float) -> AxesImage:
    """One panel: mean test error over l1 x l2, each cell annotated with its mean and std."""
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
    return im


def write_sweep_report(out: Path) -> list[Path]:
    """Write whichever figures the sweep's axes call for and results.md, with a note for a
    figure the sweep is too large to show; returns the paths, results.md first."""
    out = Path(out)
    summary = read_json(out / "summary.json")
    figures, notes = [], []
    groups = [g for g in summary["variants"] if "final_test_acc" in g]
    if len({g["batch_size"] for g in groups}) > 1:
        figures.append(batch_size_figure(summary, out / "batch_size.png"))
    panels = heatmap_panels(summary)
    if any(len(cells) > 1 for cells in panels.values()):
        shape = len({k[0] for k in panels}) * len({k[1:] for k in panels})
        if shape <= MAX_PANELS:
            figures.append(heatmap_figure(summary, out / "heatmap.png"))
        else:
            notes.append(
                f"heatmap.png not drawn: the l1 x l2 grid would need {shape} panels (norm x "
                f"batch size x learning rate), more than {MAX_PANELS}; sweep the grid over fewer "
                "batch sizes or learning rates to see it."
            )
    drawn, section = norm_batch_section(summary, out)
    figures += drawn
    table = out / "results.md"
    text = results_table(summary) + "".join(f"\n{note}\n" for note in notes) + section
    write_atomic(table, text.encode())
    return [table, *figures]
