"""Training curves of a stored study: every variant on one axes per metric.

Reads only the study folder (through `store.reader`), so `normlab report OUT` redraws the figures
of any finished or partial study without a model in memory. Each figure is made to be read by
someone who never saw the code: the title names dataset, epochs, seeds and data size; the legend
gives every variant's final value; each variant's best epoch is marked; accuracy axes are zoomed
to where the curves differ (from 5 epochs on); several seeds draw the mean with a min-max band;
a variant whose every seed diverged is dashed, other diverged seeds are left out of the curves,
and every divergence is named in the legend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from normlab.report.plotting import COLORS, log_scale, pyplot, save_figure, seed_band
from normlab.store.reader import StoredStudy, StoredVariant

if TYPE_CHECKING:
    from matplotlib.axes import Axes

METRICS = {
    "test_accuracy": ("test_acc", "Test accuracy", "accuracy (%)"),
    "test_loss": ("test_loss", "Test loss", "cross-entropy loss (mean per image, log scale)"),
    "train_accuracy": ("train_acc", "Training accuracy", "accuracy (%), augmented training images"),
    "train_loss": ("train_loss", "Training loss", "cross-entropy loss (mean per image, log scale)"),
}


def _zoomed_range(curves: list[np.ndarray], epochs: int) -> tuple[float, float]:
    """A y-range for accuracy that shows where the variants differ: from the lowest value any
    curve takes after its first quarter of epochs (at least after epoch 1) to the top. Early
    epochs may fall below; the caption says so."""
    skip = max(1, epochs // 4) if epochs > 1 else 0
    late = np.concatenate([c[skip:] for c in curves])
    late = late[~np.isnan(late)]
    if late.size == 0:
        late = np.concatenate(curves)
    lo, hi = float(np.nanmin(late)), float(np.nanmax(late))
    pad = max(0.1, 0.12 * (hi - lo))
    return max(0.0, lo - pad), min(100.0, hi + pad)


def legend_label(v: StoredVariant, gone: str, column: str, mean: np.ndarray) -> tuple[str, int]:
    """A variant's legend entry (final value ± spread over seeds, best and its epoch, any
    divergence) and the index of its best epoch."""
    is_acc = column.endswith("acc")
    values = v.metrics[column]
    last = np.flatnonzero(~np.isnan(mean))[-1]
    best = int(np.nanargmax(mean) if is_acc else np.nanargmin(mean))
    unit = "%" if is_acc else ""
    fmt = ".2f" if is_acc else ".4f"
    spread = ""
    if np.sum(~np.isnan(values[:, last])) > 1:  # one seed at the last epoch has no spread
        spread = f" ± {np.nanstd(values[:, last], ddof=1):{fmt}}"
    if v.diverged:
        head = f"{v.label}: {gone}, last good epoch {mean[last]:{fmt}}{unit}"
    else:
        head = f"{v.label}: final {mean[last]:{fmt}}{spread}{unit}"
        head += f" ({gone}; not drawn)" if gone else ""
    return f"{head}, best {mean[best]:{fmt}}{unit} at epoch {best + 1}", best


def draw_variant(ax: Axes, stored: StoredVariant, column: str, color: str) -> np.ndarray:
    """One variant's mean curve (with a min-max band over seeds) and its best epoch's star;
    returns the mean curve."""
    v = stored.drawn()
    values = v.metrics[column]
    epochs = np.arange(1, values.shape[1] + 1)
    mean = v.mean(column)
    seed_band(ax, epochs, values, color)
    if np.isnan(mean).all():
        return mean
    label, best = legend_label(v, stored.divergence(), column, mean)
    ls = "--" if v.diverged else "-"
    ax.plot(epochs, mean, color=color, lw=2, marker="o", ms=3, ls=ls, label=label)
    ax.plot(best + 1, mean[best], marker="*", ms=16, color=color, mec="black", mew=0.8, zorder=5)
    return mean


def scale_y(ax: Axes, study: StoredStudy, is_acc: bool, means: list[np.ndarray]) -> str:
    """Accuracy zoomed to where the variants differ (from 5 epochs on), loss on a log scale
    with plain tick labels; returns a note for the title when early epochs fall below."""
    if is_acc and study.epochs >= 5:
        lo, hi = _zoomed_range(means, study.epochs)
        ax.set_ylim(lo, hi)
        if any(np.nanmin(m) < lo for m in means):
            return (
                f"\ny-axis zoomed to where the variants differ: earlier epochs lie below {lo:.1f}%"
            )
    elif not is_acc:
        log_scale(ax)
    return ""


def plot_metric(study: StoredStudy, name: str, path: Path) -> list[Path]:
    """One metric of every variant on one axes, written as PNG and SVG; returns the paths."""
    column, title, ylabel = METRICS[name]
    is_acc = column.endswith("acc")
    fig, ax = pyplot().subplots(figsize=(8.5, 5.2), layout="constrained")
    means = [
        draw_variant(ax, v, column, COLORS[i % len(COLORS)]) for i, v in enumerate(study.variants)
    ]
    star = {"marker": "*", "ms": 12, "color": "white", "mec": "black"}
    ax.plot([], [], ls="none", **star, label="best epoch of each variant")
    if study.seed_count > 1:
        ax.fill_between(
            [], [], [], color="grey", alpha=0.25, label="min-max over seeds (line: mean)"
        )
    note = scale_y(ax, study, is_acc, means)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.5, study.epochs + 0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.set_title(f"{title} per epoch\n{study.describe()}{note}", fontsize=11)
    ax.legend(loc="lower right" if is_acc else "upper right", fontsize=9, framealpha=0.92)
    return save_figure(fig, path)


def plot_curves(study: StoredStudy, folder: Path) -> dict[str, Path]:
    """All four curve figures into `folder`; returns name -> PNG path."""
    return {name: plot_metric(study, name, Path(folder) / name)[0] for name in METRICS}
