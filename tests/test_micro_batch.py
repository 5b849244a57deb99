"""The micro-batch study (`normlab sweep micro-batch`): its preset and the flags that size it,
the norm-batch figure and table drawn from a sweep folder, the findings written from the
numbers, and a tiny real sweep through the command, resumed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from normlab.report import norm_batch
from normlab.report.norm_batch import (
    PER_IMAGE_NOTE,
    findings_items,
    norm_batch_findings,
    norm_batch_lines,
)
from normlab.report.sweep_figures import write_sweep_report
from normlab.store.results import mean_ci, read_json
from normlab.studyfile import load_study
from tests.conftest import captured_figures, main_in_process

KS = (2, 4, 8, 16, 32, 128)


def test_the_preset_trains_the_per_image_norms_once_per_seed() -> None:
    config = load_study("micro-batch")
    runs = config.runs()
    assert config.dataset == "cifar10" and config.seeds == 3 and config.train.epochs == 20
    assert config.norm_batches == KS and config.batch_sizes == (128,)
    count = {n: sum(r.variant.norm == n for r in runs) for n in ("bn", "brn", "gn", "ln", "ws+gn")}
    assert count == {"bn": 18, "brn": 18, "gn": 3, "ln": 3, "ws+gn": 3}
    assert len(runs) == 45
    paths = {r.path for r in runs}
    assert {"bn/nb2/seed0", "brn/nb128/seed2", "gn/seed0", "ws+gn/seed2"} <= paths
    assert not any(p.startswith(("gn/nb", "ln/nb", "ws+gn/nb")) for p in paths)
    assert {r.train.batch_size for r in runs} == {128} and {r.train.lr for r in runs} == {0.1}


def test_the_preset_takes_the_flags_that_size_it() -> None:
    """What `normlab sweep micro-batch --dataset ... --limit-train N --limit-test M --epochs E
    --seeds S --variants ...` builds (the flags arrive as typer gives them)."""
    flags = {
        "dataset": "../shared/data/cifar10-jpg.tar.gz",
        "limit_train": 5000,
        "limit_test": 2000,
        "epochs": 3,
        "seeds": 2,
        "variants": "bn,gn,ln,ws+gn",
    }
    config = load_study("micro-batch", flags)
    assert (config.limit_train, config.limit_test, config.train.epochs) == (5000, 2000, 3)
    assert config.dataset == flags["dataset"] and config.norm_batches == KS
    assert len(config.runs()) == 6 * 2 + 3 * 2
    fewer = load_study("micro-batch", {"norm_batch": "2,128", "variants": "bn,gn"})
    paths = [r.path for r in fewer.runs()]
    assert paths == [f"bn/nb{k}/seed{s}" for k in (2, 128) for s in range(3)] + [
        f"gn/seed{s}" for s in range(3)
    ]


# --- the figure, the table and the findings, from a sweep folder ------------------------------


def group(norm: str, k: int | None, errors: list[float]) -> dict:
    """A summary group as results.summarize writes it for a norm-batch sweep."""
    accs = [100 - e for e in errors]
    return {
        "name": f"{norm}/nb{k}" if k else norm,
        "variant": norm,
        "norm": norm,
        "l1": 0.0,
        "l2": 0.0,
        "batch_size": 128,
        "lr": 0.1,
        "norm_batch": k,
        "final_test_acc": statistics.fmean(accs),
        "seeds": [
            {"seed": i, "status": "finished", "final_test_acc": a} for i, a in enumerate(accs)
        ],
        "status": "finished",
    }


def sweep_folder(out: Path, groups: list[dict]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"variants": groups}))
    return out


def micro_batch_groups() -> list[dict]:
    """BN worse at small K, BRN less so; GN and LN once each."""
    groups = [group("bn", k, [20 + 12 / k + d for d in (-0.3, 0.0, 0.4)]) for k in KS]
    groups += [group("brn", k, [21 + 6 / k + d for d in (-0.2, 0.1, 0.2)]) for k in KS]
    return groups + [group(n, None, [e - 0.2, e, e + 0.3]) for n, e in [("gn", 23), ("ln", 25)]]


def test_the_norm_batch_figure_draws_k_lines_and_flat_per_image_bands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = sweep_folder(tmp_path / "mb", micro_batch_groups())
    figures = captured_figures(monkeypatch, norm_batch)
    written = write_sweep_report(out)
    assert [p.name for p in written] == ["results.md", "norm_batch.png"]
    assert (out / "norm_batch.svg").exists()

    (ax,) = figures["norm_batch.png"].axes
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in KS]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["BatchNorm"].get_xdata()) == list(KS)
    bn_means = [statistics.fmean(20 + 12 / k + d for d in (-0.3, 0.0, 0.4)) for k in KS]
    assert list(lines["BatchNorm"].get_ydata()) == pytest.approx(bn_means)
    gn = lines[f"GroupNorm: {PER_IMAGE_NOTE}"]
    gn_mean = statistics.fmean([23 - 0.2, 23, 23 + 0.3])
    assert list(gn.get_xdata()) == [2, 128] and list(gn.get_ydata()) == pytest.approx([gn_mean] * 2)
    assert f"LayerNorm: {PER_IMAGE_NOTE}" in lines and len(lines) == 4
    assert {t.get_text() for t in figures["norm_batch.png"].legends[0].get_texts()} == set(lines)

    text = (out / "results.md").read_text()
    assert "| bn/nb2 | 3 |" in text and "| gn | 3 |" in text  # the per-group table stays
    assert "![test error against the norm batch K](norm_batch.png)" in text
    assert "| norm batch K | BatchNorm | Batch Renormalization | GroupNorm (†) |" in text
    _, lo, hi = mean_ci([23 - 0.2, 23, 23 + 0.3])
    gn_cell = f"23.03 ({lo:.2f}-{hi:.2f})"
    assert text.count(f"| {gn_cell} |") == len(KS)  # one run, repeated down its column
    assert "### Findings" in text and "BatchNorm at K=2, 26.03% (" in text


def test_a_sweep_without_several_norm_batches_has_no_norm_batch_figure(tmp_path: Path) -> None:
    out = sweep_folder(tmp_path / "one", [group("bn", 4, [20.0, 21.0]), group("gn", None, [22.0])])
    assert [p.name for p in write_sweep_report(out)] == ["results.md"]
    assert "norm batch" not in (out / "results.md").read_text()


def findings(groups: list[dict]) -> list[str]:
    return findings_items(norm_batch_findings(norm_batch_lines({"variants": groups})))


def interval(errors: list[float]) -> str:
    _, lo, hi = mean_ci(errors)
    return f"95% interval {lo:.2f}-{hi:.2f}"


def test_findings_say_what_non_overlapping_intervals_show() -> None:
    small, middle, large, gn = (
        [30.0, 31.0, 32.0],
        [25.5, 26.0, 26.5],
        [20.0, 20.5, 21.0],
        [24.0, 24.5, 25.0],
    )
    items = findings(
        [
            group("bn", 2, small),
            group("bn", 4, middle),
            group("bn", 128, large),
            group("gn", None, gn),
        ]
    )
    assert items[0] == (
        f"BatchNorm: 31.00% error at K=2 ({interval(small)}) against 20.50% at K=128 "
        f"({interval(large)}); the 95% intervals do not overlap: the error at K=2 is higher."
    )
    assert items[1] == (
        f"BatchNorm at K=2, 31.00% ({interval(small)}), against GroupNorm, 24.50% "
        f"({interval(gn)}): the 95% intervals do not overlap: the error of BatchNorm at K=2 is "
        "higher; BatchNorm's mean error is above GroupNorm's at K = 2, 4, not at K = 128."
    )
    assert items[2].startswith("GroupNorm: statistics per image, so each ran once per seed")


def test_findings_give_no_verdict_the_intervals_do_not_support() -> None:
    wide, gn = [20.0, 25.0, 30.0], [20.0, 21.0, 22.0]
    items = findings(
        [group("bn", 2, wide), group("bn", 128, [21.0, 22.0, 23.0]), group("gn", None, gn)]
    )
    assert items[0].endswith("the 95% intervals overlap: these seeds cannot tell the two apart.")
    apart = "cannot tell the two apart; BatchNorm's mean error is above GroupNorm's at every K"
    assert apart in items[1]
    one_seed = findings([group("bn", 2, [30.0]), group("bn", 8, [20.0])])
    assert one_seed == [
        "BatchNorm: 30.00% error at K=2 (one seed) against 20.00% at K=8 (one seed); with one "
        "seed there is no interval, so no verdict on the difference."
    ]
    lower = findings([group("bn", 2, [10.0, 10.5, 11.0]), group("bn", 8, [20.0, 20.5, 21.0])])
    assert lower[0].endswith("do not overlap: the error at K=2 is lower.")


# --- a tiny real sweep through the command -----------------------------------------------------


@pytest.mark.slow
def test_micro_batch_sweep_runs_summarizes_reports_and_resumes(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """The preset at a size a test affords (MNIST, 64 images, one epoch, K in {2, 32}): GN runs
    once, beside BN's two norm batches, and every downstream file agrees."""
    out = tmp_path / "mb"
    args = ["sweep", "micro-batch", "--dataset", "mnist", "--data-dir", mnist_dir, "--out", out]
    args += ["--limit-train", 64, "--limit-test", 64, "--epochs", 1, "--seeds", 1]
    args += ["--batch-size", 32, "--norm-batch", "2,32", "--variants", "bn,gn", "--workers", 1]
    code, stdout, err = main_in_process(capsys, *args)
    assert code in (0, None), err
    assert "3 runs" in stdout
    runs = read_json(out / "study.json")["runs"]
    assert runs == ["bn/nb2/seed0", "bn/nb32/seed0", "gn/seed0"]
    summary = read_json(out / "summary.json")
    assert [(g["name"], g["norm_batch"]) for g in summary["variants"]] == [
        ("bn/nb2", 2),
        ("bn/nb32", 32),
        ("gn", None),
    ]
    assert read_json(out / "gn/seed0/run.json")["config"]["train"]["norm_batch"] is None
    assert (out / "norm_batch.png").exists()
    assert "GroupNorm (†)" in (out / "results.md").read_text()

    before = {r: (out / r / "run.json").stat().st_mtime_ns for r in runs}
    code, stdout, err = main_in_process(capsys, *args)  # resumed: every run is found finished
    assert code in (0, None), err
    assert {r: (out / r / "run.json").stat().st_mtime_ns for r in runs} == before
    assert read_json(out / "summary.json") == summary
