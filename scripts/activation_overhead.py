"""What the activation statistics (core.activations) cost a training epoch: a one-off
measurement, not a test.

On a shared machine whole epochs vary by tens of percent from one to the next, far more than
the cost being measured, so it is measured in its parts, on one thread: the time of a training
step with the probe's hooks against the same step without them (alternated, the median of
the differences of neighbours kept), and the fastest of a few epochs without
the probe: training alone, and as a run has it (training, then the test pass over all 10,000
test images, after the BatchNorm settling a short epoch ends with). An epoch measures 4 steps
however long it is (the run's first epoch one more), so the overhead of an epoch is 4 times the
difference, and its share falls as epochs grow longer (the last figure printed: the training
of a full MNIST epoch, estimated as that many plain steps).

    OMP_NUM_THREADS=1 python scripts/activation_overhead.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from normlab.cli.bench import first_batch
from normlab.config import TrainOptions
from normlab.core.activations import ActivationProbe, probe_steps
from normlab.core.train import RunContext, fit_epoch, make_context, train_epoch, train_step
from normlab.data import Dataset, load_dataset, steps_per_epoch
from normlab.variants import parse_variant


def fastest(fn: Callable[[], object], repeats: int) -> float:
    """The shortest of `repeats` calls of `fn`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def step_cost(ctx: RunContext, data: Dataset, repeats: int) -> tuple[float, float]:
    """(seconds of a plain step, seconds a measured step adds), on the first training batch:
    the fastest plain step, and the median difference of `repeats` adjacent pairs of a
    measured and a plain step (neighbours share whatever else the machine was doing)."""
    x, labels = first_batch(ctx, data)
    ctx.probe.begin(1, 0)  # one step an epoch: step 0 is measured

    def hooked() -> None:
        with ctx.probe.at(0):
            train_step(ctx, x, labels)

    plain, extra = [], []
    for _ in range(repeats):
        plain.append(fastest(lambda: train_step(ctx, x, labels), 1))
        extra.append(fastest(hooked, 1) - plain[-1])
    ctx.probe.end()
    return min(plain), statistics.median(extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--variants", default="bn,gn,none")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist", args.data, download=False).head(args.images, None)
    opts = TrainOptions(activation_stats=True)
    steps = steps_per_epoch(len(data.train), opts.batch_size)
    measured = len(probe_steps(steps, first=False))
    full = steps_per_epoch(60_000, opts.batch_size)
    print(f"{args.images:,} MNIST images, batch {opts.batch_size}: {steps} steps an epoch, ")
    print(f"{measured} of them measured; one thread\n")
    for name in args.variants.split(","):
        ctx = make_context(parse_variant(name), 0, data, opts, torch.device("cpu"), 10**6)
        plain, extra = step_cost(ctx, data, repeats=150)
        off = replace(ctx, probe=ActivationProbe(ctx.model, enabled=False))
        training = fastest(lambda c=off: train_epoch(c, data), repeats=6)
        whole = fastest(lambda c=off: fit_epoch(c, data, 1, None), repeats=3)
        cost = measured * extra
        full_share = 100 * cost / (full * plain)
        print(
            f"{name:5s} step {plain * 1000:.1f} ms, a measured step {extra * 1000:+.2f} ms, "
            f"an epoch {cost * 1000:+.1f} ms: {100 * cost / training:.2f}% of its training "
            f"({training:.3f} s), {100 * cost / whole:.2f}% with the test pass ({whole:.3f} s); "
            f"of the training of all 60,000 images ({full} steps): {full_share:.2f}%"
        )


if __name__ == "__main__":
    main()
