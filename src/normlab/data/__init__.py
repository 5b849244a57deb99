"""Datasets as uint8 tensors on the training device: containers and batching
(`containers`), the named datasets (`named`), image folders (`imagefolder`), and
`load_dataset`, which picks between the last two by name or path."""

from __future__ import annotations

from pathlib import Path

import torch

from normlab.data.containers import Dataset, Split, batches, channel_stats, steps_per_epoch
from normlab.data.imagefolder import folder_name, is_archive, load_image_folder
from normlab.data.named import INPUT_SHAPES, LOADERS, MNIST_FILES, idx_test_images
from normlab.errors import NormlabError

__all__ = [
    "INPUT_SHAPES",
    "MNIST_FILES",
    "Dataset",
    "Split",
    "batches",
    "channel_stats",
    "folder_name",
    "load_dataset",
    "load_test_images",
    "steps_per_epoch",
]


def load_dataset(name: str, data_dir: Path, download: bool = True) -> Dataset:
    """Load a dataset by name, or an image folder / `.tar.gz` of one by path."""
    if name in LOADERS:
        return LOADERS[name](Path(data_dir), download)
    if Path(name).is_dir() or is_archive(Path(name)):
        return load_image_folder(Path(name), Path(data_dir))
    raise NormlabError(
        f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}, or give the path of an "
        "image folder with train/<class>/ and test/<class>/ (or a .tar.gz of one)"
    )


def load_test_images(name: str, data_dir: Path, limit: int | None = None) -> torch.Tensor:
    """The first `limit` test images (all when None) as uint8, never downloaded: what the
    report's galleries show. MNIST and Fashion-MNIST read their test file alone
    (`idx_test_images`); any other dataset loads whole."""
    images = idx_test_images(name, Path(data_dir))
    if images is None:
        images = load_dataset(name, data_dir, download=False).test.images
    return images[:limit]
