"""Datasets beyond MNIST: image folders (and archives of them), CIFAR-10's on-disk format,
the network chosen by input shape, natural-image augmentation. All on generated fixtures."""

from __future__ import annotations

import json
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normlab.config import StudyConfig, TrainOptions, Variant
from normlab.core.augment import parse_augment, prepare_batch, random_crop, random_flip
from normlab.core.models import ARCHS, Net, choose_arch, count_params
from normlab.data import Dataset, load_dataset, load_test_images
from normlab.data.imagefolder import cache_dir, extract
from normlab.errors import NormlabError
from normlab.run.study import run_study
from tests.conftest import run_cli as normlab


def write_image(path: Path, seed: int, mode: str, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def make_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox")) -> Path:
    """36 PNGs: colour 32x32 and grayscale 24x24 mixed in every class and split."""
    for split, per_class in (("train", 8), ("test", 4)):
        for c, name in enumerate(classes):
            for i in range(per_class):
                mode, size = ("RGB", 32) if i % 2 == 0 else ("L", 24)
                write_image(root / split / name / f"{i}.png", 100 * c + i, mode, size)
    return root


def test_image_folder_trains_one_epoch_through_the_cli(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "pets")
    out = tmp_path / "study"
    proc = normlab(
        "run",
        "--dataset", str(folder),
        "--data-dir", str(tmp_path / "data"),
        "--variants", "bn,gn",
        "--epochs", "1",
        "--batch-size", "8",
        "--out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    study = json.loads((out / "study.json").read_text())
    assert study["data"]["input_shape"] == [3, 32, 32]  # colour wins, most common size wins
    assert study["data"]["classes"] == ["cat", "dog", "fox"]
    assert (study["data"]["train_size"], study["data"]["test_size"]) == (24, 12)
    summary = json.loads((out / "summary.json").read_text())
    assert [v["status"] for v in summary["variants"]] == ["finished", "finished"]
    preds = np.load(out / "bn" / "seed0" / "predictions.npz")
    assert len(preds["pred"]) == 12


def test_test_images_alone_are_the_loaded_test_split(
    mnist: Dataset, mnist_dir: Path, tmp_path: Path
) -> None:
    """What the galleries show: MNIST's test file read alone, or an image folder's test split,
    equals the test split of the whole dataset, cut to the limit."""
    folder = make_folder(tmp_path / "images")
    wholes = {"mnist": (mnist_dir, mnist.test.images)}
    wholes[str(folder)] = (
        tmp_path / "cache",
        load_dataset(str(folder), tmp_path / "cache").test.images,
    )
    for name, (data_dir, whole) in wholes.items():
        assert torch.equal(load_test_images(name, data_dir), whole)
        assert torch.equal(load_test_images(name, data_dir, 7), whole[:7])


def test_folder_decoding_unifies_channels_and_size(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "pets")
    data = load_dataset(str(folder), tmp_path / "data")
    assert data.train.images.dtype == torch.uint8
    assert data.input_shape == (3, 32, 32)
    assert sorted(data.train.labels.tolist()) == sorted([0] * 8 + [1] * 8 + [2] * 8)
    # A grayscale image became three equal channels.
    gray = Image.open(folder / "test" / "dog" / "1.png")
    assert gray.mode == "L"
    equal = (data.test.images[:, 0] == data.test.images[:, 1]).flatten(1).all(1)
    assert equal.sum().item() == 6  # the 2 grayscale test images of each of 3 classes


def test_only_grayscale_gives_one_channel(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    for split in ("train", "test"):
        for c in ("a", "b"):
            write_image(root / split / c / "0.png", ord(c), "L", 28)
    data = load_dataset(str(root), tmp_path / "data")
    assert data.input_shape == (1, 28, 28)
    assert choose_arch(data.input_shape) == ARCHS["mnist-s7"]


def empty_classes(root: Path) -> None:
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)


def one_class(root: Path) -> None:
    write_image(root / "train" / "only" / "0.png", 0, "RGB", 32)
    write_image(root / "test" / "only" / "0.png", 1, "RGB", 32)


def unreadable(root: Path) -> None:
    make_folder(root)
    (root / "train" / "dog" / "3.png").write_bytes(b"not a png at all")


def no_test(root: Path) -> None:
    make_folder(root)
    for f in sorted((root / "test").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    (root / "test").rmdir()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: root.mkdir(), "has no train/ folder"),
        (empty_classes, "train has no images"),
        (one_class, "one class only"),
        (unreadable, "cannot read image"),
        (no_test, "has no test/ folder"),
    ],
    ids=["empty", "empty-classes", "one-class", "unreadable", "no-test"],
)
def test_bad_folders_give_one_line_and_status_2(tmp_path: Path, make, expected: str) -> None:
    root = tmp_path / "bad"
    make(root)
    proc = normlab(
        "run", "--dataset", str(root), "--data-dir", str(tmp_path / "data"),
        "--out", str(tmp_path / "out"), "--epochs", "1", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    if make is unreadable:
        assert "3.png" in lines[0]


def test_stats_cache_is_reused_and_rebuilt_when_the_data_changes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "pets")
    data_dir = tmp_path / "data"
    first = load_dataset(str(folder), data_dir)
    stats_file = cache_dir(folder, data_dir) / "stats.json"
    written = stats_file.stat().st_mtime_ns
    again = load_dataset(str(folder), data_dir)
    assert stats_file.stat().st_mtime_ns == written  # unchanged data: read from the cache
    assert again.mean == first.mean
    assert torch.equal(again.train.images, first.train.images)
    white = np.full((32, 32, 3), 255, dtype=np.uint8)
    Image.fromarray(white).save(folder / "train" / "cat" / "0.png")
    changed = load_dataset(str(folder), data_dir)
    assert all(new > old for new, old in zip(changed.mean, first.mean, strict=True))
    assert json.loads(stats_file.read_text())["mean"] == list(changed.mean)
    stats_file.write_text("{ damaged")
    assert load_dataset(str(folder), data_dir).mean == changed.mean
    assert json.loads(stats_file.read_text())["mean"] == list(changed.mean)  # rewritten


def make_archive(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)  # one level down: pets/train/...
    return archive


def test_archive_is_extracted_once_and_matches_the_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "pets")
    archive = make_archive(folder, tmp_path / "pets.tar.gz")
    data_dir = tmp_path / "data"
    from_archive = load_dataset(str(archive), data_dir)
    from_folder = load_dataset(str(folder), data_dir)
    assert torch.equal(from_archive.train.images, from_folder.train.images)
    assert from_archive.classes == from_folder.classes
    stamp = cache_dir(archive, data_dir) / "extracted" / ".normlab-key"
    (cache_dir(archive, data_dir) / "images.npz").unlink()  # force a decode, not an extract
    extracted_at = stamp.stat().st_mtime_ns
    load_dataset(str(archive), data_dir)
    assert stamp.stat().st_mtime_ns == extracted_at


def test_loaders_extracting_one_archive_at_once_each_get_a_whole_extraction(
    tmp_path: Path,
) -> None:
    """Two studies started together on one archive and one --data-dir: the second used to find
    the first's half-made folder ('File exists') or delete it under it."""
    archive = make_archive(make_folder(tmp_path / "pets"), tmp_path / "pets.tar.gz")
    dest = tmp_path / "cache" / "extracted"
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: extract(archive, dest, "k"), range(4))) == [dest] * 4
    assert (dest / ".normlab-key").read_text() == "k"
    assert len(list(dest.rglob("*.png"))) == 36
    assert [p.name for p in dest.parent.iterdir()] == ["extracted"]  # no private copy left


def test_archive_with_path_traversal_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload.png"
    write_image(payload, 0, "RGB", 8)
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../../escaped.png")
    with pytest.raises(NormlabError, match="cannot extract"):
        load_dataset(str(evil), tmp_path / "data")
    assert not list(tmp_path.rglob("escaped.png"))


def write_cifar10(root: Path, per_batch: int = 6) -> np.ndarray:
    """A tiny dataset in CIFAR-10's on-disk format (pickled dicts of rows of 3072 bytes, red
    plane then green then blue). Returns the first training image as (3, 32, 32)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        first = rows[0].reshape(3, 32, 32) if first is None else first
        batch = {"data": rows, "labels": [i % 10 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return first


def test_cifar10_loads_its_on_disk_format_and_trains(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.cifar

    first = write_cifar10(tmp_path)
    # torchvision checks the official files' MD5 sums; ours are a tiny stand-in.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.input_shape == (3, 32, 32)
    assert (len(data.train), len(data.test)) == (30, 6)
    assert data.classes[3] == "cat"
    assert torch.equal(data.train.images[0], torch.from_numpy(first))
    config = StudyConfig(
        dataset="cifar10",
        data_dir=tmp_path,
        variants=(Variant("ln"),),
        train=TrainOptions(epochs=1, batch_size=8),
        device="cpu",
    )
    summary = run_study(config, tmp_path / "out")
    assert summary["variants"][0]["status"] == "finished"
    assert summary["variants"][0]["params"] < 50_000


@pytest.mark.parametrize(
    ("name", "where"), [("cifar10", "cifar-10-python.tar.gz"), ("fashion-mnist", "FashionMNIST")]
)
def test_missing_dataset_offline_says_where_to_put_it(tmp_path: Path, name, where) -> None:
    with pytest.raises(NormlabError, match=where):
        load_dataset(name, tmp_path, download=False)


def test_unknown_dataset_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(NormlabError, match="fashion-mnist, cifar10"):
        load_dataset(str(tmp_path / "nowhere"), tmp_path)


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_cifar_network_is_under_50k_parameters(norm: str) -> None:
    arch = choose_arch((3, 32, 32))
    assert arch == ARCHS["cifar"]
    model = Net(norm, in_channels=3, arch=arch)
    assert count_params(model) < 50_000
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_arch_choice_by_shape_and_override() -> None:
    assert choose_arch((1, 28, 28)) == choose_arch((3, 28, 28)) == ARCHS["mnist-s7"]
    big = choose_arch((3, 100, 64))
    assert big == "16s " + ARCHS["cifar"]  # 100x64 -> 50x32: one stride-2 stem
    assert Net("bn", 3, arch=big)(torch.zeros(2, 3, 100, 64)).shape == (2, 10)
    assert choose_arch((1, 28, 28), "cifar") == ARCHS["cifar"]
    assert choose_arch((1, 28, 28), "8 M 16") == "8 M 16"
    with pytest.raises(NormlabError, match="--model"):
        choose_arch((3, 8, 8))


def test_random_crop_shifts_within_the_padding() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, g, pad=2)
    assert out.shape == x.shape
    # The centre 4x4 of the output is a 4x4 window of the input shifted by at most 2 pixels.
    for b in range(2):
        windows = [x[b, :, i : i + 4, j : j + 4] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b, :, 2:6, 2:6], w) for w in windows)
    assert not torch.equal(out, x)  # the zero shift is one of the windows: something moved


def test_flip_mirrors_some_images_and_keeps_the_rest() -> None:
    x = torch.rand(64, 3, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_cutout_zeroes_one_square_per_image() -> None:
    images = torch.full((16, 3, 32, 32), 200, dtype=torch.uint8)
    x = prepare_batch(images, (0.0,) * 3, (1.0,) * 3, torch.Generator().manual_seed(1), ("cutout",))
    zeros = (x[:, 0] == 0).flatten(1).sum(1)
    assert ((zeros > 0) & (zeros <= 64)).all()
    assert (zeros == 64).any()


def test_augment_spec_is_validated() -> None:
    assert parse_augment("crop+flip") == ("crop", "flip")
    assert parse_augment("none") == ()
    with pytest.raises(NormlabError, match="unknown step 'rotate'"):
        parse_augment("crop+rotate")
    with pytest.raises(NormlabError, match="unknown step"):
        TrainOptions(augment="jitter")
