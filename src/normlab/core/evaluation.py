"""Testing a trained network: the test pass, and what BatchNorm's running statistics cost.

`evaluate` is the test pass that ends every epoch. The rest concerns the layers whose training
statistics come from the batch (BatchNorm, Batch Renormalization, EvoNorm-B0: `batch_norms`):
they train on each batch's statistics and are tested with running averages of them, and the two
differ. `settle_batch_norm` recomputes the averages after a short epoch, where momentum has not yet
forgotten their start. `statistics_gap` measures, once at the end of a run, the test accuracy (a)
with the running statistics, as every test pass has it; (b) with each test batch's own statistics,
the layers in training mode on test batches of the training batch size (split into the same ghost
batches) with momentum 0, so that no test batch moves the running statistics that Batch
Renormalization corrects the next one towards; and (c) after precise BN, the running statistics
recomputed as the average over `--precise-bn` training batches. (b) - (a) is what the running
statistics cost, (c) - (a) how much of it precise BN wins back. The measurements leave the model as
it was: its stored weights and statistics, its layers' modes, and its test accuracy, stay (a).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from normlab.core.augment import prepare_batch
from normlab.core.device import MEMORY_FORMAT
from normlab.core.norms import batch_norms, recompute_bn_statistics
from normlab.core.records import StatisticsGap
from normlab.data import Dataset, Split, batches

if TYPE_CHECKING:
    from normlab.core.train import RunContext

PRECISE_BN_IMAGES = 1024  # what `settle_batch_norm` averages over


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    split: Split,
    data: Dataset,
    batch_size: int,
    bf16: bool,
    fmt: torch.memory_format = torch.contiguous_format,
    batch_statistics: bool = False,
) -> tuple[float, float, dict[str, torch.Tensor]]:
    """Mean loss, accuracy % and per-image predictions (class and confidence) on a split.
    Classes are stored as int32: uint8 would wrap past 256 classes without a word.

    With `batch_statistics` the norms run in training mode, each batch normalized by its own
    statistics; their running statistics move, so the caller keeps them (`kept_statistics`)."""
    model.train(batch_statistics)
    device = split.images.device
    loss_sum = torch.zeros((), device=device)
    preds, confs = [], []
    for images, labels in batches(split, batch_size):
        x = prepare_batch(images, data.mean, data.std).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        conf, pred = logits.softmax(1).max(1)
        preds.append(pred)
        confs.append(conf)
    pred, conf = torch.cat(preds), torch.cat(confs)
    acc = 100.0 * (pred == split.labels).float().mean().item()
    predictions = {
        "pred": pred.to(torch.int32).cpu(),
        "conf": conf.cpu(),
        "target": split.labels.to(torch.int32).cpu(),
    }
    return loss_sum.item() / len(split), acc, predictions


@contextmanager
def kept_statistics(model: nn.Module) -> Iterator[None]:
    """Every buffer of `model` (running statistics, their counts, BRN's step count) and every
    module's training flag put back on exit as they were on entry: a measurement never changes
    the model a run stores, nor the mode the rest of the run finds it in (`evaluate` with
    batch statistics leaves it training)."""
    saved = [b.clone() for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)
        for module, training in modes:
            module.training = training


@contextmanager
def frozen_statistics(model: nn.Module) -> Iterator[None]:
    """Momentum 0 on every batch-dependent layer (`batch_norms`) inside, its own outside. In
    training mode such a layer then normalizes each batch by that batch's statistics and
    leaves its running statistics as they are, BRN its step count (so its r, d limits) and
    EvoNorm-B0 its count (which only momentum None moves): in (b) no test batch's statistics
    reach another, and the accuracy does not depend on the order of the test set."""
    layers = batch_norms(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum


def recompute_statistics(
    ctx: RunContext, data: Dataset, count: int, model: nn.Module | None = None
) -> int:
    """Precise BN (`recompute_bn_statistics`) of `model` (the run's by default) over the first
    `count` training batches of the run's batch size (whole ones, as many as the split has, at
    least one), unaugmented as the test images are, so it uses no random numbers. Ghost batches
    stay on: the averages are of the statistics the layers trained with. Returns how many
    batches it averaged."""
    size = ctx.opts.batch_size
    count = max(1, min(count, len(data.train) // size))
    head = data.train.head(count * size)
    inputs = (
        prepare_batch(images, data.mean, data.std).contiguous(memory_format=MEMORY_FORMAT)
        for images, _ in batches(head, size)
    )
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.bf16):
        recompute_bn_statistics(ctx.model if model is None else model, inputs)
    return count


def settle_batch_norm(ctx: RunContext, data: Dataset) -> None:
    """The running statistics recomputed over the first `PRECISE_BN_IMAGES` training images.
    Done after an epoch of fewer than `train.SHORT_EPOCH` steps: momentum 0.1 needs about 50
    steps to forget the (0, 1) it starts from, so a short run would otherwise be evaluated on
    statistics that describe no data (a test accuracy below chance after 16 steps)."""
    recompute_statistics(ctx, data, PRECISE_BN_IMAGES // ctx.opts.batch_size)


def statistics_gap(ctx: RunContext, data: Dataset, running_acc: float) -> StatisticsGap | None:
    """(a) `running_acc`, the run's final test accuracy; (b) and (c) as the module docstring
    says, on the run's model (not its compiled form, which would compile training mode again);
    None for a network without batch-dependent norms."""
    if not batch_norms(ctx.model):
        return None
    opts = ctx.opts

    def test_acc(batch_statistics: bool) -> float:
        size = opts.batch_size if batch_statistics else ctx.eval_batch
        args = (ctx.model, data.test, data, size, ctx.bf16, MEMORY_FORMAT, batch_statistics)
        return evaluate(*args)[1]

    with kept_statistics(ctx.model):
        with frozen_statistics(ctx.model):
            batch_acc = test_acc(batch_statistics=True)
        precise_acc, averaged = None, 0
        if opts.precise_bn:
            averaged = recompute_statistics(ctx, data, opts.precise_bn)
            precise_acc = test_acc(batch_statistics=False)
    batch = min(opts.norm_batch or opts.batch_size, opts.batch_size)
    return StatisticsGap(running_acc, batch_acc, precise_acc, batch, averaged)
