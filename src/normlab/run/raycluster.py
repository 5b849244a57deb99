"""Runs as Ray tasks on a cluster (`--ray-address`): the dataset travels through Ray's object
store and each run's result comes back the same way, so the cluster needs no shared filesystem
with the driver, which writes the study folder as results arrive."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from normlab.config import RunSpec
from normlab.core.device import resolve_device
from normlab.core.records import RunResult
from normlab.core.train import train_run
from normlab.data import Dataset
from normlab.errors import NormlabError
from normlab.run.jobs import Collector, Executor, Job, OnDone
from normlab.run.progress import Reporter


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


def ray_uses_gpu(device: str, cluster_gpus: float) -> bool:
    """Whether Ray tasks take a GPU: for `cuda` always, for `auto` when the cluster has one,
    for `cpu` never (the user asked for it, GPUs or not)."""
    if device == "cuda" and cluster_gpus <= 0:
        raise NormlabError(
            "--device cuda asked for, but the Ray cluster has no GPU; use --device cpu or auto"
        )
    return device == "cuda" or (device == "auto" and cluster_gpus > 0)


class RayExecutor(Executor):
    """Each run a Ray task needing 1 GPU (see `ray_uses_gpu`) or `cpus` CPUs. Unfinished runs
    restart from their beginning: checkpoints would live on the worker, and the driver skips
    only runs it has written."""

    def __init__(self, address: str, cpus: int = 1) -> None:
        if cpus < 1:
            raise NormlabError(f"--cpus-per-run must be a positive integer, got {cpus}")
        self.address, self.cpus = address, cpus

    def plan(self, runs: int, device: torch.device) -> int:
        return self.cpus

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: str,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        ray = _import_ray()
        # Workers import normlab from wherever the driver found it, unless told otherwise.
        src = str(Path(__file__).resolve().parents[2])
        env = {"env_vars": {"PYTHONPATH": src, "OMP_NUM_THREADS": str(self.cpus)}}
        try:
            ray.init(address=self.address, runtime_env=env, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise NormlabError(
                f"cannot connect to the Ray cluster at {self.address!r} ({exc}); start one with "
                "'ray start --head' or pass its address as --ray-address HOST:PORT"
            ) from None
        collector = Collector(len(data.train), reporter, on_done)

        def fetch(ref: object) -> RunResult:
            """The task's result; a task's error becomes its cause, without the worker's
            traceback that Ray folds into the message."""
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                raise exc.cause from None

        try:
            gpu = ray_uses_gpu(device, ray.cluster_resources().get("GPU", 0))
            task = ray.remote(_ray_run).options(
                num_cpus=1 if gpu else self.cpus, num_gpus=1 if gpu else 0, max_retries=1
            )
            data_ref = ray.put(data.to("cpu"))
            target = "cuda" if gpu else "cpu"
            pending = {task.remote(j.run, data_ref, target, self.cpus): j for j in jobs}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    collector.take(pending.pop(ref), lambda r=ref: fetch(r))
        finally:
            ray.shutdown()
        collector.raise_failures(len(jobs))
