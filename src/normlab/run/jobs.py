"""What every executor shares: the job a run becomes, the interface an executor implements,
and the collector that takes results arriving from other processes (see run/executors.py for
where runs execute)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from normlab.config import RunSpec
from normlab.core.checkpoint import load_checkpoint
from normlab.core.records import EpochMetrics, RunResult
from normlab.data import Dataset, steps_per_epoch
from normlab.errors import NormlabError, first_line
from normlab.run.progress import Reporter

OnDone = Callable[["Job", RunResult], None]


@dataclass(frozen=True)
class Job:
    """A run to execute; `checkpoint` is where a local run saves (and finds) its progress."""

    run: RunSpec
    checkpoint: Path | None = None

    def done_epochs(self) -> int:
        """Epochs already in the checkpoint (0 without one)."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0
        return len(load_checkpoint(self.checkpoint)["metrics"])


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message, no traceback."""
    line = first_line(exc, "")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


class Executor:
    """Runs jobs and reports each result to `on_done` in the driver process.

    `device` is the study's configured device (auto, cpu or cuda), not the driver's resolved
    one: where runs execute elsewhere (Ray), `auto` must be decided by the cluster's hardware
    and `cpu` must stay on CPUs even on a cluster with GPUs.
    """

    def plan(self, runs: int, device: torch.device) -> int:
        """Settle how the study's `runs` runs (all of them, finished or not) will execute on
        `device`, before any of them does; returns the CPU threads each run trains on, which
        study.json records. Decided on the whole study, not on what is left, so a resumed
        study trains its remaining runs as it trained the others."""
        return torch.get_num_threads()

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: str,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        raise NotImplementedError


class Collector:
    """Takes the results of runs in other processes as they arrive: reports their epochs to the
    reporter (as each epoch ends where the worker can send it, else with the run's result),
    writes each result with `on_done`, and keeps failures for one error at the end instead of
    losing the runs still going."""

    def __init__(self, train_size: int, reporter: Reporter, on_done: OnDone) -> None:
        self.train_size, self.reporter, self.on_done = train_size, reporter, on_done
        self.failures: list[tuple[str, str]] = []  # (run path, one-line cause)
        self.reported: dict[str, int] = {}  # run path -> epochs the reporter has seen

    def started(self, job: Job, done_epochs: int) -> None:
        """Tell the reporter that `job` runs (once), with `done_epochs` from a checkpoint."""
        run = job.run
        if run.path not in self.reported:
            steps = steps_per_epoch(self.train_size, run.train.batch_size)
            self.reporter.run_started(run, run.train.epochs * steps, done_epochs * steps)
            self.reported[run.path] = done_epochs

    def epoch(self, job: Job, metrics: EpochMetrics, done_epochs: int = 0) -> None:
        """Report one finished epoch of `job`, unless it was reported already."""
        self.started(job, done_epochs)
        if metrics.epoch > self.reported[job.run.path]:
            self.reporter.epoch_done(job.run, metrics)
            self.reported[job.run.path] = metrics.epoch

    def take(self, job: Job, fetch: Callable[[], RunResult], done_epochs: int = 0) -> None:
        """Fetch one job's result (raising what the run raised) and write it, or note why not."""
        try:
            result = fetch()
        except Exception as exc:  # any run's failure: reported with the others at the end
            self.failures.append((job.run.path, one_line(exc)))
            return
        self.started(job, done_epochs)
        for metrics in result.metrics[done_epochs:]:
            self.epoch(job, metrics, done_epochs)
        self.on_done(job, result)

    def raise_failures(self, total: int) -> None:
        """One NormlabError naming every failed run and its cause, if any failed."""
        if not self.failures:
            return
        causes: dict[str, list[str]] = {}
        for path, cause in self.failures:
            causes.setdefault(cause, []).append(path)
        detail = "; ".join(f"{', '.join(paths)}: {cause}" for cause, paths in causes.items())
        raise NormlabError(
            f"{len(self.failures)} of {total} run(s) failed ({detail}); the others are written, "
            "and rerunning the same command retries only the failed ones"
        )
