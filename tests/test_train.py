"""The training loop: the L1 term, learning on real MNIST, determinism."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from normlab.config import TrainOptions, parse_variant
from normlab.data import Dataset
from normlab.models import Net
from normlab.train import conv_weights, l1_penalty, train_run


def subset(data: Dataset, n_train: int, n_test: int) -> Dataset:
    return Dataset(
        data.name,
        data.train.head(n_train),
        data.test.head(n_test),
        data.classes,
        data.mean,
        data.std,
    )


def test_l1_term_adds_exactly_lambda_times_sum_of_abs_conv_weights() -> None:
    torch.manual_seed(0)
    model = Net("bn")
    lam = 3e-4
    by_hand = sum(float(w.detach().abs().sum()) for w in conv_weights(model)) * lam
    assert l1_penalty(model, lam).item() == pytest.approx(by_hand, rel=1e-6)
    # Norm affine parameters are not penalized: their gradient from the penalty is zero.
    l1_penalty(model, lam).backward()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.weight.grad is None or not module.weight.grad.any()
    w = conv_weights(model)[1]
    torch.testing.assert_close(w.grad, lam * w.detach().sign())


def test_l1_penalty_is_in_the_training_loss() -> None:
    torch.manual_seed(0)
    model = Net("bn")
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    base = F.cross_entropy(model(x), y)
    assert (base + l1_penalty(model, 1e-3) - base).item() > 0


@pytest.mark.slow
def test_one_epoch_on_2000_real_images_beats_90_percent(mnist: Dataset) -> None:
    data = subset(mnist, 2000, 2000)
    result = train_run(
        parse_variant("bn"), 0, data, TrainOptions(epochs=1, batch_size=8), torch.device("cpu")
    )
    assert result.metrics[-1].test_acc > 90.0
    assert len(result.predictions["pred"]) == 2000


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_on_cpu(mnist: Dataset) -> None:
    data = subset(mnist, 512, 256)
    opts = TrainOptions(epochs=2, batch_size=64)
    runs = [train_run(parse_variant("gn+l1"), 7, data, opts, torch.device("cpu")) for _ in range(2)]
    strip = [
        [{k: v for k, v in asdict(m).items() if k != "seconds"} for m in r.metrics] for r in runs
    ]
    assert strip[0] == strip[1]
    other = train_run(parse_variant("gn+l1"), 8, data, opts, torch.device("cpu"))
    assert other.metrics[-1].train_loss != runs[0].metrics[-1].train_loss
