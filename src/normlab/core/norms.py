"""Normalization layers by name, and from-scratch references that show what each one computes.

Every norm here normalizes x of shape (N, C, H, W) as (x - mean) / sqrt(var + eps), then applies
a per-channel affine (gamma, beta). They differ only in which elements share one mean and
variance:

    bn  BatchNorm      over (N, H, W) for each channel: depends on the other images in the batch
    gn  GroupNorm      over (C/G, H, W) for each sample and each group of C/G channels
    ln  LayerNorm      over (C, H, W) for each sample: GroupNorm with one group
    in  InstanceNorm   over (H, W) for each sample and channel: GroupNorm with C groups

`ln` deliberately has GroupNorm(1, C) semantics, not `nn.LayerNorm([C, H, W])`: the statistics
are the same, but nn.LayerNorm's affine is per *element*, which multiplies the affine parameters
by H*W and ties the model to one input size.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from normlab.errors import NormlabError

NORMS = ("bn", "gn", "ln", "in", "none")
NORM_NAMES = {
    "bn": "BatchNorm",
    "gn": "GroupNorm",
    "ln": "LayerNorm",
    "in": "InstanceNorm",
    "none": "no normalization",
}
EPS = 1e-5


def default_groups(channels: int) -> int:
    """The GroupNorm group count used when none is given: as close to 4 channels a group as the
    channel count allows (small networks have few channels; 32 groups as in the paper would
    leave one channel a group, i.e. InstanceNorm)."""
    for groups in (channels // 4, 4, 2):
        if groups >= 1 and channels % groups == 0:
            return groups
    return 1


def make_norm(kind: str, channels: int, groups: int | None = None) -> nn.Module:
    """Build the normalization layer `kind` for `channels` feature maps."""
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=EPS)
    if kind == "gn":
        g = groups if groups is not None else default_groups(channels)
        if g < 1 or channels % g:
            raise NormlabError(
                f"GroupNorm groups={g} does not divide {channels} channels; "
                f"choose a divisor of every layer's channel count (e.g. --groups 2)"
            )
        return nn.GroupNorm(g, channels, eps=EPS)
    if kind == "ln":
        return nn.GroupNorm(1, channels, eps=EPS)
    if kind == "in":
        return nn.GroupNorm(channels, channels, eps=EPS)
    if kind == "none":
        return nn.Identity()
    raise NormlabError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


# ---------------------------------------------------------------------------------------------
# From-scratch references. They compute the statistics explicitly over the axes named above, so
# tests can hold PyTorch's layers to them and `normlab explain` can show the numbers.


def _affine(
    y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    if weight is not None:
        y = y * weight.view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


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
    return _affine(y.reshape(x.shape), weight, bias)


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
    return _affine(y, weight, bias)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model`: the layers with running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """Replace every BatchNorm layer's running mean and variance by the average of the batch
    statistics over `inputs` ("precise BN", Wu & Johnson 2021), leaving the weights alone.

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
