"""Data normlab was not tuned on: the default augmentation never changes a label, BatchNorm's
statistics describe the data after a short epoch, and a letter-glyph folder (where a mirror
changes the class) trains with the defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from normlab.config import StudyConfig, TrainOptions, Variant, parse_variant
from normlab.core import train as train_module
from normlab.core.augment import CIFAR10_CLASSES, augment_for, auto_augment
from normlab.core.norms import recompute_bn_statistics
from normlab.core.train import SHORT_EPOCH, train_run
from normlab.data import Dataset, Split, load_dataset
from normlab.errors import NormlabError
from normlab.run.study import run_study
from scripts.glyphs import CLASSES, FONT_DIR, FONTS, render
from tests.conftest import run_cli


@pytest.fixture
def fonts() -> None:
    """The DejaVu fonts the glyph script pins (.ci/run installs them)."""
    if not all((FONT_DIR / name).is_file() for name in FONTS):
        if os.environ.get("CI"):
            pytest.fail(f"the DejaVu fonts are missing from {FONT_DIR}: CI must install them")
        pytest.skip("install fonts-dejavu-core and fonts-dejavu-extra to render glyphs")


def fake(name: str, classes: list[str], augment: str | None = None) -> Dataset:
    split = Split(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    return Dataset(name, split, split, classes, (0.5,), (0.2,), augment)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (fake("mnist", list("0123456789")), "digits"),
        (fake("cifar10", list(CIFAR10_CLASSES)), "crop+flip"),
        (fake("cifar10-jpg", list(CIFAR10_CLASSES)), "crop+flip"),  # an image folder of it
        (fake("fashion-mnist", ["T-shirt/top"]), "crop+flip"),
        (fake("letters", list(CLASSES)), "crop"),  # b and d are each other's mirror
        (fake("letters", list(CLASSES), augment="crop+flip"), "crop+flip"),  # declared
    ],
)
def test_auto_augmentation_flips_only_where_a_mirror_keeps_the_class(data, expected) -> None:
    steps, why = auto_augment(data)
    assert steps == expected and why
    assert augment_for(data, "none")[0] == "none"


def test_a_folder_declares_its_augmentation_in_normlab_yaml(tmp_path: Path, fonts) -> None:
    root = tmp_path / "letters"
    render(root, "train", 20)
    render(root, "test", 10)
    assert load_dataset(str(root), tmp_path / "data").augment is None
    (root / "normlab.yaml").write_text("augment: crop+flip\n")
    data = load_dataset(str(root), tmp_path / "data")  # the yaml is part of the cache's key
    assert data.augment == "crop+flip" and auto_augment(data)[0] == "crop+flip"
    (root / "normlab.yaml").write_text("augment: spin\n")
    with pytest.raises(NormlabError, match=r"normlab\.yaml of letters sets augment: 'spin'"):
        auto_augment(load_dataset(str(root), tmp_path / "data"))
    (root / "normlab.yaml").write_text("epochs: 3\n")
    with pytest.raises(NormlabError, match="may only set augment"):
        load_dataset(str(root), tmp_path / "data")


def test_glyphs_render_the_same_bytes_every_time(tmp_path: Path, fonts) -> None:
    for out in (tmp_path / "a", tmp_path / "b"):
        render(out, "train", 30)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 30 and {p.parts[1] for p in files} == set(CLASSES)
    assert all(
        (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in files
    )


def test_precise_statistics_are_the_average_of_the_batch_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    model.eval()
    batches = [torch.randn(8, 3, 6, 6) * 3 + 1 for _ in range(5)]
    recompute_bn_statistics(model, batches)
    assert not model.training and model[1].momentum == 0.1  # put back as it was
    with torch.no_grad():
        feats = [model[0](x) for x in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats])
    torch.testing.assert_close(model[1].running_mean, means.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model[1].running_var, variances.mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_short_epoch_leaves_batch_norm_statistics_that_describe_the_data(
    mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One epoch of 2,000 images is 15 steps of the default batch of 128: momentum 0.1 leaves
    BatchNorm's running statistics mostly at their initial (0, 1). Recomputed at the end of the
    short epoch, they describe the data: the test accuracy is within half a point of what the
    same weights give after precise BN over the training images. Without the recomputation
    (the short-epoch threshold patched to 0 steps) the running statistics cost 4.35 points here
    (87.70% against 92.05%; on the network that was the default before, 12% test accuracy)."""
    data = mnist.head(2000, 2000)
    assert len(data.train) // TrainOptions().batch_size < SHORT_EPOCH
    cpu = torch.device("cpu")

    def gap() -> float:
        result = train_run(parse_variant("bn"), 0, data, TrainOptions(epochs=1), cpu)
        stats = result.statistics_gap
        assert stats.precise_batches > 0 and stats.running_acc == result.metrics[-1].test_acc
        assert result.metrics[-1].test_acc > result.metrics[-1].train_acc
        return stats.precise_acc - stats.running_acc

    assert abs(gap()) < 0.5
    monkeypatch.setattr(train_module, "SHORT_EPOCH", 0)
    assert gap() > 2.0


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_one_epoch_of_2000_images_with_the_defaults_beats_90_percent(mnist, norm: str) -> None:
    """The issue's bar for the default command, every setting at its default (batch 128, peak
    lr 0.1, the network `auto` picks, seed 0, the seed `normlab run` uses): 15 steps, then the
    full test set. A check of that command, not of every seed: on mnist-h7, over seeds 0-4 gn
    reached 90% in 4 and ln in 3 (docs/results/one-epoch-2000). bn 92.3, gn 91.4, ln 91.5% on
    mnist-s7 (mnist-h7: 94.2, 92.3, 91.1%; mnist, before it: 54, 24 and 28%)."""
    data = mnist.head(2000, None)
    result = train_run(parse_variant(norm), 0, data, TrainOptions(epochs=1), torch.device("cpu"))
    assert result.metrics[-1].test_acc >= 90.0


@pytest.mark.slow
def test_glyph_folder_trains_with_the_defaults(tmp_path: Path, fonts) -> None:
    """The issue's bar on a folder normlab was not tuned on: 8,000 letter glyphs, bn and gn,
    5 epochs, every setting at its default: crop-only augmentation, stated in study.json, and
    at least 90% each (97.15% and 97.10% measured; with flips, 81.00% and 78.35%)."""
    root = tmp_path / "glyphs"
    render(root, "train", 8000)
    render(root, "test", 2000)
    out = tmp_path / "study"
    proc = run_cli(
        "run", "--dataset", root, "--data-dir", tmp_path / "data", "--variants", "bn,gn",
        "--epochs", "5", "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    study = json.loads((out / "study.json").read_text())
    assert study["data"]["augment"] == "crop" and "mirrored" in study["data"]["augment_reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert all(v["final_test_acc"] >= 90 for v in summary["variants"]), summary
    assert "augmentation: crop" in proc.stdout


def test_a_resumed_study_keeps_the_augmentation_it_started_with(tmp_path: Path, fonts) -> None:
    root = tmp_path / "letters"
    render(root, "train", 40)
    render(root, "test", 10)
    config = StudyConfig(
        dataset=str(root), data_dir=tmp_path / "data", variants=(Variant("gn"),), seeds=2,
        train=TrainOptions(epochs=1, batch_size=8),
    )  # fmt: skip
    run_study(config, tmp_path / "out")
    (root / "normlab.yaml").write_text("augment: crop+flip\n")
    with pytest.raises(NormlabError, match="was trained with augmentation 'crop'"):
        run_study(config, tmp_path / "out")


def test_only_short_epochs_recompute_batch_norm_statistics() -> None:
    """BatchNorm counts the batches its running statistics average: the 10 training steps of
    a short epoch are replaced by the 8 batches of the first 1,024 images; an epoch of 100
    steps keeps its own count."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (1300, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (1300,))
    split = Split(images, labels)
    data = Dataset("digits", split, split.head(64), list("0123456789"), (0.5,), (0.25,))
    cpu, bn = torch.device("cpu"), parse_variant("bn")
    short = train_run(bn, 0, data, TrainOptions(epochs=1, augment="none"), cpu)
    counts = [k for k in short.state_dict if k.endswith("num_batches_tracked")]
    assert counts and all(short.state_dict[k].item() == 8 for k in counts)
    long = data.head(200, 64)
    opts = TrainOptions(epochs=1, batch_size=2, augment="none")  # 100 steps: not short
    trained = train_run(bn, 0, long, opts, cpu)
    assert all(trained.state_dict[k].item() == SHORT_EPOCH for k in counts)
