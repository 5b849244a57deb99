"""Where runs execute: in this process, in a pool of local processes, or as Ray tasks
(`raycluster`), as the CLI's flags choose (`make_executor`).

Every executor gets the same list of jobs and the already loaded dataset, trains each job with
`train_run`, and hands each `RunResult` (metrics, state_dict, predictions) back to the driver's
`on_done`, which writes the study folder. Workers never write results themselves.

A run that fails in a pool or on Ray does not cost the others: every result that arrives is
written, and the failures are raised together at the end as one NormlabError, so rerunning the
same command redoes only the failed runs.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import forkserver, resource_tracker
from multiprocessing.context import BaseContext
from multiprocessing.queues import Queue

import torch

from normlab.core.device import available_cores, resolve_device
from normlab.core.records import RunResult
from normlab.core.train import train_run
from normlab.data import Dataset, steps_per_epoch
from normlab.errors import NormlabError
from normlab.run.jobs import Collector, Executor, Job, OnDone
from normlab.run.progress import Reporter
from normlab.run.raycluster import RayExecutor


class LocalExecutor(Executor):
    """One run after another in this process, with per-step and per-epoch progress."""

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: str,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        dev = resolve_device(device)
        for job in jobs:
            run = job.run
            steps = steps_per_epoch(len(data.train), run.train.batch_size)
            reporter.run_started(run, run.train.epochs * steps, job.done_epochs() * steps)
            result = train_run(
                run.variant,
                run.seed,
                data,
                run.train,
                dev,
                on_step=reporter.step,
                on_epoch=lambda m, r=run: reporter.epoch_done(r, m),
                checkpoint=job.checkpoint,
            )
            on_done(job, result)


_worker_data: Dataset | None = None
_worker_epochs: Queue | None = None


def _pool_init(data: Dataset, threads: int, epochs: Queue) -> None:
    """Each pool worker holds the dataset, trains on `threads` threads and sends every finished
    epoch to `epochs`, so the driver's progress moves while runs are going (the data is not
    copied: torch pickles CPU tensors into shared memory). It ignores Ctrl-C, which
    the driver alone acts on (`stop_pool`): a worker of the fork server `pool_context` started
    has SIGINT blocked already, any other is covered from here on."""
    global _worker_data, _worker_epochs
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _worker_data, _worker_epochs = data, epochs


def _pool_run(job: Job, device: str) -> RunResult:
    assert _worker_data is not None and _worker_epochs is not None, "worker used before init"
    dev = torch.device(device)
    run, queue = job.run, _worker_epochs
    return train_run(
        run.variant,
        run.seed,
        _worker_data.to(dev),
        run.train,
        dev,
        on_epoch=lambda m: queue.put((run.path, m)),
        checkpoint=job.checkpoint,
    )


class PoolExecutor(Executor):
    """`workers` local processes, each training one run at a time on `threads` threads
    (default: this process's cores shared out, at least one each).

    Worth it when several cores (or GPUs, one run each) are free: small networks do not keep
    many cores busy from one process. Each finished epoch comes back to the driver's progress
    as it ends; unfinished runs continue from their checkpoints.
    """

    def __init__(self, workers: int, threads: int | None = None) -> None:
        if workers < 1:
            raise NormlabError(f"--workers must be a positive integer, got {workers}")
        self.workers = workers
        self.threads = threads or max(1, available_cores() // workers)

    def plan(self, runs: int, device: torch.device) -> int:
        return self.threads

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: str,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        dev = resolve_device(device)
        gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
        collector = Collector(len(data.train), reporter, on_done)
        ctx = pool_context()
        epochs = ctx.Queue()
        by_path = {job.run.path: (job, job.done_epochs()) for job in jobs}
        init = (data.to("cpu"), self.threads, epochs)
        pool = ProcessPoolExecutor(self.workers, ctx, initializer=_pool_init, initargs=init)
        try:
            with ctrl_c_deferred():  # stop_pool must know every worker it has to end
                pending = {}
                for i, job in enumerate(jobs):
                    target = f"cuda:{i % gpus}" if gpus else str(dev)
                    pending[pool.submit(_pool_run, job, target)] = by_path[job.run.path]
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while not epochs.empty():
                    path, metrics = epochs.get()
                    job, done = by_path[path]
                    collector.epoch(job, metrics, done)
                for future in finished:
                    job, done = pending.pop(future)
                    collector.take(job, future.result, done)
        except BaseException:  # Ctrl-C, or a failure writing a result: stop every run now
            stop_pool(pool)
            raise
        pool.shutdown()
        collector.raise_failures(len(jobs))


def pool_context() -> BaseContext:
    """Where the pool's workers come from. On Linux, a fork server that has imported torch,
    `torch._dynamo` (which the first optimizer step imports) and the training code, so each
    worker starts in a fraction of a second instead of importing them itself: about 5 s of CPU
    each here. (A worker re-runs the imports of the driver's script as its `__main__`: for the
    `normlab` script, `normlab.__main__` alone, which imports nothing heavy at module level.)
    The server imports no user code and does no tensor work, so it forks no CUDA context and
    no thread pool. Python starts one fork server per process: a program that already runs one
    shares it, with its own preloads. Elsewhere (macOS, where forking after system frameworks
    load is unsafe, and Windows), workers are spawned and import everything themselves.

    The server starts with SIGINT blocked (`ctrl_c_held`), a mask every worker it forks
    inherits: Ctrl-C in a terminal reaches every process of the group, and a worker that took
    it would print its own traceback, hand the KeyboardInterrupt back as a run's result and
    start the next queued run. The driver alone decides what an interrupt stops (`stop_pool`).
    """
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "torch._dynamo"])
    resource_tracker.ensure_running()  # it unblocks SIGINT once it has started: start it first
    with ctrl_c_held():
        forkserver.ensure_running()
    ready = ctx.Process(target=int)  # waits out the server's imports while Ctrl-C still works
    ready.start()
    ready.join()
    return ctx


def auto_workers(runs: int, cores: int) -> int:
    """How many single-threaded processes `--workers auto` starts for `runs` runs on `cores`
    cores: one per run, up to one more than the cores. The extra one is shared out by the
    cores, so a study of three runs on two cores does not end with one run training alone while
    a core idles (2 min 18 s, against 3 min 6 s for one process with two threads running them
    in turn: docs/results/timings/workers-auto.txt); more runs wait for a free process, since
    every process adds its own torch state and memory."""
    return min(runs, cores + 1)


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """SIGINT blocked in this thread, so a process started meanwhile inherits the mask and
    never takes it. This process does not lose a Ctrl-C pressed in the window: another of its
    threads takes it, or this one as the window ends. (Ignoring the signal instead would drop
    it: the driver once did, and an interrupted study trained on to its end.)"""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # the mask as it is
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C noted, not acted on, until the block ends, then handed to the handler that was
    there before (Python's default raises KeyboardInterrupt). Starting a pool worker is not
    atomic: interrupted between the fork and the pool's record of the process, the worker would
    live on unseen by `stop_pool`, waiting for work, and keep the driver's output pipes open
    after it exits. Nothing changes outside the main thread (signal handlers are its own) or
    where SIGINT is ignored or handled outside Python."""
    previous = signal.getsignal(signal.SIGINT)
    main = threading.current_thread() is threading.main_thread()
    if not main or previous in (signal.SIG_IGN, None):
        yield
        return
    noted: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted and callable(previous):
        previous(signal.SIGINT, None)
    elif noted:  # SIG_DFL: the process would have ended; end the study as an interrupt does
        raise KeyboardInterrupt


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued runs and end the running ones at once. Leaving the pool's `with`
    instead would wait for every submitted run to finish, queued ones included: an interrupted
    sweep would go on training. A run stopped mid-epoch loses only that epoch: its checkpoint
    from the last finished one resumes it (the same as after SIGKILL, which the tests hold to
    identical results)."""
    processes = list(pool._processes.values())  # no public way before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():  # stuck in native code that ignores SIGTERM
            process.kill()
            process.join()


class AutoExecutor(Executor):
    """`--workers auto`: for a study of several runs on a CPU with several cores (those this
    process may use, and no more than its torch threads, so `OMP_NUM_THREADS=1` means one),
    single-threaded local processes (`auto_workers`; a small network keeps one core busier than
    it keeps two threads); otherwise, as on a GPU, one run after another in this process."""

    def __init__(self) -> None:
        self.pool: PoolExecutor | None = None

    def plan(self, runs: int, device: torch.device) -> int:
        cores = min(available_cores(), torch.get_num_threads())
        if device.type != "cpu" or runs < 2 or cores < 2:
            self.pool = None
            return super().plan(runs, device)
        self.pool = PoolExecutor(auto_workers(runs, cores), threads=1)
        return self.pool.plan(runs, device)

    def execute(
        self,
        jobs: Sequence[Job],
        data: Dataset,
        device: str,
        reporter: Reporter,
        on_done: OnDone,
    ) -> None:
        executor = self.pool or LocalExecutor()
        return executor.execute(jobs, data, device, reporter, on_done)


def make_executor(
    workers: int | str = "auto", ray_address: str | None = None, cpus_per_run: int = 1
) -> Executor:
    """The executor the CLI's flags ask for; `workers` is a count or `auto` (see AutoExecutor)."""
    if ray_address:
        if workers not in (1, "1", "auto"):
            raise NormlabError("--workers and --ray-address exclude each other; Ray schedules runs")
        return RayExecutor(ray_address, cpus_per_run)
    if cpus_per_run != 1:
        raise NormlabError("--cpus-per-run is for Ray tasks; with --ray-address only")
    if workers == "auto":
        return AutoExecutor()
    if isinstance(workers, str):
        if not workers.strip().isdigit() or int(workers) < 1:
            raise NormlabError(f"--workers must be auto or a positive integer, got {workers!r}")
        workers = int(workers)
    if workers == 1:
        return LocalExecutor()
    cores = available_cores()
    if workers > cores and not torch.cuda.is_available():
        raise NormlabError(
            f"--workers {workers} is more than the {cores} CPU core(s) available; "
            f"use at most --workers {cores}"
        )
    return PoolExecutor(workers)
