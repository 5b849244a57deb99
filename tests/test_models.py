"""One architecture for every norm, under the parameter budget, with a truthful summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.errors import NormlabError
from normlab.models import ARCHS, Net, count_params, layer_summary
from normlab.norms import NORMS


@pytest.mark.parametrize("norm", NORMS)
def test_mnist_net_is_under_20k_parameters_and_classifies(norm: str) -> None:
    model = Net(norm)
    assert count_params(model) < 20_000
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_only_the_norm_layer_differs_between_norms() -> None:
    counts = {n: count_params(Net(n)) for n in ("bn", "gn", "ln", "in")}
    assert len(set(counts.values())) == 1
    convs = {
        n: [m.weight.shape for m in Net(n).modules() if isinstance(m, nn.Conv2d)]
        for n in ("bn", "gn", "ln")
    }
    assert convs["bn"] == convs["gn"] == convs["ln"]
    assert not any(isinstance(m, nn.Linear) for m in Net("bn").modules())


def test_layer_summary_adds_up_to_the_parameter_count() -> None:
    model = Net("gn")
    rows = layer_summary(model, (1, 28, 28))
    assert sum(r.params for r in rows) == count_params(model)
    assert rows[-1].out_shape == (10, 1, 1)
    assert rows[0].params == 16 * 1 * 3 * 3  # first conv: 16 filters of 1x3x3, no bias


def test_bad_architecture_token_is_a_user_error() -> None:
    with pytest.raises(NormlabError):
        Net("bn", arch="16 X")
    assert "M" in ARCHS["mnist"].split()
