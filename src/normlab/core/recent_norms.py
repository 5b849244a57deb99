"""The norms that came after BatchNorm, GroupNorm, LayerNorm and InstanceNorm: the two layers
written here, and from-scratch references for all seven (`norms.make_norm` builds them by name).

    ws+gn       Weight Standardization: each convolution filter standardized over (C_in, kH, kW)
                before it is applied, then GroupNorm on the activations (Qiao et al. 2019)
    frn         Filter Response Norm: x / sqrt(mean of x^2 over (H, W)), no mean subtracted, then
                the TLU max(y, tau) in place of the ReLU (Singh & Krishnan 2020)
    evonorm-b0  x / max(sqrt(batch variance over (N, H, W) + eps), v*x + instance std over
                (H, W)): its own nonlinearity, and batch-dependent (Liu et al. 2020)
    evonorm-s0  x * sigmoid(v*x) / std over (C/G, H, W) of each sample and group: its own
                nonlinearity, nothing from the batch (Liu et al. 2020)
    brn         Batch Renormalization: BatchNorm corrected towards its running statistics by
                r and d, clipped (Ioffe 2017)
    ln2d        LayerNorm over the channels of each pixel, as in ConvNeXt: statistics over C
                only, one mean per (sample, h, w)
    rms         RMSNorm over (C, H, W) of each sample: divided by the root mean square, no mean
                subtracted

timm (`timm.layers`) has StdConv2d, FilterResponseNormTlu2d, EvoNorm2dB0, EvoNorm2dS0 and
LayerNorm2d, and normlab uses them. It has no Batch Renormalization, and its RmsNorm2d takes the
root mean square over the channels of each pixel (as LayerNorm2d does the mean), not over
(C, H, W); those two are written here. The references take `eps` explicitly because the norms do
not share one: timm's StdConv2d standardizes with 1e-6, normlab's activation norms use 1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normlab.core.ghost import (
    BatchNorm2d,
    affine,
    as_float,
    by_image,
    channel,
    group_moments,
    running_sequence,
)

# Batch Renormalization's limits on r and d: BatchNorm (1, 0) at the first training step, widened
# linearly to the paper's final (3, 5) over RAMP_STEPS steps. The paper keeps plain BatchNorm for
# 5,000 of its ImageNet steps and then relaxes; normlab's runs are a few thousand steps long, so
# the ramp is shorter: 1,000 steps is about two MNIST epochs at batch 128, and momentum 0.1 has
# long forgotten the running statistics' initial (0, 1) by the time the limits matter.
R_MAX, D_MAX, RAMP_STEPS = 3.0, 5.0, 1000


class BatchRenorm2d(BatchNorm2d):
    """Batch Renormalization (Ioffe 2017): in training, y = (x - mu_B) / sigma_B * r + d with
    r = clip(sigma_B / sigma, 1/r_max, r_max) and d = clip((mu_B - mu) / sigma, -d_max, d_max),
    where mu, sigma are the running statistics and r, d carry no gradient. Within the limits the
    training output is the running-statistics output that evaluation computes, so small or
    non-i.i.d. batches train the network it will be tested as; evaluation is BatchNorm's.

    r_max and d_max follow `R_MAX, D_MAX, RAMP_STEPS`: from (1, 0), i.e. BatchNorm, to (3, 5),
    counted by the buffer `renorm_steps`, which precise BN's `reset_running_stats` leaves alone (a
    run settled after every short epoch still reaches the final limits) and a pass with momentum 0
    does not move (the statistics gap's test batches, which update nothing). The running variance is
    averaged like BatchNorm's (unbiased, momentum 0.1), not the paper's running sigma, so evaluation
    is exactly BatchNorm's. With `momentum=None` (precise BN's cumulative average of batch
    statistics) the layer is BatchNorm: corrections towards a half-built average would bias the
    average being built."""

    def __init__(self, num_features: int, eps: float) -> None:
        super().__init__(num_features, eps=eps)
        self.register_buffer("renorm_steps", torch.zeros((), dtype=torch.long))

    def limits(self, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_max, d_max) for each of the next `groups` steps, as (groups, 1) tensors: reading
        the step count would sync the host."""
        steps = self.renorm_steps + torch.arange(groups, device=self.renorm_steps.device)
        ramp = (steps.float() / RAMP_STEPS).clamp(max=1.0)[:, None]
        return 1 + (R_MAX - 1) * ramp, D_MAX * ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One r and d per ghost batch (see `ghost`; the whole batch is one without them),
        each against the running statistics as the groups before it in the batch left them."""
        if not self.training or self.momentum is None:
            return super().forward(x)
        var, mean, group, values = group_moments(x, self.groups_of(x) or x.shape[0])
        std = (var + self.eps).sqrt()
        unbiased = var.detach() * values / (values - 1)
        means = running_sequence(self.running_mean, mean.detach(), self.momentum)
        variances = running_sequence(self.running_var, unbiased, self.momentum)
        running_std = (variances[:-1] + self.eps).sqrt()
        r_max, d_max = self.limits(len(var))
        r = (std.detach() / running_std).clamp(1 / r_max, r_max)
        d = ((mean.detach() - means[:-1]) / running_std).clamp(-d_max, d_max)
        scale = self.weight * r / std
        shift = self.bias + self.weight * (d - r * mean / std)
        with torch.no_grad():
            self.running_mean.copy_(means[-1])
            self.running_var.copy_(variances[-1])
            self.num_batches_tracked.add_(len(var))
            if self.momentum > 0:
                self.renorm_steps.add_(len(var))
        return (as_float(x) * by_image(scale, group) + by_image(shift, group)).to(x.dtype)


class RmsNormCHW(nn.Module):
    """RMSNorm over (C, H, W) of each sample (PyTorch's `F.rms_norm` over the last three axes),
    then a per-channel scale and shift.

    RMSNorm (Zhang & Sennrich 2019) has a scale only; the shift is kept here so that the one
    difference from normlab's `ln` (GroupNorm(1, C), the same axes) is the mean that LayerNorm
    subtracts and RMSNorm does not. The affine is per channel, not per element as
    `nn.RMSNorm([C, H, W])`'s would be, for the reason `ln` is not `nn.LayerNorm([C, H, W])`."""

    def __init__(self, num_channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x, x.shape[1:], eps=self.eps)
        return y * channel(self.weight).to(y.dtype) + channel(self.bias).to(y.dtype)


# ---------------------------------------------------------------------------------------------
# From-scratch references: statistics over named axes, written out, for the tests and
# `normlab explain`. `weight`, `bias` are the per-channel affine (gamma, beta).


def ref_weight_standardize(weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    """A convolution weight (C_out, C_in, kH, kW) with each output filter standardized over
    (C_in, kH, kW): its own mean and biased variance, the convolution's version of LayerNorm."""
    flat = weight.reshape(weight.shape[0], -1)
    mean, var = flat.mean(dim=1, keepdim=True), flat.var(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape(weight.shape)


def ref_filter_response_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    tau: torch.Tensor | None = None,
    *,
    eps: float,
) -> torch.Tensor:
    """FRN + TLU: nu^2 = mean of x^2 over (H, W) of each sample and channel (no mean taken
    out), y = gamma * x / sqrt(nu^2 + eps) + beta, then max(y, tau); tau None skips the TLU."""
    nu2 = (x * x).mean(dim=(2, 3), keepdim=True)
    y = affine(x / torch.sqrt(nu2 + eps), weight, bias)
    return y if tau is None else torch.maximum(y, channel(tau))


def ref_evonorm_b0(
    x: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    eps: float,
    training: bool = True,
    momentum: float = 0.1,
) -> torch.Tensor:
    """EvoNorm-B0: x / max(sqrt(s_B^2 + eps), v*x + sqrt(s_I^2 + eps)) * gamma + beta, with s_B^2
    the batch variance over (N, H, W) of each channel (the running variance when evaluating,
    updated in place like BatchNorm's when training) and s_I^2 the variance over (H, W) of each
    sample and channel. v defaults to 1, its initial value."""
    if training:
        batch_var = x.var(dim=(0, 2, 3), unbiased=False)
        count = x.numel() // x.shape[1]
        with torch.no_grad():
            running_var.mul_(1 - momentum).add_(momentum * batch_var * count / (count - 1))
    else:
        batch_var = running_var
    instance_std = torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + eps)
    slope = torch.ones_like(running_var) if v is None else v
    denominator = torch.maximum(
        torch.sqrt(channel(batch_var) + eps), channel(slope) * x + instance_std
    )
    return affine(x / denominator, weight, bias)


def ref_evonorm_s0(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    eps: float,
) -> torch.Tensor:
    """EvoNorm-S0: x * sigmoid(v*x) / sqrt(s_G^2 + eps) * gamma + beta, with s_G^2 the biased
    variance over (C/groups, H, W) of each sample and group, as GroupNorm's, but the numerator
    keeps its mean. v defaults to 1, its initial value."""
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    var = grouped.var(dim=2, unbiased=False, keepdim=True)
    std = torch.sqrt(var + eps).expand_as(grouped).reshape(x.shape)
    slope = channel(torch.ones(c, dtype=x.dtype) if v is None else v)
    return affine(x * torch.sigmoid(slope * x) / std, weight, bias)


def ref_batch_renorm(
    x: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    eps: float,
    r_max: float = R_MAX,
    d_max: float = D_MAX,
    training: bool = True,
    momentum: float = 0.1,
) -> torch.Tensor:
    """Batch Renormalization: per channel over (N, H, W) the batch mean mu_B and biased
    variance, r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - mu) / sigma, -d_max,
    d_max) against the running mu, sigma^2 (taken before this batch updates them, in place, as
    BatchNorm's), y = (x - mu_B) / sigma_B * r + d. Evaluation is BatchNorm's."""
    if not training:
        y = (x - channel(running_mean)) / torch.sqrt(channel(running_var) + eps)
        return affine(y, weight, bias)
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    sigma_b, sigma = torch.sqrt(var + eps), torch.sqrt(running_var + eps)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max).detach()
    d = ((mean - running_mean) / sigma).clamp(-d_max, d_max).detach()
    count = x.numel() // x.shape[1]
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * mean)
        running_var.mul_(1 - momentum).add_(momentum * var * count / (count - 1))
    y = (x - channel(mean)) / channel(sigma_b) * channel(r) + channel(d)
    return affine(y, weight, bias)


def ref_layer_norm_2d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    eps: float,
) -> torch.Tensor:
    """ConvNeXt's LayerNorm: mean and biased variance over C only, one pair per (sample, h, w)."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    return affine((x - mean) / torch.sqrt(var + eps), weight, bias)


def ref_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    eps: float,
) -> torch.Tensor:
    """RMSNorm over (C, H, W): x / sqrt(mean of x^2 over the sample + eps); no mean subtracted."""
    mean_square = (x * x).mean(dim=(1, 2, 3), keepdim=True)
    return affine(x / torch.sqrt(mean_square + eps), weight, bias)
