"""Datasets as uint8 tensors on the training device.

Decoding is done once. After that a split is one uint8 tensor (N, C, H, W) plus int64 labels,
living on the device that trains; batches are slices of it, and normalization and augmentation
run a whole batch at a time there (see `augment.py`). Per-image PIL transforms inside the
training loop are what make typical implementations slow, so there are none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from normlab.errors import NormlabError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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


def _load_idx(cls: type, name: str, data_dir: Path, download: bool, classes: list[str]) -> Dataset:
    """MNIST or Fashion-MNIST (same IDX files) through torchvision, from
    `data_dir/<cls.__name__>/raw` (downloaded there when missing and `download` is on)."""
    raw = Path(data_dir) / cls.__name__ / "raw"
    try:
        train = cls(str(data_dir), train=True, download=download)
        test = cls(str(data_dir), train=False, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ValueError
        missing = [f for f in MNIST_FILES if not (raw / f).exists()]
        if missing:
            raise NormlabError(
                f"{cls.__name__} not found in {raw} and could not be downloaded "
                f"({type(exc).__name__}); put {', '.join(MNIST_FILES)} there or run where the "
                "internet is reachable"
            ) from None
        raise NormlabError(
            f"{cls.__name__} files in {raw} could not be read ({exc}); they may be truncated or "
            "corrupt: delete them and download again"
        ) from None
    for d in (train, test):  # well-formed headers can still describe mismatched files
        labels = d.targets
        if (
            not len(labels)
            or len(d.data) != len(labels)
            or not 0 <= labels.min() <= labels.max() < 10
        ):
            raise NormlabError(
                f"{cls.__name__} files in {raw} disagree ({len(d.data)} images, "
                f"{len(labels)} labels; equal counts of labels 0..9 expected): delete them and "
                "download again"
            )
    splits = [Split(d.data.unsqueeze(1).contiguous(), d.targets.long()) for d in (train, test)]
    mean, std = channel_stats(splits[0].images)
    return Dataset(name, splits[0], splits[1], classes, mean, std)


def load_mnist(data_dir: Path, download: bool = True) -> Dataset:
    """MNIST through torchvision, from `data_dir/MNIST/raw` (downloaded there when missing)."""
    from torchvision.datasets import MNIST

    return _load_idx(MNIST, "mnist", data_dir, download, [str(i) for i in range(10)])


def load_fashion_mnist(data_dir: Path, download: bool = True) -> Dataset:
    """Fashion-MNIST through torchvision, from `data_dir/FashionMNIST/raw`: MNIST's format and
    shape (1x28x28, 10 classes), clothing instead of digits."""
    from torchvision.datasets import FashionMNIST

    return _load_idx(FashionMNIST, "fashion-mnist", data_dir, download, FashionMNIST.classes)


def load_cifar10(data_dir: Path, download: bool = True) -> Dataset:
    """CIFAR-10 through torchvision, from `data_dir/cifar-10-batches-py` (downloaded there when
    missing and `download` is on).

    Security: CIFAR-10's official "python version" is a set of *pickle* files, and torchvision's
    CIFAR10 unpickles them, which runs any code a tampered file contains. It only loads files
    whose MD5 matches the official release, but only use copies from a source you trust. An image
    folder (`--dataset PATH`) involves no pickle at all.
    """
    from torchvision.datasets import CIFAR10

    folder = Path(data_dir) / CIFAR10.base_folder
    try:
        train = CIFAR10(str(data_dir), train=True, download=download)
        test = CIFAR10(str(data_dir), train=False, download=download)
    except Exception as exc:  # RuntimeError (not found / corrupt), URLError, OSError
        raise NormlabError(
            f"CIFAR-10 not found or corrupt in {folder} and not downloaded "
            f"({type(exc).__name__}); put {CIFAR10.filename} from {CIFAR10.url} in {data_dir} "
            "(or its extracted cifar-10-batches-py folder), or run where the internet is reachable"
        ) from None
    splits = [
        Split(
            torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(d.targets, dtype=torch.long),
        )
        for d in (train, test)
    ]
    mean, std = channel_stats(splits[0].images)
    return Dataset("cifar10", splits[0], splits[1], list(train.classes), mean, std)


LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}
# (C, H, W) of each named dataset, known without loading it: flags that depend on the network
# (--groups, --model) are checked against these before any download or decoding.
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}


def load_dataset(name: str, data_dir: Path, download: bool = True) -> Dataset:
    """Load a dataset by name, or an image folder / `.tar.gz` of one by path."""
    if name in LOADERS:
        return LOADERS[name](Path(data_dir), download)
    if Path(name).is_dir() or is_archive(Path(name)):
        from normlab.imagefolder import load_image_folder

        return load_image_folder(Path(name), Path(data_dir))
    raise NormlabError(
        f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}, or give the path of an "
        "image folder with train/<class>/ and test/<class>/ (or a .tar.gz of one)"
    )


def folder_name(path: Path) -> str:
    """What a dataset path is called: its last part without `.tar.gz` / `.tgz` (a named
    dataset such as `mnist` is its own name)."""
    return path.name.removesuffix(".tar.gz").removesuffix(".tgz")


def is_archive(path: Path) -> bool:
    """A `.tar.gz` / `.tgz` file: what `--dataset PATH` accepts besides a folder."""
    return path.is_file() and path.name.lower().endswith((".tar.gz", ".tgz"))


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
