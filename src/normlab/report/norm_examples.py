"""What one norm computes on the worked example, as data: which elements share statistics, the
statistics, the output, and the from-scratch reference held to the layer normlab builds.

This module holds the data types and the four norms of the original study (BN, LN, GN, IN);
`recent_examples` builds the later ones the same way, and `explain` turns both into tables, text
and the axes figure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normlab.core.norms import EPS, group_stats, make_norm, ref_batch_norm, ref_group_norm

GN_GROUPS = 2  # the example's 4 channels in 2 groups, so GroupNorm differs from LN and IN
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Reading:
    """How the example's (N, C, H, W) axes are named: an activation tensor, or (for Weight
    Standardization) a convolution weight (C_out, C_in, kH, kW)."""

    outer: str  # short names, as tables print them
    inner: str
    rows: str
    cols: str
    outer_long: str  # as the figure labels them
    spatial: str


ACTIVATIONS = Reading("n", "c", "h", "w", "sample", "H·W")
WEIGHTS = Reading("out", "in", "kh", "kw", "filter", "kH·kW")


@dataclass(frozen=True)
class Statistics:
    """One way a norm groups the elements, and what it computes over each group."""

    label: str  # what the statistics are of, where a norm has two sets (else "")
    over: str  # the axes, e.g. "(N, H, W) of each channel"
    group_of: torch.Tensor  # (N, C, H, W) int: the group of each element
    values: dict[str, torch.Tensor]  # column name -> one value per group, in group-id order
    reading: Reading = ACTIVATIONS


@dataclass(frozen=True)
class NormExample:
    """One norm applied to the example: its statistics, its output, the check, a note."""

    key: str
    title: str
    axes: str
    stats: tuple[Statistics, ...]
    output: torch.Tensor
    layers: list[tuple[str, float]]  # (library layer, max |reference - layer|)
    note: str = ""
    output_reading: Reading = ACTIVATIONS

    @property
    def group_of(self) -> torch.Tensor:
        """The groups of the first (for most norms the only) set of statistics."""
        return self.stats[0].group_of

    @property
    def matches(self) -> bool:
        return all(diff <= TOLERANCE for _, diff in self.layers)


def max_diff(reference: torch.Tensor, layer: nn.Module, x: torch.Tensor) -> float:
    """The largest |reference - layer(x)|, the layer in float64 and training mode."""
    layer = layer.to(torch.float64).train()
    with torch.no_grad():
        return float((reference - layer(x)).abs().max())


def group_ids(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Group ids for `groups` groups of channels within each sample: n * groups + g."""
    n, c = x.shape[:2]
    ids = torch.arange(n * groups).reshape(n, groups, 1, 1, 1)
    return ids.expand(n, groups, c // groups, *x.shape[2:]).reshape(x.shape)


def channel_ids(x: torch.Tensor) -> torch.Tensor:
    """Group ids for one group per channel across the batch, as BatchNorm's."""
    return torch.arange(x.shape[1]).reshape(1, -1, 1, 1).expand_as(x).clone()


def batch_moments(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and biased variance over (N, H, W) of each channel: LayerNorm's statistics of the
    tensor with N and C swapped, which is how they are computed here."""
    c = x.shape[1]
    mean, var = group_stats(x.transpose(0, 1).reshape(1, c, -1), c)
    return {"mean": mean[0], "variance": var[0]}


LN_NOTE = (
    "LayerNorm here is `nn.GroupNorm(1, C)`, not `nn.LayerNorm([C, H, W])`. The statistics are "
    "the same (the check above holds it to both), but nn.LayerNorm's learned scale and shift are "
    "per element, C·H·W of each instead of C, which multiplies the affine parameters by H·W and "
    "ties the model to one input size."
)


def grouped_example(key: str, x: torch.Tensor, groups: int) -> NormExample:
    """LN, GN and IN: `groups` groups of channels within each sample."""
    c, h, w = x.shape[1:]
    mean, var = group_stats(x, groups)
    out = ref_group_norm(x, groups)
    titles = {
        "ln": ("LayerNorm", "(C, H, W) of each sample"),
        "gn": (f"GroupNorm ({groups} groups)", "(C/G, H, W) of each sample and group"),
        "in": ("InstanceNorm", "(H, W) of each sample and channel"),
    }
    title, over = titles[key]
    layers = [
        (f"normlab make_norm({key!r}) = nn.GroupNorm({groups}, {c})", make_norm(key, c, groups))
    ]
    if key == "ln":
        layers.append((f"nn.LayerNorm([{c}, {h}, {w}])", nn.LayerNorm(x.shape[1:], eps=EPS)))
    if key == "in":
        layers.append((f"nn.InstanceNorm2d({c})", nn.InstanceNorm2d(c, eps=EPS)))
    values = {"mean": mean.flatten(), "variance": var.flatten()}
    return NormExample(
        key,
        title,
        f"over {over}",
        (Statistics("", over, group_ids(x, groups), values),),
        out,
        [(name, max_diff(out, layer, x)) for name, layer in layers],
        LN_NOTE if key == "ln" else "",
    )


def batch_example(x: torch.Tensor) -> NormExample:
    """BN in training mode: one group per channel, across the samples of the batch."""
    c = x.shape[1]
    out = ref_batch_norm(x, torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype))
    over = "(N, H, W) of each channel"
    layer = nn.BatchNorm2d(c, eps=EPS)
    return NormExample(
        "bn",
        "BatchNorm",
        f"over {over}: across the batch",
        (Statistics("", over, channel_ids(x), batch_moments(x)),),
        out,
        [(f"nn.BatchNorm2d({c}) in training mode", max_diff(out, layer, x))],
    )
