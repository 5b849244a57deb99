"""report.md and a self-contained report.html, from the study folder alone.

The report is assembled here: what was run (the configuration and environment stored with the
results), the findings (computed as data by report.findings, put into words by report.text),
the curves, what the norm layers receive during training (where it was recorded), the galleries
and the worked example of what the four classic normalizations and the later ones the study ran
compute. Nothing is typed in: every number and sentence comes from the stored results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from normlab.atomic import write_atomic
from normlab.errors import NormlabError
from normlab.report.activations import activation_blocks
from normlab.report.curves import plot_curves
from normlab.report.doc import Block, Heading, Image, Para, Table, to_html, to_markdown
from normlab.report.explain import axes_figure, example_tensor, explain_blocks
from normlab.report.findings import predictions
from normlab.report.gallery import plot_confusion, plot_mistakes
from normlab.report.text import findings_blocks, statistics_gap_blocks
from normlab.store.reader import StoredStudy, read_study, thousands


def _optimizer(study: StoredStudy) -> str:
    """SGD settings, with the batch sizes and peak learning rates the runs used: those of the
    stored groups (a sweep varies them), the configured ones only for an old summary.json that
    does not record them."""
    t = study.config["train"]
    stored = {(v.batch_size, v.lr) for v in study.variants if v.batch_size is not None}
    pairs = sorted(stored) or [(t["batch_size"], t["lr"])]
    m = t["momentum"]
    swing = f"Nesterov momentum around {m:g} (OneCycle moves it against the lr)"
    cosine = " (cosine anneal)" if t.get("anneal") == "cos" else ""
    n = study.swa_epochs
    swa = f"; SWA: lr held for the last {n} epochs, tested on their average weights" if n else ""
    sgd = f"SGD, {swing if m else 'no momentum'}, OneCycle{cosine}"
    if len(pairs) == 1:
        return f"{sgd} peak lr {pairs[0][1]:g}, batch {pairs[0][0]}{swa}"
    return f"{sgd}; batch size at peak lr: " + ", ".join(f"{b} at {lr:g}" for b, lr in pairs) + swa


def norm_batches(study: StoredStudy) -> str:
    """The norm batches the runs used (`--norm-batch`: ghost batches), or the whole batch."""
    used = sorted({v.norm_batch for v in study.variants if v.norm_batch is not None})
    return ", ".join(map(str, used)) if used else "the whole training batch"


def augmentation(study: StoredStudy) -> str:
    """What augmentation the runs used and why; a study from before that was stored gives the
    setting alone."""
    data = study.study.get("data", {})
    if "augment" not in data:
        return str(study.config["train"].get("augment", "?"))
    return f"{data['augment']} ({data['augment_reason']})"


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
        ["augmentation", augmentation(study)],
        ["GroupNorm groups", str(t["groups"] or "about 4 channels a group")],
        ["images per BatchNorm statistic", norm_batches(study)],
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
    from normlab.data import load_test_images

    classes = study.study.get("data", {}).get("classes") or [str(i) for i in range(10)]
    images: np.ndarray | None = None
    skipped = ""
    try:
        folder = Path(data_dir or study.config["data_dir"])
        limit = study.config.get("limit_test")
        images = load_test_images(study.config["dataset"], folder, limit).numpy()
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
                if v.status[i] == "finished" and (p := predictions(study, v.name, s)) is not None
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
    norms = {v.norm for v in study.variants}
    axes = axes_figure(example_tensor(), figures / "normalization_axes", norms)[0]

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
        *statistics_gap_blocks(study),
        Heading("Test accuracy and test loss"),
        img("test_accuracy"),
        img("test_loss"),
        Heading("Training accuracy and training loss"),
        img("train_accuracy"),
        img("train_loss"),
        *activation_blocks(study, figures),
        *gallery_blocks(study, figures, data_dir),
        Heading("How the normalizations compute their statistics"),
        Para(
            "The four classic norms and the later ones this study ran (seeded example, seed 0); "
            "`normlab explain --markdown` shows every norm."
        ),
        *explain_blocks(example_tensor(), axes.relative_to(out).as_posix(), norms),
    ]
    write_atomic(out / "report.md", to_markdown(blocks).encode())
    html_path = out / "report.html"
    write_atomic(html_path, to_html(blocks, f"normlab report: {study.describe()}", out).encode())
    return html_path
