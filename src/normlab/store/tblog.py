"""TensorBoard event files for a finished run (`--tensorboard`).

The driver writes them from the run's stored metrics after the run is done, so they look the
same whichever executor trained the run, and a resumed run does not log its first epochs twice.
Per-epoch scalars go under `train/` and `test/`; the run's hyperparameters (variant, batch size,
learning rate, seed, ...) go into the same file through the HParams plugin, so TensorBoard's
HPARAMS tab compares all runs of a sweep when pointed at the study folder.
"""

from __future__ import annotations

from pathlib import Path

from normlab.config import RunSpec
from normlab.core.records import RunResult
from normlab.errors import NormlabError

try:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams
except ImportError:
    raise NormlabError(
        'TensorBoard is not installed; pip install "normlab[tensorboard]" to use --tensorboard'
    ) from None

SCALARS = {
    "train/loss": "train_loss",
    "train/accuracy": "train_acc",
    "test/loss": "test_loss",
    "test/accuracy": "test_acc",
    "lr": "lr",
}


def hyperparameters(run: RunSpec) -> dict[str, float | int | str]:
    """The values that distinguish this run, in the types the HParams plugin accepts."""
    opts = run.train
    return {
        "variant": run.variant.name,
        "norm": run.variant.norm,
        "l1": run.variant.l1,
        "l2": run.variant.l2,
        "seed": run.seed,
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "momentum": opts.momentum,
        "anneal": opts.anneal,
        "swa_epochs": opts.swa_epochs,
        "groups": opts.groups or 0,
    }


def write_events(logdir: Path, run: RunSpec, result: RunResult) -> None:
    """One event file in `logdir`: scalars per epoch, hyperparameters and final metrics."""
    final = {"hparam/test_accuracy": result.metrics[-1].test_acc} if result.metrics else {}
    with SummaryWriter(log_dir=str(logdir)) as writer:
        for m in result.metrics:
            for tag, field in SCALARS.items():
                writer.add_scalar(tag, getattr(m, field), m.epoch)
        experiment, session_start, session_end = hparams(hyperparameters(run), final)
        for summary in (experiment, session_start, session_end):
            writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            writer.add_scalar(tag, value, len(result.metrics))
