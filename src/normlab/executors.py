"""Where runs execute: in this process, in a pool of local processes, or as Ray tasks.

Every executor gets the same list of jobs and the already loaded dataset, trains each job with
`train_run`, and hands each `RunResult` (metrics, state_dict, predictions) back to the driver's
`on_done`, which writes the study folder. Workers never write results themselves, so a Ray
cluster needs no shared filesystem: the dataset travels through Ray's object store and the
results come back the same way.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from normlab.config import RunSpec
from normlab.data import Dataset, steps_per_epoch
from normlab.errors import NormlabError
from normlab.train import RunResult, load_checkpoint, resolve_device, train_run

if TYPE_CHECKING:  # the study imports executors, not the other way round
    from normlab.study import Reporter

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


class Executor:
    """Runs jobs and reports each result to `on_done` in the driver process."""

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: torch.device,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        raise NotImplementedError


class LocalExecutor(Executor):
    """One run after another in this process, with per-step and per-epoch progress."""

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: torch.device,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        for job in jobs:
            run = job.run
            steps = steps_per_epoch(len(data.train), run.train.batch_size)
            reporter.run_started(run, run.train.epochs * steps, job.done_epochs() * steps)
            result = train_run(
                run.variant,
                run.seed,
                data,
                run.train,
                device,
                on_step=reporter.step,
                on_epoch=lambda m, r=run: reporter.epoch_done(r, m),
                checkpoint=job.checkpoint,
            )
            on_done(job, result)


_worker_data: Dataset | None = None


def _pool_init(data: Dataset, threads: int) -> None:
    """Each pool worker keeps one copy of the dataset and trains on `threads` threads."""
    global _worker_data
    torch.set_num_threads(threads)
    _worker_data = data


def _pool_run(job: Job, device: str) -> RunResult:
    assert _worker_data is not None, "pool worker used before _pool_init"
    dev = torch.device(device)
    run = job.run
    return train_run(
        run.variant, run.seed, _worker_data.to(dev), run.train, dev, checkpoint=job.checkpoint
    )


class PoolExecutor(Executor):
    """`workers` local processes, each training one run at a time on `threads` threads.

    Worth it when several cores (or GPUs, one run each) are free: small networks do not keep
    many cores busy from one process. Unfinished runs continue from their checkpoints.
    """

    def __init__(self, workers: int, threads: int = 1) -> None:
        if workers < 1:
            raise NormlabError(f"--workers must be a positive integer, got {workers}")
        self.workers, self.threads = workers, threads

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: torch.device,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        ctx = multiprocessing.get_context("spawn")  # fork after torch threads can deadlock
        with ProcessPoolExecutor(
            self.workers, ctx, initializer=_pool_init, initargs=(data.to("cpu"), self.threads)
        ) as pool:
            pending = {}
            for i, job in enumerate(jobs):
                dev = f"cuda:{i % gpus}" if gpus else str(device)
                pending[pool.submit(_pool_run, job, dev)] = job
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_done(pending.pop(future), future.result())


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise NormlabError(
            'Ray is not installed; pip install "normlab[ray]" to run sweeps on a Ray cluster'
        ) from None
    return ray


def _ray_run(run: RunSpec, data: Dataset, device: str, threads: int) -> RunResult:
    """A Ray task: train one run on the worker and return its result to the driver."""
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    return train_run(run.variant, run.seed, data.to(dev), run.train, dev)


class RayExecutor(Executor):
    """Each run a Ray task needing 1 GPU (when the study uses CUDA, or `auto` and the cluster
    has GPUs) or `cpus` CPUs. Unfinished runs restart from their beginning: checkpoints would
    live on the worker, and the driver skips only runs it has written."""

    def __init__(self, address: str, cpus: int = 1) -> None:
        self.address, self.cpus = address, cpus

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: torch.device,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        ray = _import_ray()
        # Workers import normlab from wherever the driver found it, unless told otherwise.
        src = str(Path(__file__).resolve().parents[1])
        env = {"env_vars": {"PYTHONPATH": src, "OMP_NUM_THREADS": str(self.cpus)}}
        try:
            ray.init(address=self.address, runtime_env=env, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise NormlabError(
                f"cannot connect to the Ray cluster at {self.address!r} ({exc}); start one with "
                "'ray start --head' or pass its address as --ray-address HOST:PORT"
            ) from None
        try:
            gpu = device.type == "cuda" or ray.cluster_resources().get("GPU", 0) > 0
            task = ray.remote(_ray_run).options(
                num_cpus=1 if gpu else self.cpus, num_gpus=1 if gpu else 0, max_retries=1
            )
            data_ref = ray.put(data.to("cpu"))
            target = "cuda" if gpu else "cpu"
            pending = {task.remote(j.run, data_ref, target, self.cpus): j for j in jobs}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    on_done(pending.pop(ref), ray.get(ref))
        finally:
            ray.shutdown()


def make_executor(workers: int = 1, ray_address: str | None = None) -> Executor:
    """The executor the CLI's flags ask for."""
    if ray_address:
        if workers != 1:
            raise NormlabError("--workers and --ray-address exclude each other; Ray schedules runs")
        return RayExecutor(ray_address)
    if workers == 1:
        return LocalExecutor()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if workers > (cores or 1) and not torch.cuda.is_available():
        raise NormlabError(
            f"--workers {workers} is more than the {cores} CPU core(s) available; "
            f"use at most --workers {cores}"
        )
    return PoolExecutor(workers)
