"""Ghost batches (`--norm-batch K`): a batch-dependent norm on a batch with K set is that norm on
each K-image chunk in sequence, outputs, gradients and running statistics; every other norm and
evaluation never see K; precise BN averages the K-image statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normlab.core.ghost import GhostBatch, set_norm_batch
from normlab.core.models import Net
from normlab.core.norms import BATCH_DEPENDENT, NORMS, make_norm, recompute_bn_statistics
from normlab.core.recent_norms import RAMP_STEPS

PER_IMAGE = tuple(n for n in NORMS if n not in BATCH_DEPENDENT)  # gn, ln, in, ws+gn, frn, ...


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(12, 8, 5, 3) * 3 + 1.5


def randomized(kind: str) -> nn.Module:
    """A layer with an affine (and EvoNorm's v) away from its initial values."""
    torch.manual_seed(1)
    layer = make_norm(kind, 8)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    return layer


def buffers(layer: nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer, the non-persistent (EvoNorm-B0's count) included."""
    return dict(layer.named_buffers())


def assert_chunked(ghost: nn.Module, plain: nn.Module, batches: list[torch.Tensor], k: int) -> None:
    """`ghost` (norm_batch k) on each batch at once equals `plain` on its k-image chunks in
    sequence: outputs, input gradients and every buffer after each batch, to 1e-5."""
    ghost.norm_batch = k
    for batch in batches:
        xg, xp = batch.clone().requires_grad_(), batch.clone().requires_grad_()
        got = ghost(xg)
        expected = torch.cat([plain(chunk) for chunk in xp.split(k)])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        probe = torch.randn_like(got)
        (got * probe).sum().backward()
        (expected * probe).sum().backward()
        torch.testing.assert_close(xg.grad, xp.grad, atol=1e-5, rtol=1e-5)
        for name, value in buffers(plain).items():
            torch.testing.assert_close(buffers(ghost)[name], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", BATCH_DEPENDENT)
@pytest.mark.parametrize("k", [2, 4, 5])  # 5: a short last group of 2 (12 = 5 + 5 + 2)
def test_ghost_batches_equal_the_layer_on_each_chunk(kind: str, k: int, x: torch.Tensor) -> None:
    ghost = randomized(kind)
    plain = copy.deepcopy(ghost)
    if kind == "brn":  # halfway up the ramp: r and d are clipped, and the limits move per chunk
        for layer in (ghost, plain):
            layer.renorm_steps.fill_(RAMP_STEPS // 2)
    assert_chunked(ghost, plain, [x, x * 2 - 1, x + 3], k)
    if kind == "brn":
        assert int(ghost.renorm_steps) == RAMP_STEPS // 2 + 3 * len(x.split(k))


@pytest.mark.parametrize("kind", BATCH_DEPENDENT)
def test_precise_bn_with_ghost_batches_averages_each_chunk(kind: str, x: torch.Tensor) -> None:
    """momentum None (precise BN's cumulative average) in ghost batches: the average over every
    chunk, as the plain layer's cumulative average over the chunks one by one."""
    ghost = randomized(kind)
    plain = copy.deepcopy(ghost)
    ghost.norm_batch = 4
    batches = [x, x * 2 - 1, x + 3]
    recompute_bn_statistics(ghost, batches)
    recompute_bn_statistics(plain, [chunk for b in batches for chunk in b.split(4)])
    for name, value in buffers(plain).items():
        torch.testing.assert_close(buffers(ghost)[name], value, atol=1e-5, rtol=1e-5)
    chunks = [c for b in batches for c in b.split(4)]
    mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
    var = torch.stack([c.var(dim=(0, 2, 3)) for c in chunks]).mean(0)
    torch.testing.assert_close(ghost.running_var, var, atol=1e-4, rtol=1e-4)
    if kind != "evonorm-b0":  # EvoNorm-B0 keeps no running mean
        torch.testing.assert_close(ghost.running_mean, mean, atol=1e-4, rtol=1e-4)


def net_outputs(norm: str, ks: tuple[int | None, ...], training: bool) -> list[torch.Tensor]:
    """The same network (one seed) on the same batch, under each norm batch in `ks`."""
    torch.manual_seed(0)
    images = torch.randn(8, 1, 28, 28)
    outputs = []
    for k in ks:
        torch.manual_seed(0)
        net = Net(norm).train(training)
        set_norm_batch(net, k)
        outputs.append(net(images))
    return outputs


@pytest.mark.parametrize("norm", PER_IMAGE)
def test_per_image_norms_are_the_same_under_every_norm_batch(norm: str) -> None:
    """GN, LN, IN, WS+GN, FRN, ln2d, rms, EvoNorm-S0 (and none) normalize each image by its own
    statistics: no layer takes K, and the outputs are identical, bit for bit."""
    torch.manual_seed(0)
    assert not any(isinstance(m, GhostBatch) for m in Net(norm).modules())
    reference, *others = net_outputs(norm, (None, 2, 4), training=True)
    assert all(torch.equal(reference, other) for other in others)


@pytest.mark.parametrize("norm", BATCH_DEPENDENT)
def test_norm_batch_changes_training_but_not_evaluation(norm: str) -> None:
    """BATCH_DEPENDENT names exactly the norms with a GhostBatch layer (the per-image test
    above holds the rest to none): the list the study's run expansion trusts."""
    assert any(isinstance(m, GhostBatch) for m in Net(norm).modules())
    whole, ghost = net_outputs(norm, (None, 2), training=True)
    assert not torch.allclose(whole, ghost)
    reference, *others = net_outputs(norm, (None, 2, 4), training=False)
    assert all(torch.equal(reference, other) for other in others)


def test_a_norm_batch_of_the_whole_batch_is_the_plain_layer(x: torch.Tensor) -> None:
    """K >= the batch is one group: the layer's own forward (PyTorch's kernel for bn)."""
    plain, ghost = randomized("bn"), randomized("bn")
    ghost.norm_batch = len(x)
    torch.testing.assert_close(ghost(x), plain(x), atol=0, rtol=0)


def test_a_group_of_one_value_per_channel_is_refused_as_batch_norm_refuses_it() -> None:
    layer = make_norm("bn", 4)
    layer.norm_batch = 2
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(5, 4, 1, 1))  # groups 2, 2, 1: the last is one value per channel


@pytest.mark.parametrize("norm", BATCH_DEPENDENT)
def test_ghost_batches_train_in_channels_last_and_bf16(norm: str) -> None:
    torch.manual_seed(0)
    net = Net(norm)
    set_norm_batch(net, 2)
    images = torch.randn(8, 1, 28, 28)
    reference = copy.deepcopy(net)(images)
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        last(images.contiguous(memory_format=torch.channels_last)), reference, atol=1e-4, rtol=1e-4
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = copy.deepcopy(net)(images)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), reference, atol=0.05, rtol=0)
    low.float().sum().backward()


@pytest.mark.parametrize("kind", BATCH_DEPENDENT)
@pytest.mark.parametrize("k", [2, None])  # None: brn still averages through `running_sequence`
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_running_statistics_stay_float32_under_autocast(
    kind: str, k: int | None, dtype: torch.dtype
) -> None:
    """Under bf16 autocast the running statistics are PyTorch's BatchNorm2d's on each K-image
    chunk under the same autocast, which keeps them in float32: an input around 100 would show
    bf16's 8-bit mantissa (steps of 0.25 at 34) if the update ran in bf16. The input is given
    in float32 and in bf16 (what a convolution under autocast hands the norm)."""
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 4, 4) * 2 + 100).to(dtype)
    ghost, plain = make_norm(kind, 3), nn.BatchNorm2d(3)
    ghost.norm_batch = k
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in (x, x * 0.5):
            ghost(batch)
            for chunk in batch.split(k or len(batch)):
                plain(chunk)
    assert ghost.running_var.dtype == torch.float32
    torch.testing.assert_close(ghost.running_var, plain.running_var, atol=1e-5, rtol=1e-4)
    if kind != "evonorm-b0":  # EvoNorm-B0 keeps no running mean
        torch.testing.assert_close(ghost.running_mean, plain.running_mean, atol=1e-5, rtol=1e-4)
