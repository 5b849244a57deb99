"""The findings section in words: sentences and the per-variant table, from `StudyFindings`.

Nothing here computes a statistic: every number is read from the records of report.findings,
so what the report says can be checked against what it was written from. Nothing is typed in
either: a difference the tests cannot tell from noise is reported as within noise.
"""

from __future__ import annotations

import math

from normlab.core.average import STATISTICS_BATCHES
from normlab.report.doc import Block, Bullets, Heading, Para, Table
from normlab.report.findings import (
    ALPHA,
    CLOSE,
    TARGET_ACC,
    GapFinding,
    PairFinding,
    StudyFindings,
    VariantFindings,
    statistics_gaps,
    study_findings,
)
from normlab.store.reader import StoredStudy


def p_text(value: float) -> str:
    """A p-value as the report writes it; nan (a test with no spread) is said to be undefined."""
    if math.isnan(value):
        return "p undefined (no spread)"
    return "p < 0.0001" if value < 1e-4 else f"p = {value:.3g}"


def diverged_items(f: StudyFindings) -> list[str]:
    """Which seeds diverged and what that means for the rest of the findings; empty if none."""
    if not f.diverged:
        return []
    return [
        "Diverged (the loss stopped being finite): "
        + "; ".join(f"{v.name} {v.divergence()}" for v in f.diverged)
        + ". A diverged run's last row is its last good epoch, not a result: diverged "
        "seeds are left out of every mean, interval and paired test below"
        + (", and a variant with no finished seed is not ranked." if f.unranked else ".")
    ]


def _row(rank: int, v: VariantFindings, absolute: bool) -> list[str]:
    return [
        str(rank),
        v.variant.label + (f"; {v.divergence}" if v.divergence else ""),
        f"{v.variant.params:,}",
        f"{v.mean:.2f}",
        f"{v.interval[0]:.2f} to {v.interval[1]:.2f}",
        str(v.settled),
        *([str(v.first_target) if v.first_target else "never"] if absolute else []),
        f"{v.best_epoch} ({v.best_acc:.2f})",
        f"{v.last_range:.2f}",
        f"{v.gap:+.2f}",
        f"{v.seconds_per_epoch:.1f}",
    ]


def findings_table(f: StudyFindings) -> Table:
    """One row per ranked variant, then the unranked ones with why they are not ranked."""
    absolute = f.reports_target
    columns = [
        "rank",
        "variant",
        "params",
        "final test acc %",
        "95% interval",
        f"first epoch within {CLOSE:g} of best",
        *([f"first epoch ≥ {TARGET_ACC:g}%"] if absolute else []),
        "best epoch (acc %)",
        f"range, last {f.stable_epochs} epochs",
        "train - test gap",
        "s / epoch",
    ]
    rows = [_row(rank, v, absolute) for rank, v in enumerate(f.ranked, 1)]
    rows += [
        ["-", v.label, f"{v.params:,}", v.divergence() or "no finished epoch"]
        + ["-"] * (len(columns) - 4)
        for v in f.unranked
    ]
    return Table(
        columns,
        rows,
        "Per variant (mean over finished seeds where there are several)",
        right=set(range(len(columns))) - {1, 4},
    )


def ranking_item(f: StudyFindings) -> str:
    return (
        "Ranking by final test accuracy: "
        + " > ".join(f"{v.variant.name} {v.mean:.2f}%" for v in f.ranked)
        + f" (intervals: {'; '.join(dict.fromkeys(v.interval_kind for v in f.ranked))})"
        + (f"; not ranked: {', '.join(v.name for v in f.unranked)}." if f.unranked else ".")
    )


def pair_item(pair: PairFinding) -> str:
    """One pair's difference, both p-values and the verdict at ALPHA."""
    a, b, t = pair.a.variant.name, pair.b.variant.name, pair.test
    detail = t.detail
    if t.discordant:
        detail = f"{t.discordant[0]} test images right only by {a}, {t.discordant[1]} only by {b}"
    verdict = "significant" if pair.significant else "within noise"
    return (
        f"{a} vs {b}: {t.diff:+.2f} points; {t.method} {p_text(t.p)}, Holm-adjusted "
        f"{p_text(pair.p_adjusted)} ({detail}): {verdict} at the {ALPHA:.0%} level."
    )


def pair_items(f: StudyFindings) -> list[str]:
    """A sentence per tested pair and one that sums them up; nothing when no pair was tested."""
    if not f.pairs:
        return []
    significant = [f"{p.a.variant.name} over {p.b.variant.name}" for p in f.significant]
    summary = (
        "Significant differences: " + ", ".join(significant) + "."
        if significant
        else f"No difference between variants is significant at the {ALPHA:.0%} level: "
        "the ranking above is within noise."
    )
    return [*map(pair_item, f.pairs), summary]


def convergence_items(f: StudyFindings) -> list[str]:
    """Convergence relative to each variant's own best (meaningful on any dataset), plus the
    first epoch at TARGET_ACC where some variant's best exceeds it (e.g. MNIST)."""
    items = [
        f"Convergence (first epoch whose test accuracy is within {CLOSE:g} points of the "
        "variant's own best; it says when a curve stops improving, not how high it gets): "
        + ", ".join(f"{v.variant.name} at epoch {v.settled}" for v in f.by_settled)
        + "."
    ]
    if f.reports_target:
        never = [v.variant.name for v in f.ranked if not v.first_target]
        items.append(
            f"First epoch at or above {TARGET_ACC:g}% test accuracy: "
            + ", ".join(f"{v.variant.name} at {v.first_target}" for v in f.reached_target)
            + (f"; never: {', '.join(never)}" if never else "")
            + "."
        )
    return items


def stability_item(f: StudyFindings) -> str:
    steady, shaky = f.extremes(lambda v: v.last_range)
    spread = f"{steady.last_range:.2f} points for {steady.variant.name}"
    if shaky is not steady:
        spread += f" and {shaky.last_range:.2f} for {shaky.variant.name}"
    return (
        f"Stability: over the last {f.stable_epochs} epochs the test accuracy moves within "
        f"{spread}."
    )


def gap_item(f: StudyFindings) -> str:
    """The train-test gaps, and why a negative one is no paradox."""
    gaps = (
        "Train - test gap (final epoch): "
        + ", ".join(f"{v.variant.name} {v.gap:+.2f}" for v in f.ranked)
        + " points"
    )
    if f.swa_epochs:
        gaps += (
            ". Training accuracy is that of the weights being trained, on augmented images; in "
            f"the last {f.swa_epochs} epochs (SWA) the test accuracy is that of their average, so "
            "the gap also holds what the averaging adds"
        )
    elif any(v.gap < 0 for v in f.ranked):
        gaps += (
            ". Training accuracy is measured on augmented images while the weights "
            "change, so a negative gap means the augmentation makes training harder than the test"
        )
    return gaps + "."


def time_item(f: StudyFindings) -> str:
    quick, slow = f.extremes(lambda v: v.seconds_per_epoch)
    times = f"{quick.seconds_per_epoch:.1f} s ({quick.variant.name})"
    if slow is not quick:
        times = f"from {times} to {slow.seconds_per_epoch:.1f} s ({slow.variant.name})"
    return f"Time per epoch (median, training and evaluation, on {f.device}): {times}."


def findings_blocks(study: StoredStudy) -> list[Block]:
    """The findings section: sentences computed from the study's findings, then the table."""
    f = study_findings(study)
    diverged = diverged_items(f)
    if not f.ranked:
        nothing = Para("No variant finished an epoch, so there is nothing to compare.")
        return [Bullets(diverged), nothing] if diverged else [nothing]
    items = [
        ranking_item(f),
        *diverged,
        *pair_items(f),
        *convergence_items(f),
        stability_item(f),
        gap_item(f),
        time_item(f),
    ]
    return [Bullets(items), findings_table(f)]


def _gap_row(g: GapFinding) -> list[str]:
    return [
        g.run,
        str(g.batch),
        f"{g.running:.2f}",
        f"{g.batch_stats:.2f}",
        "-" if g.precise is None else f"{g.precise:.2f}",
        f"{g.gap:+.2f}",
        "-" if g.won_back is None else f"{g.won_back:+.2f}",
    ]


def statistics_gap_blocks(study: StoredStudy) -> list[Block]:
    """BatchNorm's train/test gap per run, where it was measured, under its own heading: what
    the measurement is, the largest gap, and the table; nothing for a study without
    batch-dependent norms."""
    gaps = statistics_gaps(study)
    if not gaps:
        return []
    largest = max(gaps, key=lambda g: g.gap)
    precise = sorted({g.precise_batches for g in gaps if g.precise is not None})
    how = (
        f"recomputed as the average over the first {' or '.join(map(str, precise))} training "
        "batches, unaugmented"
        if precise
        else "not measured (--precise-bn 0)"
    )
    text = (
        "Measured at the end of each run with batch-dependent norms: test accuracy with the "
        "running statistics that evaluation uses (the final test accuracy), with each test "
        "batch's own statistics (the norm layers as in training, the same number of images "
        f"sharing them), and after precise BN (running statistics {how}); the stored model "
        "keeps its running statistics. The gap is batch - running statistics, positive where "
        f"the running statistics cost accuracy (largest: {largest.run}, {largest.gap:+.2f} "
        "points); precise - running is what recomputing them wins back."
    )
    if study.swa_epochs:
        text += (
            " Here the runs end on an average of their weights (SWA), whose running statistics"
            " are already precise BN's, recomputed for the averaged weights over the first"
            f" {STATISTICS_BATCHES} training batches: precise - running is 0 where precise BN"
            " averaged as many."
        )
    columns = [
        "run",
        "images per statistic",
        "running stats %",
        "batch stats %",
        "precise BN %",
        "gap (batch - running)",
        "precise - running",
    ]
    table = Table(columns, [_gap_row(g) for g in gaps], right=set(range(1, len(columns))))
    return [Heading("BatchNorm's running statistics: the train/test gap"), Para(text), table]
