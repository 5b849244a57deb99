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
from importlib.metadata import version
from pathlib import Path

import torch

import normlab
from normlab.atomic import clean_tmp
from normlab.config import RunSpec, StudyConfig
from normlab.core.augment import augment_for
from normlab.core.device import resolve_device, set_cpu_threads, use_bf16
from normlab.core.models import choose_arch
from normlab.core.records import RunResult
from normlab.data import Dataset, load_dataset
from normlab.errors import NormlabError
from normlab.run.executors import LocalExecutor
from normlab.run.jobs import Executor, Job
from normlab.run.progress import Reporter
from normlab.store.results import finished, read_json, summarize, write_json, write_run


def environment(device: torch.device, bf16: bool, threads: int) -> dict:
    """What the results depend on besides the configuration (`threads`: each run's CPU
    threads, as the executor plans them)."""
    return {
        "normlab": normlab.__version__,
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": threads,
        "bf16": bf16,
        "platform": platform.platform(),
    }


def stored_study(study_file: Path) -> dict | None:
    """An existing study.json holding a configuration, or None when it is unreadable or holds
    none (damaged by hand or by a tool): --fresh must still be able to clear such a folder."""
    try:
        stored = read_json(study_file)
    except NormlabError:
        return None
    ok = isinstance(stored, dict) and isinstance(stored.get("config"), dict)
    return stored if ok else None


def differences(stored: dict, config: StudyConfig) -> list[str]:
    """The settings in which a stored configuration differs from `config`. Stored forms of
    older versions are read as this version reads them (`StudyConfig.from_dict`), so a folder
    written before a setting existed still resumes; one this version cannot read at all
    differs in everything."""
    try:
        old = StudyConfig.from_dict(stored).settings()
    except NormlabError as exc:
        return [f"everything: this version cannot read it ({exc})"]
    new = config.settings()
    return sorted(k for k in new if old.get(k) != new[k])


def prepare_folder(out: Path, config: StudyConfig, fresh: bool) -> str | None:
    """Refuse to mix two different studies in one folder; `fresh` clears an old one.

    Runs before the data loads, so an unusable --out fails at once; temporary files left by a
    killed process are removed here (readers ignore them anyway). Returns a note for the user
    when --fresh could not read the old study.json, else None.
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
        return None
    stored = stored_study(study_file)
    if fresh:
        return discard_study(out, config, stored)
    if stored is None:
        raise NormlabError(
            f"{study_file} is unreadable or holds no study configuration; use another --out, "
            "or --fresh to discard it"
        )
    diff = differences(stored["config"], config)
    if diff:
        raise NormlabError(
            f"{out} holds a study with a different configuration (differs in: "
            f"{', '.join(diff)}); use another --out, or --fresh to discard it"
        )
    return None


def discard_study(out: Path, config: StudyConfig, stored: dict | None) -> str | None:
    """--fresh: delete the old study's run folders (as its study.json, `stored`, lists them),
    this study's own run folders (a run.json left there would be skipped as finished),
    study.json and summary.json. Without a readable `stored`, only this study's folders can be
    found, and the returned note says what was left. study.json is a user file, so only a
    folder directly inside `out` is ever deleted."""
    listed, note = [], None
    if stored is None:
        note = (
            f"{out / 'study.json'} was unreadable or held no configuration: removed it and this "
            f"study's run folders; other folders of an old study in {out} were left as they were"
        )
    else:
        listed = stored.get("runs")
        if not isinstance(listed, list):
            variants = stored["config"].get("variants")
            variants = variants if isinstance(variants, list) else []
            listed = [v.get("name", "") for v in variants if isinstance(v, dict)]
    for top in {str(p).split("/")[0] for p in [*listed, *(r.path for r in config.runs())]}:
        folder = out / top
        if top and folder.resolve().parent == out.resolve():
            shutil.rmtree(folder, ignore_errors=True)
    (out / "summary.json").unlink(missing_ok=True)
    (out / "study.json").unlink(missing_ok=True)
    return note


def load_study_data(config: StudyConfig, device: torch.device) -> Dataset:
    """The dataset, cut to the configured limits, on the training device."""
    data = load_dataset(config.dataset, config.data_dir)
    return data.head(config.limit_train, config.limit_test).to(device)


def study_record(config: StudyConfig, data: Dataset, env: dict) -> dict:
    """study.json: the configuration, its runs, the environment, the data's statistics, and the
    network and augmentation the runs use, the latter with why (`auto` resolved: the report
    says what ran)."""
    augment, why = augment_for(data, config.train.augment)
    return {
        "config": config.to_dict(),
        "runs": [r.path for r in config.runs()],
        "environment": env,
        "data": {
            "classes": data.classes,
            "mean": data.mean,
            "std": data.std,
            "input_shape": list(data.input_shape),
            "train_size": len(data.train),
            "test_size": len(data.test),
            "augment": augment,
            "augment_reason": why,
            "network": choose_arch(data.input_shape, config.train.model),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# What `--model auto` resolved to for the built-in sizes when study.json began to record the
# network, frozen here: a folder written before the record trained on these, whatever a later
# version's default becomes.
AUTO_BEFORE_RECORDED = {(28, 28): "16 M 16v 24v M 24 32", (32, 32): "32s 32 M 48 48 48t"}


def stored_network(previous: dict) -> str | None:
    """The network a stored study trained: recorded in study.json, or for a folder from before
    the record, its `--model` as it resolved then (None where the folder says neither)."""
    data = previous.get("data") or {}
    if "network" in data or "input_shape" not in data:
        return data.get("network")
    shape = tuple(data["input_shape"])
    model = previous["config"].get("train", {}).get("model", "auto")
    if model == "auto" and shape[1:] in AUTO_BEFORE_RECORDED:
        return AUTO_BEFORE_RECORDED[shape[1:]]
    return choose_arch(shape, model)


def same_resolution(previous: dict | None, record: dict, out: Path) -> None:
    """Refuse to resume a study whose `auto` augmentation or network now resolves differently
    (an edited normlab.yaml, or a version with other defaults): its finished runs and its
    remaining ones would have trained differently, and study.json would claim one setting for
    both."""
    before = {**((previous or {}).get("data") or {}), "network": stored_network(previous or {})}
    now = record["data"]
    why = {"augmentation": f" ({now['augment_reason']})", "network": ""}
    for what, key in (("augmentation", "augment"), ("network", "network")):
        if before.get(key) is not None and before[key] != now[key]:
            raise NormlabError(
                f"{out} was trained with {what} {before[key]!r}, but it would now be "
                f"{now[key]!r}{why[what]}; use another --out, or --fresh to start over"
            )


def pending_jobs(out: Path, runs: list[RunSpec], reporter: Reporter) -> list[Job]:
    """The runs still to do, each with its checkpoint's path; finished ones are reported as
    skipped (and a checkpoint left by a kill between writing the run and removing it goes)."""
    jobs = []
    for run in runs:
        if finished(out, run):
            (out / run.path / "checkpoint.pt").unlink(missing_ok=True)
            reporter.run_done(run, read_json(out / run.path / "run.json")["status"], True)
        else:
            (out / run.path).mkdir(parents=True, exist_ok=True)
            jobs.append(Job(run, out / run.path / "checkpoint.pt"))
    return jobs


def run_study(
    config: StudyConfig,
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
        from normlab.store.tblog import write_events  # fails now, not after the first run
    device = resolve_device(config.device)
    if device.type == "cpu":
        set_cpu_threads()
    note = prepare_folder(out, config, fresh)
    if note:
        reporter.note(note)
    data = load_study_data(config, device)
    runs = config.runs()
    config.check_network(data.input_shape, len(data.train))
    bf16 = use_bf16(device, config.train.precision)
    threads = executor.plan(len(runs), device)
    record = study_record(config, data, environment(device, bf16, threads))
    same_resolution(stored_study(out / "study.json"), record, out)
    write_json(out / "study.json", record)
    jobs = pending_jobs(out, runs, reporter)

    def on_done(job: Job, result: RunResult) -> None:
        d = write_run(out, job.run, result)
        if tensorboard:
            write_events(d / "tensorboard", job.run, result)
        if job.checkpoint is not None:
            job.checkpoint.unlink(missing_ok=True)
        write_json(out / "summary.json", summarize(out, runs))
        reporter.run_done(job.run, result.status, False)

    executor.execute(jobs, data, config.device, reporter, on_done)
    summary = summarize(out, runs)
    write_json(out / "summary.json", summary)
    return summary
