"""normlab bench and the speed changes that must not change what is computed."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from normlab.cli import app
from normlab.cli.bench import typical_model
from normlab.config import TrainOptions, parse_variant
from normlab.core.augment import affine_grid
from normlab.core.models import HeadPool, MaxPool2d, Net, choose_arch
from normlab.core.norms import GroupNorm, make_norm
from normlab.core.train import add_l1_grad, build_model, conv_weights, l1_penalty
from normlab.data import channel_stats

ROW_KEYS = {"norm", "normlab_img_s", "typical_img_s", "compute_img_s", "ratio", "efficiency"}


@pytest.mark.parametrize("h, w", [(28, 28), (10, 7)])
def test_affine_grid_equals_torch(h: int, w: int) -> None:
    theta = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(h * w))
    expected = F.affine_grid(theta, [16, 1, h, w], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, h, w), expected, atol=1e-6, rtol=0)


def test_the_typical_pipeline_trains_the_network_normlab_trains(mnist) -> None:
    """The bench's ratio compares two pipelines, so both must train the same network: the
    one `auto` picks (it once kept building the previous default after the default changed)."""
    for norm in ("bn", "gn"):
        typical = typical_model(norm, mnist)
        ours = build_model(parse_variant(norm), mnist, TrainOptions(), 0)
        assert typical.arch == ours.arch == choose_arch(mnist.input_shape)
        assert typical.state_dict().keys() == ours.state_dict().keys()


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(4, 3, 28, 28), (2, 5, 7, 9)])
def test_inference_max_pool_equals_torch(fmt: torch.memory_format, shape: tuple) -> None:
    x = torch.randn(shape).relu().to(torch.bfloat16).contiguous(memory_format=fmt)
    x[0, 0, 0, 0] = float("nan")
    x[..., 1, 1] = x[..., 1, 0]  # ties
    with torch.inference_mode():
        ours, theirs = MaxPool2d()(x), torch.nn.MaxPool2d(2)(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    assert ours.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("kind", ["gn", "in", "ws+gn"])
def test_groupnorm_on_channels_last_equals_contiguous(kind: str, monkeypatch) -> None:
    """norms.GroupNorm hands PyTorch's kernel a contiguous copy of channels_last input: exactly
    the output and gradients of contiguous input, and the output and the gradient that reaches
    the layer before come back in channels_last, the format the layers around it run fastest in."""
    seen = []  # whether each input PyTorch's group_norm got was contiguous
    native = F.group_norm
    monkeypatch.setattr(
        F, "group_norm", lambda x, *a, **k: seen.append(x.is_contiguous()) or native(x, *a, **k)
    )
    torch.manual_seed(0)
    norm = make_norm(kind, 8)
    assert isinstance(norm, GroupNorm)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(4, 8, 6, 5)
    upstream = torch.randn_like(x)
    results, arrived = [], []  # arrived: the gradients that reached the layer before the norm
    for fmt in (torch.contiguous_format, torch.channels_last):
        norm.zero_grad()
        xf = x.detach().contiguous(memory_format=fmt).requires_grad_()
        before = xf * 1  # a leaf's .grad takes the leaf's format whatever arrives; this does not
        before.register_hook(arrived.append)
        y = norm(before)
        (y * upstream).sum().backward()
        assert y.is_contiguous(memory_format=fmt)
        assert arrived[-1].is_contiguous(memory_format=fmt)
        results.append((y, xf.grad, norm.weight.grad.clone(), norm.bias.grad.clone()))
    assert seen == [True, True]  # the channels_last input reached the kernel as a contiguous copy
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # the same kernel on the same data


def test_head_pool_passes_a_map_of_its_size_as_it_is(monkeypatch) -> None:
    """A map already k x k skips adaptive pooling (its own average) and is only scaled."""
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    expected = F.adaptive_avg_pool2d(x, 7) * 0.4
    native = F.adaptive_avg_pool2d

    def pool(t: torch.Tensor, size: int) -> torch.Tensor:
        assert t.shape[-1] != size, "a 7x7 map was pooled to 7x7"
        return native(t, size)

    monkeypatch.setattr(F, "adaptive_avg_pool2d", pool)
    torch.testing.assert_close(HeadPool(7, 0.4)(x), expected)
    torch.testing.assert_close(HeadPool(3)(x), native(x, 3))


def test_channel_stats_from_histograms_equal_direct_float64() -> None:
    images = torch.randint(0, 256, (300, 3, 9, 7), dtype=torch.uint8)
    flat = images.double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = channel_stats(images)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), flat.mean(1))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), flat.std(1))


def test_l1_gradient_equals_autograd_of_the_penalty() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    direct, reference = Net("bn"), Net("bn")
    reference.load_state_dict(direct.state_dict())
    with torch.no_grad():  # some exact zeros: |w| has gradient 0 there
        conv_weights(direct)[0][0].zero_()
        conv_weights(reference)[0][0].zero_()
    F.cross_entropy(direct(x), y).backward()
    add_l1_grad(direct, 1e-3)
    (F.cross_entropy(reference(x), y) + l1_penalty(reference, 1e-3)).backward()
    for a, b in zip(direct.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-6)


@pytest.mark.slow
def test_bench_writes_documented_json(mnist_dir, tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--data-dir", str(mnist_dir),
            "--limit-train", "192",
            "--batch-size", "64",
            "--norms", "bn,gn",
            "--repeats", "1",
            "--device", "cpu",
            "--json", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["norm"] for r in data["rows"]] == ["bn", "gn"]
    for row in data["rows"]:
        assert row.keys() >= ROW_KEYS
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ROW_KEYS - {"norm"})
        assert row["ratio"] == pytest.approx(row["normlab_img_s"] / row["typical_img_s"])
        assert row["efficiency"] == pytest.approx(row["normlab_img_s"] / row["compute_img_s"])
    assert data["flops_per_s"] > 0 and data["matmul_flops_per_s"] > 0
    assert data["test_images"] == 32
    assert "efficiency" in result.output


def test_bench_refuses_a_bad_limit(mnist_dir) -> None:
    result = CliRunner().invoke(app, ["bench", "--data-dir", str(mnist_dir), "--limit-train", "1"])
    assert result.exit_code != 0
    assert "--limit-train must be at least 2" in str(result.exception)
