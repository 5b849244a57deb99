"""Checkpoint files: the full training state of one run, written after every epoch.

Kept apart from the training loop so that code which only asks how far a run got (the
executors, counting finished epochs) reads a checkpoint without the loop's machinery. What goes
into a checkpoint and how it is put back is `core.train`'s business (`training_state`, `resume`).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from normlab.atomic import write_atomic
from normlab.errors import NormlabError


def save_checkpoint(state: dict, path: Path) -> None:
    """Serialize in memory, then write atomically: a kill or a full disk mid-save leaves the
    previous epoch's checkpoint intact."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by `save_checkpoint`, loaded with `weights_only=True` (tensors and
    plain containers only: a tampered file cannot run code). An unreadable one is a user-facing
    error rather than a traceback, since it can only come from outside damage."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or not {"model", "metrics"} <= state.keys():
            raise ValueError("not a normlab checkpoint")
        return state
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise NormlabError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it to restart "
            "that run from scratch"
        ) from None
