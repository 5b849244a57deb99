"""What the findings say, as data: computed from the stored study, before any sentence is written.

`study_findings` ranks the variants with finished seeds, puts an interval on each, tests every
pair (McNemar on the same test images for one seed, a paired test across seeds otherwise) and
Holm-corrects the p-values for the number of pairs, and records convergence, stability over the
last epochs, the train-test gap and the time per epoch; `statistics_gaps` lists, per run with
batch-dependent norms, what their running statistics cost (measured by core.evaluation).
`report.text` turns these records into sentences and tables; keeping the numbers apart lets a
notebook or a test read them directly.

A diverged run's last row is its last good epoch, not a result: diverged seeds are left out of
every mean, interval, paired test and convergence figure; a variant with no finished seed is
listed but not ranked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from normlab.report.stats import PairTest, holm, mcnemar_exact, seeds_test, wilson_interval
from normlab.store.reader import StoredStudy, StoredVariant
from normlab.store.results import mean_ci, read_predictions, run_dir

ALPHA = 0.05
# Convergence is measured against each variant's own best, so it means the same on MNIST
# (99+%) and on CIFAR-10 (~80%): the first epoch whose mean test accuracy is within CLOSE points
# of the best epoch's. An absolute bar only means something where the accuracies reach it.
CLOSE = 0.5
TARGET_ACC = 99.0  # the classic MNIST bar, reported only when some variant's best exceeds it
STABLE_EPOCHS = 5


@dataclass(frozen=True)
class VariantFindings:
    """The numbers the findings are written from, for one variant's finished seeds."""

    variant: StoredVariant  # finished seeds only (see StoredVariant.finished)
    divergence: str  # which of its seeds diverged, and when; empty when none did
    final: tuple[float, ...]  # final test accuracy per finished seed
    interval: tuple[float, float]
    interval_kind: str
    settled: int  # first epoch within CLOSE points of the best
    first_target: int | None  # first epoch at or above TARGET_ACC
    best_epoch: int
    best_acc: float
    last_range: float
    gap: float
    seconds_per_epoch: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.final))


@dataclass(frozen=True)
class PairFinding:
    """One tested pair of ranked variants (a ranked above b): the test with its raw p-value, and
    the p-value Holm-adjusted over all the pairs tested in the study."""

    a: VariantFindings
    b: VariantFindings
    test: PairTest
    p_adjusted: float

    @property
    def significant(self) -> bool:
        """Adjusted p below ALPHA; an undefined (nan) p-value is never significant."""
        return self.p_adjusted < ALPHA


@dataclass(frozen=True)
class StudyFindings:
    """Everything the findings section states, for one study."""

    ranked: tuple[VariantFindings, ...]  # highest mean final test accuracy first
    unranked: tuple[StoredVariant, ...]  # no finished seed with a finished epoch
    diverged: tuple[StoredVariant, ...]  # every variant with at least one diverged seed
    pairs: tuple[PairFinding, ...]  # the pairs that could be tested, in ranking order
    stable_epochs: int  # how many last epochs the stability range covers
    device: str  # where the runs were timed
    swa_epochs: int  # last epochs tested on the average of the weights (core.average); 0: none

    @property
    def reports_target(self) -> bool:
        """Whether TARGET_ACC means anything here: some variant's best exceeds it."""
        return bool(self.ranked) and max(f.best_acc for f in self.ranked) > TARGET_ACC

    @property
    def significant(self) -> tuple[PairFinding, ...]:
        return tuple(p for p in self.pairs if p.significant)

    @property
    def by_settled(self) -> list[VariantFindings]:
        """Ranked variants by the epoch they settle within CLOSE of their own best."""
        return sorted(self.ranked, key=lambda f: f.settled)

    @property
    def reached_target(self) -> list[VariantFindings]:
        """Variants that reached TARGET_ACC, the earliest first."""
        reached = [f for f in self.ranked if f.first_target]
        return sorted(reached, key=lambda f: f.first_target or 0)

    def extremes(
        self, key: Callable[[VariantFindings], float]
    ) -> tuple[VariantFindings, VariantFindings]:
        """The ranked variants with the lowest and the highest key (the first in ranking order
        on a tie), e.g. the steadiest and the shakiest, the quickest and the slowest."""
        return min(self.ranked, key=key), max(self.ranked, key=key)


@dataclass(frozen=True)
class GapFinding:
    """One run's stored statistics gap: test accuracy % with BatchNorm's running statistics,
    with each test batch's own (`batch` images sharing them), and after precise BN over
    `precise_batches` training batches (None: not measured)."""

    run: str  # the run's folder: group/seed<k>
    batch: int
    running: float
    batch_stats: float
    precise: float | None
    precise_batches: int

    @property
    def gap(self) -> float:
        """Batch minus running statistics: what the running statistics cost (negative: they
        do better than a test batch's own)."""
        return self.batch_stats - self.running

    @property
    def won_back(self) -> float | None:
        """Precise BN minus running statistics: what recomputing them gains."""
        return None if self.precise is None else self.precise - self.running


def statistics_gaps(study: StoredStudy) -> tuple[GapFinding, ...]:
    """Every run with a measured statistics gap, in the study's order (empty for a study
    without batch-dependent norms, or one written before the gap was measured)."""
    return tuple(
        GapFinding(
            f"{v.name}/seed{seed}",
            gap["batch"],
            gap["running_acc"],
            gap["batch_acc"],
            gap["precise_acc"],
            gap["precise_batches"],
        )
        for v in study.variants
        for seed, gap in zip(v.seeds, v.statistics_gap, strict=False)  # [] if none are stored
        if gap
    )


def predictions(study: StoredStudy, name: str, seed: int) -> dict[str, np.ndarray] | None:
    """A run's predictions.npz, or None where there is none (a diverged run keeps none)."""
    d = run_dir(study.out, name, seed)
    return read_predictions(d) if (d / "predictions.npz").exists() else None


def _interval(study: StoredStudy, v: StoredVariant, last: list[float]) -> tuple[float, float, str]:
    """A t-interval over seeds with several; with one, a Wilson interval on its test images
    (counted from its predictions, or from the accuracy and the stored test size)."""
    if len(last) > 1:
        _, lo, hi = mean_ci(last)
        return lo, hi, f"95% t-interval over {len(last)} seeds"
    pred = predictions(study, v.name, v.seeds[0])
    if pred is not None:
        n, correct = len(pred["target"]), int(np.sum(pred["pred"] == pred["target"]))
    else:
        n = study.study.get("data", {}).get("test_size")
        if not isinstance(n, int):
            return math.nan, math.nan, "none: neither predictions.npz nor the test size is stored"
        correct = round(last[0] * n / 100)
    lo, hi = wilson_interval(correct, n)
    return lo, hi, f"95% Wilson interval, {n:,} test images"


def variant_findings(study: StoredStudy, variant: StoredVariant) -> VariantFindings | None:
    """None for a variant with no finished seed with a finished epoch: nothing to rank."""
    v = variant.finished()
    acc = v.metrics["test_acc"]
    last_per_seed = [row[~np.isnan(row)][-1] for row in acc if (~np.isnan(row)).any()]
    if not last_per_seed:
        return None
    lo, hi, kind = _interval(study, v, last_per_seed)
    mean = v.mean("test_acc")
    best = int(np.nanargmax(mean))
    settled = np.flatnonzero(mean >= mean[best] - CLOSE)
    reached = np.flatnonzero(mean >= TARGET_ACC)
    finite = mean[~np.isnan(mean)]
    tail = finite[-min(STABLE_EPOCHS, len(finite)) :]
    train = v.mean("train_acc")
    train = train[~np.isnan(train)]
    return VariantFindings(
        v,
        variant.divergence(),
        tuple(float(a) for a in last_per_seed),
        (lo, hi),
        kind,
        int(settled[0]) + 1,
        int(reached[0]) + 1 if reached.size else None,
        best + 1,
        float(mean[best]),
        float(tail.max() - tail.min()),
        float(train[-1] - finite[-1]),
        float(np.nanmedian(v.metrics["seconds"])),
    )


def pair_test(study: StoredStudy, a: VariantFindings, b: VariantFindings) -> PairTest | None:
    """McNemar on the first finished seed's predictions with one seed; paired across the
    finished seeds with several (None where fewer than two seeds are common to both)."""
    if study.seed_count > 1:
        common = sorted(set(a.variant.seeds) & set(b.variant.seeds))
        if (
            len(common) < 2
            or len(a.final) != len(a.variant.seeds)
            or len(b.final) != len(b.variant.seeds)
        ):
            return None
        acc_a = [a.final[a.variant.seeds.index(s)] for s in common]
        acc_b = [b.final[b.variant.seeds.index(s)] for s in common]
        return seeds_test(acc_a, acc_b)
    pa = predictions(study, a.variant.name, a.variant.seeds[0])
    pb = predictions(study, b.variant.name, b.variant.seeds[0])
    if pa is None or pb is None:
        return None
    return mcnemar_exact(pa["pred"] == pa["target"], pb["pred"] == pb["target"])


def pair_findings(study: StoredStudy, ranked: tuple[VariantFindings, ...]) -> list[PairFinding]:
    """Every pair that can be tested, with Holm's correction over those tested (a pair without
    a test is not a test made, so it does not enlarge the correction)."""
    pairs = [(a, b, pair_test(study, a, b)) for a, b in itertools.combinations(ranked, 2)]
    tested = [(a, b, t) for a, b, t in pairs if t is not None]
    adjusted = holm([t.p for _, _, t in tested])
    return [PairFinding(a, b, t, p) for (a, b, t), p in zip(tested, adjusted, strict=True)]


def study_findings(study: StoredStudy) -> StudyFindings:
    """The findings of a study: its variants ranked, their pairs tested, the rest recorded."""
    found = [f for v in study.variants if (f := variant_findings(study, v)) is not None]
    ranked = tuple(sorted(found, key=lambda f: -f.mean))
    names = {f.variant.name for f in ranked}
    return StudyFindings(
        ranked=ranked,
        unranked=tuple(v for v in study.variants if v.name not in names),
        diverged=tuple(v for v in study.variants if v.divergence()),
        pairs=tuple(pair_findings(study, ranked)),
        stable_epochs=min(STABLE_EPOCHS, study.epochs),
        device=study.study.get("environment", {}).get("device", "?"),
        swa_epochs=study.swa_epochs,
    )
