"""Training curves of a stored study: every variant on one axes per metric.

Reads only the study folder (through `results.py`), so `normlab report OUT` redraws the figures
of any finished or partial study without a model in memory. Each figure is made to be read by
someone who never saw the code: the title names dataset, epochs, seeds and data size; the legend
gives every variant's final value; each variant's best epoch is marked; accuracy axes are zoomed
to where the curves differ (from 5 epochs on); several seeds draw the mean with a min-max band;
a variant whose every seed diverged is dashed, other diverged seeds are left out of the curves,
and every divergence is named in the legend.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from normlab.atomic import write_atomic
from normlab.errors import NormlabError
from normlab.norms import NORM_NAMES
from normlab.results import read_json, read_metrics, run_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = {
    "test_accuracy": ("test_acc", "Test accuracy", "accuracy (%)"),
    "test_loss": ("test_loss", "Test loss", "cross-entropy loss (mean per image, log scale)"),
    "train_accuracy": ("train_acc", "Training accuracy", "accuracy (%), augmented training images"),
    "train_loss": ("train_loss", "Training loss", "cross-entropy loss (mean per image, log scale)"),
}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class StoredVariant:
    """One group of seeds' stored runs (a variant; in a sweep, a variant at one batch size and
    learning rate): metrics as arrays (seeds x epochs, nan where a run stopped), and for each
    seed whether it finished or diverged, since a diverged run's last row is not a result."""

    name: str
    norm: str
    params: int
    seeds: list[int]
    metrics: dict[str, np.ndarray]
    status: list[str]  # per seed: "finished" or "diverged"
    diverged_epoch: list[int | None]  # per seed: the epoch whose loss was not finite
    batch_size: int | None = None
    lr: float | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({NORM_NAMES.get(self.norm, self.norm)})"

    @property
    def diverged(self) -> bool:
        """Whether no seed finished: nothing of this variant can be ranked."""
        return "finished" not in self.status

    def divergence(self) -> str:
        """`diverged at epoch 3`, or `seed 1 diverged at epoch 3` when other seeds finished;
        empty when every seed finished."""
        gone = [
            (s, e)
            for s, st, e in zip(self.seeds, self.status, self.diverged_epoch, strict=True)
            if st == "diverged"
        ]
        if not gone:
            return ""
        if len(self.seeds) == 1:
            return f"diverged at epoch {gone[0][1]}"
        return ", ".join(f"seed {s} diverged at epoch {e}" for s, e in gone)

    def finished(self) -> StoredVariant:
        """The same variant with its finished seeds only: what means, intervals and paired
        tests are computed from."""
        keep = [i for i, st in enumerate(self.status) if st == "finished"]
        return replace(
            self,
            seeds=[self.seeds[i] for i in keep],
            metrics={k: v[keep] for k, v in self.metrics.items()},
            status=["finished"] * len(keep),
            diverged_epoch=[None] * len(keep),
        )

    def mean(self, column: str) -> np.ndarray:
        """Mean over seeds per epoch (over the seeds that reached the epoch)."""
        values = self.metrics[column]
        counts = np.sum(~np.isnan(values), axis=0)
        return np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True)
class StoredStudy:
    """What the figures and the report need from a study folder."""

    out: Path
    study: dict
    variants: list[StoredVariant]

    @property
    def config(self) -> dict:
        return self.study["config"]

    @property
    def epochs(self) -> int:
        return int(self.config["train"]["epochs"])

    @property
    def seed_count(self) -> int:
        return max((len(v.seeds) for v in self.variants), default=0)

    def describe(self) -> str:
        """`MNIST, 20 epochs, 1 seed, 60,000 train / 10,000 test images`: for figure titles."""
        data = self.study.get("data", {})
        seeds = self.seed_count
        size = ""
        if "train_size" in data:
            size = f", {thousands(data['train_size'])} train / {thousands(data.get('test_size'))}"
            size += " test images"
        return (
            f"{self.config['dataset'].upper()}, {self.epochs} epochs, "
            f"{seeds} seed{'s' if seeds != 1 else ''}{size}"
        )


def thousands(value: object) -> str:
    """`60,000` for an int, `?` when missing: study.json may lack its data block (an old or
    hand-written study), and `format(None, ",")` would crash the whole report."""
    if value is None:
        return "?"
    return f"{value:,}" if isinstance(value, int) else str(value)


def read_study(out: Path) -> StoredStudy:
    """Read study.json, summary.json and every finished or diverged run's metrics."""
    out = Path(out)
    study = read_json(out / "study.json")
    summary = read_json(out / "summary.json")
    variants = []
    for entry in summary["variants"]:
        seeds = [s["seed"] for s in entry["seeds"]]
        rows = [read_metrics(run_dir(out, entry["name"], s)) for s in seeds]
        length = max((len(r) for r in rows), default=0)
        metrics = {}
        for column in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"):
            grid = np.full((len(rows), length), np.nan)
            for i, run in enumerate(rows):
                grid[i, : len(run)] = [r[column] for r in run]
            metrics[column] = grid
        variants.append(
            StoredVariant(
                entry["name"],
                entry["norm"],
                entry["params"],
                seeds,
                metrics,
                [s.get("status", "finished") for s in entry["seeds"]],
                [s.get("diverged_epoch") for s in entry["seeds"]],
                entry.get("batch_size"),
                entry.get("lr"),
            )
        )
    if not any(v.metrics["epoch"].size for v in variants):
        raise NormlabError(
            f"{out} holds no finished epoch yet; run `normlab run --out {out}` first"
        )
    return StoredStudy(out, study, variants)


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend: figures are written, never shown, and
    a headless machine has no display. Imported late so the CLI starts fast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: Path) -> list[Path]:
    """`path` as PNG (for the report and README) and SVG (for print); closes the figure.
    Each file is written atomically, like everything else in a study folder."""
    paths = [path.with_suffix(".png"), path.with_suffix(".svg")]
    for p in paths:
        buf = io.BytesIO()
        fig.savefig(buf, format=p.suffix[1:], dpi=120)
        write_atomic(p, buf.getvalue())
    pyplot().close(fig)
    return paths


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


def plot_metric(study: StoredStudy, name: str, path: Path) -> list[Path]:
    """One metric of every variant on one axes, written as PNG and SVG; returns the paths."""
    from matplotlib.ticker import FuncFormatter

    plt = pyplot()

    column, title, ylabel = METRICS[name]
    is_acc = column.endswith("acc")
    fig, ax = plt.subplots(figsize=(8.5, 5.2), layout="constrained")
    means = []
    for i, stored in enumerate(study.variants):
        color = COLORS[i % len(COLORS)]
        # Diverged seeds are drawn only for a variant that has nothing else, so that the curve,
        # its best epoch and the report's table are computed from the same seeds.
        v = stored if stored.diverged else stored.finished()
        gone = stored.divergence()
        values = v.metrics[column]
        epochs = np.arange(1, values.shape[1] + 1)
        mean = v.mean(column)
        means.append(mean)
        if values.shape[0] > 1:
            ax.fill_between(
                epochs, np.nanmin(values, 0), np.nanmax(values, 0), color=color, alpha=0.18, lw=0
            )
        finite = ~np.isnan(mean)
        if not finite.any():
            continue
        last = np.flatnonzero(finite)[-1]
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
        ax.plot(
            epochs,
            mean,
            color=color,
            lw=2,
            marker="o",
            ms=3,
            ls="--" if v.diverged else "-",
            label=f"{head}, best {mean[best]:{fmt}}{unit} at epoch {best + 1}",
        )
        ax.plot(
            best + 1, mean[best], marker="*", ms=16, color=color, mec="black", mew=0.8, zorder=5
        )
    ax.plot(
        [],
        [],
        ls="none",
        marker="*",
        ms=12,
        color="white",
        mec="black",
        label="best epoch of each variant",
    )
    if study.seed_count > 1:
        ax.fill_between(
            [], [], [], color="grey", alpha=0.25, label="min-max over seeds (line: mean)"
        )
    note = ""
    if is_acc and study.epochs >= 5:
        lo, hi = _zoomed_range(means, study.epochs)
        ax.set_ylim(lo, hi)
        below = [m for m in means if np.nanmin(m) < lo]
        if below:
            note = (
                f"\ny-axis zoomed to where the variants differ: earlier epochs lie below {lo:.1f}%"
            )
    elif not is_acc:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _pos: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
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
