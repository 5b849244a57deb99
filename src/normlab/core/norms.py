"""Normalization layers by name, and from-scratch references that show what each one computes.

Every norm here normalizes x of shape (N, C, H, W) as (x - mean) / sqrt(var + eps), then applies
a per-channel affine (gamma, beta). They differ only in which elements share one mean and
variance:

    bn  BatchNorm      over (N, H, W) for each channel: depends on the other images in the batch
    gn  GroupNorm      over (C/G, H, W) for each sample and each group of C/G channels
    ln  LayerNorm      over (C, H, W) for each sample: GroupNorm with one group
    in  InstanceNorm   over (H, W) for each sample and channel: GroupNorm with C groups

`ln` deliberately has GroupNorm(1, C) semantics, not `nn.LayerNorm([C, H, W])`: the statistics
are the same, but nn.LayerNorm's learned scale and shift are per *element*, which multiplies the
affine parameters by H*W and ties the model to one input size.

The norms that came later (`brn`, `ws+gn`, `frn`, `evonorm-b0`, `evonorm-s0`, `ln2d`, `rms`)
are built here too, from timm where it has them; `recent_norms` says what each computes and
holds their references. Three of them (frn and the two EvoNorms) include their nonlinearity, so
the network puts no ReLU after them (`make_activation`), and ws+gn also changes the convolutions
(`conv_layer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache, partial
from types import ModuleType

import torch
from torch import nn

from normlab.core.ghost import BatchNorm2d, GhostBatch, GhostBatchVariance, affine
from normlab.core.recent_norms import BatchRenorm2d, RmsNormCHW
from normlab.errors import NormlabError

NORMS = (  # the four of the original study and none, then the later ones
    "bn",
    "gn",
    "ln",
    "in",
    "none",
    "brn",
    "ws+gn",
    "frn",
    "evonorm-b0",
    "evonorm-s0",
    "ln2d",
    "rms",
)
NORM_NAMES = {
    "bn": "BatchNorm",
    "gn": "GroupNorm",
    "ln": "LayerNorm",
    "in": "InstanceNorm",
    "brn": "Batch Renormalization",
    "ws+gn": "Weight Standardization + GroupNorm",
    "frn": "Filter Response Norm + TLU",
    "evonorm-b0": "EvoNorm-B0",
    "evonorm-s0": "EvoNorm-S0",
    "ln2d": "LayerNorm over channels (ConvNeXt)",
    "rms": "RMSNorm over (C, H, W)",
    "none": "no normalization",
}
# Norms whose layer includes its nonlinearity (FRN's TLU, EvoNorm's max and sigmoid): a ReLU
# after them would cut what they learned to let through.
SELF_ACTIVATED = ("frn", "evonorm-b0", "evonorm-s0")
GROUPED = ("gn", "ws+gn", "evonorm-s0")  # the norms that --groups applies to
# Norms whose training statistics span several images (their layers are ghost.GhostBatch): the
# only ones a norm batch K changes. Every other norm computes the same network under every K,
# so a study runs it once per seed, not once per K (config), and a report draws it flat.
BATCH_DEPENDENT = ("bn", "brn", "evonorm-b0")
EPS = 1e-5
WS_EPS = 1e-6  # timm StdConv2d's default: added to the variance of a filter's weights


def default_groups(channels: int) -> int:
    """The GroupNorm group count used when none is given: as close to 4 channels a group as the
    channel count allows (small networks have few channels; 32 groups as in the paper would
    leave one channel a group, i.e. InstanceNorm)."""
    for groups in (channels // 4, 4, 2):
        if groups >= 1 and channels % groups == 0:
            return groups
    return 1


def channel_groups(kind: str, channels: int, groups: int | None) -> int:
    """The group count of a grouped norm: `groups`, else `default_groups`; refused unless it
    divides `channels`."""
    g = groups if groups is not None else default_groups(channels)
    if g < 1 or channels % g:
        raise NormlabError(
            f"{NORM_NAMES[kind]} groups={g} does not divide {channels} channels; "
            f"choose a divisor of every layer's channel count (e.g. --groups 2)"
        )
    return g


def timm_layers() -> ModuleType:
    """`timm.layers`, imported when a layer is first built: importing timm loads its model zoo
    and torchvision (seconds), which commands that build no timm layer should not wait for."""
    import timm.layers

    return timm.layers


@cache
def evonorm_b0() -> type[nn.Module]:
    """timm's EvoNorm2dB0 with ghost batches and precise BN (`ghost.GhostBatchVariance`), made
    on first use like `timm_layers`; it keeps timm's name, as the network summary shows it."""
    return type("EvoNorm2dB0", (GhostBatchVariance, timm_layers().EvoNorm2dB0), {})


def make_norm(kind: str, channels: int, groups: int | None = None) -> nn.Module:
    """Build the normalization layer `kind` for `channels` feature maps. `groups` applies to
    the grouped norms (`GROUPED`) only. EvoNorm-S0's groups follow GroupNorm's rule rather than
    timm's default of 32, which would leave fewer than one channel a group in small networks."""
    if kind in GROUPED:
        g = channel_groups(kind, channels, groups)
        if kind == "evonorm-s0":
            return timm_layers().EvoNorm2dS0(channels, groups=g, eps=EPS)
        return GroupNorm(g, channels, eps=EPS)  # ws+gn: the weights are standardized instead
    layers = {
        "bn": lambda: BatchNorm2d(channels, eps=EPS),
        "ln": lambda: nn.GroupNorm(1, channels, eps=EPS),
        "in": lambda: GroupNorm(channels, channels, eps=EPS),
        "brn": lambda: BatchRenorm2d(channels, eps=EPS),
        "frn": lambda: timm_layers().FilterResponseNormTlu2d(channels, eps=EPS),
        "evonorm-b0": lambda: evonorm_b0()(channels, eps=EPS),  # timm's eps: 1e-3
        "ln2d": lambda: timm_layers().LayerNorm2d(channels, eps=EPS),  # timm's eps: 1e-6
        "rms": lambda: RmsNormCHW(channels, eps=EPS),
        "none": nn.Identity,
    }
    if kind not in layers:
        raise NormlabError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
    return layers[kind]()


class Reformat(torch.autograd.Function):
    """`x` in the memory format `fmt`, and the gradient back in the format `back`: the format
    `x` came in, which is what the layer before expects. (`Tensor.contiguous` would pass the
    gradient on in whatever format it arrived, and an elementwise backward that meets two
    formats, such as the ReLU's, runs many times slower.)"""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        fmt: torch.memory_format,
        back: torch.memory_format,
    ) -> torch.Tensor:
        ctx.back = back
        return x.contiguous(memory_format=fmt)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        return grad.contiguous(memory_format=ctx.back), None, None


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose CPU kernel for more than one group runs on a contiguous copy of
    channels_last input, the output and the gradient converted back (`Reformat`).

    Training runs in channels_last (`device.MEMORY_FORMAT`), where convolution, max pooling,
    BatchNorm and GroupNorm with one group (LayerNorm) are fastest on a CPU; PyTorch's CPU
    GroupNorm kernel for several groups is the exception, about ten times slower there than on
    contiguous input (a one-off profile). The copies cost far less than that, and than running
    the whole network contiguous for it (docs/results/timings/groupnorm-format.txt). The values
    are the same: the same kernel sees the same numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last, plain = torch.channels_last, torch.contiguous_format
        grouped_on_cpu = x.device.type == "cpu" and self.num_groups > 1 and x.dim() == 4
        if not grouped_on_cpu or x.is_contiguous() or not x.is_contiguous(memory_format=last):
            return super().forward(x)
        y = super().forward(Reformat.apply(x, plain, last))
        return Reformat.apply(y, last, plain)


def conv_layer(norm: str) -> Callable[..., nn.Conv2d]:
    """What builds the network's block convolutions under `norm` (nn.Conv2d's arguments): timm's
    StdConv2d for ws+gn, each filter standardized over (C_in, kH, kW) on every forward pass,
    else nn.Conv2d."""
    return partial(timm_layers().StdConv2d, eps=WS_EPS) if norm == "ws+gn" else nn.Conv2d


def make_activation(norm: str) -> nn.Module:
    """A block's nonlinearity, after its norm (or before it in a network with `RN`): a ReLU,
    or nothing where the norm is its own nonlinearity (`SELF_ACTIVATED`)."""
    return nn.Identity() if norm in SELF_ACTIVATED else nn.ReLU(inplace=True)


# ---------------------------------------------------------------------------------------------
# From-scratch references. They compute the statistics explicitly over the axes named above, so
# tests can hold PyTorch's layers to them and `normlab explain` can show the numbers.


def group_stats(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over (C/groups, H, W) of each sample: shape (N, groups)."""
    n = x.shape[0]
    flat = x.reshape(n, groups, -1)
    return flat.mean(dim=2), flat.var(dim=2, unbiased=False)


def ref_group_norm(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """GroupNorm from scratch; LayerNorm is groups=1 and InstanceNorm is groups=C."""
    n = x.shape[0]
    mean, var = group_stats(x, groups)
    flat = x.reshape(n, groups, -1)
    y = (flat - mean[..., None]) / torch.sqrt(var[..., None] + eps)
    return affine(y.reshape(x.shape), weight, bias)


def ref_batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = EPS,
) -> torch.Tensor:
    """BatchNorm from scratch, updating the running statistics in place when training.

    Training normalizes with the batch's own mean and biased variance over (N, H, W); the running
    variance is updated with the *unbiased* estimate, as PyTorch does. Evaluation uses the
    running statistics, so a test image's output does not depend on the rest of its batch.
    """
    if training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        count = x.numel() // x.shape[1]
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * count / max(count - 1, 1))
    else:
        mean, var = running_mean, running_var
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    return affine(y, weight, bias)


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """The layers of `model` with running statistics of the batch: BatchNorm's (PyTorch's or
    normlab's, Batch Renormalization included) and EvoNorm-B0's running variance."""
    kinds = (nn.modules.batchnorm._BatchNorm, GhostBatch)
    return [m for m in model.modules() if isinstance(m, kinds)]


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """Replace every batch-dependent layer's running statistics (`batch_norms`) by the average
    of the batch statistics over `inputs` ("precise BN", Wu & Johnson 2021), leaving the weights
    alone. With ghost batches (`ghost.set_norm_batch`) every K-image group is one of the batches
    averaged: the statistics the layer trained with.

    Running statistics are an exponential average (momentum 0.1) over the training steps: after
    a few dozen steps they still carry the (0, 1) they started from and lag the weights, so an
    evaluation that uses them sees activations the network was never trained on. Forward passes
    in training mode with `momentum=None` (PyTorch's cumulative average) fix that."""
    norms = batch_norms(model)
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        model.train()
        for x in inputs:
            model(x)
    finally:  # even after a failed pass, the layers average as they did before
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
