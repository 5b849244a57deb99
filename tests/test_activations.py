"""Activation statistics (`--activation-stats`): the probe's numbers are torch's mean and std of
the norm layers' inputs and of their gradients; it measures the steps it says; a run is the
same, bit for bit, with it on or off; activations.npz is written and read back; the report
draws the figure where the runs stored the statistics and leaves the section out where not."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.config import ConfigError, StudyConfig, TrainOptions, parse_variant
from normlab.core.activations import ActivationProbe, norm_layers, probe_steps
from normlab.core.models import Net, choose_arch, parse_arch
from normlab.core.records import STAT_NAMES, ActivationStats, EpochMetrics, RunResult
from normlab.core.train import train_run
from normlab.data import Dataset
from normlab.report.activations import VariantActivations, activation_blocks, describe
from normlab.report.report import write_report
from normlab.store.reader import StoredVariant, read_study
from normlab.store.results import read_activations, summarize, write_json, write_run
from tests.conftest import assert_one_line_error, main_in_process

CPU = torch.device("cpu")


def test_the_measured_steps() -> None:
    """The last step of each quarter epoch, the epoch's last among them; the run's first step
    only where asked (the first epoch); an epoch of 4 steps or fewer measures every step."""
    assert probe_steps(15, first=True) == [0, 3, 7, 11, 14]
    assert probe_steps(15, first=False) == [3, 7, 11, 14]
    assert probe_steps(469, first=False) == [117, 234, 351, 468]
    assert probe_steps(5, first=False) == [1, 2, 3, 4]
    assert probe_steps(4, first=False) == [0, 1, 2, 3]
    assert probe_steps(3, first=False) == probe_steps(3, first=True) == [0, 1, 2]
    assert probe_steps(2, first=False) == [0, 1]
    assert probe_steps(1, first=True) == [0]


def test_the_norm_layers_are_found_where_the_network_put_them() -> None:
    """The module after each convolution, after its pooling in a `p` block, of any kind; with
    `RN`, the one after the ReLU."""
    layers = norm_layers(Net("none", arch="8 8p M 12t"))
    assert [label for label, _ in layers] == [
        "block 1: Identity, 8 ch",
        "block 2: Identity, 8 ch",
        "block 3: Identity, 12 ch",
    ]
    assert [label for label, _ in norm_layers(Net("frn", arch="8 8"))][1].startswith(
        "block 2: FilterResponseNormTlu2d"
    )
    relu_first = norm_layers(Net("bn", arch="RN 8p 4"))  # conv, pool, ReLU, then the norm
    labels = [label for label, _ in relu_first]
    assert labels == ["block 1: BatchNorm2d, 8 ch", "block 2: BatchNorm2d, 4 ch"]
    assert all(isinstance(layer, nn.BatchNorm2d) for _, layer in relu_first)


def captured(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The norm layers' inputs and, after backward, their gradients, captured without the probe
    (`retain_grad`), from a copy whose ReLUs are not in place (the same numbers)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    inputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        args[0].retain_grad()
        inputs.append(args[0])

    for _, layer in norm_layers(model):
        layer.register_forward_pre_hook(keep)
    F.cross_entropy(model(x), torch.arange(len(x)) % 10).backward()
    return [t.detach().clone() for t in inputs], [t.grad for t in inputs]


@pytest.mark.parametrize("norm", ["bn", "gn", "none", "frn"])
def test_the_statistics_are_torch_mean_and_std(norm: str) -> None:
    """At a measured step the probe holds, per layer, torch.mean and torch.std of the layer's
    input and of the loss's gradient with respect to it (`none`: before the in-place ReLU)."""
    torch.manual_seed(0)
    model = Net(norm, arch="6 6p 8v")
    x = torch.randn(6, 1, 12, 12)
    inputs, grads = captured(model, x)
    probe = ActivationProbe(model, enabled=True)
    probe.begin(steps=3, done=0)
    for step in range(3):
        with probe.at(step):
            if step == 0:
                F.cross_entropy(model(x), torch.arange(len(x)) % 10).backward()
    probe.end()
    stats = probe.result()
    assert stats is not None and stats.values.shape == (3, 3, 4)
    assert stats.epoch.tolist() == [0.0, 1 / 3, 2 / 3]
    expected = torch.tensor(
        [[t.mean(), t.std(), g.mean(), g.std()] for t, g in zip(inputs, grads, strict=True)]
    )
    torch.testing.assert_close(stats.values[0], expected, atol=1e-6, rtol=1e-6)
    assert stats.values[1:].isnan().all()  # steps 1 and 2 were measured but never run


def test_the_probe_survives_a_checkpoint() -> None:
    """What `state` saves, `load` puts back into a fresh probe: a resumed run keeps its earlier
    epochs' statistics."""
    model = Net("gn", arch="4 4")
    probe = ActivationProbe(model, enabled=True)
    probe.begin(steps=2, done=0)
    with probe.at(1):
        model(torch.randn(2, 1, 8, 8)).sum().backward()
    probe.end()
    fresh = ActivationProbe(model, enabled=True)
    fresh.load(probe.state())
    before, after = probe.result(), fresh.result()
    assert before is not None and after is not None
    torch.testing.assert_close(after.values, before.values, equal_nan=True)
    assert torch.equal(after.epoch, before.epoch) and after.layers == before.layers
    assert ActivationProbe(model, enabled=False).state() == {}


def test_compile_and_the_statistics_are_refused_together(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="activation_stats cannot be combined with compile"):
        TrainOptions(activation_stats=True, compile=True)
    args = ("run", "--activation-stats", "--compile", "--out", tmp_path / "study")
    code, _, err = main_in_process(capsys, *args)
    assert_one_line_error(code, err, "--activation-stats cannot be combined with compile")
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn", "none"])
def test_a_run_is_the_same_with_the_statistics_on_or_off(
    mnist: Dataset, norm: str, tmp_path: Path
) -> None:
    """Two epochs of 8 steps on 256 MNIST images: weights, metrics, predictions and the
    statistics gap are bit-identical; the recorded run has every layer's statistics at the
    first step and the last of each quarter epoch, which its checkpoint keeps and a worker's
    pickle carries."""
    data = mnist.head(256, 128)
    opts = TrainOptions(epochs=2, batch_size=32, precise_bn=2)
    recorded = replace(opts, activation_stats=True)
    checkpoint = tmp_path / "checkpoint.pt"
    on = train_run(parse_variant(norm), 0, data, recorded, CPU, checkpoint=checkpoint)
    off = train_run(parse_variant(norm), 0, data, opts, CPU)

    def timeless(metrics: list[EpochMetrics]) -> list[EpochMetrics]:
        return [replace(m, seconds=0.0) for m in metrics]

    assert timeless(on.metrics) == timeless(off.metrics)
    for key, value in on.state_dict.items():
        assert torch.equal(value, off.state_dict[key]), key
    for key, value in on.predictions.items():
        assert torch.equal(value, off.predictions[key]), key
    assert on.statistics_gap == off.statistics_gap
    assert off.activations is None and on.activations is not None
    steps = [0, 1, 3, 5, 7, 9, 11, 13, 15]  # the measured ones of 16, at 8 steps an epoch
    assert on.activations.epoch.tolist() == [s / 8 for s in steps]
    blocks = parse_arch(choose_arch(data.input_shape)).layers  # one norm layer per convolution
    layers = sum(isinstance(block, tuple) for block in blocks)
    assert on.activations.values.shape == (9, layers, 4)
    assert torch.isfinite(on.activations.values).all()
    carried = pickle.loads(pickle.dumps(on))  # as a pool or Ray worker sends it back
    assert torch.equal(carried.activations.values, on.activations.values)
    resumed = train_run(parse_variant(norm), 0, data, recorded, CPU, checkpoint=checkpoint)
    assert resumed.activations is not None  # from the last epoch's checkpoint: nothing to train
    assert torch.equal(resumed.activations.values, on.activations.values)
    assert torch.equal(resumed.activations.epoch, on.activations.epoch)


def fake_stats(layers: int, steps: int, seed: int) -> ActivationStats:
    """Statistics as a run stores them: input stds that grow over training, the deeper the
    more (layer k ends k + 1 times its first value), gradient stds that shrink as they grow."""
    g = torch.Generator().manual_seed(seed)
    growth = 1 + torch.linspace(0, 1, steps)[:, None] * torch.arange(layers)[None, :]
    values = torch.stack(
        [torch.randn(steps, layers, generator=g), growth, torch.zeros(steps, layers), 1 / growth],
        dim=-1,
    )
    epoch = torch.arange(steps, dtype=torch.float64) / 4
    return ActivationStats(
        [f"block {i + 1}: BatchNorm2d, 8 ch" for i in range(layers)], epoch, values
    )


def write_study(out: Path, stats: dict[str, ActivationStats | None]) -> None:
    """A study folder of one-epoch runs of bn and gn (two seeds), written as a study is."""
    config = StudyConfig(
        variants=(parse_variant("bn"), parse_variant("gn")), seeds=2, train=TrainOptions(epochs=1)
    )
    for run in config.runs():
        metrics = [EpochMetrics(1, 0.5, 80.0, 0.4, 90.0, 0.1, 1.0)]
        labels = torch.arange(20, dtype=torch.int32) % 10
        predictions = {"pred": labels, "conf": torch.ones(20), "target": labels}
        result = RunResult(run.variant, run.seed, 100, metrics, {}, predictions)
        result.activations = stats[run.path]
        write_run(out, run, result)
    write_json(out / "study.json", {"config": config.to_dict()})
    write_json(out / "summary.json", summarize(out, config.runs()))


def test_activations_npz_is_written_and_read_back(tmp_path: Path) -> None:
    stats = fake_stats(layers=3, steps=5, seed=0)
    write_study(tmp_path, {"bn/seed0": stats, "bn/seed1": None, "gn/seed0": None, "gn/seed1": None})
    back = read_activations(tmp_path / "bn" / "seed0")
    assert back is not None
    assert back["layer"].tolist() == stats.layers
    np.testing.assert_array_equal(back["epoch"], stats.epoch.numpy())
    for i, name in enumerate(STAT_NAMES):
        np.testing.assert_array_equal(back[name], stats.values[:, :, i].numpy())
    assert read_activations(tmp_path / "bn" / "seed1") is None
    assert not (tmp_path / "gn" / "seed0" / "activations.npz").exists()


def test_the_report_draws_them_where_stored_and_skips_them_where_not(tmp_path: Path) -> None:
    """bn's two seeds stored statistics, gn's did not: one figure (bn's), a sentence naming the
    layer whose input std grows most (the deepest, 3 times its first value); a study without
    any has no section."""
    stats = {
        "bn/seed0": fake_stats(3, 5, 0),
        "bn/seed1": fake_stats(3, 5, 1),
        "gn/seed0": None,
        "gn/seed1": None,
    }
    write_study(tmp_path / "with", stats)
    write_report(tmp_path / "with")
    md = (tmp_path / "with" / "report.md").read_text()
    assert md.count("![activations of") == 1
    assert "![activations of bn](figures/activations_bn.png)" in md
    assert (tmp_path / "with" / "figures" / "activations_bn.png").stat().st_size > 10_000
    assert "## What the norm layers receive during training" in md
    assert "grows most in block 3: BatchNorm2d, 8 ch (3 times its first value" in md
    assert "the layers range from 1 to 3 times" in md
    write_study(tmp_path / "without", dict.fromkeys(stats))
    assert activation_blocks(read_study(tmp_path / "without"), tmp_path / "figures") == []


def variant_with_stds(first: list[float], last: list[float]) -> VariantActivations:
    """One seed of two measured steps whose input std goes from `first` to `last` per layer
    (the gradient std from 1 to 2 in every layer)."""
    layers = len(first)
    variant = StoredVariant("bn", "bn", 100, [0], {}, ["finished"], [None])
    values = {name: np.ones((1, 2, layers)) for name in STAT_NAMES}
    values["act_std"] = np.array([[first, last]])
    values["grad_std"][0, 1] = 2.0
    labels = [f"block {i + 1}" for i in range(layers)]
    return VariantActivations(variant, labels, np.array([0.0, 1.0]), values, seeds=1)


def test_the_sentence_says_grows_or_shrinks_as_the_stds_do() -> None:
    """ "grows most" only where a layer's std grew; where every layer's shrank the sentence says
    so and names the layer that shrank most."""
    grown = describe(variant_with_stds([1.0, 2.0, 4.0], [0.5, 5.0, 6.0]))
    assert "pre-norm std grows most in block 2 (2.5 times its first value" in grown
    shrunk = describe(variant_with_stds([1.0, 2.0, 4.0], [0.5, 0.2, 3.0]))
    assert "grows" not in shrunk
    assert "pre-norm std shrinks in every layer, most in block 2 (0.1 times its first" in shrunk
    assert "the layers range from 0.1 to 0.75 times" in shrunk
