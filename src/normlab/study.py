"""A study: every variant x every seed, each a fresh run, written to the study folder.

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

import torch
import torchvision

import normlab
from normlab.atomic import clean_tmp
from normlab.config import StudyConfig, Variant
from normlab.data import Dataset, load_dataset, steps_per_epoch
from normlab.errors import NormlabError
from normlab.results import read_json, run_dir, summarize, write_json, write_run
from normlab.train import (
    EpochMetrics,
    load_checkpoint,
    resolve_device,
    set_cpu_threads,
    train_run,
    use_bf16,
)


class Reporter:
    """Progress hooks the study calls; this base class ignores them all."""

    def run_started(self, variant: Variant, seed: int, total_steps: int, done_steps: int) -> None:
        """A run begins (or resumes with `done_steps` of `total_steps` already done)."""

    def step(self) -> None:
        """One optimizer step finished."""

    def epoch_done(self, variant: Variant, seed: int, metrics: EpochMetrics) -> None:
        """One epoch finished with these metrics."""

    def run_done(self, variant: Variant, seed: int, status: str, skipped: bool) -> None:
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


def prepare_folder(out: Path, config: StudyConfig, fresh: bool) -> None:
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
        for v in old.get("variants", []):
            # study.json is a user file: only ever delete a variant folder directly in `out`.
            folder = out / str(v.get("name", "")) if isinstance(v, dict) else out
            if folder != out and folder.resolve().parent == out.resolve():
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


def load_study_data(config: StudyConfig, device: torch.device) -> Dataset:
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
    config: StudyConfig, out: Path, reporter: Reporter | None = None, fresh: bool = False
) -> dict:
    """Run (or resume) the study into `out`; returns the summary also written as summary.json."""
    reporter = reporter or Reporter()
    out = Path(out)
    device = resolve_device(config.device)
    if device.type == "cpu":
        set_cpu_threads()
    prepare_folder(out, config, fresh)
    data = load_study_data(config, device)
    bf16 = use_bf16(device, config.train.precision)
    write_json(
        out / "study.json",
        {
            "config": config.to_dict(),
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
    variants = config.to_dict()["variants"]
    steps = steps_per_epoch(len(data.train), config.train.batch_size)
    for variant in config.variants:
        for seed in range(config.seeds):
            d = run_dir(out, variant.name, seed)
            checkpoint = d / "checkpoint.pt"
            if (d / "run.json").exists():
                checkpoint.unlink(missing_ok=True)  # killed between write_run and the unlink
                reporter.run_done(variant, seed, read_json(d / "run.json")["status"], True)
                continue
            done = len(load_checkpoint(checkpoint)["metrics"]) if checkpoint.exists() else 0
            reporter.run_started(variant, seed, config.train.epochs * steps, done * steps)
            result = train_run(
                variant,
                seed,
                data,
                config.train,
                device,
                on_step=reporter.step,
                on_epoch=lambda m, v=variant, s=seed: reporter.epoch_done(v, s, m),
                checkpoint=checkpoint,
            )
            write_run(out, result)
            checkpoint.unlink(missing_ok=True)
            write_json(out / "summary.json", summarize(out, variants, config.seeds))
            reporter.run_done(variant, seed, result.status, False)
    summary = summarize(out, variants, config.seeds)
    write_json(out / "summary.json", summary)
    return summary
