"""A norm-batch sweep (`normlab sweep micro-batch`): test error against K, the images a
BatchNorm statistic spans, while the optimizer steps on the same batch at the same learning
rate; drawn from summary.json alone, numbers first, then the figure and the words.

    norm_batch.png  test error against K (log2 axis), a line per batch-dependent norm with a
                    95% band over seeds and a dot per seed; a per-image norm (GN, LN, WS+GN,
                    ...) ran once per seed, the same network at every K, so it is one flat
                    line and band across the axis, labelled so, not a line of retrained points
    results.md      a table of K x norm and findings computed from the numbers: each
                    batch-dependent norm at its smallest K against its largest, and against
                    each per-image norm, with whether the 95% intervals overlap

No sentence is typed in: each verdict is read from the intervals, and one seed (no interval)
gives no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from normlab.core.norms import BATCH_DEPENDENT
from normlab.report.doc import Bullets, Heading, Image, Para, Table, to_markdown
from normlab.report.plotting import pyplot, save_figure
from normlab.report.sweep_lines import (
    error,
    error_axis,
    error_band,
    error_line,
    line_label,
    line_name,
    log2_axis,
)
from normlab.store.results import mean_ci

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PER_IMAGE_NOTE = "same network at every K (norm is per-image)"
NUMBER = {"textcoords": "offset points", "fontsize": 8}  # a mean written beside its mark


@dataclass(frozen=True)
class Point:
    """One group's final test error % over its finished seeds, with a 95% Student-t interval
    (nan with one seed). `k` is the norm batch; None for a per-image norm, which has none."""

    k: int | None
    errors: tuple[float, ...]
    mean: float
    lo: float
    hi: float

    @property
    def interval(self) -> str:
        return "one seed" if math.isnan(self.lo) else f"95% interval {self.lo:.2f}-{self.hi:.2f}"


@dataclass(frozen=True)
class Line:
    """A norm's points along K (one point, K None, for a per-image norm), by increasing K."""

    name: str  # the group name without `nbK`: bn, gn, bn/bs64
    label: str
    flat: bool  # a per-image norm: the same network at every K
    points: tuple[Point, ...]


def group_point(group: dict) -> Point | None:
    """A summary group's point, or None when no seed finished (all diverged)."""
    errors = tuple(error(s["final_test_acc"]) for s in group["seeds"] if "final_test_acc" in s)
    if not errors:
        return None
    k = None
    if group["norm"] in BATCH_DEPENDENT:  # norm_batch None: the whole batch is one statistic
        k = group.get("norm_batch") or group["batch_size"]
    return Point(k, errors, *mean_ci(errors))


def norm_batch_lines(summary: dict) -> list[Line]:
    """The sweep's lines, in the summary's order: a group name without its `nbK` is one line."""
    grouped: dict[str, list[tuple[dict, Point]]] = {}
    for g in summary["variants"]:
        point = group_point(g)
        if point is not None:
            grouped.setdefault(line_name(g, "nb"), []).append((g, point))
    lines = []
    for name, members in grouped.items():
        first = members[0][0]
        flat = first["norm"] not in BATCH_DEPENDENT
        points = sorted((p for _, p in members), key=lambda p: p.k or 0)
        # A per-image norm has one group, unless its study predates running it once per seed
        # (a copy per K, all the same network): one of them stands for it.
        lines.append(
            Line(name, line_label(first, name), flat, tuple(points[:1] if flat else points))
        )
    return lines


def swept(lines: list[Line]) -> list[int]:
    """The norm batches the batch-dependent norms ran at, in increasing order."""
    return sorted({p.k for line in lines if not line.flat for p in line.points if p.k})


def varies(lines: list[Line]) -> bool:
    """Whether some batch-dependent norm ran at more than one K: a norm-batch sweep."""
    return any(not line.flat and len(line.points) > 1 for line in lines)


def overlap(a: Point, b: Point) -> bool | None:
    """Whether two 95% intervals share a value; None when either is one seed's (no interval)."""
    if math.isnan(a.lo) or math.isnan(b.lo):
        return None
    return a.lo <= b.hi and b.lo <= a.hi


def verdict(a: Point, b: Point, a_name: str) -> str:
    """What the intervals say about `a` against `b`, in words; never more than they say."""
    shared = overlap(a, b)
    if shared is None:
        return "with one seed there is no interval, so no verdict on the difference"
    if shared:
        return "the 95% intervals overlap: these seeds cannot tell the two apart"
    side = "higher" if a.mean > b.mean else "lower"
    return f"the 95% intervals do not overlap: the error {a_name} is {side}"


@dataclass(frozen=True)
class Ends:
    """A batch-dependent norm at its smallest K against its largest."""

    line: Line
    small: Point
    large: Point


@dataclass(frozen=True)
class Versus:
    """A batch-dependent norm against a per-image one: at the smallest K, and the Ks where its
    mean error is above the per-image norm's."""

    line: Line
    flat: Line
    above: tuple[int, ...]


@dataclass(frozen=True)
class NormBatchFindings:
    ends: tuple[Ends, ...]
    versus: tuple[Versus, ...]
    flat: tuple[Line, ...]


def context(line: Line) -> str:
    """What else the line's runs share (`bs64`, `lr0.2`): only lines alike in it compare."""
    return line.name.partition("/")[2]


def norm_batch_findings(lines: list[Line]) -> NormBatchFindings:
    """The numbers the findings are written from."""
    curves = [line for line in lines if not line.flat and len(line.points) > 1]
    flat = [line for line in lines if line.flat]
    ends = tuple(Ends(c, c.points[0], c.points[-1]) for c in curves)
    versus = []
    for c in curves:
        for f in (f for f in flat if context(f) == context(c)):
            above = tuple(p.k for p in c.points if p.k is not None and p.mean > f.points[0].mean)
            versus.append(Versus(c, f, above))
    return NormBatchFindings(ends, tuple(versus), tuple(flat))


def where_above(v: Versus) -> str:
    """The Ks at which the batch-dependent norm's mean error is above the per-image norm's."""
    rest = [p.k for p in v.line.points if p.k not in v.above]
    if not rest:
        return "at every K"
    if not v.above:
        return "at no K"
    return f"at K = {', '.join(map(str, v.above))}, not at K = {', '.join(map(str, rest))}"


def findings_items(f: NormBatchFindings) -> list[str]:
    """The findings as sentences, every number read from `f`."""
    items = []
    for e in f.ends:
        items.append(
            f"{e.line.label}: {e.small.mean:.2f}% error at K={e.small.k} "
            f"({e.small.interval}) against {e.large.mean:.2f}% at K={e.large.k} "
            f"({e.large.interval}); {verdict(e.small, e.large, f'at K={e.small.k}')}."
        )
    for v in f.versus:
        small, level = v.line.points[0], v.flat.points[0]
        at = f"{v.line.label} at K={small.k}"
        items.append(
            f"{at}, {small.mean:.2f}% ({small.interval}), against {v.flat.label}, "
            f"{level.mean:.2f}% ({level.interval}): {verdict(small, level, 'of ' + at)}; "
            f"{v.line.label}'s mean error is above {v.flat.label}'s {where_above(v)}."
        )
    if f.flat:
        names = ", ".join(line.label for line in f.flat)
        items.append(
            f"{names}: statistics per image, so each ran once per seed and that one network is "
            "its value at every K (a flat line in the figure), not a retraining at each K."
        )
    return items


def point_at(line: Line, k: int) -> Point | None:
    return next((p for p in line.points if p.k == k), None)


def cell(point: Point | None) -> str:
    """A table cell: mean and interval, the mean alone for one seed, `-` where none ran."""
    if point is None:
        return "-"
    spread = "" if math.isnan(point.lo) else f" ({point.lo:.2f}-{point.hi:.2f})"
    return f"{point.mean:.2f}{spread}"


def norm_batch_table(lines: list[Line]) -> Table:
    """Test error % per K (rows) and norm (columns); a per-image norm's one value is repeated
    down its column, marked."""
    ks = swept(lines)
    columns = [line.label + (" (†)" if line.flat else "") for line in lines]
    rows = []
    for k in ks:
        at_k = [line.points[0] if line.flat else point_at(line, k) for line in lines]
        rows.append([str(k), *map(cell, at_k)])
    return Table(["norm batch K", *columns], rows, right=set(range(len(lines) + 1)))


def curve(ax: Axes, line: Line) -> None:
    """A batch-dependent norm: mean along K, its band, a dot per seed, the ends annotated."""
    points = line.points
    drawn = error_line(
        ax, [p.k for p in points], [p.mean for p in points], [(p.lo, p.hi) for p in points],
        [p.errors for p in points], label=line.label,
    )  # fmt: skip
    color = drawn.get_color()
    for p in (line.points[0], line.points[-1]):
        ax.annotate(
            f"{p.mean:.1f}", (p.k, p.mean), xytext=(0, 7), **NUMBER, ha="center", color=color
        )


def flat_band(ax: Axes, line: Line, span: tuple[int, int], slot: float) -> None:
    """A per-image norm: its one mean and band, flat across every K, since it is the same
    network at each; its number is written at `slot` (0 to 1) of the way along the axis, so
    that flat lines a few tenths apart do not write theirs on one another."""
    (p,) = line.points
    (drawn,) = ax.plot(span, [p.mean, p.mean], "--", label=f"{line.label}: {PER_IMAGE_NOTE}")
    color = drawn.get_color()
    if not math.isnan(p.lo):
        error_band(ax, span, [p.lo, p.lo], [p.hi, p.hi], color)
    x = span[0] * (span[1] / span[0]) ** slot  # on the log axis, clear of the curves' ends
    ax.annotate(f"{p.mean:.1f}", (x, p.mean), xytext=(0, 3), **NUMBER, ha="center", color=color)


def norm_batch_figure(lines: list[Line], path: Path, batch: str) -> Path:
    """Test error against K on a log2 axis: curves for the batch-dependent norms, flat bands
    for the per-image ones; `batch` names the optimizer's batch in the title."""
    fig, ax = pyplot().subplots(figsize=(7.2, 5.2), layout="constrained")
    ks = swept(lines)
    flat = [line for line in lines if line.flat]
    for line in lines:
        if line.flat:
            flat_band(ax, line, (ks[0], ks[-1]), (flat.index(line) + 1) / (len(flat) + 1))
        else:
            curve(ax, line)
    error_axis(ax)
    log2_axis(ax, ks)
    ax.set_xlabel("norm batch K: images per BatchNorm statistic (log scale)")
    ax.set_ylabel("test error % (final epoch)")
    ax.set_title(
        f"Test error vs norm batch K{batch}\n"
        "line: mean over seeds; band: 95% interval; dots: each seed"
    )
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8)
    return save_figure(fig, path)[0]


def norm_batch_section(summary: dict, out: Path) -> tuple[list[Path], str]:
    """norm_batch.png and results.md's section (markdown) when a batch-dependent norm ran at
    several K; no figure and no text otherwise."""
    lines = norm_batch_lines(summary)
    if not varies(lines):
        return [], ""
    sizes = {g["batch_size"] for g in summary["variants"]}
    batch = f" (the optimizer's batch: {sizes.pop()})" if len(sizes) == 1 else ""
    figure = norm_batch_figure(lines, Path(out) / "norm_batch.png", batch)
    blocks = [
        Heading(f"Test error against the norm batch K{batch}"),
        Image(figure.name, "test error against the norm batch K"),
        norm_batch_table(lines),
        Para(
            "Test error % at the final epoch: mean over seeds (95% Student-t interval). (†) A "
            "per-image norm ran once per seed: it is the same network at every K, so its one "
            "value is repeated down the column."
        ),
        Heading("Findings", 3),
        Bullets(findings_items(norm_batch_findings(lines))),
    ]
    return [figure], "\n" + to_markdown(blocks)
