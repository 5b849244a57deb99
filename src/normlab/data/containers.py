"""Datasets as uint8 tensors on the training device.

Decoding is done once. After that a split is one uint8 tensor (N, C, H, W) plus int64 labels,
living on the device that trains; batches are slices of it, and normalization and augmentation
run a whole batch at a time there (see `augment.py`). Per-image PIL transforms inside the
training loop are what make typical implementations slow, so there are none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch


@dataclass
class Split:
    """One split: images uint8 (N, C, H, W) and labels int64 (N,), on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, limit: int | None) -> Split:
        """The first `limit` images (all when None): a fixed, reproducible subset."""
        if limit is None or limit >= len(self):
            return self
        return Split(self.images[:limit], self.labels[:limit])


@dataclass
class Dataset:
    """Both splits plus what the model and the figures need to know about them."""

    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None = None  # the default augmentation its folder declares (normlab.yaml)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> Dataset:
        return replace(self, train=self.train.to(device), test=self.test.to(device))

    def head(self, train: int | None, test: int | None) -> Dataset:
        """The first `train` training and `test` test images (all when None): the fixed,
        reproducible subsets that --limit-train and --limit-test select."""
        return replace(self, train=self.train.head(train), test=self.test.head(test))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 images on the [0, 1] scale.

    Computed from each channel's histogram of the 256 levels, in float64: exact, and without
    the float64 copy of the whole split that a direct `.std()` needs (376 MB for MNIST, most
    of the study's peak memory).
    """
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in images.transpose(0, 1).reshape(images.shape[1], -1):
        counts = torch.bincount(channel, minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * levels).sum() / n
        means.append(mean.item())
        stds.append(((counts * (levels - mean) ** 2).sum() / (n - 1)).sqrt().item())
    return tuple(means), tuple(stds)


def batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Slices of a split: shuffled with `generator` (training) or in order (evaluation).

    When shuffling, the last incomplete batch is dropped (a different one each epoch); a split
    smaller than a batch is one batch, of one image when the split has one (the study refuses
    that where a BatchNorm layer would then see a single value per channel).
    """
    n = len(split)
    if generator is None:
        for i in range(0, n, batch_size):
            yield split.images[i : i + batch_size], split.labels[i : i + batch_size]
        return
    order = torch.randperm(n, generator=generator, device=generator.device)
    steps = max(1, n // batch_size)
    for i in range(steps):
        idx = order[i * batch_size : (i + 1) * batch_size]
        # index_select, not split.images[idx]: the same rows, without advanced indexing's
        # general machinery (10x faster for a batch of uint8 images on a CPU).
        yield split.images.index_select(0, idx), split.labels.index_select(0, idx)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """How many batches `batches` yields per shuffled epoch."""
    return max(1, n // batch_size)
