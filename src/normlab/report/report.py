"""report.md and a self-contained report.html, from the study folder alone.

Every statement in the findings is computed here from the stored numbers: the ranking with its
uncertainty, whether the differences are significant (McNemar on the same test images for one
seed, a paired test across seeds otherwise, Holm-corrected for the number of pairs), convergence,
stability over the last epochs, the train-test gap and the time per epoch. Nothing is typed in:
a difference the tests cannot tell from noise is reported as within noise.

A diverged run's last row is its last good epoch, not a result: diverged seeds are named, and
left out of every mean, interval, paired test and convergence figure; a variant with no finished
seed is listed but not ranked.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normlab.errors import NormlabError
from normlab.report.curves import plot_curves
from normlab.report.doc import Block, Bullets, Heading, Image, Para, Table, to_html, to_markdown
from normlab.report.explain import axes_figure, example_tensor, explain_blocks
from normlab.report.gallery import plot_confusion, plot_mistakes
from normlab.report.stats import PairTest, holm, mcnemar_exact, mean_ci, seeds_test, wilson_interval
from normlab.store.atomic import write_atomic
from normlab.store.reader import StoredStudy, StoredVariant, read_study, thousands
from normlab.store.results import read_predictions, run_dir

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
    final: list[float]  # final test accuracy per finished seed
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


def _predictions(study: StoredStudy, name: str, seed: int) -> dict[str, np.ndarray] | None:
    """A run's predictions.npz, or None where there is none (a diverged run keeps none)."""
    d = run_dir(study.out, name, seed)
    return read_predictions(d) if (d / "predictions.npz").exists() else None


def _interval(study: StoredStudy, v: StoredVariant, last: list[float]) -> tuple[float, float, str]:
    """A t-interval over seeds with several; with one, a Wilson interval on its test images
    (counted from its predictions, or from the accuracy and the stored test size)."""
    if len(last) > 1:
        _, lo, hi = mean_ci(last)
        return lo, hi, f"95% t-interval over {len(last)} seeds"
    pred = _predictions(study, v.name, v.seeds[0])
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
        [float(a) for a in last_per_seed],
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
    pa = _predictions(study, a.variant.name, a.variant.seeds[0])
    pb = _predictions(study, b.variant.name, b.variant.seeds[0])
    if pa is None or pb is None:
        return None
    return mcnemar_exact(pa["pred"] == pa["target"], pb["pred"] == pb["target"])


def _p(value: float) -> str:
    if math.isnan(value):
        return "p undefined (no spread)"
    return "p < 0.0001" if value < 1e-4 else f"p = {value:.3g}"


def findings_blocks(study: StoredStudy) -> list[Block]:
    """The findings section: a table per variant and sentences computed from it."""
    found = [f for v in study.variants if (f := variant_findings(study, v)) is not None]
    ranked = {f.variant.name for f in found}
    unranked = [v for v in study.variants if v.name not in ranked]
    gone = [v for v in study.variants if v.divergence()]
    diverged = []
    if gone:
        diverged.append(
            "Diverged (the loss stopped being finite): "
            + "; ".join(f"{v.name} {v.divergence()}" for v in gone)
            + ". A diverged run's last row is its last good epoch, not a result: diverged "
            "seeds are left out of every mean, interval and paired test below"
            + (", and a variant with no finished seed is not ranked." if unranked else ".")
        )
    if not found:
        nothing = Para("No variant finished an epoch, so there is nothing to compare.")
        return [Bullets(diverged), nothing] if diverged else [nothing]
    found.sort(key=lambda f: -f.mean)
    stable = min(STABLE_EPOCHS, study.epochs)
    absolute = reports_target(found)
    columns = [
        "rank",
        "variant",
        "params",
        "final test acc %",
        "95% interval",
        f"first epoch within {CLOSE:g} of best",
        *([f"first epoch ≥ {TARGET_ACC:g}%"] if absolute else []),
        "best epoch (acc %)",
        f"range, last {stable} epochs",
        "train - test gap",
        "s / epoch",
    ]
    rows = [
        [
            str(rank),
            f.variant.label + (f"; {f.divergence}" if f.divergence else ""),
            f"{f.variant.params:,}",
            f"{f.mean:.2f}",
            f"{f.interval[0]:.2f} to {f.interval[1]:.2f}",
            str(f.settled),
            *([str(f.first_target) if f.first_target else "never"] if absolute else []),
            f"{f.best_epoch} ({f.best_acc:.2f})",
            f"{f.last_range:.2f}",
            f"{f.gap:+.2f}",
            f"{f.seconds_per_epoch:.1f}",
        ]
        for rank, f in enumerate(found, 1)
    ]
    rows += [
        ["-", v.label, f"{v.params:,}", v.divergence() or "no finished epoch"]
        + ["-"] * (len(columns) - 4)
        for v in unranked
    ]
    table = Table(
        columns,
        rows,
        "Per variant (mean over finished seeds where there are several)",
        right=set(range(len(columns))) - {1, 4},
    )
    items = [
        "Ranking by final test accuracy: "
        + " > ".join(f"{f.variant.name} {f.mean:.2f}%" for f in found)
        + f" (intervals: {'; '.join(dict.fromkeys(f.interval_kind for f in found))})"
        + (f"; not ranked: {', '.join(v.name for v in unranked)}." if unranked else "."),
        *diverged,
    ]
    pairs = [(a, b, pair_test(study, a, b)) for a, b in itertools.combinations(found, 2)]
    tested = [(a, b, t) for a, b, t in pairs if t is not None]
    adjusted = holm([t.p for _, _, t in tested])
    significant = []
    for (a, b, t), p_adj in zip(tested, adjusted, strict=True):
        verdict = "significant" if p_adj < ALPHA else "within noise"
        detail = t.detail
        if t.discordant:
            detail = (
                f"{t.discordant[0]} test images right only by {a.variant.name}, "
                f"{t.discordant[1]} only by {b.variant.name}"
            )
        if p_adj < ALPHA:
            significant.append(f"{a.variant.name} over {b.variant.name}")
        items.append(
            f"{a.variant.name} vs {b.variant.name}: {t.diff:+.2f} points; {t.method} "
            f"{_p(t.p)}, Holm-adjusted {_p(p_adj)} ({detail}): {verdict} at the "
            f"{ALPHA:.0%} level."
        )
    if tested:
        items.append(
            "Significant differences: " + ", ".join(significant) + "."
            if significant
            else f"No difference between variants is significant at the {ALPHA:.0%} level: "
            "the ranking above is within noise."
        )
    items += convergence_items(found)
    steady = min(found, key=lambda f: f.last_range)
    shaky = max(found, key=lambda f: f.last_range)
    spread = f"{steady.last_range:.2f} points for {steady.variant.name}"
    if shaky is not steady:
        spread += f" and {shaky.last_range:.2f} for {shaky.variant.name}"
    items.append(
        f"Stability: over the last {stable} epochs the test accuracy moves within {spread}."
    )
    gaps = (
        "Train - test gap (final epoch): "
        + ", ".join(f"{f.variant.name} {f.gap:+.2f}" for f in found)
        + " points"
    )
    if any(f.gap < 0 for f in found):
        gaps += (
            ". Training accuracy is measured on augmented images while the weights "
            "change, so a negative gap means the augmentation makes training harder than the test"
        )
    items.append(gaps + ".")
    quick = min(found, key=lambda f: f.seconds_per_epoch)
    slow = max(found, key=lambda f: f.seconds_per_epoch)
    device = study.study.get("environment", {}).get("device", "?")
    times = f"{quick.seconds_per_epoch:.1f} s ({quick.variant.name})"
    if slow is not quick:
        times = f"from {times} to {slow.seconds_per_epoch:.1f} s ({slow.variant.name})"
    items.append(f"Time per epoch (median, training and evaluation, on {device}): {times}.")
    return [Bullets(items), table]


def reports_target(found: list[VariantFindings]) -> bool:
    """Whether TARGET_ACC means anything here: some variant's best exceeds it."""
    return max(f.best_acc for f in found) > TARGET_ACC


def convergence_items(found: list[VariantFindings]) -> list[str]:
    """Convergence relative to each variant's own best (meaningful on any dataset), plus the
    first epoch at TARGET_ACC where some variant's best exceeds it (e.g. MNIST)."""
    by_settled = sorted(found, key=lambda f: f.settled)
    items = [
        f"Convergence (first epoch whose test accuracy is within {CLOSE:g} points of the "
        "variant's own best; it says when a curve stops improving, not how high it gets): "
        + ", ".join(f"{f.variant.name} at epoch {f.settled}" for f in by_settled)
        + "."
    ]
    if reports_target(found):
        reached = sorted((f for f in found if f.first_target), key=lambda f: f.first_target)
        never = [f.variant.name for f in found if not f.first_target]
        items.append(
            f"First epoch at or above {TARGET_ACC:g}% test accuracy: "
            + ", ".join(f"{f.variant.name} at {f.first_target}" for f in reached)
            + (f"; never: {', '.join(never)}" if never else "")
            + "."
        )
    return items


def _optimizer(study: StoredStudy) -> str:
    """SGD settings, with the batch sizes and peak learning rates the runs used: those of the
    stored groups (a sweep varies them), the configured ones only for an old summary.json that
    does not record them."""
    t = study.config["train"]
    stored = {(v.batch_size, v.lr) for v in study.variants if v.batch_size is not None}
    pairs = sorted(stored) or [(t["batch_size"], t["lr"])]
    sgd = f"SGD, Nesterov momentum {t['momentum']}, OneCycle"
    if len(pairs) == 1:
        return f"{sgd} peak lr {pairs[0][1]:g}, batch {pairs[0][0]}"
    return f"{sgd}; batch size at peak lr: " + ", ".join(f"{b} at {lr:g}" for b, lr in pairs)


def run_blocks(study: StoredStudy) -> list[Block]:
    """What was run: the configuration and environment stored with the results."""
    c, env, data = study.config, study.study.get("environment", {}), study.study.get("data", {})
    t = c["train"]
    sizes = (
        f"{thousands(data.get('train_size'))} train / {thousands(data.get('test_size'))} "
        "test images"
    )
    rows = [
        ["dataset", f"{c['dataset']} ({sizes})"],
        ["variants", ", ".join(v.label for v in study.variants)],
        ["epochs x seeds", f"{t['epochs']} x {c['seeds']}"],
        ["optimizer", _optimizer(study)],
        ["GroupNorm groups", str(t["groups"] or "about 4 channels a group")],
        ["precision", f"{t['precision']} (bf16 used: {env.get('bf16', '?')})"],
        ["device", f"{env.get('device', '?')}, {env.get('cpu_threads', '?')} CPU threads"],
        [
            "versions",
            f"normlab {env.get('normlab', '?')}, torch {env.get('torch', '?')}, "
            f"python {env.get('python', '?')}",
        ],
        ["created", study.study.get("created", "?")],
    ]
    return [Table(["setting", "value"], rows)]


def gallery_blocks(study: StoredStudy, figures: Path, data_dir: Path | None) -> list[Block]:
    """Misclassified grids (need the test images) and confusion matrices (need only the
    predictions), from each variant's first finished seed. Without the data the grids are
    skipped and the report says why; a variant whose seeds all diverged kept no predictions."""
    from normlab.data import load_dataset

    classes = study.study.get("data", {}).get("classes") or [str(i) for i in range(10)]
    images: np.ndarray | None = None
    skipped = ""
    try:
        data = load_dataset(
            study.config["dataset"], Path(data_dir or study.config["data_dir"]), download=False
        )
        images = data.test.head(study.config.get("limit_test")).images.numpy()
    except NormlabError as exc:
        skipped = str(exc)
    grids: list[Block] = [Heading("Misclassified test images")]
    matrices: list[Block] = [Heading("Confusion matrices")]
    if images is None:
        grids.append(Para(f"Galleries skipped: the test images could not be loaded ({skipped})."))
    missing = []
    for v in study.variants:
        stored = next(
            (
                (i, s, p)
                for i, s in enumerate(v.seeds)
                if v.status[i] == "finished" and (p := _predictions(study, v.name, s)) is not None
            ),
            None,
        )  # the first finished seed's predictions: the other seeds' files are never read
        if stored is None:
            missing.append(f"{v.name} ({v.divergence() or 'no predictions.npz'})")
            continue
        row, seed, pred = stored
        epoch = int(np.nanmax(v.metrics["epoch"][row]))
        title = f"{v.label}, seed {seed}, after epoch {epoch}"
        if images is not None:
            path = plot_mistakes(images, pred, classes, title, figures / f"misclassified_{v.name}")
            grids.append(
                Image(path.relative_to(study.out).as_posix(), f"misclassified by {v.name}")
            )
        path = plot_confusion(pred, classes, title, figures / f"confusion_{v.name}")
        matrices.append(
            Image(path.relative_to(study.out).as_posix(), f"confusion matrix of {v.name}")
        )
    if missing:
        matrices.append(
            Para(f"No finished run with stored predictions, so no gallery: {', '.join(missing)}.")
        )
    return grids + matrices


def write_report(out: Path, data_dir: Path | None = None) -> Path:
    """Figures into OUT/figures, then OUT/report.md and OUT/report.html; returns the HTML path.
    `data_dir` overrides where the test images for the galleries are looked for."""
    out = Path(out)
    study = read_study(out)
    figures = out / "figures"
    curves = plot_curves(study, figures)
    axes = axes_figure(example_tensor(), figures / "normalization_axes")[0]

    def img(name: str) -> Image:
        return Image(curves[name].relative_to(out).as_posix(), name.replace("_", " "))

    blocks: list[Block] = [
        Heading(f"normlab report: {study.describe()}", 1),
        Para(
            f"Generated by `normlab report {out}` from the stored results alone; every number "
            "and sentence below is computed from them."
        ),
        Heading("What was run"),
        *run_blocks(study),
        Heading("Findings"),
        *findings_blocks(study),
        Heading("Test accuracy and test loss"),
        img("test_accuracy"),
        img("test_loss"),
        Heading("Training accuracy and training loss"),
        img("train_accuracy"),
        img("train_loss"),
        *gallery_blocks(study, figures, data_dir),
        Heading("How the normalizations compute their statistics"),
        Para("Generated by `normlab explain --markdown` (seeded example, seed 0)."),
        *explain_blocks(example_tensor(), axes.relative_to(out).as_posix()),
    ]
    write_atomic(out / "report.md", to_markdown(blocks).encode())
    html_path = out / "report.html"
    write_atomic(html_path, to_html(blocks, f"normlab report: {study.describe()}", out).encode())
    return html_path
