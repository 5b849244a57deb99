"""Activation statistics over training: what each norm layer is given, and the gradient it
passes back, at a few steps per epoch.

For every norm layer of the network (the module after each block's convolution, or after its
pooling in a `p` block; the identity for `none`, so there it is the pre-activation) this logs
the mean and standard deviation, over all elements of the batch, of

- the layer's input (the pre-norm activations: what the norm has to undo), and
- the gradient of the training loss with respect to that input.

The gradient is taken at the norm's input, not its output, because that is the gradient that
reaches the convolution below (its weight gradient is this times the convolution's input), and
because it shows what a scale-invariant norm does to learning: its input gradient shrinks as
1/std of its input, so a pre-norm std that grows slows the weights that produce it, where a
network without norm passes the gradient back unscaled. The loss is the batch mean, so the
gradient carries a factor 1/batch size.

Ordinary steps pay nothing: hooks are registered only around the measured steps (the last of
each quarter of an epoch, every step of an epoch of fewer than four, and the run's first step:
`probe_steps`); they compute the statistics
on the device into a tensor allocated once per epoch, which the host reads once, after the
epoch, when the loop syncs for its loss anyway. A measured step costs two passes over every
norm input and its gradient: a few percent of a short epoch's training on a CPU
(scripts/activation_overhead.py), which is why it is off unless `--activation-stats` asks for
it. The hooks only read, so a run's results are the same, bit for bit, with it on or off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial

import torch
from torch import nn

from normlab.core.models import Net
from normlab.core.records import STAT_NAMES, ActivationStats

POINTS_PER_EPOCH = 4  # the last step of each quarter epoch is measured (`probe_steps`)


def norm_layers(model: Net) -> list[tuple[str, nn.Module]]:
    """Each block's norm layer with a label naming its depth, kind and width: the module where
    `Net` put it (`Net.norm_positions`: after the convolution and any pooling, or after the
    ReLU with `RN`), so a norm of any kind (the identity of `none` included) is found."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    found: list[tuple[str, nn.Module]] = []
    for k, (i, conv) in enumerate(zip(model.norm_positions, convs, strict=True)):
        norm = model.features[i]
        found.append((f"block {k + 1}: {type(norm).__name__}, {conv.out_channels} ch", norm))
    return found


def probe_steps(steps: int, first: bool, points: int = POINTS_PER_EPOCH) -> list[int]:
    """The steps measured in an epoch of `steps` steps: the last of each of `points` equal
    parts, so the epoch's last step is one, and with `first` its first step too, which sees
    the initial weights. Only the run's first epoch takes that: in any other, step 0 would
    repeat the previous epoch's last step, one update later. An epoch of `points` steps or
    fewer has parts no longer than a step, so every one of its steps is measured: fewer than
    `points` measurements, step 0 among them whatever `first` says."""
    ends = {-(-(i + 1) * steps // points) - 1 for i in range(points)}  # ceil((i + 1) n / p) - 1
    return sorted(ends | ({0} if first else set()))


def moments(t: torch.Tensor) -> torch.Tensor:
    """(mean, std) over every element of `t`, in float32 (bf16 activations included), on
    `t`'s device: no host sync. The std is the unbiased one, as `torch.std` gives, from the
    squared deviations summed by `sum`'s cascade: on a CPU as exact as `torch.std` in under
    half its time, and a tenth of `torch.std_mean`'s (measured once on 1.6M-element inputs;
    this is nearly all a measured step costs)."""
    t = t.detach().float()
    mean = t.mean()
    squares = (t - mean).square_().sum()
    return torch.stack((mean, (squares / max(t.numel() - 1, 1)).sqrt()))


class ActivationProbe:
    """Collects the statistics of `norm_layers(model)` over a run (see the module docstring).
    Disabled (the default: `--activation-stats` enables it), it records nothing and costs
    nothing. Never enabled for a compiled model: hooks that come and go mid-run would make its
    graph recompile (the configuration refuses the two together).

    Per epoch: `begin`, then `at(step)` around each training step, then `end`; `result()`
    gives everything recorded so far, `state` and `load` carry it through a checkpoint."""

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        self.layers = norm_layers(model) if enabled else []
        self.device = next(model.parameters()).device
        self.epochs: list[torch.Tensor] = []  # per epoch: (points,) fractional epochs
        self.values: list[torch.Tensor] = []  # per epoch: (points, layers, 4), on the host
        self.rows: dict[int, int] = {}  # this epoch's measured step -> its row in `buffer`
        self.positions = torch.zeros(0, dtype=torch.float64)
        self.buffer: torch.Tensor | None = None

    def begin(self, steps: int, done: int) -> None:
        """Start an epoch of `steps` steps, `done` steps into the run (where its points lie)."""
        if not self.layers:
            return
        chosen = probe_steps(steps, first=done == 0)
        self.rows = {step: row for row, step in enumerate(chosen)}
        # where each measured forward pass lies in training: epochs of updates before it
        self.positions = torch.tensor([(done + s) / steps for s in chosen], dtype=torch.float64)
        shape = (len(chosen), len(self.layers), len(STAT_NAMES))
        self.buffer = torch.full(shape, torch.nan, device=self.device)

    def at(self, step: int) -> AbstractContextManager[None]:
        """What to run step `step` of the epoch in: the hooks at a measured step, else nothing."""
        row = self.rows.get(step)
        return nullcontext() if row is None else self._hooked(row)

    @contextmanager
    def _hooked(self, row: int) -> Iterator[None]:
        """Forward pre-hooks on the norm layers for one step (`record`), removed after it."""
        assert self.buffer is not None, "ActivationProbe.at before begin"
        handles = [
            m.register_forward_pre_hook(partial(record, self.buffer[row, i]))
            for i, (_, m) in enumerate(self.layers)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def end(self) -> None:
        """The epoch's statistics to the host: the one copy per epoch."""
        if self.buffer is not None:
            self.epochs.append(self.positions)
            self.values.append(self.buffer.cpu())
            self.buffer, self.rows = None, {}

    def result(self) -> ActivationStats | None:
        """Everything recorded, as plain CPU tensors; None when nothing was."""
        if not self.values:
            return None
        layers = [label for label, _ in self.layers]
        return ActivationStats(layers, torch.cat(self.epochs), torch.cat(self.values))

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps, so a resumed run reports its earlier epochs too."""
        stats = self.result()
        return {} if stats is None else {"epoch": stats.epoch, "values": stats.values}

    def load(self, state: dict[str, torch.Tensor] | None) -> None:
        """Put back what `state` saved (a checkpoint from before this existed has nothing)."""
        if self.layers and state:
            self.epochs, self.values = [state["epoch"].cpu()], [state["values"].cpu()]


def record(row: torch.Tensor, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """A forward pre-hook: the norm input's moments into `row[:2]`, and a hook on that input
    that writes its gradient's moments into `row[2:]` when backward reaches it. Both return
    None, so the forward pass and the gradients are left as they were."""
    x = inputs[0]
    row[:2] = moments(x)
    if x.requires_grad:

        def gradient(grad: torch.Tensor) -> None:
            row[2:] = moments(grad)

        x.register_hook(gradient)
