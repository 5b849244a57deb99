"""The from-scratch norms equal the library layers (PyTorch's, timm's, normlab's own); the
factory builds what it says."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.core.models import Net
from normlab.core.norms import (
    EPS,
    NORMS,
    SELF_ACTIVATED,
    WS_EPS,
    conv_layer,
    default_groups,
    make_activation,
    make_norm,
    recompute_bn_statistics,
    ref_batch_norm,
    ref_group_norm,
)
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
from normlab.errors import NormlabError


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 8, 5, 3) * 3 + 1.5


def randomize_affine(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.uniform_(-1.0, 1.0)


@pytest.mark.parametrize("kind", ["gn", "ln", "in"])
def test_group_family_matches_pytorch(kind: str, x: torch.Tensor) -> None:
    layer = make_norm(kind, 8)
    randomize_affine(layer)
    expected = layer(x)
    groups = {"ln": 1, "in": 8, "gn": default_groups(8)}[kind]  # groups sharing statistics
    got = ref_group_norm(x, groups, layer.weight, layer.bias)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_layer_norm_has_layer_norm_statistics_but_per_channel_affine(x: torch.Tensor) -> None:
    ours = make_norm("ln", 8)
    reference = nn.LayerNorm(list(x.shape[1:]), elementwise_affine=False)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in ours.parameters()) == 2 * 8
    per_element = nn.LayerNorm(list(x.shape[1:]))
    assert sum(p.numel() for p in per_element.parameters()) == 2 * 8 * 5 * 3


def test_instance_norm_matches_instancenorm2d(x: torch.Tensor) -> None:
    torch.testing.assert_close(make_norm("in", 8)(x), nn.InstanceNorm2d(8)(x), atol=1e-5, rtol=1e-5)


def test_batch_norm_matches_pytorch_in_train_and_eval_with_running_stats(x: torch.Tensor) -> None:
    layer = make_norm("bn", 8)
    randomize_affine(layer)
    running_mean, running_var = torch.zeros(8), torch.ones(8)
    for step in range(3):
        batch = x * (step + 1) - step
        expected = layer(batch)
        got = ref_batch_norm(batch, running_mean, running_var, layer.weight, layer.bias)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(running_mean, layer.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(running_var, layer.running_var, atol=1e-5, rtol=1e-5)
    layer.eval()
    got = ref_batch_norm(x, running_mean, running_var, layer.weight, layer.bias, training=False)
    torch.testing.assert_close(got, layer(x), atol=1e-5, rtol=1e-5)


def test_group_norm_default_and_explicit_groups() -> None:
    assert make_norm("gn", 16).num_groups == default_groups(16) == 4
    assert make_norm("gn", 16, groups=2).num_groups == 2
    assert 24 % default_groups(24) == 0 and 32 % default_groups(32) == 0


@pytest.mark.parametrize(
    "kind, groups", [("gn", 3), ("gn", 0), ("ws+gn", 3), ("evonorm-s0", 5), ("xx", None)]
)
def test_bad_norm_requests_raise_user_errors(kind: str, groups: int | None) -> None:
    with pytest.raises(NormlabError):
        make_norm(kind, 16, groups)


# ---------------------------------------------------------------------------------------------
# The norms that came later: each library layer equals its from-scratch reference.

RECENT = ("brn", "ws+gn", "frn", "evonorm-b0", "evonorm-s0", "ln2d", "rms")


def randomize_all(layer: nn.Module) -> None:
    """Every per-channel parameter away from its initial value: shifts and thresholds around
    zero, scales and EvoNorm's v around one."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            (p.uniform_(-1.0, 1.0) if name in ("bias", "tau") else p.uniform_(0.5, 2.0))


def test_ws_conv_is_a_convolution_with_standardized_filters(x: torch.Tensor) -> None:
    conv = conv_layer("ws+gn")(8, 6, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.normal_(0.2, 0.3)  # a mean to take out
    standardized = ref_weight_standardize(conv.weight, eps=WS_EPS)
    expected = F.conv2d(x, standardized, stride=2, padding=1)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)
    per_filter = standardized.reshape(6, -1)
    torch.testing.assert_close(per_filter.mean(1), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(per_filter.var(1, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)


def test_ws_gn_network_standardizes_its_blocks_not_its_head() -> None:
    net = Net("ws+gn")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(type(c).__name__ == "StdConv2d" for c in convs[:-1])
    assert type(net.head) is nn.Conv2d  # logits keep the scale the head learns
    norms = [m for m in net.features if isinstance(m, nn.GroupNorm)]
    assert [g.num_groups for g in norms] == [default_groups(g.num_channels) for g in norms]


def test_filter_response_norm_matches_reference(x: torch.Tensor) -> None:
    layer = make_norm("frn", 8)
    randomize_all(layer)
    expected = ref_filter_response_norm(x, layer.weight, layer.bias, layer.tau, eps=EPS)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert (expected == layer.tau.view(1, -1, 1, 1).expand_as(x)).any()  # the TLU cut somewhere


def test_evonorm_b0_matches_reference_in_train_and_eval(x: torch.Tensor) -> None:
    layer = make_norm("evonorm-b0", 8)
    randomize_all(layer)
    running_var = torch.ones(8)
    for step in range(3):
        batch = x * (step + 1) - step
        expected = ref_evonorm_b0(batch, running_var, layer.weight, layer.bias, layer.v, eps=EPS)
        torch.testing.assert_close(layer(batch), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(running_var, layer.running_var, atol=1e-5, rtol=1e-5)
    layer.eval()
    expected = ref_evonorm_b0(
        x, running_var, layer.weight, layer.bias, layer.v, eps=EPS, training=False
    )
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_evonorm_s0_matches_reference_with_normlabs_groups(x: torch.Tensor) -> None:
    layer = make_norm("evonorm-s0", 8)
    assert layer.groups == default_groups(8) == 2  # not timm's 32, which 8 channels cannot split
    assert make_norm("evonorm-s0", 24, groups=3).groups == 3
    randomize_all(layer)
    expected = ref_evonorm_s0(x, 2, layer.weight, layer.bias, layer.v, eps=EPS)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def brn_limits(steps: int) -> tuple[float, float]:
    ramp = min(1.0, steps / RAMP_STEPS)
    return 1 + (R_MAX - 1) * ramp, D_MAX * ramp


def test_batch_renorm_matches_reference_through_its_schedule(x: torch.Tensor) -> None:
    """Train steps at several points of the r_max/d_max ramp (the last with a batch ten times
    the running scale, so r is clipped), gradients included, then evaluation."""
    layer = make_norm("brn", 8)
    randomize_all(layer)
    running_mean, running_var = torch.zeros(8), torch.ones(8)
    for steps, scale in (
        (0, 1.0),
        (1, 2.0),
        (RAMP_STEPS // 2, 1.5),
        (RAMP_STEPS, 1.0),
        (10**4, 10),
    ):
        layer.renorm_steps.fill_(steps)
        batch = (x * scale - steps % 3).requires_grad_()
        r_max, d_max = brn_limits(steps)
        ratio = batch.var(dim=(0, 2, 3), unbiased=False).add(EPS).sqrt() / running_var.sqrt()
        clipped = bool((ratio > r_max).any())
        expected = ref_batch_renorm(
            batch, running_mean, running_var, layer.weight, layer.bias,
            eps=EPS, r_max=r_max, d_max=d_max,
        )  # fmt: skip
        got = layer(batch)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        probe = torch.randn_like(got)
        (grad_expected,) = torch.autograd.grad((expected * probe).sum(), batch)
        (grad_got,) = torch.autograd.grad((got * probe).sum(), batch)
        torch.testing.assert_close(grad_got, grad_expected, atol=1e-5, rtol=1e-5)
    assert clipped and int(layer.renorm_steps) == 10**4 + 1
    torch.testing.assert_close(running_mean, layer.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(running_var, layer.running_var, atol=1e-5, rtol=1e-5)
    layer.eval()
    expected = ref_batch_norm(
        x, running_mean, running_var, layer.weight, layer.bias, training=False
    )
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ref_batch_renorm(x, running_mean, running_var, eps=EPS, training=False),
        ref_batch_norm(x, running_mean, running_var, training=False),
    )


def test_batch_renorm_at_its_first_step_is_batch_norm(x: torch.Tensor) -> None:
    renorm, plain = make_norm("brn", 8), make_norm("bn", 8)
    torch.testing.assert_close(renorm(x), plain(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(renorm.running_var, plain.running_var, atol=1e-6, rtol=1e-6)


def test_precise_bn_averages_batch_renorm_like_batch_norm_and_keeps_its_schedule(
    x: torch.Tensor,
) -> None:
    renorm, plain = make_norm("brn", 8), make_norm("bn", 8)
    renorm.renorm_steps.fill_(RAMP_STEPS)
    batches = [x, x * 2 + 1, x - 3]
    for layer in (renorm, plain):
        layer(x * 5)  # running statistics that precise BN must replace
        recompute_bn_statistics(layer, batches)
    torch.testing.assert_close(renorm.running_mean, plain.running_mean)
    torch.testing.assert_close(renorm.running_var, plain.running_var)
    assert renorm.momentum == 0.1 and int(renorm.renorm_steps) == RAMP_STEPS + 1


def test_layer_norm_2d_normalizes_each_pixel_over_channels(x: torch.Tensor) -> None:
    layer = make_norm("ln2d", 8)
    randomize_all(layer)
    expected = ref_layer_norm_2d(x, layer.weight, layer.bias, eps=EPS)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    plain = ref_layer_norm_2d(x, eps=EPS)  # every (sample, h, w) has mean 0 over C ...
    torch.testing.assert_close(plain.mean(dim=1), torch.zeros(4, 5, 3), atol=1e-5, rtol=0)
    by_sample = ref_group_norm(x, 1)  # ... which LayerNorm over (C, H, W) does not give
    assert by_sample.mean(dim=1).abs().max() > 0.1


def test_rms_norm_divides_each_sample_by_its_root_mean_square(x: torch.Tensor) -> None:
    layer = make_norm("rms", 8)
    torch.testing.assert_close(
        layer(x), nn.RMSNorm(list(x.shape[1:]), eps=EPS)(x), atol=1e-5, rtol=1e-5
    )
    randomize_all(layer)
    expected = ref_rms_norm(x, layer.weight, layer.bias, eps=EPS)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert ref_rms_norm(x, eps=EPS).mean() > 0.3  # x's positive mean is kept, not subtracted


def test_norms_with_their_own_nonlinearity_get_no_relu() -> None:
    for norm in NORMS:
        layers = list(Net(norm).features)
        convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        after_norm = {type(layers[i + 2]) for i in convs}  # conv, norm, then this
        assert after_norm == ({nn.Identity} if norm in SELF_ACTIVATED else {nn.ReLU}), norm
        assert after_norm == {type(make_activation(norm))}


@pytest.mark.parametrize("norm", RECENT)
def test_recent_norms_train_in_channels_last_and_bf16(norm: str) -> None:
    """The memory format changes no output; bf16 autocast (as training runs on a GPU or a bf16
    CPU) stays finite and close to float32, in training and evaluation."""
    torch.manual_seed(0)
    net = Net(norm)
    images = torch.randn(4, 1, 28, 28)
    for training in (True, False):
        net.train(training)
        copies = [copy.deepcopy(net) for _ in range(3)]  # running statistics move in training
        reference = copies[0](images)
        last = copies[1].to(memory_format=torch.channels_last)
        torch.testing.assert_close(
            last(images.contiguous(memory_format=torch.channels_last)), reference,
            atol=1e-4, rtol=1e-4,
        )  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = copies[2](images.contiguous(memory_format=torch.channels_last))
        assert torch.isfinite(low).all()
        torch.testing.assert_close(low.float(), reference, atol=0.02, rtol=0)  # 5e-3 measured
        if training:
            low.float().sum().backward()
            grads = [p.grad for p in copies[2].parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
