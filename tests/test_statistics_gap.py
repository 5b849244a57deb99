"""BatchNorm's train/test gap: precise BN is the average of the batch statistics (of the ghost
batches when there are some); the end of a run measures the three test accuracies without
changing the model it stores; the run files, the summary and the report carry them."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from normlab.config import StudyConfig, TrainOptions, parse_variant
from normlab.core.augment import prepare_batch
from normlab.core.evaluation import (
    evaluate,
    frozen_statistics,
    recompute_statistics,
    statistics_gap,
)
from normlab.core.norms import batch_norms
from normlab.core.recent_norms import RAMP_STEPS
from normlab.core.records import EpochMetrics, RunResult, StatisticsGap
from normlab.core.train import RunContext, make_context, train_run
from normlab.data import Dataset, Split
from normlab.report.doc import to_markdown
from normlab.report.text import statistics_gap_blocks
from normlab.store.reader import read_study
from normlab.store.results import summarize, write_json, write_run

CPU = torch.device("cpu")


def toy_split(n: int, generator: torch.Generator) -> Split:
    """28x28 images whose brightness says the class: learnable in one short epoch."""
    labels = torch.randint(0, 10, (n,), generator=generator)
    noise = torch.rand(n, 1, 28, 28, generator=generator) * 60
    return Split((noise + labels[:, None, None, None] * 18).to(torch.uint8), labels)


@pytest.fixture
def data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    classes = [str(i) for i in range(10)]
    return Dataset("toy", toy_split(256, g), toy_split(128, g), classes, (0.4,), (0.2,), "none")


@pytest.mark.parametrize("norm", ["bn", "brn", "evonorm-b0"])
@pytest.mark.parametrize("k", [None, 4])
def test_precise_bn_reproduces_a_full_pass_with_momentum_none(
    data: Dataset, norm: str, k: int | None
) -> None:
    """`recompute_statistics` over 3 training batches equals a full pass of the same images
    through a copy whose layers average cumulatively (momentum None), one K-image chunk at a
    time; for the first layer, that is the mean of the chunks' means and unbiased variances.
    In fp32: on a CPU with fast bf16 `auto` would run the recomputation under bf16 autocast,
    and the fp32 reference would differ by bf16's rounding, not by what is averaged."""
    opts = TrainOptions(batch_size=32, norm_batch=k, precision="fp32")
    ctx = make_context(parse_variant(norm), 0, data, opts, CPU, total_steps=10)
    reference = copy.deepcopy(ctx.model)
    recompute_statistics(ctx, data, 3)
    first: list[torch.Tensor] = []
    layers = batch_norms(reference)
    layers[0].register_forward_pre_hook(lambda _, inputs: first.append(inputs[0].detach()))
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum, layer.norm_batch = None, None
    images = prepare_batch(data.train.images[:96], data.mean, data.std)
    with torch.no_grad():
        for chunk in images.split(k or 32):
            reference(chunk)
    for got, expected in zip(batch_norms(ctx.model), layers, strict=True):
        torch.testing.assert_close(got.running_var, expected.running_var, atol=1e-4, rtol=1e-4)
    variances = torch.stack([f.var(dim=(0, 2, 3)) for f in first])
    torch.testing.assert_close(layers[0].running_var, variances.mean(0), atol=1e-4, rtol=1e-4)
    if norm != "evonorm-b0":  # EvoNorm-B0 keeps no running mean
        means = torch.stack([f.mean(dim=(0, 2, 3)) for f in first])
        torch.testing.assert_close(layers[0].running_mean, means.mean(0), atol=1e-4, rtol=1e-4)
        for got, expected in zip(batch_norms(ctx.model), layers, strict=True):
            torch.testing.assert_close(
                got.running_mean, expected.running_mean, atol=1e-4, rtol=1e-4
            )


def trained_context(data: Dataset, norm: str, precise_bn: int) -> RunContext:
    """A model in evaluation mode as a finished run leaves it, its buffers away from their
    initial values: two training batches (BRN's ramp moved), then precise BN over two more
    (EvoNorm-B0's count of averaged groups set)."""
    opts = TrainOptions(batch_size=32, norm_batch=4, precise_bn=precise_bn)
    ctx = make_context(parse_variant(norm), 0, data, opts, CPU, total_steps=10)
    ctx.model.train()
    with torch.no_grad():
        ctx.model(prepare_batch(data.train.images[:64], data.mean, data.std))
    recompute_statistics(ctx, data, 2)
    ctx.model.eval()
    return ctx


def model_state(model: nn.Module) -> dict[str, object]:
    """Everything a measurement could leave changed: every buffer (the non-persistent ones,
    EvoNorm-B0's count, included; BRN's `renorm_steps`), every parameter, every module's
    training flag and the batch-dependent layers' momentum."""
    state: dict[str, object] = {f"buffer {n}": b.clone() for n, b in model.named_buffers()}
    state |= {f"parameter {n}": p.detach().clone() for n, p in model.named_parameters()}
    state |= {f"training {n or 'model'}": m.training for n, m in model.named_modules()}
    layers = batch_norms(model)
    return state | {f"momentum {n}": m.momentum for n, m in model.named_modules() if m in layers}


@pytest.mark.parametrize("norm", ["bn", "brn", "evonorm-b0"])
@pytest.mark.parametrize("precise_bn", [0, 20])
def test_the_gap_leaves_the_model_as_it_found_it(data: Dataset, norm: str, precise_bn: int) -> None:
    """After `statistics_gap`, the model is what it was just before the call, compared with a
    snapshot (not with another run that measured the same way): buffers, parameters, modes."""
    ctx = trained_context(data, norm, precise_bn)
    assert int(batch_norms(ctx.model)[0].num_batches_tracked) > 0
    before = model_state(ctx.model)
    gap = statistics_gap(ctx, data, 50.0)
    assert gap is not None and (gap.precise_acc is None) == (precise_bn == 0)
    after = model_state(ctx.model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        same = torch.equal(value, after[key]) if torch.is_tensor(value) else value == after[key]
        assert same, key


def frozen_buffers(layer: nn.Module) -> dict[str, torch.Tensor]:
    """What no test batch of (b) may move: every buffer but BatchNorm's `num_batches_tracked`,
    which PyTorch advances on every training pass and reads only with momentum None (the
    statistics gap puts it back afterwards). EvoNorm-B0's own count is held to it."""
    skip = "num_batches_tracked" if isinstance(layer, nn.BatchNorm2d) else None
    return {n: b.clone() for n, b in layer.named_buffers() if n != skip}


@pytest.mark.parametrize("norm", ["bn", "brn", "evonorm-b0"])
def test_batch_statistics_pass_moves_no_running_statistics(data: Dataset, norm: str) -> None:
    """(b): every test batch in training mode finds and leaves the running statistics, BRN's
    step count and EvoNorm-B0's count as they were before the pass, so no test batch's
    statistics reach another (BRN's r and d would be corrected towards them) and (b) does not
    depend on the order of the test set."""
    ctx = trained_context(data, norm, precise_bn=0)
    if norm == "brn":  # within the ramp, where the limits move with the step count
        for layer in batch_norms(ctx.model):
            layer.renorm_steps.fill_(RAMP_STEPS // 2)
    layers = batch_norms(ctx.model)
    before = [frozen_buffers(layer) for layer in layers]
    seen: list[tuple[int, dict[str, torch.Tensor]]] = []
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda m, _, __, i=i: seen.append((i, frozen_buffers(m))))
    statistics_gap(ctx, data, 50.0)
    assert len(seen) == len(layers) * 4  # every layer, each of the 4 test batches of 32
    for i, buffers in seen:
        for name, value in before[i].items():
            assert torch.equal(buffers[name], value), (i, name)


def test_the_gap_is_measured_without_changing_the_run(data: Dataset) -> None:
    """(a) is the final test accuracy; (b) the network in training mode on test batches of the
    training batch size, split into the same ghost batches; measuring (c) leaves the stored
    model and every metric as a run without it has them."""
    bn = parse_variant("bn")
    opts = TrainOptions(epochs=1, batch_size=32, norm_batch=4, precise_bn=20)
    with_precise = train_run(bn, 0, data, opts, CPU)
    without = train_run(bn, 0, data, replace(opts, precise_bn=0), CPU)
    assert with_precise.metrics[0].test_acc == without.metrics[0].test_acc
    for key, value in with_precise.state_dict.items():
        assert torch.equal(value, without.state_dict[key]), key
    gap = with_precise.statistics_gap
    assert gap is not None and gap.batch == 4
    assert gap.precise_batches == 8  # all the split has: 256 images in batches of 32
    assert gap.running_acc == with_precise.metrics[-1].test_acc
    assert gap.precise_acc is not None and without.statistics_gap.precise_acc is None
    assert without.statistics_gap.batch_acc == gap.batch_acc
    ctx = make_context(bn, 0, data, opts, CPU, total_steps=10)
    ctx.model.load_state_dict(with_precise.state_dict)
    with frozen_statistics(ctx.model):
        _, batch_acc, _ = evaluate(ctx.model, data.test, data, 32, False, batch_statistics=True)
    assert batch_acc == gap.batch_acc
    gn = train_run(parse_variant("gn"), 0, data, TrainOptions(epochs=1, batch_size=32), CPU)
    assert gn.statistics_gap is None


def test_the_gap_reaches_run_json_the_summary_and_the_report(tmp_path: Path) -> None:
    config = StudyConfig(
        variants=(parse_variant("bn"), parse_variant("gn")), train=TrainOptions(epochs=1)
    )
    gaps = {"bn": StatisticsGap(90.0, 92.5, 91.25, 128, 32), "gn": None}
    for run in config.runs():
        metrics = [EpochMetrics(1, 0.5, 80.0, 0.4, 90.0, 0.1, 1.0)]
        result = RunResult(
            run.variant, run.seed, 100, metrics, {}, statistics_gap=gaps[run.path[:2]]
        )
        write_run(tmp_path, run, result)
    write_json(tmp_path / "study.json", {"config": config.to_dict()})
    write_json(tmp_path / "summary.json", summarize(tmp_path, config.runs()))
    stored = json.loads((tmp_path / "bn" / "seed0" / "run.json").read_text())["statistics_gap"]
    assert stored == {
        "running_acc": 90.0,
        "batch_acc": 92.5,
        "precise_acc": 91.25,
        "batch": 128,
        "precise_batches": 32,
    }
    assert (
        json.loads((tmp_path / "gn" / "seed0" / "run.json").read_text())["statistics_gap"] is None
    )
    md = to_markdown(statistics_gap_blocks(read_study(tmp_path)))
    assert "| bn/seed0 | 128 | 90.00 | 92.50 | 91.25 | +2.50 | +1.25 |" in md
    assert "(largest: bn/seed0, +2.50 points)" in md
    assert "first 32 training batches" in md and "gn/seed0" not in md
