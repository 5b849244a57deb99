"""What a sweep's line figures share: test error from accuracy, which summary groups make one
line, what the line is called, its 95% band, and the axes (a log2 x axis through the swept
values, an error axis from 0).

Both the batch-size figure and the norm-batch figure draw a line per group name with one axis
taken out of it (`bs32`, `nb4`), so the two must agree on how a name is split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from normlab.core.norms import NORM_NAMES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.lines import Line2D


def error(acc: float) -> float:
    """Test error in percent from accuracy in percent."""
    return 100.0 - acc


def line_name(group: dict, axis: str) -> str:
    """The group's name without the swept `axis` part (`bs` or `nb` and its number), the key
    of one line: a line per variant and every other setting, never a zigzag through several
    learning rates. (The stored `lr` cannot be the key: with lr_reference_batch it changes
    with the batch size.) `bn/bs32-lr0.1` -> `bn/lr0.1` for `bs`, `bn/nb4` -> `bn` for `nb`."""
    variant, _, middle = group["name"].partition("/")
    kept = [p for p in middle.split("-") if not (p.startswith(axis) and p[len(axis) :].isdigit())]
    rest = "-".join(kept)
    return f"{variant}/{rest}" if rest else variant


def line_label(group: dict, name: str) -> str:
    """A line's legend text: the norm's full name, the variant's regularizers, and the other
    settings its `line_name` keeps (`GroupNorm+l1 lr0.2`)."""
    norm, variant = group["norm"], group["variant"]
    label = NORM_NAMES.get(norm, norm) + (variant[len(norm) :] if variant != norm else "")
    return label + (f" {name.partition('/')[2]}" if "/" in name else "")


def error_band(
    ax: Axes, xs: Sequence[float], lows: Sequence[float], highs: Sequence[float], color: str
) -> None:
    """A 95% band of test error; few seeds give intervals beyond what an error can be, so it
    is drawn cut to [0, 100]."""
    ax.fill_between(
        xs,
        [max(0.0, v) for v in lows],
        [min(100.0, v) for v in highs],
        color=color,
        alpha=0.18,
        linewidth=0,
    )


def error_line(
    ax: Axes,
    xs: Sequence[float],
    means: Sequence[float],
    bands: Sequence[tuple[float, float]],
    seeds: Sequence[Sequence[float]],
    color: str | None = None,
    label: str | None = None,
) -> Line2D:
    """One line of a sweep figure: the mean test error at each x, its 95% band (`bands`, low
    and high error per x; nan where a single seed has none) and a dot per seed (`seeds`, the
    seeds' errors per x). Without `color` the axes' cycle picks it; returns the mean's line."""
    (line,) = ax.plot(xs, means, "o-", color=color, label=label)
    color = line.get_color()
    banded = [(x, lo, hi) for x, (lo, hi) in zip(xs, bands, strict=True) if not math.isnan(lo)]
    if banded:
        error_band(ax, *map(list, zip(*banded, strict=True)), color)
    for x, errors in zip(xs, seeds, strict=True):
        ax.scatter([x] * len(errors), errors, s=9, color=color, alpha=0.5)
    return line


def log2_axis(ax: Axes, values: Sequence[int]) -> None:
    """A log2 x axis with a labelled tick at each swept value and no others."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()


def error_axis(ax: Axes) -> None:
    """Error from 0 (a perfect score) to just above the highest mark, band included: a fixed
    0-100 axis flattens a study whose errors are all a few percent into one line at the
    bottom."""
    ax.set_ylim(0, min(100.0, 1.1 * max(ax.dataLim.y1, 1.0)))
