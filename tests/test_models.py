"""One architecture for every norm, under the parameter budget, with a truthful summary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.core.models import Net, check_network, count_params, layer_summary
from normlab.core.norms import NORMS
from normlab.data import INPUT_SHAPES
from normlab.errors import NormlabError


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


@pytest.mark.parametrize(
    "spec", ["16 X", "-4", "0", "16 0v", "16vs", "16 s", "1.5", "16 MM", "16 RN 8", "RN RN 8"]
)
def test_bad_architecture_token_is_a_user_error(spec: str) -> None:
    with pytest.raises(NormlabError, match="bad architecture token"):
        Net("bn", arch=spec)


def test_each_kind_of_token_builds_what_the_spec_says() -> None:
    convs = [m for m in Net("bn", arch="1 16v 8t 4s M").modules() if isinstance(m, nn.Conv2d)]
    got = [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs[:-1]]
    assert got == [(1, (3, 3), (1, 1), (1, 1)), (16, (3, 3), (1, 1), (0, 0)),
                   (8, (1, 1), (1, 1), (0, 0)), (4, (3, 3), (2, 2), (1, 1))]  # fmt: skip


def test_head_token_reads_a_pooled_layout_linearly() -> None:
    """`H3`: the last map averaged to 3x3, then one weight per class, channel and cell; `H1`
    (and no head token) is global average pooling and a 1x1 convolution, the same network."""
    torch.manual_seed(0)
    net = Net("ln", arch="4 M 6 H3")
    assert count_params(net) == count_params(Net("ln", arch="4 M 6")) - (6 * 10 + 10) + (
        6 * 9 * 10 + 10
    )
    x = torch.randn(2, 1, 28, 28)
    cells = F.adaptive_avg_pool2d(net.features(x), 3).flatten(1)  # 14x14 -> 3x3
    expected = cells @ net.head.weight.flatten(1).T + net.head.bias
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    torch.manual_seed(1)
    plain = Net("ln", arch="4 M 6")
    torch.manual_seed(1)
    one = Net("ln", arch="4 M 6 H1")
    assert torch.equal(plain(x), one(x))


def test_a_head_larger_than_the_last_map_or_a_network_without_convolutions_is_refused() -> None:
    check_network("16 M 16v 24v M 24 24 H5", INPUT_SHAPES["mnist"], ["bn"], None)  # 5x5 -> 5x5
    with pytest.raises(NormlabError, match=r"stretch the last map \(5x5 on 1x28x28 images\)"):
        check_network("16 M 16v 24v M 24 24 H6", INPUT_SHAPES["mnist"], ["bn"], None)
    for spec in ("H3", "M H3"):
        with pytest.raises(NormlabError, match="has no convolution"):
            Net("bn", arch=spec)


def test_the_parameter_summary_shows_the_heads_pooling() -> None:
    rows = layer_summary(Net("gn", arch="16 M 16v 24v M 24 24 H3"), (1, 28, 28))
    assert [(r.name, r.out_shape, r.params) for r in rows[-2:]] == [
        ("pool", (24, 3, 3), 0),
        ("head", (10, 1, 1), 24 * 9 * 10 + 10),
    ]


@pytest.mark.parametrize(
    "spec",
    ["16 H3 16", "16 H", "16 H0", "16 H3 H3", "16 H65", "16 H3*0", "16 H3*-1", "16 H3*x", "16 H3*"],
)
def test_a_head_anywhere_but_last_or_of_size_0_is_a_user_error(spec: str) -> None:
    with pytest.raises(NormlabError, match=r"bad (architecture token|head)"):
        Net("bn", arch=spec)


def test_pool_first_token_is_conv_pool_norm_relu() -> None:
    kinds = [type(m).__name__ for m in Net("ln", arch="8p 4").features][:4]
    assert kinds == ["Conv2d", "MaxPool2d", "GroupNorm", "ReLU"]


def test_relu_first_blocks_are_conv_relu_norm_and_the_head_reads_normalized_values() -> None:
    net = Net("ln", arch="RN 8p 4")
    kinds = [type(m).__name__ for m in net.features]
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "GroupNorm", "Conv2d", "ReLU", "GroupNorm"]
    assert count_params(net) == count_params(Net("ln", arch="8p 4"))  # only the order moves
    with torch.no_grad():
        out = net.features(torch.randn(3, 1, 28, 28))
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_readout_scale_multiplies_what_the_head_reads() -> None:
    """`H3*0.5`: the same pooled layout as `H3`, times 0.5 before the head's weights, so a
    network with the weights of an `H3` one gives the logits of half its pooled values."""
    torch.manual_seed(0)
    scaled = Net("gn", arch="4 M 6 H3*0.5")
    plain = Net("gn", arch="4 M 6 H3")
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(2, 1, 28, 28)
    cells = F.adaptive_avg_pool2d(plain.features(x), 3).flatten(1)
    expected = 0.5 * cells @ plain.head.weight.flatten(1).T + plain.head.bias
    torch.testing.assert_close(scaled(x), expected, rtol=1e-5, atol=1e-5)
    assert "scale=0.5" in repr(scaled.pool) and "scale" not in repr(plain.pool)


def test_pool_first_is_the_same_function_for_batchnorm_with_positive_scales() -> None:
    """Evaluated BatchNorm with a positive scale is an increasing map per channel, so pooling
    before it and the ReLU gives what pooling after them gives: `8p` only moves the work."""
    torch.manual_seed(0)
    first, after = Net("bn", arch="8p 4"), Net("bn", arch="8 M 4")
    for net in (first, after):
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 2)
    # The layers are conv, pool, norm, relu against conv, norm, relu, pool: map the norm's keys.
    state = {k.replace("features.1.", "features.2."): v for k, v in after.state_dict().items()}
    first.load_state_dict(state)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(first.eval()(x), after.eval()(x), rtol=1e-5, atol=1e-5)


def test_check_network_refuses_a_spec_that_pools_the_image_away() -> None:
    with pytest.raises(NormlabError, match="does not fit 1x28x28 images"):
        check_network("16 M M M M M", INPUT_SHAPES["mnist"], ["bn"], None)
    check_network("16 M M M M", INPUT_SHAPES["mnist"], ["bn"], None)  # 28 -> 1x1 still fits


def test_check_network_uses_the_datasets_own_network() -> None:
    """8 groups: the first width the MNIST network (16, 28, 32) refuses is 28; 32 groups: the
    first the CIFAR one's (32, 48) refuses is 48; 4 groups divide every width of both."""
    for dataset in ("mnist", "cifar10"):
        check_network("auto", INPUT_SHAPES[dataset], ["gn"], 4)
    with pytest.raises(NormlabError, match="does not divide 28 channels"):
        check_network("auto", INPUT_SHAPES["mnist"], ["gn"], 8)
    with pytest.raises(NormlabError, match="does not divide 48 channels"):
        check_network("auto", INPUT_SHAPES["cifar10"], ["gn"], 32)
    check_network("auto", None, ["gn"], 16)  # an image folder: checked once it has loaded


def test_check_network_leaves_the_global_random_state_alone() -> None:
    before = torch.get_rng_state()
    check_network("auto", INPUT_SHAPES["cifar10"], ["bn", "gn"], None)
    assert torch.equal(torch.get_rng_state(), before)


def test_check_network_refuses_batchnorm_on_one_value_per_channel() -> None:
    """`--limit-train 1` (or --batch-size 1) with a spec that reaches 1x1 would make BatchNorm
    raise a ValueError mid-training; the built-in networks keep maps of 5x5 and larger."""
    spec = "16 M M M M 16"  # 28 -> 14 -> 7 -> 3 -> 1
    with pytest.raises(NormlabError, match="batches of at least 2"):
        check_network(spec, INPUT_SHAPES["mnist"], ["gn", "bn"], None, batch=1)
    check_network(spec, INPUT_SHAPES["mnist"], ["bn"], None, batch=2)
    check_network(spec, INPUT_SHAPES["mnist"], ["gn"], None, batch=1)
    check_network("auto", INPUT_SHAPES["mnist"], ["bn"], None, batch=1)


@pytest.mark.parametrize("norm", ["brn", "evonorm-b0"])
def test_check_network_refuses_every_batch_variance_on_one_value_per_channel(norm: str) -> None:
    """Batch Renormalization and EvoNorm-B0 also take an unbiased variance over the batch: of
    one value per channel it is 0/0, and they would raise mid-training."""
    spec = "16 M M M M 16"
    with pytest.raises(NormlabError, match="batches of at least 2"):
        check_network(spec, INPUT_SHAPES["mnist"], [norm], None, batch=1)
    check_network(spec, INPUT_SHAPES["mnist"], [norm], None, batch=2)
