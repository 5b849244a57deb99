"""What one run produces, as plain records: the contract between training and the store.

They live below both `core.train` (which fills them) and `store.results` (which writes and
reads them), so that reading a study folder (`normlab report`) never imports the training code,
the configuration or the data loaders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from normlab.config import Variant


@dataclass
class EpochMetrics:
    """One row of metrics.csv. Accuracies in percent, losses averaged over the samples."""

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    lr: float
    seconds: float


@dataclass
class StatisticsGap:
    """What BatchNorm's running statistics cost at the end of a run with batch-dependent norms:
    test accuracy % with the running statistics that evaluation uses (the run's final test
    accuracy), with each test batch's own statistics (`batch` images share them, as in
    training), and after precise BN over `precise_batches` training batches (as many as
    `--precise-bn` asked for and the split has; None and 0: not measured). See core.evaluation."""

    running_acc: float
    batch_acc: float
    precise_acc: float | None
    batch: int
    precise_batches: int


# The four statistics of a norm layer at a measured step, in the order `ActivationStats` holds
# them: the mean and std of its input (the pre-norm activations), then of the loss's gradient
# with respect to that input. See core.activations.
STAT_NAMES = ("act_mean", "act_std", "grad_mean", "grad_std")


@dataclass
class ActivationStats:
    """The norm layers' activation statistics at a few steps per epoch (core.activations):
    `layers` labels each norm layer, input to output; `epoch` is each measured step's place in
    training in epochs (1.0 is the end of the first); `values[t, layer]` holds `STAT_NAMES`."""

    layers: list[str]
    epoch: torch.Tensor  # (steps,) float64
    values: torch.Tensor  # (steps, layers, 4) float32


@dataclass
class RunResult:
    """Everything a run leaves behind: what the results store writes and the report reads."""

    variant: Variant
    seed: int
    params: int
    metrics: list[EpochMetrics]
    state_dict: dict[str, torch.Tensor]
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)
    status: str = "finished"  # or "diverged"
    diverged_epoch: int | None = None
    statistics_gap: StatisticsGap | None = None  # runs with batch-dependent norms only
    activations: ActivationStats | None = None  # recorded with --activation-stats only
