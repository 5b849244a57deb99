"""The named datasets (MNIST, Fashion-MNIST, CIFAR-10) through torchvision's own loaders and
download code, decoded once into uint8 `Dataset`s."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from normlab.data.containers import Dataset, Split, channel_stats
from normlab.errors import NormlabError

if TYPE_CHECKING:
    from torchvision.datasets import MNIST

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _read_idx(cls: type[MNIST], data_dir: Path, download: bool, train: bool) -> MNIST:
    """One split of MNIST or Fashion-MNIST (same IDX files) through torchvision, from
    `data_dir/<cls.__name__>/raw` (downloaded there when missing and `download` is on), its
    files checked against each other."""
    raw = Path(data_dir) / cls.__name__ / "raw"
    try:
        d = cls(str(data_dir), train=train, download=download)
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
    labels = d.targets  # well-formed headers can still describe mismatched files
    if not len(labels) or len(d.data) != len(labels) or not 0 <= labels.min() <= labels.max() < 10:
        raise NormlabError(
            f"{cls.__name__} files in {raw} disagree ({len(d.data)} images, "
            f"{len(labels)} labels; equal counts of labels 0..9 expected): delete them and "
            "download again"
        )
    return d


def _idx_class(name: str) -> type[MNIST] | None:
    """torchvision's class for an IDX dataset's name, None for any other name. Imported on use:
    importing torchvision takes seconds."""
    from torchvision.datasets import MNIST, FashionMNIST

    return {"mnist": MNIST, "fashion-mnist": FashionMNIST}.get(name)


def _load_idx(name: str, data_dir: Path, download: bool, classes: list[str]) -> Dataset:
    """Both splits of `_read_idx`, the statistics from the training split."""
    cls = _idx_class(name)
    splits = [
        Split(d.data.unsqueeze(1).contiguous(), d.targets.long())
        for d in (_read_idx(cls, data_dir, download, train) for train in (True, False))
    ]
    mean, std = channel_stats(splits[0].images)
    return Dataset(name, splits[0], splits[1], classes, mean, std)


def idx_test_images(name: str, data_dir: Path) -> torch.Tensor | None:
    """The test images of MNIST or Fashion-MNIST alone, without downloading (None for other
    datasets): what the report's galleries show. torchvision still wants all four files
    present, but parses only the test pair (7.8 MB of MNIST's 55)."""
    cls = _idx_class(name)
    return None if cls is None else _read_idx(cls, data_dir, False, False).data.unsqueeze(1)


def load_mnist(data_dir: Path, download: bool = True) -> Dataset:
    """MNIST through torchvision, from `data_dir/MNIST/raw` (downloaded there when missing)."""
    return _load_idx("mnist", data_dir, download, [str(i) for i in range(10)])


def load_fashion_mnist(data_dir: Path, download: bool = True) -> Dataset:
    """Fashion-MNIST through torchvision, from `data_dir/FashionMNIST/raw`: MNIST's format and
    shape (1x28x28, 10 classes), clothing instead of digits."""
    return _load_idx("fashion-mnist", data_dir, download, _idx_class("fashion-mnist").classes)


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
