"""Study files, presets, the sweep runner with its executors, resume, aggregation, TensorBoard."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from rich.progress import Progress

from normlab.cli.display import RichReporter
from normlab.config import RunSpec, StudyConfig, TrainOptions, Variant, parse_variant
from normlab.core.models import ARCHS, Net, count_params
from normlab.core.records import EpochMetrics
from normlab.data import steps_per_epoch
from normlab.errors import NormlabError
from normlab.report import sweep_figures
from normlab.report.sweep_figures import write_sweep_report
from normlab.run import executors
from normlab.run import study as study_module
from normlab.run.executors import (
    AutoExecutor,
    LocalExecutor,
    PoolExecutor,
    available_cores,
    make_executor,
)
from normlab.run.jobs import Job
from normlab.run.progress import Reporter
from normlab.run.raycluster import RayExecutor, ray_uses_gpu
from normlab.run.study import load_study_data, run_study
from normlab.store.results import mean_ci, read_json, read_metrics, read_predictions
from normlab.studyfile import load_study, parse_study, presets
from tests.conftest import REPO, captured_figures

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


def test_the_under_8k_preset_is_the_searched_recipe_under_8000_parameters() -> None:
    """Issue 13's tier: one network under 8,000 parameters with every variant the preset lists,
    and the recipe of the committed study it reproduces (docs/results/mnist-8k/swa5-g2.yaml, with
    the network by name and seeds 0 and 1)."""
    preset = load_study("under-8k")
    searched = load_study(str(REPO / "docs" / "results" / "mnist-8k" / "swa5-g2.yaml"))
    assert preset.train == dataclasses.replace(searched.train, model="mnist-8k-h3")
    assert ARCHS["mnist-8k-h3"] == searched.train.model and preset.seeds == 2
    assert [v.name for v in preset.variants] == ["gn", "ln", "bn", "bn+l1"]
    for variant in preset.variants:
        net = Net(variant.norm, arch=ARCHS["mnist-8k-h3"], groups=preset.train.groups)
        assert count_params(net) < 8_000


def test_presets_expand_to_the_runs_the_issue_names() -> None:
    assert {"assignment", "l1-l2-grid", "batch-size", "under-8k"} <= set(presets())
    grid = load_study("l1-l2-grid")
    runs = grid.runs()
    assert len(runs) == 15
    bn = {(r.variant.l1, r.variant.l2) for r in runs if r.variant.norm == "bn"}
    assert bn == {(a, b) for a in (0, 1e-3, 2e-3) for b in (0, 1e-3, 2e-3)}
    for norm in ("gn", "ln"):
        cells = {(r.variant.l1, r.variant.l2) for r in runs if r.variant.norm == norm}
        assert cells == {(0.0, b) for b in (0, 1e-3, 2e-3)}
    assert len({r.path for r in runs}) == 15
    assignment = load_study("assignment")
    assert [r.path for r in assignment.runs()] == ["gn/seed0", "ln/seed0", "bn+l1/seed0"]
    assert assignment.train.epochs == 20


def test_batch_size_preset_scales_lr_and_sees_the_same_images() -> None:
    config = load_study("batch-size")
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
    config = load_study(str(f))
    assert len(config.runs()) == 8
    assert config.runs()[1].path == "bn/lr0.2/seed0"
    assert config.variants[1] == parse_variant("bn+l1=1e-3")  # '1e-3' is text to YAML
    changed = load_study(str(f), {"variants": "ln", "epochs": 5, "batch_size": "8,16", "lr": None})
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
        ({"variants": ["gn"], "model": 3}, "model must be a string"),
        ({"variants": ["gn"], "model": "16 Q"}, "bad architecture token 'Q'"),
        ({"variants": ["gn"], "compile": "yes"}, "compile must be true or false"),
    ],
)
def test_bad_study_files_are_refused_clearly(raw: dict, message: str) -> None:
    with pytest.raises(NormlabError, match=message.replace("(", r"\(")):
        parse_study({"name": "x", **raw})


def test_load_study_names_the_file_and_refuses_non_mappings(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("- gn\n- ln\n")
    with pytest.raises(NormlabError, match=r"bad.yaml must be a mapping"):
        load_study(str(f))
    f.write_text("variants: [gn\n")
    with pytest.raises(NormlabError, match=r"bad.yaml is not valid YAML at line"):
        load_study(str(f))
    f.write_text("variants: [gn]\nepochs: -1\n")
    with pytest.raises(NormlabError, match=r"bad.yaml: epochs must be"):
        load_study(str(f))
    with pytest.raises(NormlabError, match="neither a study file nor a preset"):
        load_study(str(tmp_path / "missing.yaml"))


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
    assert isinstance(make_executor(), AutoExecutor)
    assert isinstance(make_executor("1"), LocalExecutor)
    with pytest.raises(NormlabError, match="exclude each other"):
        make_executor(2, "auto")
    with pytest.raises(NormlabError, match="--workers must be a positive integer"):
        PoolExecutor(0)
    for bad in ("0", "two", "-1"):
        with pytest.raises(NormlabError, match="--workers must be auto or a positive integer"):
            make_executor(bad)


@pytest.mark.parametrize(
    ("device", "cores", "threads", "runs", "workers"),
    [
        ("cpu", 2, 2, 3, 3),
        ("cpu", 2, 2, 5, 3),
        ("cpu", 4, 4, 3, 3),
        ("cpu", 4, 4, 9, 5),
        ("cpu", 2, 1, 3, None),  # OMP_NUM_THREADS=1: this process's one thread, no pool
        ("cpu", 2, 2, 1, None),
        ("cpu", 1, 1, 3, None),
        ("cuda", 2, 2, 3, None),
    ],
)
def test_auto_workers_one_single_threaded_process_per_run_up_to_one_more_than_the_cores(
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    cores: int,
    threads: int,
    runs: int,
    workers: int | None,
) -> None:
    """Planned on the study's runs, so a resumed study's last run trains as the others did."""
    monkeypatch.setattr(executors, "available_cores", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    auto = AutoExecutor()
    planned = auto.plan(runs, torch.device(device))
    if workers is None:
        assert auto.pool is None and planned == threads
    else:
        assert (auto.pool.workers, auto.pool.threads, planned) == (workers, 1, 1)


# --- running sweeps on real data ------------------------------------------------------------


@pytest.mark.slow
def test_sweep_writes_runs_aggregates_seeds_and_resumes(tmp_path: Path, mnist_dir: Path) -> None:
    config = parse_study(tiny(mnist_dir, variants=["gn"], batch_size=[16, 32], seeds=2))
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

    changed = parse_study(tiny(mnist_dir, variants=["gn"], batch_size=[16, 32], seeds=3))
    with pytest.raises(NormlabError, match="differs in: seeds"):
        run_study(changed, out)


@pytest.mark.slow
def test_pool_executor_matches_local(tmp_path: Path, mnist_dir: Path) -> None:
    config = parse_study(tiny(mnist_dir, variants=["bn", "ln"]))
    pool = PoolExecutor(2)
    # Identical numbers need identical reduction orders: the local run gets the thread count
    # each pool worker gets (cores // workers), whatever machine the test runs on.
    threads = torch.get_num_threads()
    torch.set_num_threads(pool.threads)
    try:
        run_study(config, tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    run_study(config, tmp_path / "pool", executor=pool)
    for run in config.runs():
        a, b = tmp_path / "local" / run.path, tmp_path / "pool" / run.path
        losses = [r["test_loss"] for r in read_metrics(a)]
        assert losses == [r["test_loss"] for r in read_metrics(b)]
        np.testing.assert_array_equal(read_predictions(a)["conf"], read_predictions(b)["conf"])


@pytest.mark.slow
def test_tensorboard_events_read_back(tmp_path: Path, mnist_dir: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = parse_study(tiny(mnist_dir, variants=["bn+l1"]))
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
    assert hp["variant"].string_value == "bn+l1" and hp["anneal"].string_value == "linear"
    assert hp["batch_size"].number_value == 32
    assert math.isclose(hp["l1"].number_value, 1e-5)


# --- run folders, executors' choices, imports ------------------------------------------------


def test_study_file_chooses_the_network_and_compile() -> None:
    config = parse_study({"name": "x", "variants": ["gn"], "model": "cifar", "compile": True})
    assert config.train.model == "cifar" and config.train.compile is True
    assert all(r.train.model == "cifar" for r in config.runs())


def test_close_learning_rates_get_folders_of_their_own() -> None:
    config = parse_study({"name": "x", "variants": ["gn"], "lr": [0.1, 0.1000001]})
    assert [r.path for r in config.runs()] == ["gn/lr0.1/seed0", "gn/lr0.1000001/seed0"]
    with pytest.raises(NormlabError, match="share the folder 'gn/seed0'"):
        StudyConfig(variants=(parse_variant("gn"), parse_variant("gn")), batch_sizes=(32,))


@pytest.mark.parametrize(
    ("device", "cluster_gpus", "gpu"),
    [
        ("cpu", 0, False),
        ("cpu", 4, False),
        ("auto", 0, False),
        ("auto", 2, True),
        ("cuda", 1, True),
    ],
)
def test_ray_takes_gpus_only_for_auto_or_cuda(device: str, cluster_gpus: int, gpu: bool) -> None:
    assert ray_uses_gpu(device, cluster_gpus) is gpu


def test_ray_refuses_cuda_on_a_cluster_without_gpus() -> None:
    with pytest.raises(NormlabError, match="cluster has no GPU"):
        ray_uses_gpu("cuda", 0)


def test_executor_threads_and_cpus_per_run() -> None:
    assert PoolExecutor(2).threads == max(1, available_cores() // 2)
    assert PoolExecutor(1, 3).threads == 3
    ray = make_executor(1, "127.0.0.1:1", cpus_per_run=4)
    assert isinstance(ray, RayExecutor) and ray.cpus == 4
    with pytest.raises(NormlabError, match="--cpus-per-run is for Ray"):
        make_executor(2, cpus_per_run=2)
    with pytest.raises(NormlabError, match="--cpus-per-run must be a positive integer"):
        make_executor(1, "127.0.0.1:1", cpus_per_run=0)


def test_executors_do_not_import_the_study() -> None:
    code = "import sys, normlab.run.executors; sys.exit('normlab.run.study' in sys.modules)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# --- sweep figures ----------------------------------------------------------------------------


def group(norm: str, l1: float, l2: float, bs: int, lr: float, acc: float) -> dict:
    """A summary group as results.summarize writes it, named as sweep.py names folders."""
    variant = Variant(norm, l1, l2).name
    return {
        "name": f"{variant}/bs{bs}-lr{lr:g}",
        "variant": variant,
        "norm": norm,
        "l1": l1,
        "l2": l2,
        "batch_size": bs,
        "lr": lr,
        "final_test_acc": acc,
        "seeds": [{"final_test_acc": acc}],
        "status": "finished",
    }


def grid_summary(out: Path) -> dict:
    """bn over l1 x l2 (2 x 2), swept over two batch sizes and two learning rates."""
    groups = [
        group("bn", l1, l2, bs, lr, 90 + l1 * 1000 + l2 * 100 + bs / 100 + lr)
        for l1 in (0.0, 1e-3)
        for l2 in (0.0, 1e-3)
        for bs in (16, 64)
        for lr in (0.1, 0.2)
    ]
    out.mkdir(parents=True, exist_ok=True)
    summary = {"variants": groups}
    (out / "summary.json").write_text(json.dumps(summary))
    return summary


def test_sweep_figures_keep_every_batch_size_and_lr_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = grid_summary(tmp_path)
    figures = captured_figures(monkeypatch, sweep_figures)
    written = write_sweep_report(tmp_path)
    assert [p.name for p in written] == ["results.md", "batch_size.png", "heatmap.png"]

    # A panel per lr, a line per variant in each, through both batch sizes in order, with that
    # panel's errors; a variant keeps its colour from panel to panel.
    panels = figures["batch_size.png"].axes
    assert [a.get_title() for a in panels] == ["lr0.1", "lr0.2"]
    colours = []
    for ax, lr in zip(panels, (0.1, 0.2), strict=True):
        lines = ax.get_lines()
        assert len(lines) == 4 and len({line.get_label() for line in lines}) == 4
        assert all(list(line.get_xdata()) == [16, 64] for line in lines)
        want = sorted(100 - g["final_test_acc"] for g in summary["variants"] if g["lr"] == lr)
        assert sorted(y for line in lines for y in line.get_ydata()) == pytest.approx(want)
        colours.append({line.get_label(): line.get_color() for line in lines})
    assert colours[0] == colours[1] and len(set(colours[0].values())) == 4
    # The shared error axis starts at 0 and ends just above the highest error, not at 100.
    highest = max(100 - g["final_test_acc"] for g in summary["variants"])
    for ax in panels:
        assert ax.get_ylim()[0] == 0 and highest < ax.get_ylim()[1] <= 1.1 * highest + 1e-9

    # A heatmap panel per (norm, batch size, lr), each with all four cells and its own values.
    panels = [a for a in figures["heatmap.png"].axes if a.get_images()]
    assert len(panels) == 4
    shown = {
        (bs, lr): a.get_images()[0].get_array()
        for a, (bs, lr) in zip(panels, [(16, 0.1), (16, 0.2), (64, 0.1), (64, 0.2)], strict=True)
    }
    for (bs, lr), cells in shown.items():
        want = [
            [100 - g["final_test_acc"] for g in summary["variants"] if g["l1"] == l1
             and g["batch_size"] == bs and g["lr"] == lr]
            for l1 in (0.0, 1e-3)
        ]  # fmt: skip
        np.testing.assert_allclose(np.asarray(cells), want)


def test_batch_size_axis_reaches_above_the_highest_band_and_stops_at_100(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error axis ends just above the highest mark, band included, and never past 100."""
    for top_acc, want_top in ((96.0, 1.1 * 4.0), (1.0, 100.0)):
        low, high = group("bn", 0, 0, 8, 0.1, 99.0), group("bn", 0, 0, 32, 0.1, 98.5)
        low["final_test_acc_ci95"] = [top_acc, 99.5]  # an interval reaching far above the mean
        out = tmp_path / str(top_acc)
        out.mkdir()
        (out / "summary.json").write_text(json.dumps({"variants": [low, high]}))
        figures = captured_figures(monkeypatch, sweep_figures)
        write_sweep_report(out)
        (ax,) = figures["batch_size.png"].axes
        assert ax.get_ylim() == pytest.approx((0.0, want_top))


def test_a_heatmap_too_large_to_read_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid_summary(tmp_path)
    monkeypatch.setattr(sweep_figures, "MAX_PANELS", 3)
    written = write_sweep_report(tmp_path)
    assert [p.name for p in written] == ["results.md", "batch_size.png"]
    assert (
        "heatmap.png not drawn: the l1 x l2 grid would need 4 panels"
        in (tmp_path / "results.md").read_text()
    )


# --- a failing run in a pool ------------------------------------------------------------------


class Recorder(Reporter):
    """Keeps the reporter calls as (hook, run path) pairs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def run_started(self, run: RunSpec, total_steps: int, done_steps: int) -> None:
        self.calls.append(("started", run.path))

    def epoch_done(self, run: RunSpec, metrics: object) -> None:
        self.calls.append(("epoch", run.path))


@pytest.mark.slow
def test_pool_writes_the_other_runs_when_one_fails(mnist_dir: Path) -> None:
    config = parse_study(tiny(mnist_dir, variants=["gn", "ln"], epochs=1, limit_train=64))
    data = load_study_data(config, torch.device("cpu"))
    good = config.runs()
    # Five poolings take 28 pixels to 0: the forward pass raises inside the worker.
    broken = TrainOptions(**{**dataclasses.asdict(good[0].train), "model": "8 M M M M M"})
    bad = RunSpec(good[0].variant, 0, broken, "broken/seed0")
    jobs = [Job(good[0]), Job(bad), Job(good[1])]
    written: list[str] = []
    reporter = Recorder()
    with pytest.raises(NormlabError) as info:
        PoolExecutor(2, 1).execute(
            jobs, data, "cpu", reporter, lambda job, result: written.append(job.run.path)
        )
    message = str(info.value)
    assert message.startswith("1 of 3 run(s) failed (broken/seed0: RuntimeError: ")
    assert "\n" not in message and "Traceback" not in message
    assert sorted(written) == ["gn/seed0", "ln/seed0"]
    for path in written:
        assert reporter.calls.count(("started", path)) == 1
        assert reporter.calls.count(("epoch", path)) == 1


def test_a_resumed_study_keeps_the_network_it_started_with(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--model auto` resolves by input shape; a version whose default network changed must
    not finish an old folder's runs on another network."""
    config = parse_study(tiny(mnist_dir, variants=["gn"], seeds=2, epochs=1, limit_train=64))
    run_study(config, tmp_path / "out")
    assert read_json(tmp_path / "out/study.json")["data"]["network"] == ARCHS["mnist-s7"]
    monkeypatch.setattr(study_module, "choose_arch", lambda shape, model: "8 M 8")
    with pytest.raises(NormlabError, match=r"was trained with network '.*', but it would now"):
        run_study(config, tmp_path / "out")


@pytest.mark.parametrize(
    ("folder", "network"), [("mnist", ARCHS["mnist"]), ("cifar10", ARCHS["cifar"])]
)
def test_folders_from_before_the_network_record_name_the_network_they_trained(
    folder: str, network: str
) -> None:
    """The committed studies predate the network record: they are checked against the network
    their `--model auto` resolved to, so a future default cannot resume them silently."""
    stored = json.loads((REPO / "docs/results" / folder / "study.json").read_text())
    assert "network" not in stored["data"]
    assert study_module.stored_network(stored) == network


def test_progress_bars_follow_concurrent_runs_epoch_by_epoch() -> None:
    """Pool runs report epochs, not steps, and several run at once: each keeps its own bar,
    moved to its finished epochs, and removed when that run (not the last started) ends."""
    a, b = parse_study(tiny(Path("x"), variants=["gn", "ln"])).runs()
    progress = Progress(console=Console(file=StringIO()))
    reporter = RichReporter(progress)
    reporter.run_started(a, 2 * 8, 0)
    reporter.run_started(b, 2 * 8, 0)
    reporter.epoch_done(a, EpochMetrics(1, 0.5, 80.0, 0.4, 85.0, 0.05, 1.0))
    bars = {t.description: t for t in progress.tasks}
    assert (bars["gn/seed0"].completed, bars["ln/seed0"].completed) == (8, 0)
    reporter.run_done(a, "finished", False)
    assert [t.description for t in progress.tasks] == ["ln/seed0"]
