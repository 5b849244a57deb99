"""The progress hooks a study calls, in a module of their own so that imports run one way:
executors report progress and the study passes a reporter down, but neither imports the other's
caller (norms <- models <- train <- executors <- study <- cli; this module needs only config
and records)."""

from __future__ import annotations

from normlab.config import RunSpec
from normlab.core.records import EpochMetrics


class Reporter:
    """Progress hooks the study and its executors call; this base class ignores them all."""

    def run_started(self, run: RunSpec, total_steps: int, done_steps: int) -> None:
        """A run begins (or resumes with `done_steps` of `total_steps` already done)."""

    def step(self) -> None:
        """One optimizer step finished."""

    def epoch_done(self, run: RunSpec, metrics: EpochMetrics) -> None:
        """One epoch finished with these metrics."""

    def run_done(self, run: RunSpec, status: str, skipped: bool) -> None:
        """A run finished (or was found finished in the folder and skipped)."""

    def note(self, text: str) -> None:
        """Something the user should know that is not an error (e.g. what --fresh left)."""
