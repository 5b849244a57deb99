"""Where and how a run computes: the device, bf16 or not, CPU threads, the memory format and
the test pass's batch size. Policies measured on real hardware, kept in one place so
the training loop, the executors and `normlab bench` make the same choices."""

from __future__ import annotations

import math
import os

import torch

from normlab.errors import NormlabError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NormlabError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast where the hardware has fast bf16: CUDA, or a CPU with AVX512-BF16/AMX."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def available_cores() -> int:
    """Cores this process may run on (its affinity, not the machine's count)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def set_cpu_threads() -> int:
    """One busy thread per core this process may use: oversubscribed OpenMP is many times
    slower than it should be on a small machine."""
    threads = max(1, min(torch.get_num_threads(), available_cores()))
    torch.set_num_threads(threads)
    return threads


# The memory format training and the test pass run in, whatever the norm: on a CPU, convolution,
# max pooling, BatchNorm and LayerNorm are faster in channels_last, and GroupNorm's CPU kernel,
# which is not, gets a contiguous copy (norms.GroupNorm).
MEMORY_FORMAT = torch.channels_last


BY_DEVICE = 1000  # TrainOptions.eval_batch_size's default: the size chosen by device
EVAL_INPUT_BYTES = 256 * 2**20  # the most float32 input one evaluation batch may take on a GPU
CPU_EVAL_BATCH = 256  # the fastest of the sizes tried on a CPU (see eval_batch_size)


def eval_batch_size(
    device: torch.device, batch_size: int, input_shape: tuple[int, int, int]
) -> int:
    """The test pass's batch size. `TrainOptions.eval_batch_size`'s default, `BY_DEVICE`, means
    "by device"; any other size is used as given.

    A GPU evaluates the whole MNIST test split in one launch, so there the default grows to
    10,000 images, but never past 256 MB of float input (large images would run out of
    memory). A CPU wants batches whose activations stay in cache: 256 images evaluated faster
    than 1,000 on both the MNIST and the CIFAR network (2 threads, bf16; a one-off measurement,
    not committed). Predictions do not depend on the batch size: evaluation uses BatchNorm's
    running statistics."""
    if batch_size != BY_DEVICE:
        return batch_size
    if device.type != "cuda":
        return CPU_EVAL_BATCH
    return max(1, min(10_000, EVAL_INPUT_BYTES // (4 * math.prod(input_shape))))
