"""The worked example: what each norm computes on one small tensor, with the numbers, checked
against the layers the models use.

BatchNorm, LayerNorm, GroupNorm and InstanceNorm all compute (x - mean) / sqrt(var + eps) and
differ only in which elements share one mean and variance; the later norms also change the
statistic (a mean square, a variance without centring x) or what is normalized (the weights).
The example labels every element of an (N, C, H, W) tensor with the statistics group it belongs
to, prints each group's statistics and the output, and holds the from-scratch references of
`core.norms` and `core.recent_norms` to the layers (`norm_examples`, `recent_examples`). The same
numbers feed the terminal tables, the markdown of the report and the axes figure.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Collection
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from normlab.core.norms import BATCH_DEPENDENT
from normlab.errors import NormlabError
from normlab.report.doc import Block, Heading, Image, Para, Table
from normlab.report.norm_examples import (
    ACTIVATIONS,
    GN_GROUPS,
    NormExample,
    Reading,
    Statistics,
    batch_example,
    grouped_example,
)
from normlab.report.plotting import pyplot, save_figure
from normlab.report.recent_examples import RECENT, recent_examples

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SHAPE = (2, 4, 2, 2)  # N, C, H, W: two samples are the fewest for which BatchNorm differs

# The axes figure: one panel per way of grouping the elements, naming every norm (and which of
# its statistics, by index) that groups them so; the first is drawn. test_report checks that
# each named grouping is the panel's.
PANELS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("bn", 0), ("brn", 0), ("evonorm-b0", 0)),
    (("ln", 0), ("rms", 0)),
    (("gn", 0), ("ws+gn", 1), ("evonorm-s0", 0)),
    (("in", 0), ("frn", 0), ("evonorm-b0", 1)),
    (("ln2d", 0),),
    (("ws+gn", 0),),
)
SHORT = {
    "bn": "BN",
    "ln": "LN",
    "gn": "GN",
    "in": "IN",
    "brn": "BRN",
    "ws+gn": "WS+GN",
    "frn": "FRN",
    "evonorm-b0": "EvoNorm-B0",
    "evonorm-s0": "EvoNorm-S0",
    "ln2d": "LN2d",
    "rms": "RMS",
}


def example_tensor(seed: int = 0) -> torch.Tensor:
    """Integers 0..9 of shape (2, 4, 2, 2): small enough to check by hand."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10, SHAPE, generator=g).to(torch.float64)


def parse_values(text: str) -> torch.Tensor:
    """`--values`: numbers separated by commas or spaces, N*4*2*2 of them (N >= 1), filled
    in (N, C, H, W) order."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError as exc:
        raise NormlabError(f"--values: {exc}; give numbers separated by commas") from None
    per_sample = SHAPE[1] * SHAPE[2] * SHAPE[3]
    if not values or len(values) % per_sample:
        raise NormlabError(
            f"--values has {len(values)} numbers; give a multiple of {per_sample} "
            f"(N samples x C=4 x H=2 x W=2, e.g. {2 * per_sample} for N=2)"
        )
    return torch.tensor(values, dtype=torch.float64).reshape(-1, *SHAPE[1:])


def explain(x: torch.Tensor, norms: Collection[str] | None = None) -> list[NormExample]:
    """The norms on `x` (N, C, H, W) with C even: BN, LN, GN with 2 groups, IN, then the
    later norms in `norms` (all when None) in `NORMS` order."""
    if x.dim() != 4 or x.shape[1] % GN_GROUPS:
        raise NormlabError(
            f"the example needs an (N, C, H, W) tensor with C even, got {tuple(x.shape)}"
        )
    classic = [
        batch_example(x),
        grouped_example("ln", x, 1),
        grouped_example("gn", x, GN_GROUPS),
        grouped_example("in", x, x.shape[1]),
    ]
    return classic + recent_examples(x, norms)


def _fmt(v: float) -> str:
    return f"{v:.5g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.2e}"


def tensor_table(x: torch.Tensor, title: str, reading: Reading = ACTIVATIONS) -> Table:
    """One row per (sample, channel), one column per spatial position h,w."""
    n, c, h, w = x.shape
    r = reading
    cols = [r.outer, r.inner] + [f"{r.rows}{i} {r.cols}{j}" for i in range(h) for j in range(w)]
    rows = [
        [str(i), str(j)] + [_fmt(float(v)) for v in x[i, j].flatten()]
        for i in range(n)
        for j in range(c)
    ]
    return Table(cols, rows, title, right=set(range(2, len(cols))))


def _members(stats: Statistics, gid: int) -> str:
    """Which elements a group covers, e.g. `n0 c0-1, all h w` or `n1 c0-3, h0 w1`."""
    idx = (stats.group_of == gid).nonzero().tolist()
    r = stats.reading

    def span(prefix: str, axis: int) -> str:
        vals = sorted({e[axis] for e in idx})
        return f"{prefix}{vals[0]}" if len(vals) == 1 else f"{prefix}{vals[0]}-{vals[-1]}"

    positions = {(e[2], e[3]) for e in idx}
    where = f"all {r.rows} {r.cols}"
    if len(positions) < stats.group_of.shape[2] * stats.group_of.shape[3]:
        where = ", ".join(f"{r.rows}{i} {r.cols}{j}" for i, j in sorted(positions))
    return f"{span(r.outer, 0)} {span(r.inner, 1)}, {where}"


def stats_table(ex: NormExample, stats: Statistics) -> Table:
    count = int((stats.group_of == 0).sum())
    columns = list(stats.values)
    rows = [
        [str(g), _members(stats, g), str(count)]
        + [_fmt(float(stats.values[k][g])) for k in columns]
        for g in range(len(stats.values[columns[0]]))
    ]
    label = f", {stats.label}" if stats.label else ""
    return Table(
        ["group", "elements", "count", *columns],
        rows,
        f"{ex.title}{label}: {len(rows)} groups, over {stats.over}",
        right=set(range(2, 3 + len(columns))),
    )


def check_text(ex: NormExample) -> str:
    verdict = "equal" if ex.matches else "DIFFERENT"
    return "; ".join(
        f"from-scratch vs `{name}`: max |difference| {diff:.1e} ({verdict})"
        for name, diff in ex.layers
    )


def explain_blocks(
    x: torch.Tensor, figure: str | None = None, norms: Collection[str] | None = None
) -> list[Block]:
    """The explanation as document blocks: the four classic norms and the later ones in
    `norms` (all when None); `figure` is the axes figure's relative path."""
    n, c, h, w = x.shape
    examples = explain(x, norms)
    later = (
        "The later norms also change what is computed over a group (a mean square, a "
        "variance without centring x, a correction towards running statistics) or what is "
        "normalized (a convolution's weights). "
        if any(ex.key in RECENT for ex in examples)
        else ""
    )
    blocks: list[Block] = [
        Para(
            "BatchNorm, LayerNorm, GroupNorm and InstanceNorm compute y = (x - mean) / "
            "sqrt(var + eps) with eps = 1e-5, then a learned per-channel scale and shift "
            "(identity here), and differ only in which elements share one mean and variance. "
            f"{later}The example is an activation tensor of shape "
            f"(N, C, H, W) = ({n}, {c}, {h}, {w}); variances are biased (divide by the count), "
            "as the layers use them."
        ),
        tensor_table(x, "Input x"),
    ]
    if figure:
        blocks.append(Image(figure, "Which elements share statistics, per norm"))
    for ex in examples:
        blocks.append(Heading(f"{ex.title}: {ex.axes}", 3))
        blocks += [stats_table(ex, s) for s in ex.stats]
        weights = ex.output_reading is not ACTIVATIONS
        output = f"{ex.title}: the standardized weights" if weights else f"{ex.title} output"
        blocks += [
            tensor_table(ex.output, output, ex.output_reading),
            Para(check_text(ex)),
        ]
        if ex.note:
            blocks.append(Para(ex.note))
    batch = [ex.title for ex in examples if ex.key in BATCH_DEPENDENT]
    which = (
        f"{', '.join(batch[:-1])} and {batch[-1]} are the ones"
        if len(batch) > 1
        else (f"{batch[0]} is the one")
    )
    blocks.append(
        Para(
            f"{which} whose output for a sample depends on the other samples in the batch (in "
            "training; at test time running averages are used instead). The others normalize "
            "each sample on its own, so they behave the same in training and at test time and "
            "for any batch size."
        )
    )
    return blocks


def _panel_title(examples: dict[str, NormExample], panel: tuple[tuple[str, int], ...]) -> str:
    """The norms that group the elements so, e.g. `IN · FRN · EvoNorm-B0's instance variance`,
    over a line with the group count and the axes."""

    def name(key: str, index: int) -> str:
        stats = examples[key].stats
        return SHORT[key] + (f"'s {stats[index].label}" if len(stats) > 1 else "")

    key, index = panel[0]
    first = examples[key].stats[index]
    norms = textwrap.fill(" · ".join(name(k, i) for k, i in panel), 44)
    return f"{norms}\n{int(first.group_of.max()) + 1} groups: over {first.over}"


def _draw_panel(ax: Axes, plt: ModuleType, x: torch.Tensor, stats: Statistics) -> None:
    """The N x C x (H·W) block, every element coloured by its group and labelled with its
    value; axes named as `stats.reading` reads the tensor."""
    n, c = x.shape[:2]
    hw = x.shape[2] * x.shape[3]
    cmap = plt.get_cmap("tab20")
    for i in range(n):
        for j in range(c):
            for k in range(hw):
                gid = int(stats.group_of[i, j].flatten()[k])
                left = i * (hw + 1) + k
                ax.add_patch(
                    plt.Rectangle(
                        (left, c - 1 - j), 1, 1, facecolor=cmap(gid % 20), edgecolor="white", lw=1.5
                    )
                )
                value = f"{float(x[i, j].flatten()[k]):g}"
                ax.text(left + 0.5, c - 0.5 - j, value, ha="center", va="center", fontsize=8)
    r = stats.reading
    ax.set_xlim(-0.2, n * (hw + 1) - 0.8)
    ax.set_ylim(-0.2, c + 0.2)
    ax.set_aspect("equal")
    ticks = [i * (hw + 1) + hw / 2 for i in range(n)]
    ax.set_xticks(ticks, [f"{r.outer_long} {i}\n{r.spatial} →" for i in range(n)])
    ax.set_yticks([c - 0.5 - j for j in range(c)], [f"{r.inner}{j}" for j in range(c)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def axes_figure(x: torch.Tensor, path: Path, norms: Collection[str] | None = None) -> list[Path]:
    """The normalization axes, drawn from the example: one panel per way of grouping the
    elements (`PANELS`) that the four classic norms or the later ones in `norms` (all when
    None) use, titled with those of them that group the elements so. Written as PNG and SVG
    beside each other; returns the paths."""
    plt = pyplot()
    examples = {ex.key: ex for ex in explain(x, norms)}
    panels = [p for panel in PANELS if (p := tuple(e for e in panel if e[0] in examples))]
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), layout="constrained")
    for ax, panel in zip(axs.flat, panels, strict=False):
        key, index = panel[0]
        _draw_panel(ax, plt, x, examples[key].stats[index])
        ax.set_title(_panel_title(examples, panel), fontsize=9.5)
    for ax in axs.flat[len(panels) :]:
        ax.set_visible(False)
    weights = " (the last panel reads it as a convolution's weights)" if "ws+gn" in examples else ""
    fig.suptitle(
        f"Which elements share statistics: tensor (N, C, H, W) = {tuple(x.shape)}, one colour = "
        f"one group{weights}",
        fontsize=10,
    )
    return save_figure(fig, path)
