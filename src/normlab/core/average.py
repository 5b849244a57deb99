"""Stochastic weight averaging (SWA, Izmailov et al. 2018) over the last epochs of a run.

With `swa_epochs: N` the OneCycle schedule runs as planned for the first epochs - N epochs and
then stops where it is: the last N epochs train at the lr (and momentum) it had reached, and
every test pass from then on measures the equal average of the weights after each of their
steps instead of the weights of the last step. Late in a run SGD's weights wander around a
minimum by about a tenth of a point of test accuracy from one epoch to the next (the noise
floor of docs/results/mnist-8k); their average sits nearer its centre, so the epochs it covers
differ less. Averaging at a held lr rather than one falling to zero is the paper's recipe: the
lr keeps the steps exploring the region that the average summarizes.

The average is PyTorch's own `AveragedModel` (a copy of the network; its parameters are the
running mean). BatchNorm's running statistics are not averaged: statistics gathered under other
weights do not describe the averaged network's activations, so before each test of it they are
recomputed for its weights from `PRECISE_BN_BATCHES` training batches (precise BN,
`evaluation.recompute_statistics`), as the paper's `update_bn` does over a whole epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from torch.optim.swa_utils import AveragedModel

from normlab.config import PRECISE_BN_BATCHES, TrainOptions
from normlab.core.evaluation import recompute_statistics
from normlab.data import Dataset

if TYPE_CHECKING:
    from normlab.core.train import RunContext


def make_average(model: nn.Module, opts: TrainOptions) -> AveragedModel | None:
    """An empty average of `model`'s weights when the run averages (`swa_epochs`), else None.
    It is a deep copy of `model`, made before training (no probe's hook on it yet)."""
    return AveragedModel(model, use_buffers=False) if opts.swa_epochs else None


def averaging_starts(opts: TrainOptions, steps_per_epoch: int) -> int:
    """The optimizer steps the schedule takes before averaging begins (all of them when off)."""
    return (opts.epochs - opts.swa_epochs) * steps_per_epoch


def advance(ctx: RunContext) -> None:
    """After an optimizer step: the schedule's next step until averaging begins, then instead
    the new weights into the average. The schedule's step count stops at `ctx.swa_from`, so
    the same test tells a resumed run which phase it is in."""
    if ctx.average is not None and ctx.sched.last_epoch >= ctx.swa_from:
        ctx.average.update_parameters(ctx.model)
    else:
        ctx.sched.step()


def tested_network(ctx: RunContext, data: Dataset) -> nn.Module:
    """What a test pass measures: the run's network (`ctx.net`) until the average holds any
    weights, then the average, with batch norms' statistics recomputed for its weights."""
    if ctx.average is None or not ctx.average.n_averaged:
        return ctx.net
    recompute_statistics(ctx, data, PRECISE_BN_BATCHES, ctx.average.module)
    return ctx.average.module


def adopt_average(ctx: RunContext) -> None:
    """At the end of an averaging run, make the average the run's model (weights and the
    statistics its last test recomputed), so that what is stored, and what `statistics_gap`
    measures, is the network the test passes measured."""
    if ctx.average is not None and ctx.average.n_averaged:
        ctx.model.load_state_dict(ctx.average.module.state_dict())
