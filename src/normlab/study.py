"""A study: a list of runs (variants x seeds, or a sweep's grid), each a fresh run, executed by
an executor and written to the study folder by this process.

The runner knows nothing of terminals or plots: it reports progress through a `Reporter`
(the CLI's draws rich progress bars) and leaves files that the report reads later. Re-running
into the same folder resumes: finished runs are skipped and an unfinished one continues from
its last epoch's checkpoint.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path
from typing import Protocol

import torch
import torchvision

import normlab
from normlab.atomic import clean_tmp
from normlab.config import RunSpec, TrainOptions
from normlab.data import Dataset, load_dataset
from normlab.errors import NormlabError
from normlab.executors import Executor, Job, LocalExecutor
from normlab.results import finished, read_json, summarize, write_json, write_run
from normlab.train import EpochMetrics, RunResult, resolve_device, set_cpu_threads, use_bf16


class Plan(Protocol):
    """What the runner needs of a study configuration (`StudyConfig` or `SweepConfig`)."""

    dataset: str
    data_dir: Path
    limit_train: int | None
    limit_test: int | None
    device: str
    train: TrainOptions

    def runs(self) -> list[RunSpec]: ...

    def to_dict(self) -> dict: ...


class Reporter:
    """Progress hooks the study calls; this base class ignores them all."""

    def run_started(self, run: RunSpec, total_steps: int, done_steps: int) -> None:
        """A run begins (or resumes with `done_steps` of `total_steps` already done)."""

    def step(self) -> None:
        """One optimizer step finished."""

    def epoch_done(self, run: RunSpec, metrics: EpochMetrics) -> None:
        """One epoch finished with these metrics."""

    def run_done(self, run: RunSpec, status: str, skipped: bool) -> None:
        """A run finished (or was found finished in the folder and skipped)."""


def environment(device: torch.device, bf16: bool) -> dict:
    """What the results depend on besides the configuration."""
    return {
        "normlab": normlab.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "bf16": bf16,
        "platform": platform.platform(),
    }


def stored_config(study_file: Path) -> dict:
    """The configuration in an existing study.json; a damaged one is a user-facing error."""
    config = read_json(study_file).get("config")
    if not isinstance(config, dict):
        raise NormlabError(
            f"{study_file} holds no study configuration; use another --out, or --fresh"
        )
    return config


def prepare_folder(out: Path, config: Plan, fresh: bool) -> None:
    """Refuse to mix two different studies in one folder; `fresh` clears an old one.

    Runs before the data loads, so an unusable --out fails at once; temporary files left by a
    killed process are removed here (readers ignore them anyway).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NormlabError(
            f"cannot create the study folder {out}: {exc.strerror or exc}; choose a writable --out"
        ) from None
    clean_tmp(out)
    study_file = out / "study.json"
    if not study_file.exists():
        return
    old = stored_config(study_file)
    if fresh:
        # study.json is a user file: only ever delete a run's top folder directly in `out`.
        paths = read_json(study_file).get("runs") or [
            str(v.get("name", "")) for v in old.get("variants", []) if isinstance(v, dict)
        ]
        for top in {str(p).split("/")[0] for p in paths}:
            folder = out / top
            if top and folder.resolve().parent == out.resolve():
                shutil.rmtree(folder, ignore_errors=True)
        (out / "summary.json").unlink(missing_ok=True)
        return
    new = config.to_dict()
    if old != new:
        diff = sorted(k for k in new if old.get(k) != new[k])
        raise NormlabError(
            f"{out} holds a study with a different configuration (differs in: "
            f"{', '.join(diff)}); use another --out, or --fresh to discard it"
        )


def load_study_data(config: Plan, device: torch.device) -> Dataset:
    """The dataset, cut to the configured limits, on the training device."""
    data = load_dataset(config.dataset, config.data_dir)
    data = Dataset(
        data.name,
        data.train.head(config.limit_train),
        data.test.head(config.limit_test),
        data.classes,
        data.mean,
        data.std,
    )
    return data.to(device)


def run_study(
    config: Plan,
    out: Path,
    reporter: Reporter | None = None,
    fresh: bool = False,
    executor: Executor | None = None,
    tensorboard: bool = False,
) -> dict:
    """Run (or resume) the study into `out`; returns the summary also written as summary.json.

    The executor trains; this process writes every run's files as its result arrives (and,
    with `tensorboard`, its event file), so results never depend on where a run executed.
    """
    reporter = reporter or Reporter()
    executor = executor or LocalExecutor()
    out = Path(out)
    if tensorboard:
        from normlab.tblog import write_events  # fails now, not after the first run
    device = resolve_device(config.device)
    if device.type == "cpu":
        set_cpu_threads()
    prepare_folder(out, config, fresh)
    data = load_study_data(config, device)
    bf16 = use_bf16(device, config.train.precision)
    runs = config.runs()
    write_json(
        out / "study.json",
        {
            "config": config.to_dict(),
            "runs": [r.path for r in runs],
            "environment": environment(device, bf16),
            "data": {
                "classes": data.classes,
                "mean": data.mean,
                "std": data.std,
                "input_shape": list(data.input_shape),
                "train_size": len(data.train),
                "test_size": len(data.test),
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    jobs = []
    for run in runs:
        if finished(out, run):
            # killed between write_run and the checkpoint's removal
            (out / run.path / "checkpoint.pt").unlink(missing_ok=True)
            reporter.run_done(run, read_json(out / run.path / "run.json")["status"], True)
        else:
            (out / run.path).mkdir(parents=True, exist_ok=True)
            jobs.append(Job(run, out / run.path / "checkpoint.pt"))

    def on_done(job: Job, result: RunResult) -> None:
        d = write_run(out, job.run, result)
        if tensorboard:
            write_events(d / "tensorboard", job.run, result)
        if job.checkpoint is not None:
            job.checkpoint.unlink(missing_ok=True)
        write_json(out / "summary.json", summarize(out, runs))
        reporter.run_done(job.run, result.status, False)

    executor.execute(jobs, data, device, reporter, on_done)
    summary = summarize(out, runs)
    write_json(out / "summary.json", summary)
    return summary
