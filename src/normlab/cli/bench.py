"""`normlab bench`: how fast normlab trains, against a typical pipeline and against the model.

Three rates per variant, all in *training* images per second, on the same network, batch size
and images:

    normlab   one normlab epoch: `train_epoch` over the first N training images, then the test
              pass over the first N/6 test images (the 60k:10k proportion of a full MNIST
              epoch). The test pass's time counts; its images do not.
    typical   the usual recipe: torchvision MNIST with per-image RandomRotation(7), ToTensor and
              Normalize through a shuffled DataLoader, fp32, the same test pass through a
              DataLoader; num_workers 0 and 2, the faster one is the baseline.
    compute   normlab's `train_step` (forward, backward, the variant's L1 gradient, SGD step,
              schedule step) over and over on one batch already in memory, with normlab's
              settings (precision, memory format, threads): the ceiling for the training loop.

`ratio` is normlab / typical and `efficiency` normlab / compute. The achieved FLOP/s counts the
model's convolution FLOPs (torch.utils.flop_counter: the matmul-like ops only, not norms or
elementwise ops) over the normlab epochs, against a square matmul timed in the same run at the
same precision, so the two are comparable whatever the machine's load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from normlab.config import TrainOptions, Variant, parse_variant, parse_variants
from normlab.core.augment import prepare_batch
from normlab.core.device import MEMORY_FORMAT, resolve_device, set_cpu_threads, use_bf16
from normlab.core.models import Net
from normlab.core.train import (
    RunContext,
    build_model,
    make_context,
    test_pass,
    train_epoch,
    train_step,
)
from normlab.data import Dataset, load_dataset, steps_per_epoch
from normlab.errors import NormlabError

TEST_FRACTION = 6  # test images per epoch = training images / 6, as in a full MNIST epoch
TYPICAL_WORKERS = (0, 2)


@dataclass
class BenchRow:
    """One variant's figures; the first six fields are the documented JSON keys."""

    norm: str
    normlab_img_s: float
    typical_img_s: float
    compute_img_s: float
    ratio: float
    efficiency: float
    typical_workers: int
    flops_per_s: float


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures work done, not work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn` takes, GPU work synced on both sides (see `_sync`)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_data(data: Dataset, limit_train: int) -> Dataset:
    """The first `limit_train` training images and the proportional head of the test split."""
    if limit_train < 2:
        raise NormlabError(f"--limit-train must be at least 2, got {limit_train}")
    return data.head(limit_train, max(1, limit_train // TEST_FRACTION))


def normlab_epoch(
    variant: Variant, data: Dataset, opts: TrainOptions, device: torch.device
) -> float:
    """Seconds for one normlab epoch (train + test pass), after a short warm-up epoch that
    builds the kernels' caches (and, with --compile, the compiled graph)."""
    steps = 2 * max(1, len(data.train) // opts.batch_size)  # warm-up + epoch: at most twice one
    ctx = make_context(variant, 0, data, opts, device, steps)
    warm = data.head(3 * opts.batch_size, opts.batch_size)

    def epoch(d: Dataset) -> None:
        train_epoch(ctx, d)
        test_pass(ctx, d)

    epoch(warm)
    return _timed(lambda: epoch(data), device)


def first_batch(ctx: RunContext, data: Dataset) -> tuple[Tensor, Tensor]:
    """The first training batch, normalized, in the model's memory format."""
    n = ctx.opts.batch_size
    images, labels = data.train.images[:n], data.train.labels[:n]
    x = prepare_batch(images, data.mean, data.std)
    return x.contiguous(memory_format=MEMORY_FORMAT), labels


def model_flops(variant: Variant, data: Dataset, opts: TrainOptions) -> tuple[float, float]:
    """(training FLOPs per image: forward + backward, test-pass FLOPs per image: forward).
    Counted on the uncompiled model in fp32: the count is of operations, not of their speed."""
    ctx = make_context(variant, 0, data, opts, data.train.images.device, 1)
    x, labels = first_batch(ctx, data)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(ctx.model(x), labels).backward()
    train_flops = counter.get_total_flops() / len(labels)
    ctx.model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        ctx.model(x)
    return train_flops, counter.get_total_flops() / len(labels)


WARMUP_STEPS = 3


def compute_only(
    variant: Variant, data: Dataset, opts: TrainOptions, device: torch.device
) -> float:
    """Images/s of `train_step` on one batch already in memory: the training loop without
    batching, shuffling and augmentation. It runs the whole step, the variant's L1 gradient and
    the schedule's step included, so the ceiling costs what a real step costs."""
    n = max(5, steps_per_epoch(len(data.train), opts.batch_size))  # as long as the epoch
    ctx = make_context(variant, 0, data, opts, device, WARMUP_STEPS + n)
    x, labels = first_batch(ctx, data)
    for _ in range(WARMUP_STEPS):
        train_step(ctx, x, labels)
    seconds = _timed(lambda: [train_step(ctx, x, labels) for _ in range(n)], device)
    return n * len(labels) / seconds


def typical_model(norm: str, data: Dataset) -> Net:
    """The typical recipe's model: the one normlab builds for `norm` on `data` at the defaults
    (`train.build_model`, seed 0), left in PyTorch's defaults (fp32, contiguous). The global
    generator is seeded too: the typical loop's shuffling and rotations draw from it."""
    torch.manual_seed(0)
    return build_model(parse_variant(norm), data, TrainOptions(), 0)


def typical_epoch(
    norm: str, data_dir: Path, data: Dataset, batch_size: int, workers: int, device: torch.device
) -> float:
    """Seconds for one epoch of the typical recipe (see the module docstring) on the images of
    `data` (the same first-N subsets), fp32, contiguous, default threads."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(data.mean, data.std)
    train_tf = transforms.Compose([transforms.RandomRotation(7), transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    train_set = datasets.MNIST(str(data_dir), train=True, download=False, transform=train_tf)
    test_set = datasets.MNIST(str(data_dir), train=False, download=False, transform=test_tf)
    train_loader = DataLoader(
        Subset(train_set, range(len(data.train))),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
    )
    test_loader = DataLoader(
        Subset(test_set, range(len(data.test))), batch_size=1000, num_workers=workers
    )
    model = typical_model(norm, data).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def epoch() -> None:
        model.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, y in test_loader:
                model(x.to(device)).argmax(1).eq(y.to(device)).sum().item()

    return _timed(epoch, device)


def matmul_flops(device: torch.device, bf16: bool, seconds: float = 0.5) -> float:
    """FLOP/s of a 1024x1024 matmul at the precision normlab trains in: what this machine's
    matrix units deliver right now, under the same load as the rest of the run."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    b = torch.randn(1024, 1024, device=device, dtype=dtype)
    a @ b
    n, elapsed = 0, 0.0
    while elapsed < seconds:
        elapsed += _timed(lambda: a @ b, device)
        n += 1
    return 2 * 1024**3 * n / elapsed


def bench_variant(
    variant: Variant,
    data: Dataset,
    data_dev: Dataset,
    data_dir: Path,
    opts: TrainOptions,
    repeats: int,
) -> tuple[BenchRow, float, float]:
    """One variant's row, with the FLOPs and the seconds of its best normlab epoch (the whole
    run's FLOP/s sums both over the variants). normlab trains on `data_dev`, the same images
    already on the device; the typical recipe reads its own from `data_dir` and only takes
    the subset sizes from `data`. The measurements take turns within each repeat, so a burst
    of load from other processes does not fall on one of them alone."""
    dev = data_dev.train.images.device
    train_flops, eval_flops = model_flops(variant, data_dev, opts)
    compute, t_normlab = 0.0, float("inf")
    typical = dict.fromkeys(TYPICAL_WORKERS, float("inf"))
    for _ in range(repeats):
        compute = max(compute, compute_only(variant, data_dev, opts, dev))
        t_normlab = min(t_normlab, normlab_epoch(variant, data_dev, opts, dev))
        for w in TYPICAL_WORKERS:
            t = typical_epoch(variant.norm, data_dir, data, opts.batch_size, w, dev)
            typical[w] = min(typical[w], t)
    workers = min(typical, key=typical.get)
    bs = opts.batch_size
    trained = min(len(data.train), steps_per_epoch(len(data.train), bs) * bs)
    epoch_flops = trained * train_flops + len(data.test) * eval_flops
    normlab_rate = trained / t_normlab
    typical_rate = trained / typical[workers]
    row = BenchRow(
        variant.name,
        normlab_rate,
        typical_rate,
        compute,
        normlab_rate / typical_rate,
        normlab_rate / compute,
        workers,
        epoch_flops / t_normlab,
    )
    return row, epoch_flops, t_normlab


def run_bench(
    data_dir: Path,
    norms: str = "bn,gn,ln",
    limit_train: int = 6400,
    batch_size: int = 128,
    device: str = "auto",
    compile: bool = False,
    repeats: int = 3,
    on_row: Callable[[BenchRow], None] | None = None,
) -> dict:
    """Benchmark every variant in `norms`; returns the JSON-ready result (see module docs).

    Each figure is the best of `repeats` interleaved measurements: on a shared machine the
    other processes only ever slow a measurement down, so the fastest is the least disturbed.
    """
    if repeats < 1:
        raise NormlabError(f"--repeats must be a positive integer, got {repeats}")
    variants = parse_variants(norms)
    dev = resolve_device(device)
    threads = set_cpu_threads() if dev.type == "cpu" else torch.get_num_threads()
    opts = TrainOptions(epochs=1, batch_size=batch_size, compile=compile)
    data = bench_data(load_dataset("mnist", data_dir, download=False), limit_train)
    data_dev, bf16 = data.to(dev), use_bf16(dev, opts.precision)
    rows, flops, seconds = [], 0.0, 0.0
    for variant in variants:
        row, epoch_flops, t_normlab = bench_variant(
            variant, data, data_dev, data_dir, opts, repeats
        )
        flops, seconds = flops + epoch_flops, seconds + t_normlab
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return {
        "rows": [asdict(r) for r in rows],
        "flops_per_s": flops / seconds,
        "matmul_flops_per_s": matmul_flops(dev, bf16),
        "device": str(dev),
        "threads": threads,
        "bf16": bf16,
        "compile": compile,
        "limit_train": len(data.train),
        "test_images": len(data.test),
        "batch_size": batch_size,
        "repeats": repeats,
    }
