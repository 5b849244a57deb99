"""The worked example: what BatchNorm, LayerNorm, GroupNorm and InstanceNorm compute on one small
tensor, with the numbers, checked against PyTorch's layers.

All four compute (x - mean) / sqrt(var + eps) and differ only in which elements share one mean
and variance. The example labels every element of an (N, C, H, W) tensor with the statistics
group it belongs to, prints each group's mean and variance and the normalized output, and holds
the from-scratch references of `norms.py` to the PyTorch layers the models use. The same
numbers feed the terminal tables, the markdown of the report and the axes figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from normlab.core.norms import EPS, group_stats, make_norm, ref_batch_norm, ref_group_norm
from normlab.errors import NormlabError
from normlab.report.doc import Block, Heading, Image, Para, Table
from normlab.report.plotting import pyplot, save_figure

SHAPE = (2, 4, 2, 2)  # N, C, H, W: two samples are the fewest for which BatchNorm differs
GN_GROUPS = 2
TOLERANCE = 1e-6


@dataclass(frozen=True)
class NormExample:
    """One norm applied to the example: its groups, their statistics, its output, the check."""

    key: str
    title: str
    axes: str
    group_of: torch.Tensor  # (N, C, H, W) int: which statistics each element uses
    means: torch.Tensor  # one per group, in group-id order
    variances: torch.Tensor
    output: torch.Tensor
    layers: list[tuple[str, float]]  # (PyTorch layer, max |reference - layer|)

    @property
    def matches(self) -> bool:
        return all(diff <= TOLERANCE for _, diff in self.layers)


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


def _max_diff(reference: torch.Tensor, layer: nn.Module, x: torch.Tensor) -> float:
    layer = layer.to(torch.float64).train()
    with torch.no_grad():
        return float((reference - layer(x)).abs().max())


def _grouped(key: str, x: torch.Tensor, groups: int) -> NormExample:
    """LN, GN and IN: `groups` groups of channels within each sample."""
    n, c = x.shape[:2]
    mean, var = group_stats(x, groups)
    out = ref_group_norm(x, groups)
    ids = (
        torch.arange(n * groups)
        .reshape(n, groups, 1, 1, 1)
        .expand(n, groups, c // groups, *x.shape[2:])
    )
    titles = {
        "ln": ("LayerNorm", "over (C, H, W) of each sample"),
        "gn": (f"GroupNorm ({groups} groups)", "over (C/G, H, W) of each sample and group"),
        "in": ("InstanceNorm", "over (H, W) of each sample and channel"),
    }
    layers = [
        (f"normlab make_norm({key!r}) = nn.GroupNorm({groups}, {c})", make_norm(key, c, groups))
    ]
    if key == "ln":
        layers.append(
            (f"nn.LayerNorm([{c}, {x.shape[2]}, {x.shape[3]}])", nn.LayerNorm(x.shape[1:], eps=EPS))
        )
    if key == "in":
        layers.append((f"nn.InstanceNorm2d({c})", nn.InstanceNorm2d(c, eps=EPS)))
    return NormExample(
        key,
        *titles[key],
        ids.reshape(x.shape),
        mean.flatten(),
        var.flatten(),
        out,
        [(name, _max_diff(out, layer, x)) for name, layer in layers],
    )


def _batch(x: torch.Tensor) -> NormExample:
    """BN in training mode: one group per channel, across the samples of the batch. That is
    LayerNorm of the tensor with N and C swapped, which is how its statistics are computed."""
    c = x.shape[1]
    stats = group_stats(x.transpose(0, 1).reshape(1, c, -1), c)
    mean, var = stats[0][0], stats[1][0]
    out = ref_batch_norm(x, torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype))
    ids = torch.arange(c).reshape(1, c, 1, 1).expand_as(x)
    layer = (f"nn.BatchNorm2d({c}) in training mode", nn.BatchNorm2d(c, eps=EPS))
    return NormExample(
        "bn",
        "BatchNorm",
        "over (N, H, W) of each channel: across the batch",
        ids.clone(),
        mean,
        var,
        out,
        [(layer[0], _max_diff(out, layer[1], x))],
    )


def explain(x: torch.Tensor) -> list[NormExample]:
    """The four norms on `x` (N, 4, 2, 2): BN, LN, GN with 2 groups, IN."""
    if x.dim() != 4 or x.shape[1] % GN_GROUPS:
        raise NormlabError(
            f"the example needs an (N, C, H, W) tensor with C even, got {tuple(x.shape)}"
        )
    c = x.shape[1]
    return [_batch(x), _grouped("ln", x, 1), _grouped("gn", x, GN_GROUPS), _grouped("in", x, c)]


def _fmt(v: float) -> str:
    return f"{v:.5g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.2e}"


def tensor_table(x: torch.Tensor, title: str) -> Table:
    """One row per (sample, channel), one column per spatial position h,w."""
    n, c, h, w = x.shape
    cols = ["n", "c"] + [f"h{i} w{j}" for i in range(h) for j in range(w)]
    rows = [
        [str(i), str(j)] + [_fmt(float(v)) for v in x[i, j].flatten()]
        for i in range(n)
        for j in range(c)
    ]
    return Table(cols, rows, title, right=set(range(2, len(cols))))


def _members(ex: NormExample, gid: int) -> str:
    """Which (n, c) pairs a group covers, e.g. `n0 c0-1`."""
    idx = (ex.group_of[:, :, 0, 0] == gid).nonzero().tolist()
    samples = sorted({i for i, _ in idx})
    channels = sorted({j for _, j in idx})

    def span(prefix: str, vals: list[int]) -> str:
        return f"{prefix}{vals[0]}" if len(vals) == 1 else f"{prefix}{vals[0]}-{vals[-1]}"

    return f"{span('n', samples)} {span('c', channels)}, all h w"


def stats_table(ex: NormExample) -> Table:
    count = int((ex.group_of == 0).sum())
    rows = [
        [str(g), _members(ex, g), str(count), _fmt(float(m)), _fmt(float(v))]
        for g, (m, v) in enumerate(zip(ex.means, ex.variances, strict=True))
    ]
    return Table(
        ["group", "elements", "count", "mean", "variance"],
        rows,
        f"{ex.title}: {len(rows)} mean/variance pairs",
        right={2, 3, 4},
    )


def check_text(ex: NormExample) -> str:
    verdict = "equal" if ex.matches else "DIFFERENT"
    return "; ".join(
        f"from-scratch vs `{name}`: max |difference| {diff:.1e} ({verdict})"
        for name, diff in ex.layers
    )


LN_NOTE = (
    "LayerNorm here is `nn.GroupNorm(1, C)`, not `nn.LayerNorm([C, H, W])`. The statistics are "
    "the same (the check above holds it to both), but nn.LayerNorm's learned scale and shift are "
    "per element, C·H·W of each instead of C, which multiplies the affine parameters by H·W and "
    "ties the model to one input size."
)


def explain_blocks(x: torch.Tensor, figure: str | None = None) -> list[Block]:
    """The explanation as document blocks; `figure` is the axes figure's relative path."""
    examples = explain(x)
    n, c, h, w = x.shape
    blocks: list[Block] = [
        Para(
            "Every norm computes y = (x - mean) / sqrt(var + eps) with eps = 1e-5, then a learned "
            "per-channel scale and shift (identity here). They differ only in which elements "
            f"share one mean and variance. The example is an activation tensor of shape "
            f"(N, C, H, W) = ({n}, {c}, {h}, {w}); variances are biased (divide by the count), "
            "as the layers use them."
        ),
        tensor_table(x, "Input x"),
    ]
    if figure:
        blocks.append(Image(figure, "Which elements share statistics, per norm"))
    for ex in examples:
        blocks += [
            Heading(f"{ex.title}: {ex.axes}", 3),
            stats_table(ex),
            tensor_table(ex.output, f"{ex.title} output"),
            Para(check_text(ex)),
        ]
        if ex.key == "ln":
            blocks.append(Para(LN_NOTE))
    blocks.append(
        Para(
            "BatchNorm is the only one whose output for a sample depends on the other samples in "
            "the batch (in training; at test time it uses running averages instead). LayerNorm, "
            "GroupNorm and InstanceNorm normalize each sample on its own, so they behave the same "
            "in training and at test time and for any batch size."
        )
    )
    return blocks


def axes_figure(x: torch.Tensor, path: Path) -> list[Path]:
    """The normalization axes, drawn from the example: per norm one panel of the N x C x (H·W)
    block, every element coloured by the statistics group it belongs to and labelled with its
    value. Written as PNG and SVG beside each other; returns the paths."""
    plt = pyplot()
    examples = explain(x)
    n, c = x.shape[:2]
    hw = x.shape[2] * x.shape[3]
    cmap = plt.get_cmap("tab20")
    fig, axs = plt.subplots(2, 2, figsize=(9.5, 6.8), layout="constrained")
    for ax, ex in zip(axs.flat, examples, strict=True):
        groups = int(ex.group_of.max()) + 1
        for i in range(n):
            for j in range(c):
                for k in range(hw):
                    gid = int(ex.group_of[i, j].flatten()[k])
                    left = i * (hw + 1) + k
                    ax.add_patch(
                        plt.Rectangle(
                            (left, c - 1 - j),
                            1,
                            1,
                            facecolor=cmap(gid % 20),
                            edgecolor="white",
                            lw=1.5,
                        )
                    )
                    ax.text(
                        left + 0.5,
                        c - 0.5 - j,
                        f"{float(x[i, j].flatten()[k]):g}",
                        ha="center",
                        va="center",
                        fontsize=8,
                    )
        ax.set_xlim(-0.2, n * (hw + 1) - 0.8)
        ax.set_ylim(-0.2, c + 0.2)
        ax.set_aspect("equal")
        ax.set_xticks(
            [i * (hw + 1) + hw / 2 for i in range(n)], [f"sample {i}\nH·W →" for i in range(n)]
        )
        ax.set_yticks([c - 0.5 - j for j in range(c)], [f"c{j}" for j in range(c)])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title(f"{ex.title}\n{groups} groups: {ex.axes.removeprefix('over ')}", fontsize=10)
    fig.suptitle(
        f"Which elements share one mean and variance: tensor (N, C, H, W) = {tuple(x.shape)}, "
        "one colour = one group",
        fontsize=10,
    )
    return save_figure(fig, path)
