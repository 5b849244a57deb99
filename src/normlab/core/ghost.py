"""Ghost batches: the batch-dependent norms' statistics over groups of K images of a larger
batch, in one forward pass (Hoffer et al. 2017; the setup of GroupNorm's micro-batch study).

BatchNorm's statistics come from the images of one batch, and so does the gradient. To ask how
much the *statistics* suffer from few images, separately from the number of optimizer steps and
the learning rate, a layer with `norm_batch = K` normalizes each group of K consecutive images of
its input by that group's own mean and variance, while the optimizer still steps on the whole
batch. The input is reshaped to (B/K, K, C, H, W) and reduced over (K, H, W): one pass, not B/K.

The result is defined as BatchNorm2d called on each K-image chunk in sequence (`x.split(K)`):
the same outputs, and the running statistics after the same G = B/K updates, each with its own
unbiased variance. A batch that K does not divide (the configuration refuses that for training
batches, but a split smaller than a batch and the last test batch remain) ends with a smaller
group, as `split` does. With momentum m the G updates in sequence are an exponential average in
closed form (`running_sequence`); with momentum None (precise BN's cumulative average) they are
the average over every group seen. Evaluation uses the running statistics, so K plays no part
there, and `norm_batch = None` is the layer it extends, unchanged.

The layers with such statistics, `BatchNorm2d` here, `recent_norms.BatchRenorm2d` (a subclass)
and timm's EvoNorm-B0 (through `GhostBatchVariance`), all derive from `GhostBatch`; every other
norm works on one image at a time and never sees K.
"""

from __future__ import annotations

import torch
from torch import nn


class GhostBatch:
    """A norm layer whose training statistics span the batch: `norm_batch` images share them
    (None: the whole batch). Set on a built network by `set_norm_batch`."""

    norm_batch: int | None = None

    def groups_of(self, x: torch.Tensor) -> int | None:
        """K when it splits `x` into more than one group in training mode, else None (the
        layer's own forward applies)."""
        k = self.norm_batch
        return k if self.training and k is not None and k < x.shape[0] else None


def set_norm_batch(model: nn.Module, k: int | None) -> None:
    """Let every batch-dependent norm of `model` take its statistics over groups of `k` images."""
    for layer in model.modules():
        if isinstance(layer, GhostBatch):
            layer.norm_batch = k


def as_float(x: torch.Tensor) -> torch.Tensor:
    """At least float32: statistics of a bf16 activation (autocast) are taken in float."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def last_group(n: int, k: int) -> int:
    """How many of `n` images the last group of norm batch `k` (k <= n) holds: what k leaves
    over, else a whole group. It is the smallest group, the one `group_moments` checks and
    the study configuration refuses ahead of training (`config.ghost_group`)."""
    return n % k or k


def group_moments(
    x: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group of `k` consecutive images (the last smaller when k does not divide the batch):
    the biased variance and the mean over (K, H, W), each (G, C) in float, each image's group
    (B,), and how many values each group's statistics average (G, 1), for the unbiased variance.

    Refuses a group of one value per channel, as BatchNorm2d refuses such a batch."""
    n, full, pixels = x.shape[0], x.shape[0] - x.shape[0] % k, x[0, 0].numel()
    if last_group(n, k) * pixels < 2:  # callers pass k <= n
        raise ValueError(f"Expected more than 1 value per channel when training, got {x.shape}")
    xf = as_float(x)
    var, mean = torch.var_mean(xf[:full].unflatten(0, (-1, k)), dim=(1, 3, 4), unbiased=False)
    if full < n:  # the short last group
        last_var, last_mean = torch.var_mean(xf[full:], dim=(0, 2, 3), unbiased=False)
        var, mean = torch.cat([var, last_var[None]]), torch.cat([mean, last_mean[None]])
    # Filled on the device (a tensor from a Python list would be a host copy every step).
    values = torch.full((len(var), 1), k * pixels, device=x.device, dtype=var.dtype)
    if full < n:
        values[-1] = (n - full) * pixels
    group = torch.arange(n, device=x.device) // k
    return var, mean, group, values


def running_sequence(start: torch.Tensor, stats: torch.Tensor, momentum: float) -> torch.Tensor:
    """The running value before each of G exponential-average updates by `stats` (G, C) in
    sequence, and after the last: (G + 1, C), row g = (1-m)^g start + sum over j < g of
    m (1-m)^(g-1-j) stats[j], which is what g updates `r <- (1-m) r + m s` leave.

    In float32 at least, with autocast off: under autocast the matmul would run in bf16 and
    round the running statistics to 8 bits of mantissa (a mean of 34.41 stored as 34.5), where
    PyTorch's BatchNorm2d keeps them in float32."""
    groups = stats.shape[0]
    start, stats = as_float(start), as_float(stats)
    steps = torch.arange(groups + 1, device=stats.device, dtype=stats.dtype)
    lag = steps[:, None] - 1 - steps[None, :groups]
    take = torch.where(lag >= 0, momentum * (1 - momentum) ** lag.clamp(min=0), 0.0)
    with torch.autocast(stats.device.type, enabled=False):
        return (1 - momentum) ** steps[:, None] * start + take @ stats


def averaged(
    start: torch.Tensor, stats: torch.Tensor, momentum: float | None, tracked: torch.Tensor
) -> torch.Tensor:
    """A running statistic after the G groups' `stats` (G, C) in sequence: the exponential
    average with `momentum`, or with None PyTorch's cumulative average, `tracked` values before
    (the mean of everything seen, whatever the groups)."""
    if momentum is None:
        return (start * tracked + stats.sum(0)) / (tracked + stats.shape[0])
    return running_sequence(start, stats, momentum)[-1]


def channel(v: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over (N, C, H, W)."""
    return v[None, :, None, None]


def affine(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """The per-channel affine gamma * y + beta of the from-scratch references (either may be
    None). Here, beside `channel`, because `norms` and `recent_norms` both hold references and
    `norms` imports `recent_norms`, so neither can hold it for the other."""
    if weight is not None:
        y = y * channel(weight)
    return y if bias is None else y + channel(bias)


def by_image(stat: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """A per-group, per-channel value (G, C) for each image, shaped to broadcast over x."""
    return stat[group][:, :, None, None]


class BatchNorm2d(GhostBatch, nn.BatchNorm2d):
    """PyTorch's BatchNorm2d, with ghost batches when `norm_batch` splits the batch (see the
    module docstring). The class keeps its name: it is BatchNorm, and the network's summary
    says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.groups_of(x)
        if k is None:
            return super().forward(x)
        var, mean, group, values = group_moments(x, k)
        self.update_running(mean, var, values)
        scale = self.weight / (var + self.eps).sqrt()
        shift = self.bias - mean * scale
        return (as_float(x) * by_image(scale, group) + by_image(shift, group)).to(x.dtype)

    @torch.no_grad()
    def update_running(self, mean: torch.Tensor, var: torch.Tensor, values: torch.Tensor) -> None:
        """The running mean and unbiased variance after one update per group, as BatchNorm2d
        on each group in sequence leaves them."""
        tracked = self.num_batches_tracked
        self.running_mean.copy_(averaged(self.running_mean, mean, self.momentum, tracked))
        unbiased = var * values / (values - 1)
        self.running_var.copy_(averaged(self.running_var, unbiased, self.momentum, tracked))
        self.num_batches_tracked.add_(mean.shape[0])


class GhostBatchVariance(GhostBatch):
    """Ghost batches and precise BN for timm's EvoNorm2dB0, whose batch part is a per-channel
    variance over (N, H, W) with a running average: `norms.make_norm` puts this class in front
    of timm's, which stays the layer of record (its parameters, its evaluation, its training
    forward without ghost batches).

    timm's layer has momentum 0.1 fixed and no count of averaged batches; a count is kept here
    (not stored with the model) so that momentum None averages like BatchNorm's precise BN. It
    counts only those batches: timm's own forward does not move it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        count = torch.zeros((), dtype=torch.long)
        self.register_buffer("num_batches_tracked", count, persistent=False)

    def reset_running_stats(self) -> None:
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.groups_of(x)
        if not self.training or (k is None and self.momentum is not None):
            return super().forward(x)
        var, _, group, values = group_moments(x, k or x.shape[0])
        with torch.no_grad():
            unbiased = var * values / (values - 1)
            tracked = self.num_batches_tracked
            self.running_var.copy_(averaged(self.running_var, unbiased, self.momentum, tracked))
            if self.momentum is None:  # the count serves the cumulative average only
                tracked.add_(var.shape[0])
        xf = as_float(x)
        instance_std = (xf.var(dim=(2, 3), unbiased=False, keepdim=True) + self.eps).sqrt()
        batch_std = by_image((var + self.eps).sqrt(), group)
        y = xf / torch.maximum(batch_std, channel(self.v) * xf + instance_std)
        return (y * channel(self.weight) + channel(self.bias)).to(x.dtype)
