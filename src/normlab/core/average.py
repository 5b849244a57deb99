"""Stochastic weight averaging (SWA, Izmailov et al. 2018) over the last epochs of a run.

With `swa_epochs: N` the OneCycle schedule runs as planned for the first epochs - N epochs and
then stops where it is: the last N epochs train at the lr (and momentum) it had reached, and
every test pass from then on measures the equal average of the weights after each of their
steps instead of the weights of the last step. Late in a run SGD's weights wander around a
minimum by about a tenth of a point of test accuracy from one epoch to the next (the noise
floor of docs/results/mnist-8k); their average sits nearer its centre, so the epochs it covers
differ less. Averaging at a held lr rather than one falling to zero is the paper's recipe: the
lr keeps the steps exploring the region that the average summarizes. The validator keeps the
averaging after the lr's peak (`validation.WARM_UP`), so the held lr is one on the way down.

`WeightAverage` is the arithmetic of PyTorch's `AveragedModel` on a CPU (a copy of the network
whose parameters are the running mean, a + (w - a) / n, bit for bit) with its count a Python int:
`AveragedModel` keeps the count in a CPU tensor that it copies to the parameters' device at every
step, which on a GPU is a copy from pageable memory that waits for the work queued before it.
BatchNorm's running statistics are not averaged: statistics gathered under other weights do not
describe the averaged network's activations, so before each test of the average they are
recomputed for its weights from the first `STATISTICS_BATCHES` training batches (precise BN,
`evaluation.recompute_statistics`; the paper's `update_bn` does it over a whole epoch). That
recomputation is part of testing an average, so `--precise-bn` (the end-of-run measurement, 0 to
skip it) does not turn it off. Other buffers (Batch Renormalization's step count) are the trained
network's, copied before each test (`take_buffers`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from normlab.config import TrainOptions
from normlab.core.evaluation import recompute_statistics
from normlab.data import Dataset

if TYPE_CHECKING:
    from normlab.core.train import RunContext

STATISTICS_BATCHES = 32  # training batches the average's running statistics are recomputed from


class WeightAverage:
    """The equal average of a network's weights over the steps given to `add`, held in a copy
    of the network (`module`) that a test pass can run."""

    def __init__(self, model: nn.Module) -> None:
        self.module = copy.deepcopy(model)
        self.count = 0

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        """Fold `model`'s current weights into the average (the first ones are copied)."""
        self.count += 1
        average = list(self.module.parameters())
        weights = [p.detach() for p in model.parameters()]
        if self.count == 1:
            torch._foreach_copy_(average, weights)
            return
        step = torch._foreach_sub(weights, average)
        torch._foreach_div_(step, float(self.count))
        torch._foreach_add_(average, step)

    @torch.no_grad()
    def take_buffers(self, model: nn.Module) -> None:
        """The buffers of `model` (running statistics, BRN's step count) into the average's
        network, as the state a recomputation starts from: they are not averaged."""
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.count = int(state["count"])


def make_average(model: nn.Module, opts: TrainOptions) -> WeightAverage | None:
    """An empty average of `model`'s weights when the run averages (`swa_epochs`), else None.
    It is a deep copy of `model`, made before training (no probe's hook on it yet)."""
    return WeightAverage(model) if opts.swa_epochs else None


def averaging_starts(opts: TrainOptions, steps_per_epoch: int) -> int:
    """The optimizer steps the schedule takes before averaging begins (all of them when off)."""
    return (opts.epochs - opts.swa_epochs) * steps_per_epoch


def advance(ctx: RunContext) -> None:
    """After an optimizer step: the schedule's next step until averaging begins, then instead
    the new weights into the average. The schedule's step count stops at `ctx.swa_from`, so
    the same test tells a resumed run which phase it is in."""
    if ctx.average is not None and ctx.sched.last_epoch >= ctx.swa_from:
        ctx.average.add(ctx.model)
    else:
        ctx.sched.step()


def steps_done(ctx: RunContext) -> int:
    """Optimizer steps taken so far: the schedule's count, which stops when averaging begins,
    plus the steps averaged since."""
    return ctx.sched.last_epoch + (ctx.average.count if ctx.average is not None else 0)


def tested_network(ctx: RunContext, data: Dataset) -> nn.Module:
    """What a test pass measures: the run's network (`ctx.net`) until the average holds any
    weights, then the average, with batch norms' statistics recomputed for its weights."""
    if ctx.average is None or not ctx.average.count:
        return ctx.net
    ctx.average.take_buffers(ctx.model)
    recompute_statistics(ctx, data, STATISTICS_BATCHES, ctx.average.module)
    return ctx.average.module


def adopt_average(ctx: RunContext) -> None:
    """At the end of an averaging run, make the average the run's model (weights and the
    statistics its last test recomputed), so that what is stored, and what `statistics_gap`
    measures, is the network the test passes measured."""
    if ctx.average is not None and ctx.average.count:
        ctx.model.load_state_dict(ctx.average.module.state_dict())
