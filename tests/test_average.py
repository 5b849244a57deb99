"""SWA (`swa_epochs`, core.average): the schedule stops where averaging begins, the average is
the equal mean of the weights after each step from there, every test pass from then on (and
what a run stores) is that average with batch statistics recomputed for it, and a run killed in
its averaging epochs resumes to the same result."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from normlab.config import PRECISE_BN_BATCHES, TrainOptions, parse_variant
from normlab.core.average import WeightAverage
from normlab.core.device import MEMORY_FORMAT
from normlab.core.evaluation import evaluate, recompute_statistics
from normlab.core.train import make_context, train_epoch, train_run
from normlab.data import Dataset
from normlab.errors import NormlabError
from tests.conftest import assert_one_line_error, main_in_process
from tests.test_statistics_gap import toy_split

CPU = torch.device("cpu")
SWA = TrainOptions(epochs=3, swa_epochs=1, batch_size=32, precision="fp32")


def flat(model: torch.nn.Module) -> torch.Tensor:
    """All parameters in one vector, a copy (channels_last weights do not flatten as views)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture
def data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    classes = [str(i) for i in range(10)]
    return Dataset("toy", toy_split(256, g), toy_split(128, g), classes, (0.4,), (0.2,), "none")


def test_averaging_holds_the_lr_and_averages_every_step_of_the_last_epochs(data: Dataset):
    """8 steps an epoch: the lr and the momentum move over the first 16 steps and stay where
    the 16th left them for the last 8, and the average is the mean of the weights after each of
    those 8."""
    ctx = make_context(parse_variant("gn"), 0, data, SWA, CPU, total_steps=24)
    settings: list[tuple[float, float]] = []
    weights: list[torch.Tensor] = []

    def record() -> None:
        group = ctx.opt.param_groups[0]
        settings.append((group["lr"], group["momentum"]))
        weights.append(flat(ctx.model))

    for _ in range(3):
        train_epoch(ctx, data, on_step=record)
    assert len(set(settings[:16])) == 16 and settings[15:] == [settings[15]] * 9
    assert ctx.sched.last_epoch == ctx.swa_from == 16
    averaged = flat(ctx.average.module)
    torch.testing.assert_close(averaged, torch.stack(weights[16:]).mean(0))


@pytest.mark.parametrize("norm", ["gn", "bn", "brn"])
def test_a_run_stores_and_reports_the_average(data: Dataset, norm: str):
    """The stored weights are the average's, not the last step's; the last epoch's accuracy is
    what they give (bn, brn: with the statistics recomputed for them; brn's step count, which
    sets its limits, the trained network's), and the epochs before the averaging are tested on
    the run's own weights as without SWA."""
    plain = train_run(parse_variant(norm), 0, data, replace(SWA, swa_epochs=0), CPU)
    result = train_run(parse_variant(norm), 0, data, SWA, CPU)
    ctx = make_context(parse_variant(norm), 0, data, SWA, CPU, total_steps=24)
    ctx.model.load_state_dict(result.state_dict)
    _, acc, predictions = evaluate(ctx.model, data.test, data, ctx.eval_batch, False, MEMORY_FORMAT)
    assert acc == result.metrics[-1].test_acc
    assert torch.equal(predictions["pred"], result.predictions["pred"])
    assert [m.test_acc for m in result.metrics[:2]] == [m.test_acc for m in plain.metrics[:2]]
    recompute_statistics(ctx, data, PRECISE_BN_BATCHES)  # bn: statistics of these weights
    for key, value in ctx.model.state_dict().items():
        torch.testing.assert_close(value, result.state_dict[key], msg=key)
    steps = [v for k, v in result.state_dict.items() if k.endswith("renorm_steps")]
    assert all(v == 24 for v in steps) and bool(steps) == (norm == "brn")  # 24 steps were taken


def test_a_run_killed_while_averaging_resumes_to_the_same_result(data: Dataset, tmp_path):
    """Killed after its first averaging epoch (of two), the run resumes from its checkpoint
    (the average included) and ends where an uninterrupted run ends."""
    opts = replace(SWA, epochs=4, swa_epochs=2)
    whole = train_run(parse_variant("bn"), 0, data, opts, CPU)

    class Killed(Exception):
        pass

    def kill_after_third(m) -> None:
        if m.epoch == 3:
            raise Killed

    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        train_run(
            parse_variant("bn"),
            0,
            data,
            opts,
            CPU,
            on_epoch=kill_after_third,
            checkpoint=checkpoint,
        )
    resumed = train_run(parse_variant("bn"), 0, data, opts, CPU, checkpoint=checkpoint)
    assert [m.test_acc for m in resumed.metrics] == [m.test_acc for m in whole.metrics]
    for key, value in whole.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key


def test_the_average_is_torchs_swa_average_bit_for_bit(data: Dataset):
    """`WeightAverage` keeps its count on the host; its arithmetic is `AveragedModel`'s, so the
    committed studies (run with `AveragedModel`) are what this code gives."""
    model = make_context(parse_variant("bn"), 0, data, SWA, CPU, total_steps=24).model
    ours, torchs = WeightAverage(model), AveragedModel(model)
    g = torch.Generator().manual_seed(0)
    for _ in range(7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        ours.add(model)
        torchs.update_parameters(model)
    assert ours.count == torchs.n_averaged.item() == 7
    for mine, theirs in zip(ours.module.parameters(), torchs.module.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_activation_statistics_keep_counting_steps_while_averaging(data: Dataset):
    """The schedule's step count stops when averaging begins; where the probe places its
    measurements must not: each epoch's lie after the last one's."""
    opts = replace(SWA, epochs=4, swa_epochs=2, activation_stats=True)
    points = train_run(parse_variant("gn"), 0, data, opts, CPU).activations.epoch
    assert (points.diff() > 0).all() and points.max() > 3


def test_averaging_starts_after_the_warm_up():
    """The held lr must be one on the way down: at most three quarters of the epochs."""
    TrainOptions(epochs=20, swa_epochs=15)
    with pytest.raises(NormlabError, match=r"at most 15 of 20 epochs, got 16; give at least 22"):
        TrainOptions(epochs=20, swa_epochs=16)
    with pytest.raises(NormlabError, match=r"swa_epochs must be 0 \(off\) or a number of epochs"):
        TrainOptions(swa_epochs=-1)


def test_a_study_file_averaging_all_its_epochs_is_one_line(capsys, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("dataset: mnist\nepochs: 2\nswa_epochs: 2\nvariants: [gn]\n")
    code, _, err = main_in_process(capsys, "sweep", study, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "swa_epochs must leave", "at most 1 of 2 epochs, got 2")


def test_the_preset_cut_to_fewer_epochs_than_it_averages_is_one_line(capsys, tmp_path):
    args = ["sweep", "under-8k", "--epochs", "5", "--out", tmp_path / "out"]
    code, _, err = main_in_process(capsys, *args)
    expected = ("preset 'under-8k'", "at most 3 of 5 epochs, got 5", "at least 7 epochs (--epochs)")
    assert_one_line_error(code, err, *expected)
    assert not (tmp_path / "out").exists()
