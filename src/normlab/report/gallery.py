"""Misclassified test images and confusion matrices, from the stored per-image predictions.

The predictions (class and confidence for every test image) come from the study folder; the
pixels come from the dataset itself, loaded as stored (raw uint8), so every tile shows the image
as it is on disk, not the normalized tensor the network saw. The mistakes shown are the most
confident ones: chosen deterministically, and the most informative (a confidently wrong
prediction is either a bad label or a real failure of the model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from normlab.errors import NormlabError
from normlab.report.plotting import pyplot, save_figure

# Galleries and confusion matrices are grids (of pixels, of counts) read on screen: PNG only.
# An SVG of the gallery would only wrap the same pixels, and saving twice costs time.
GRID_FORMATS = ("png",)

ROWS, COLS = 2, 5


def confident_mistakes(
    pred: np.ndarray, conf: np.ndarray, target: np.ndarray, k: int = 10
) -> np.ndarray:
    """Indices of the `k` most confident wrong predictions; ties go to the lower index, so the
    choice is the same on every machine."""
    wrong = np.flatnonzero(pred != target)
    order = np.lexsort((wrong, -conf[wrong]))
    return wrong[order[:k]]


def confusion(pred: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (target.astype(np.int64), pred.astype(np.int64)), 1)
    return counts


def plot_mistakes(
    images: np.ndarray,
    predictions: dict[str, np.ndarray],
    classes: list[str],
    title: str,
    path: Path,
) -> Path:
    """A 2 x 5 grid of the most confident mistakes; each tile names the true class, the
    predicted class and the confidence. `images` is the test split, uint8 (N, C, H, W)."""
    plt = pyplot()
    # Class indices as plain ints whatever the stored dtype (int32 now, uint8 in older study
    # folders): they index `classes`.
    pred, target = predictions["pred"].astype(int), predictions["target"].astype(int)
    conf = predictions["conf"]
    if len(images) != len(target):
        raise NormlabError(
            f"the dataset has {len(images)} test images but the predictions cover {len(target)}; "
            "was the study run on another version of the data? re-run it"
        )
    chosen = confident_mistakes(pred, conf, target, ROWS * COLS)
    wrong = int(np.sum(pred != target))
    fig, axs = plt.subplots(
        ROWS, COLS, figsize=(COLS * 1.9, ROWS * 2.25 + 0.7), layout="constrained"
    )
    for ax, i in zip(axs.flat, list(chosen) + [None] * (ROWS * COLS - len(chosen)), strict=True):
        ax.set_xticks([])
        ax.set_yticks([])
        if i is None:
            ax.set_axis_off()
            continue
        img = images[i].transpose(1, 2, 0)
        gray = img.shape[2] == 1
        ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255)
        ax.set_title(
            f"true {classes[target[i]]}, predicted {classes[pred[i]]}\n"
            f"confidence {100 * conf[i]:.1f}%  (#{i})",
            fontsize=8,
            color="#b00000",
        )
    shown = f"the {len(chosen)} most confident" if len(chosen) else "no mistakes to show"
    fig.suptitle(f"{title}\n{shown} of {wrong:,} misclassified test images", fontsize=10)
    return save_figure(fig, path, GRID_FORMATS)[0]


def plot_confusion(
    predictions: dict[str, np.ndarray], classes: list[str], title: str, path: Path
) -> Path:
    """Confusion matrix with every non-zero count written in its cell; the diagonal (right
    answers) is greyed so the mistakes stand out."""
    plt = pyplot()
    counts = confusion(predictions["pred"], predictions["target"], len(classes))
    off = counts.astype(float)
    np.fill_diagonal(off, np.nan)
    fig, ax = plt.subplots(figsize=(6.2, 5.6), layout="constrained")
    top = max(1.0, float(np.nanmax(off)))
    im = ax.imshow(off, cmap="Reds", vmin=0, vmax=top)
    for t in range(len(classes)):
        for p in range(len(classes)):
            if counts[t, p]:
                diag = t == p
                ax.text(
                    p,
                    t,
                    str(counts[t, p]),
                    ha="center",
                    va="center",
                    fontsize=7 if diag else 8,
                    color="#777777" if diag else ("white" if off[t, p] > top / 2 else "black"),
                )
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, shrink=0.8, label="misclassified test images")
    wrong = int(counts.sum() - np.trace(counts))
    ax.set_title(
        f"{title}\n{wrong:,} of {int(counts.sum()):,} test images misclassified (diagonal: right)",
        fontsize=10,
    )
    return save_figure(fig, path, GRID_FORMATS)[0]
