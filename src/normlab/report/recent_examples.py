"""The worked example for the norms that came later (`core.recent_norms`): which elements share
statistics, the numbers, and the check against the layer normlab builds, as `norm_examples`
does for BN, LN, GN and IN.

Each is shown at its initial parameters (scale 1, shift 0, FRN's tau 0, EvoNorm's v 1), Batch
Renormalization with its limits fully relaxed, where it differs from BatchNorm.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from normlab.core.norms import EPS, WS_EPS, conv_layer, group_stats, make_norm, ref_group_norm
from normlab.core.recent_norms import (
    D_MAX,
    R_MAX,
    RAMP_STEPS,
    ref_batch_renorm,
    ref_evonorm_b0,
    ref_evonorm_s0,
    ref_filter_response_norm,
    ref_layer_norm_2d,
    ref_rms_norm,
    ref_weight_standardize,
)
from normlab.report.norm_examples import (
    GN_GROUPS,
    WEIGHTS,
    NormExample,
    Statistics,
    batch_moments,
    channel_ids,
    group_ids,
    max_diff,
)

BY_CHANNEL = "(N, H, W) of each channel"
BY_INSTANCE = "(H, W) of each sample and channel"
BY_GROUP = "(C/G, H, W) of each sample and group"


def renorm_example(x: torch.Tensor) -> NormExample:
    c = x.shape[1]
    zeros, ones = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
    moments = batch_moments(x)
    running_std = torch.sqrt(ones + EPS)  # a fresh layer's: mean 0, variance 1
    r = (torch.sqrt(moments["variance"] + EPS) / running_std).clamp(1 / R_MAX, R_MAX)
    d = ((moments["mean"] - zeros) / running_std).clamp(-D_MAX, D_MAX)
    out = ref_batch_renorm(x, zeros.clone(), ones.clone(), eps=EPS)
    layer = make_norm("brn", c)
    layer.renorm_steps.fill_(RAMP_STEPS)
    note = (
        f"Shown with the limits fully relaxed (r_max = {R_MAX:g}, d_max = {D_MAX:g}) and a fresh "
        "layer's running statistics (mean 0, variance 1). y = (x - mean) / sqrt(variance + eps) "
        "· r + d, with r = clip(sqrt(variance + eps) / running std, 1/r_max, r_max) and d = "
        "clip((mean - running mean) / running std, -d_max, d_max), both without gradient: within "
        "the limits training computes what evaluation will with the running statistics, here "
        "x / sqrt(1 + eps), almost x itself, wherever r and d are not clipped. Training starts "
        f"at r_max = 1, d_max = 0, i.e. BatchNorm, and widens them over {RAMP_STEPS:,} steps. "
        "Like BatchNorm it depends on the other images in the batch."
    )
    return NormExample(
        "brn",
        "Batch Renormalization",
        f"over {BY_CHANNEL}, corrected towards the running statistics",
        (Statistics("", BY_CHANNEL, channel_ids(x), {**moments, "r": r, "d": d}),),
        out,
        [(f"normlab BatchRenorm2d({c}), training, limits relaxed", max_diff(out, layer, x))],
        note,
    )


def ws_example(x: torch.Tensor) -> NormExample:
    """The example read as a convolution weight (C_out = N filters of C x H x W), standardized
    per filter; the activations are then GroupNorm's, with GroupNorm's numbers."""
    n, c, h, w = x.shape
    mean, var = group_stats(x, 1)
    per_filter = "(C_in, kH, kW) of each output filter"
    weights = Statistics(
        "weights",
        per_filter,
        group_ids(x, 1),
        {"mean": mean.flatten(), "variance": var.flatten()},
        WEIGHTS,
    )
    g_mean, g_var = group_stats(x, GN_GROUPS)
    values = {"mean": g_mean.flatten(), "variance": g_var.flatten()}
    activations = Statistics("activations", BY_GROUP, group_ids(x, GN_GROUPS), values)
    out = ref_weight_standardize(x, eps=WS_EPS)
    conv = conv_layer("ws+gn")(c, n, (h, w), bias=False).to(torch.float64)
    with torch.no_grad():
        conv.weight.copy_(x)
    norm = make_norm("ws+gn", c, GN_GROUPS)
    note = (
        "Weight Standardization normalizes a convolution's weights, not its activations. Here "
        f"the example is read as the weight of a {h}x{w} convolution from {c} channels to {n} "
        f"filters, and each filter's {c * h * w} weights get their own mean and variance (eps "
        f"{WS_EPS:g} on the variance, timm StdConv2d's). The network then normalizes the "
        "activations with GroupNorm: the second table, GroupNorm's numbers above. Neither "
        "involves the batch: a filter's weights are the same for every image."
    )
    checks = [
        (
            f"timm StdConv2d({c}, {n}, {h}x{w}) on x, vs a convolution with this output",
            max_diff(F.conv2d(x, out), conv, x),
        ),
        (
            f"normlab make_norm('ws+gn') = nn.GroupNorm({GN_GROUPS}, {c}), vs GroupNorm",
            max_diff(ref_group_norm(x, GN_GROUPS), norm, x),
        ),
    ]
    return NormExample(
        "ws+gn",
        "Weight Standardization + GroupNorm",
        f"weights over {per_filter}, then GroupNorm",
        (weights, activations),
        out,
        checks,
        note,
        WEIGHTS,
    )


def frn_example(x: torch.Tensor) -> NormExample:
    c = x.shape[1]
    mean_square = (x * x).mean(dim=(2, 3)).flatten()
    out = ref_filter_response_norm(x, tau=torch.zeros(c, dtype=x.dtype), eps=EPS)
    note = (
        "FRN divides each channel of each sample by the root of its mean square over H·W, "
        "InstanceNorm's groups without subtracting a mean. Its learned threshold, the TLU "
        "max(y, tau) (tau = 0 at the start, max(y, 0) here), is its nonlinearity: the network "
        "puts no ReLU after it. On a 1x1 map the mean square is the square of the one value, "
        "and FRN leaves only its sign."
    )
    return NormExample(
        "frn",
        "Filter Response Norm + TLU",
        f"over {BY_INSTANCE}, no mean subtracted",
        (Statistics("", BY_INSTANCE, group_ids(x, c), {"mean square": mean_square}),),
        out,
        [(f"timm FilterResponseNormTlu2d({c})", max_diff(out, make_norm("frn", c), x))],
        note,
    )


def evonorm_b0_example(x: torch.Tensor) -> NormExample:
    c = x.shape[1]
    batch = batch_moments(x)["variance"]
    instance = x.var(dim=(2, 3), unbiased=False).flatten()
    stats = (
        Statistics("batch variance", BY_CHANNEL, channel_ids(x), {"variance": batch}),
        Statistics("instance variance", BY_INSTANCE, group_ids(x, c), {"variance": instance}),
    )
    out = ref_evonorm_b0(x, torch.ones(c, dtype=x.dtype), eps=EPS)
    note = (
        "y = x / max(sqrt(batch variance + eps), v·x + sqrt(instance variance + eps)), v = 1 at "
        "the start: no mean is subtracted, and the max is the nonlinearity, so the network puts "
        "no ReLU after it. The batch variance makes it depend on the other images in the batch "
        "in training; at test time it uses a running variance, as BatchNorm does."
    )
    return NormExample(
        "evonorm-b0",
        "EvoNorm-B0",
        f"batch variance over {BY_CHANNEL}, and variance over {BY_INSTANCE}",
        stats,
        out,
        [(f"timm EvoNorm2dB0({c}), training", max_diff(out, make_norm("evonorm-b0", c), x))],
        note,
    )


def evonorm_s0_example(x: torch.Tensor) -> NormExample:
    c = x.shape[1]
    var = group_stats(x, GN_GROUPS)[1].flatten()
    out = ref_evonorm_s0(x, GN_GROUPS, eps=EPS)
    layer = make_norm("evonorm-s0", c, GN_GROUPS)
    note = (
        "y = x · sigmoid(v·x) / sqrt(group variance + eps), v = 1 at the start: GroupNorm's "
        "groups, but the numerator keeps its mean, and the sigmoid gate (SiLU at v = 1) is the "
        "nonlinearity, so the network puts no ReLU after it. In the network the groups follow "
        "GroupNorm's rule (about 4 channels a group, or --groups), not timm's 32."
    )
    return NormExample(
        "evonorm-s0",
        f"EvoNorm-S0 ({GN_GROUPS} groups)",
        f"over {BY_GROUP}, no mean subtracted from x",
        (Statistics("", BY_GROUP, group_ids(x, GN_GROUPS), {"variance": var}),),
        out,
        [(f"timm EvoNorm2dS0({c}, groups={GN_GROUPS})", max_diff(out, layer, x))],
        note,
    )


def layer_norm_2d_example(x: torch.Tensor) -> NormExample:
    n, c, h, w = x.shape
    pixels = torch.arange(n * h * w).reshape(n, 1, h, w).expand_as(x).clone()
    values = {"mean": x.mean(dim=1).flatten(), "variance": x.var(dim=1, unbiased=False).flatten()}
    out = ref_layer_norm_2d(x, eps=EPS)
    over = "C of each sample and pixel"
    note = (
        "ConvNeXt's LayerNorm normalizes each pixel's C channel values on their own, as a "
        "transformer's LayerNorm does each token: every pixel's channel vector comes out with "
        "mean 0 and variance 1, so a position where all channels respond strongly and one "
        "where they respond weakly look alike. normlab's `ln` takes one mean and variance over "
        "the whole sample (C, H, W) and keeps those differences between positions."
    )
    return NormExample(
        "ln2d",
        "LayerNorm over channels (ConvNeXt)",
        f"over {over}",
        (Statistics("", over, pixels, values),),
        out,
        [(f"timm LayerNorm2d({c})", max_diff(out, make_norm("ln2d", c), x))],
        note,
    )


def rms_example(x: torch.Tensor) -> NormExample:
    c, h, w = x.shape[1:]
    over = "(C, H, W) of each sample"
    mean_square = (x * x).mean(dim=(1, 2, 3))
    out = ref_rms_norm(x, eps=EPS)
    note = (
        "LayerNorm's groups, divided by the root mean square without subtracting the mean: with "
        "the same per-channel scale and shift as `ln`, the mean is the only difference. timm's "
        "RmsNorm2d would take the root mean square over C of each pixel instead, as `ln2d` does."
    )
    layers = [
        (f"normlab make_norm('rms') = RmsNormCHW({c})", make_norm("rms", c)),
        (f"nn.RMSNorm([{c}, {h}, {w}])", nn.RMSNorm(list(x.shape[1:]), eps=EPS)),
    ]
    return NormExample(
        "rms",
        "RMSNorm over (C, H, W)",
        f"over {over}, no mean subtracted",
        (Statistics("", over, group_ids(x, 1), {"mean square": mean_square}),),
        out,
        [(name, max_diff(out, layer, x)) for name, layer in layers],
        note,
    )


RECENT = {  # in `NORMS` order
    "brn": renorm_example,
    "ws+gn": ws_example,
    "frn": frn_example,
    "evonorm-b0": evonorm_b0_example,
    "evonorm-s0": evonorm_s0_example,
    "ln2d": layer_norm_2d_example,
    "rms": rms_example,
}


def recent_examples(x: torch.Tensor, norms: Collection[str] | None = None) -> list[NormExample]:
    """The later norms on `x` that are in `norms` (all when None), in `NORMS` order. A
    report explains only the norms its study ran: building the others would import timm and
    draw panels nobody asked for."""
    return [build(x) for key, build in RECENT.items() if norms is None or key in norms]
