"""The from-scratch norms equal PyTorch's layers; the factory builds what it says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.core.norms import default_groups, make_norm, ref_batch_norm, ref_group_norm
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


@pytest.mark.parametrize("kind, groups", [("gn", 3), ("gn", 0), ("xx", None)])
def test_bad_norm_requests_raise_user_errors(kind: str, groups: int | None) -> None:
    with pytest.raises(NormlabError):
        make_norm(kind, 16, groups)
