"""Shared fixtures: where the real data lives, and small real subsets of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout (as in CI), or $NORMLAB_SHARED_DATA."""
    return Path(os.environ.get("NORMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    d = shared_data_dir()
    if not (d / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        if os.environ.get("CI"):
            pytest.fail(f"real MNIST missing in {d}: CI must have ../shared/data")
        pytest.skip(f"real MNIST not found in {d} (set NORMLAB_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path):
    from normlab.data import load_dataset

    return load_dataset("mnist", mnist_dir, download=False)
