"""report.md and a self-contained report.html, from the study folder alone.

Every statement in the findings is computed here from the stored numbers: the ranking with its
uncertainty, whether the differences are significant (McNemar on the same test images for one
seed, a paired test across seeds otherwise, Holm-corrected for the number of pairs), convergence,
stability over the last epochs, the train-test gap and the time per epoch. Nothing is typed in:
a difference the tests cannot tell from noise is reported as within noise.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normlab.doc import Block, Bullets, Heading, Image, Para, Table, to_html, to_markdown
from normlab.errors import NormlabError
from normlab.explain import axes_figure, example_tensor, explain_blocks
from normlab.figures import StoredStudy, StoredVariant, plot_curves, read_study
from normlab.gallery import plot_confusion, plot_mistakes
from normlab.results import read_predictions, run_dir, write_atomic
from normlab.stats import PairTest, holm, mcnemar_exact, mean_ci, seeds_test, wilson_interval

ALPHA = 0.05
TARGET_ACC = 99.0  # the classic MNIST bar: first epoch at or above it
STABLE_EPOCHS = 5


@dataclass(frozen=True)
class VariantFindings:
    """The numbers the findings are written from, for one variant."""

    variant: StoredVariant
    final: list[float]  # final test accuracy per seed
    interval: tuple[float, float]
    interval_kind: str
    first_target: int | None
    best_epoch: int
    best_acc: float
    last_range: float
    gap: float
    seconds_per_epoch: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.final))


def _predictions(study: StoredStudy, name: str, seed: int) -> dict[str, np.ndarray] | None:
    d = run_dir(study.out, name, seed)
    return read_predictions(d) if (d / "predictions.npz").exists() else None


def variant_findings(study: StoredStudy, v: StoredVariant) -> VariantFindings | None:
    """None for a variant with no finished epoch (e.g. diverged at once)."""
    acc = v.metrics["test_acc"]
    last_per_seed = [row[~np.isnan(row)][-1] for row in acc if (~np.isnan(row)).any()]
    if not last_per_seed:
        return None
    mean = v.mean("test_acc")
    if len(last_per_seed) > 1:
        _, lo, hi = mean_ci(last_per_seed)
        kind = f"95% t-interval over {len(last_per_seed)} seeds"
    else:
        pred = _predictions(study, v.name, v.seeds[0])
        n = len(pred["target"]) if pred is not None else study.study["data"]["test_size"]
        correct = (
            int(np.sum(pred["pred"] == pred["target"]))
            if pred is not None
            else round(last_per_seed[0] * n / 100)
        )
        lo, hi = wilson_interval(correct, n)
        kind = f"95% Wilson interval, {n:,} test images"
    reached = np.flatnonzero(mean >= TARGET_ACC)
    best = int(np.nanargmax(mean))
    finite = mean[~np.isnan(mean)]
    tail = finite[-min(STABLE_EPOCHS, len(finite)) :]
    train = v.mean("train_acc")
    train = train[~np.isnan(train)]
    return VariantFindings(
        v,
        [float(a) for a in last_per_seed],
        (lo, hi),
        kind,
        int(reached[0]) + 1 if reached.size else None,
        best + 1,
        float(mean[best]),
        float(tail.max() - tail.min()),
        float(train[-1] - finite[-1]),
        float(np.nanmedian(v.metrics["seconds"])),
    )


def pair_test(study: StoredStudy, a: VariantFindings, b: VariantFindings) -> PairTest | None:
    """McNemar on seed 0's predictions with one seed; paired across seeds with several."""
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
    if not found:
        return [Para("No variant finished an epoch, so there is nothing to compare.")]
    found.sort(key=lambda f: -f.mean)
    stable = min(STABLE_EPOCHS, study.epochs)
    table = Table(
        [
            "rank",
            "variant",
            "params",
            "final test acc %",
            "95% interval",
            f"first epoch ≥ {TARGET_ACC:g}%",
            "best epoch (acc %)",
            f"range, last {stable} epochs",
            "train - test gap",
            "s / epoch",
        ],
        [
            [
                str(rank),
                f.variant.label,
                f"{f.variant.params:,}",
                f"{f.mean:.2f}",
                f"{f.interval[0]:.2f} to {f.interval[1]:.2f}",
                str(f.first_target) if f.first_target else "never",
                f"{f.best_epoch} ({f.best_acc:.2f})",
                f"{f.last_range:.2f}",
                f"{f.gap:+.2f}",
                f"{f.seconds_per_epoch:.1f}",
            ]
            for rank, f in enumerate(found, 1)
        ],
        "Per variant (mean over seeds where there are several)",
        right={0, 2, 3, 5, 6, 7, 8, 9},
    )
    items = [
        "Ranking by final test accuracy: "
        + " > ".join(f"{f.variant.name} {f.mean:.2f}%" for f in found)
        + f" (intervals: {found[0].interval_kind})."
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
    reached = [f for f in found if f.first_target]
    if reached:
        fastest = min(reached, key=lambda f: f.first_target)
        others = ", ".join(
            f"{f.variant.name} at {f.first_target}" if f.first_target else f"{f.variant.name} never"
            for f in found
            if f is not fastest
        )
        items.append(
            f"Convergence: {fastest.variant.name} is first to reach {TARGET_ACC:g}% test accuracy "
            f"(epoch {fastest.first_target})" + (f"; {others}." if others else ".")
        )
    else:
        items.append(
            f"Convergence: no variant reaches {TARGET_ACC:g}% test accuracy "
            f"in {study.epochs} epochs."
        )
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


def run_blocks(study: StoredStudy) -> list[Block]:
    """What was run: the configuration and environment stored with the results."""
    c, env, data = study.config, study.study.get("environment", {}), study.study.get("data", {})
    t = c["train"]
    sizes = f"{data.get('train_size', '?'):,} train / {data.get('test_size', '?'):,} test images"
    rows = [
        ["dataset", f"{c['dataset']} ({sizes})"],
        ["variants", ", ".join(v.label for v in study.variants)],
        ["epochs x seeds", f"{t['epochs']} x {c['seeds']}"],
        [
            "optimizer",
            f"SGD, Nesterov momentum {t['momentum']}, OneCycle peak lr {t['lr']}, "
            f"batch {t['batch_size']}",
        ],
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
    predictions). Without the data the grids are skipped and the report says why."""
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
    for v in study.variants:
        seed = v.seeds[0]
        pred = _predictions(study, v.name, seed)
        if pred is None:
            continue
        title = f"{v.label}, seed {seed}, after epoch {int(np.nanmax(v.metrics['epoch'][0]))}"
        if images is not None:
            path = plot_mistakes(images, pred, classes, title, figures / f"misclassified_{v.name}")
            grids.append(
                Image(path.relative_to(study.out).as_posix(), f"misclassified by {v.name}")
            )
        path = plot_confusion(pred, classes, title, figures / f"confusion_{v.name}")
        matrices.append(
            Image(path.relative_to(study.out).as_posix(), f"confusion matrix of {v.name}")
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
