"""The study folder's read model: what figures, galleries, statistics and the notebook read.

`read_study` turns study.json, summary.json and every run's metrics.csv into a `StoredStudy`,
so nothing downstream parses files itself and no model needs to be in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from normlab.core.norms import NORM_NAMES
from normlab.errors import NormlabError
from normlab.store.results import read_json, read_metrics, run_dir


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
    norm_batch: int | None = None
    # per seed: what BatchNorm's running statistics cost (core.evaluation), None where unmeasured
    statistics_gap: list[dict | None] = field(default_factory=list)

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
            statistics_gap=[g for i, g in enumerate(self.statistics_gap) if i in keep],
        )

    def drawn(self) -> StoredVariant:
        """The seeds a figure draws: the finished ones, or every seed of a variant that has
        nothing else, so that a curve, its best epoch and the report's table are computed from
        the same seeds."""
        return self if self.diverged else self.finished()

    def mean(self, column: str) -> np.ndarray:
        """Mean over seeds per epoch (over the seeds that reached the epoch)."""
        return seed_mean(self.metrics[column])


def seed_mean(values: np.ndarray) -> np.ndarray:
    """The mean over axis 0 (seeds) of the seeds that have a value there (nan where none has):
    a seed that stopped sooner is nan from there on and leaves the others' mean as it is."""
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
    def swa_epochs(self) -> int:
        """The last epochs tested on an average of the weights (core.average); 0 for none, and
        for a study from before the setting existed."""
        return int(self.config["train"].get("swa_epochs", 0))

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
        name = self.config["dataset"]
        # a named dataset in capitals (MNIST); an image folder by its own name, as written
        name = Path(name).name.removesuffix(".tar.gz") if "/" in name else name.upper()
        return f"{name}, {self.epochs} epochs, {seeds} seed{'s' if seeds != 1 else ''}{size}"


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
                entry.get("norm_batch"),
                [s.get("statistics_gap") for s in entry["seeds"]],
            )
        )
    if not any(v.metrics["epoch"].size for v in variants):
        raise NormlabError(
            f"{out} holds no finished epoch yet; run `normlab run --out {out}` first"
        )
    return StoredStudy(out, study, variants)
