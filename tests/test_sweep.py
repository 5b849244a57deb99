"""Study files, presets, the sweep runner with its executors, resume, aggregation, TensorBoard."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normlab.config import parse_variant
from normlab.data import steps_per_epoch
from normlab.errors import NormlabError
from normlab.executors import LocalExecutor, PoolExecutor, make_executor
from normlab.results import read_json, read_metrics, read_predictions
from normlab.stats import mean_ci
from normlab.study import run_study
from normlab.sweep import load_sweep, parse_sweep, presets
from normlab.sweep_figures import write_sweep_report

TINY = {
    "dataset": "mnist",
    "epochs": 2,
    "batch_size": 32,
    "lr": 0.05,
    "limit_train": 256,
    "limit_test": 200,
    "precision": "fp32",
    "device": "cpu",
}


def tiny(data_dir: Path, **changes: object) -> dict:
    return {"name": "tiny", **TINY, "data_dir": str(data_dir), **changes}


# --- study files -----------------------------------------------------------------------------


def test_presets_expand_to_the_runs_the_issue_names() -> None:
    assert {"assignment", "l1-l2-grid", "batch-size"} <= set(presets())
    grid = load_sweep("l1-l2-grid")
    runs = grid.runs()
    assert len(runs) == 15
    bn = {(r.variant.l1, r.variant.l2) for r in runs if r.variant.norm == "bn"}
    assert bn == {(a, b) for a in (0, 1e-3, 2e-3) for b in (0, 1e-3, 2e-3)}
    for norm in ("gn", "ln"):
        cells = {(r.variant.l1, r.variant.l2) for r in runs if r.variant.norm == norm}
        assert cells == {(0.0, b) for b in (0, 1e-3, 2e-3)}
    assert len({r.path for r in runs}) == 15
    assignment = load_sweep("assignment")
    assert [r.path for r in assignment.runs()] == ["gn/seed0", "ln/seed0", "bn+l1/seed0"]
    assert assignment.train.epochs == 20


def test_batch_size_preset_scales_lr_and_sees_the_same_images() -> None:
    config = load_sweep("batch-size")
    runs = config.runs()
    assert {r.variant.norm for r in runs} == {"bn", "gn", "ln", "in"}
    assert min(r.train.batch_size for r in runs) == 2
    assert max(r.train.batch_size for r in runs) == 128
    for r in runs:
        assert r.train.lr == pytest.approx(0.1 * r.train.batch_size / 128)
        seen = r.train.epochs * steps_per_epoch(60000, r.train.batch_size) * r.train.batch_size
        assert seen == r.train.epochs * 60000 - r.train.epochs * (60000 % r.train.batch_size)
    assert runs[0].path == "bn/bs2/seed0"


def test_overrides_replace_file_values_and_grid(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("grid: {norm: [bn, gn], l1: [0, 1e-3]}\nepochs: 3\nlr: [0.1, 0.2]\n")
    config = load_sweep(str(f))
    assert len(config.runs()) == 8
    assert config.runs()[1].path == "bn/lr0.2/seed0"
    assert config.variants[1] == parse_variant("bn+l1=1e-3")  # '1e-3' is text to YAML
    changed = load_sweep(str(f), {"variants": "ln", "epochs": 5, "batch_size": "8,16", "lr": None})
    assert [r.path for r in changed.runs()] == [
        "ln/bs8-lr0.1/seed0",
        "ln/bs8-lr0.2/seed0",
        "ln/bs16-lr0.1/seed0",
        "ln/bs16-lr0.2/seed0",
    ]
    assert changed.train.epochs == 5


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"variants": ["gn"], "epoch": 3}, "unknown key 'epoch'"),
        ({"variants": ["gn"], "epochs": "3"}, "epochs must be a positive integer"),
        ({"variants": ["gn"], "epochs": True}, "epochs must be a positive integer"),
        ({"variants": ["gn"], "seeds": 0}, "seeds must be a positive integer"),
        ({"variants": ["xn"]}, "'xn' is not a norm"),
        ({"variants": "gn", "grid": {"norm": "bn"}}, "either 'variants'"),
        ({}, "either 'variants'"),
        ({"grid": {"norm": "bn", "l3": [0]}}, "unknown grid key 'l3'"),
        ({"grid": {"l1": [0]}}, "needs a norm"),
        ({"grid": {"norm": "bn", "l1": [-1]}}, "strengths must be >= 0"),
        ({"grid": [{"norm": "bn"}, {"norm": ["bn"]}]}, "lists variant 'bn' twice"),
        ({"variants": ["gn"], "batch_size": [8, 8]}, "distinct"),
        ({"variants": ["gn"], "batch_size": 0}, "batch_size must be a positive integer"),
        ({"variants": ["gn"], "lr": "fast"}, "lr must be a number"),
        ({"variants": ["gn"], "lr": -0.1}, "positive numbers"),
        ({"variants": ["gn"], "device": "tpu"}, "device 'tpu' unknown"),
        ({"variants": ["gn"], "dataset": 3}, "dataset must be a string"),
        ({"variants": ["gn"], "groups": 5}, "groups"),
    ],
)
def test_bad_study_files_are_refused_clearly(raw: dict, message: str) -> None:
    with pytest.raises(NormlabError, match=message.replace("(", r"\(")):
        parse_sweep({"name": "x", **raw})


def test_load_sweep_names_the_file_and_refuses_non_mappings(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("- gn\n- ln\n")
    with pytest.raises(NormlabError, match=r"bad.yaml must be a mapping"):
        load_sweep(str(f))
    f.write_text("variants: [gn\n")
    with pytest.raises(NormlabError, match=r"bad.yaml is not valid YAML at line"):
        load_sweep(str(f))
    f.write_text("variants: [gn]\nepochs: -1\n")
    with pytest.raises(NormlabError, match=r"bad.yaml: epochs must be"):
        load_sweep(str(f))
    with pytest.raises(NormlabError, match="neither a study file nor a preset"):
        load_sweep(str(tmp_path / "missing.yaml"))


def test_cli_reports_a_bad_study_file_on_one_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("variants: [gn]\nbatchsize: 8\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "normlab", "sweep", str(f)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown key 'batchsize'" in proc.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "normlab", "sweep", "--list"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert listing.returncode == 0 and "l1-l2-grid" in listing.stdout


def test_make_executor_refuses_contradictions() -> None:
    assert isinstance(make_executor(), LocalExecutor)
    with pytest.raises(NormlabError, match="exclude each other"):
        make_executor(2, "auto")
    with pytest.raises(NormlabError, match="--workers must be a positive integer"):
        PoolExecutor(0)


# --- running sweeps on real data ------------------------------------------------------------


@pytest.mark.slow
def test_sweep_writes_runs_aggregates_seeds_and_resumes(tmp_path: Path, mnist_dir: Path) -> None:
    config = parse_sweep(tiny(mnist_dir, variants=["gn"], batch_size=[16, 32], seeds=2))
    out = tmp_path / "s"
    summary = run_study(config, out)
    assert [g["name"] for g in summary["variants"]] == ["gn/bs16", "gn/bs32"]
    for g in summary["variants"]:
        accs = [read_metrics(out / g["name"] / f"seed{s}")[-1]["test_acc"] for s in (0, 1)]
        mean, lo, hi = mean_ci(accs)
        assert g["final_test_acc"] == pytest.approx(mean, abs=1e-4)
        assert g["final_test_acc_ci95"] == pytest.approx([lo, hi], abs=1e-4)
        assert g["batch_size"] == int(g["name"][len("gn/bs") :])
    run = read_json(out / "gn/bs16/seed1/run.json")
    assert run["config"]["train"]["batch_size"] == 16 and run["config"]["seed"] == 1
    assert run["config"]["train"]["lr"] == 0.05
    written = write_sweep_report(out)
    assert {p.name for p in written} == {"results.md", "batch_size.png"}
    assert "| gn/bs16 | 2 |" in (out / "results.md").read_text()

    # Resume: finished runs are skipped (files untouched), a deleted one is redone identically.
    before = (out / "gn/bs32/seed0/model.pt").stat().st_mtime_ns
    redo = out / "gn/bs16/seed0"
    old_pred = read_predictions(redo)
    (redo / "run.json").unlink()
    again = run_study(config, out)
    accs = [g["final_test_acc"] for g in summary["variants"]]
    assert [g["final_test_acc"] for g in again["variants"]] == accs
    assert (out / "gn/bs32/seed0/model.pt").stat().st_mtime_ns == before
    np.testing.assert_array_equal(read_predictions(redo)["pred"], old_pred["pred"])

    changed = parse_sweep(tiny(mnist_dir, variants=["gn"], batch_size=[16, 32], seeds=3))
    with pytest.raises(NormlabError, match="differs in: seeds"):
        run_study(changed, out)


@pytest.mark.slow
def test_pool_executor_matches_local(tmp_path: Path, mnist_dir: Path) -> None:
    config = parse_sweep(tiny(mnist_dir, variants=["bn", "ln"]))
    run_study(config, tmp_path / "local")
    run_study(config, tmp_path / "pool", executor=PoolExecutor(2))
    for run in config.runs():
        a, b = tmp_path / "local" / run.path, tmp_path / "pool" / run.path
        losses = [r["test_loss"] for r in read_metrics(a)]
        assert losses == [r["test_loss"] for r in read_metrics(b)]
        np.testing.assert_array_equal(read_predictions(a)["conf"], read_predictions(b)["conf"])


@pytest.mark.slow
def test_tensorboard_events_read_back(tmp_path: Path, mnist_dir: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = parse_sweep(tiny(mnist_dir, variants=["bn+l1"]))
    out = tmp_path / "tb"
    run_study(config, out, tensorboard=True)
    run_folder = out / "bn+l1/seed0"
    acc = EventAccumulator(str(run_folder / "tensorboard"))
    acc.Reload()
    rows = read_metrics(run_folder)
    test_acc = acc.Scalars("test/accuracy")
    assert [e.step for e in test_acc] == [r["epoch"] for r in rows]
    assert [e.value for e in test_acc] == pytest.approx([r["test_acc"] for r in rows])
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(
        [r["train_loss"] for r in rows], rel=1e-5
    )
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["variant"].string_value == "bn+l1"
    assert hp["batch_size"].number_value == 32
    assert math.isclose(hp["l1"].number_value, 1e-5)
