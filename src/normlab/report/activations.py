"""What the norm layers receive over training: a figure per variant of the statistics that
`--activation-stats` records (core.activations, stored as each run's activations.npz), and a
sentence per variant computed from them.

Each figure has four panels against training progress in epochs: the mean and std of every
norm layer's input (the pre-norm activations) and of the loss's gradient with respect to it,
one colour per layer from input to output (the same colour for the same depth in every
figure), stds on a log scale. Several seeds draw their mean with a min-max band. A study
recorded without the statistics (or before they existed) has no activations.npz: the report
leaves the section out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from normlab.core.records import STAT_NAMES
from normlab.report.doc import Block, Heading, Image, Para
from normlab.report.plotting import COLORS, log_scale, pyplot, save_figure, seed_band
from normlab.store.reader import StoredStudy, StoredVariant, seed_mean
from normlab.store.results import read_activations, run_dir

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PANELS = {  # statistic -> (panel title, log scale)
    "act_mean": ("mean of the norm's input (pre-norm activations)", False),
    "act_std": ("std of the norm's input (log scale)", True),
    "grad_mean": ("mean of the loss gradient w.r.t. the norm's input", False),
    "grad_std": ("std of the loss gradient w.r.t. the norm's input (log scale)", True),
}


@dataclass(frozen=True)
class VariantActivations:
    """One variant's statistics over its seeds: `values[name]` is seeds x steps x layers (nan
    where a seed stopped sooner), `epoch` the measured steps' places in training."""

    variant: StoredVariant
    layers: list[str]
    epoch: np.ndarray
    values: dict[str, np.ndarray]
    seeds: int

    def mean(self, name: str) -> np.ndarray:
        """steps x layers: the mean over the seeds that reached each step."""
        return seed_mean(self.values[name])

    def ends(self, name: str) -> tuple[int, int] | None:
        """The first and last measured steps at which the seed mean is finite in every layer:
        what `change` compares (None where there is none)."""
        rows = np.flatnonzero(np.isfinite(self.mean(name)).all(axis=1))
        return (int(rows[0]), int(rows[-1])) if rows.size else None

    def change(self, name: str) -> np.ndarray:
        """Per layer: the seed mean's value at the last of `ends` over that at the first (x
        times); nan where no step is finite in every layer."""
        m, ends = self.mean(name), self.ends(name)
        return np.full(m.shape[1], np.nan) if ends is None else m[ends[1]] / m[ends[0]]


def variant_activations(study: StoredStudy, v: StoredVariant) -> VariantActivations | None:
    """The finished seeds' stored statistics (all seeds' where none finished), or None when
    none of them has an activations.npz."""
    stored = [read_activations(run_dir(study.out, v.name, s)) for s in v.drawn().seeds]
    stored = [a for a in stored if a is not None]
    if not stored:
        return None
    longest = max(stored, key=lambda a: len(a["epoch"]))
    steps = len(longest["epoch"])
    values = {}
    for name in STAT_NAMES:
        grid = np.full((len(stored), steps, len(longest["layer"])), np.nan)
        for i, a in enumerate(stored):
            grid[i, : len(a["epoch"])] = a[name]
        values[name] = grid
    return VariantActivations(v, list(longest["layer"]), longest["epoch"], values, len(stored))


def draw_panel(ax: Axes, stats: VariantActivations, name: str) -> None:
    """One statistic of every layer against epochs: the seed mean, a min-max band over seeds."""
    title, log = PANELS[name]
    values, mean = stats.values[name], stats.mean(name)
    for layer, label in enumerate(stats.layers):
        color = COLORS[layer % len(COLORS)]
        seed_band(ax, stats.epoch, values[:, :, layer], color)
        ax.plot(stats.epoch, mean[:, layer], color=color, lw=1.6, marker="o", ms=2.5, label=label)
    if log:
        log_scale(ax)
    else:
        ax.axhline(0, color="black", lw=0.6, alpha=0.5)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.35)


def plot_activations(study: StoredStudy, stats: VariantActivations, path: Path) -> Path:
    """The four panels of one variant, written as PNG and SVG; returns the PNG's path."""
    fig, axes = pyplot().subplots(2, 2, figsize=(11, 7.5), layout="constrained", sharex=True)
    for ax, name in zip(axes.flat, PANELS, strict=True):
        draw_panel(ax, stats, name)
    for ax in axes[1]:
        ax.set_xlabel("epochs of training before the measured step")
    act, grad = stats.change("act_std"), stats.change("grad_std")
    handles, _ = axes[0, 0].get_legend_handles_labels()
    labels = [
        f"{label}: input std {a:.3g}x, gradient std {g:.3g}x its first value"
        for label, a, g in zip(stats.layers, act, grad, strict=True)
    ]
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8.5)
    seeds = f"; mean of {stats.seeds} seeds (band: min-max)" if stats.seeds > 1 else ""
    fig.suptitle(
        f"{stats.variant.label}: what each norm layer receives during training, block 1 "
        f"nearest the input\n{study.describe()}{seeds}; measured at the run's first step and "
        "the last step of each quarter epoch",
        fontsize=11,
    )
    return save_figure(fig, path)[0]


def describe(stats: VariantActivations) -> str:
    """One sentence on a variant: which layer's pre-norm std grows most (or, where none grew,
    that they all shrank and which shrank most: the word follows the data), and how much the
    gradient std at the norm inputs changes, from the first measured step to the last."""
    act, grad = stats.change("act_std"), stats.change("grad_std")
    if np.isnan(act).all():
        return f"{stats.variant.label}: no step with finite statistics in every layer."
    if np.nanmax(act) > 1:
        top, change = int(np.nanargmax(act)), "grows most in"
    else:
        top, change = int(np.nanargmin(act)), "shrinks in every layer, most in"
    low = int(np.nanargmin(grad))
    first, last = stats.ends("act_std")  # not None: act has a finite value
    span = f"from epoch {stats.epoch[first]:.2f} to {stats.epoch[last]:.2f}"
    return (
        f"{stats.variant.label}: the pre-norm std {change} {stats.layers[top]} "
        f"({act[top]:.3g} times its first value {span}; the layers range from "
        f"{np.nanmin(act):.3g} to {np.nanmax(act):.3g} times); the gradient std at the norm "
        f"inputs ends at {np.nanmin(grad):.3g} ({stats.layers[low]}) to {np.nanmax(grad):.3g} "
        "times its first value."
    )


def compare(found: list[VariantActivations]) -> str:
    """Across variants: where the pre-norm std ends largest and smallest (any layer, the seed
    mean at each variant's last measured step); empty for fewer than two variants."""
    ends = []
    for stats in found:
        last = stats.mean("act_std")[-1]
        ends += [(float(last[i]), stats, i) for i in np.flatnonzero(np.isfinite(last))]
    if len({id(stats) for _, stats, _ in ends}) < 2:
        return ""
    (hi, a, i), (lo, b, j) = max(ends, key=lambda e: e[0]), min(ends, key=lambda e: e[0])
    return (
        f" At the last measured step the pre-norm std is largest in {a.variant.name} "
        f"({a.layers[i]}: {hi:.3g}) and smallest in {b.variant.name} ({b.layers[j]}: {lo:.3g})."
    )


def activation_blocks(study: StoredStudy, figures: Path) -> list[Block]:
    """The section: what is measured, then per variant its figure and sentence; nothing for a
    study whose runs stored no activations.npz."""
    found = [s for v in study.variants if (s := variant_activations(study, v)) is not None]
    if not found:
        return []
    blocks: list[Block] = [
        Heading("What the norm layers receive during training"),
        Para(
            "Recorded with `--activation-stats`: for every norm layer (for `none`, the "
            "pre-activation), the mean and std over the whole batch of its input and of the "
            "training loss's gradient with respect to that input, at the run's first step and "
            "the last step of each quarter epoch. How to read them: a norm whose output does "
            "not change with its input's scale (BatchNorm, GroupNorm, LayerNorm) passes back a "
            "gradient that scales as 1/std of its input." + compare(found)
        ),
    ]
    for stats in found:
        name = stats.variant.name
        path = plot_activations(study, stats, figures / f"activations_{name}")
        blocks.append(Image(path.relative_to(study.out).as_posix(), f"activations of {name}"))
        blocks.append(Para(describe(stats)))
    return blocks
