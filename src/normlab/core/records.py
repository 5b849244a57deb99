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
