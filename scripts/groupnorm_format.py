"""What the memory format costs GroupNorm's training step on a CPU: a one-off measurement, not
a test.

Four ways to run the same training step of the default network on one batch of 128 MNIST
images, one thread, in turns (a round runs each for a few steps; the median over rounds is
kept, so a slow minute of a shared machine slows all four alike):

    gn normlab            channels_last, norms.GroupNorm (the kernel on a contiguous copy)
    gn contiguous         the whole network contiguous (normlab's policy for gn before)
    gn channels_last      channels_last with PyTorch's kernel on channels_last input
    ln                    LayerNorm, channels_last: the norm with one group, for scale

Ratios are against `gn contiguous`, measured in the same run:

    python scripts/groupnorm_format.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from normlab.cli.bench import first_batch
from normlab.config import TrainOptions
from normlab.core.device import use_bf16
from normlab.core.norms import GroupNorm
from normlab.core.train import make_context, train_step
from normlab.data import Dataset, load_dataset
from normlab.variants import parse_variant


def step(data: Dataset, norm: str, fmt: torch.memory_format, native: bool) -> Callable[[], None]:
    """One training step of a fresh default run of `norm` in memory format `fmt`; with `native`,
    the GroupNorm layers run PyTorch's kernel on whatever format arrives."""
    ctx = make_context(parse_variant(norm), 0, data, TrainOptions(), torch.device("cpu"), 10**6)
    ctx.model.to(memory_format=fmt)
    if native:
        for m in ctx.model.modules():
            if isinstance(m, GroupNorm):
                m.__class__ = nn.GroupNorm
    x, labels = first_batch(ctx, data)
    x = x.contiguous(memory_format=fmt)
    return lambda: train_step(ctx, x, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=8, help="steps of each way in a round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist", args.data, download=False).head(512, None)
    last, plain = torch.channels_last, torch.contiguous_format
    ways = {
        "gn normlab": step(data, "gn", last, native=False),
        "gn contiguous": step(data, "gn", plain, native=False),
        "gn channels_last": step(data, "gn", last, native=True),
        "ln": step(data, "ln", last, native=False),
    }
    for fn in ways.values():  # warm-up: oneDNN picks and caches its kernels on first use
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps)
    precision = "bf16" if use_bf16(torch.device("cpu"), "auto") else "fp32"
    print(f"training step, batch 128, one thread, {precision}; median of {args.rounds} rounds")
    base = statistics.median(times["gn contiguous"])
    for name, t in times.items():
        median = statistics.median(t)
        print(f"{name:17s} {median * 1000:6.1f} ms  x{base / median:.2f} vs gn contiguous")


if __name__ == "__main__":
    main()
