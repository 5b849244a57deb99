"""The command line: help, one-line errors with exit status 2, and the study folder it writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli as normlab


def test_run_help_lists_the_interface() -> None:
    res = normlab("run", "--help")
    assert res.returncode == 0
    for flag in (
        "--dataset",
        "--data-dir",
        "--variants",
        "--epochs",
        "--seeds",
        "--batch-size",
        "--limit-train",
        "--limit-test",
        "--device",
        "--out",
    ):
        assert flag in res.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--variants", "gn,foo"], "unknown variant 'foo'"),
        (["--variants", "gn", "--groups", "3"], "does not divide"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], words: str, tmp_path: Path) -> None:
    res = normlab("run", *args, "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_writes_the_study_folder(mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = [
        "run",
        "--data-dir",
        str(mnist_dir),
        "--variants",
        "gn,bn+l1",
        "--epochs",
        "2",
        "--limit-train",
        "600",
        "--limit-test",
        "300",
        "--out",
        str(out),
    ]
    res = normlab(*args)
    assert res.returncode == 0, res.stderr
    study = json.loads((out / "study.json").read_text())
    assert study["config"]["train"]["epochs"] == 2
    assert study["environment"]["torch"] == torch.__version__
    summary = json.loads((out / "summary.json").read_text())
    names = [v["name"] for v in summary["variants"]]
    assert names == ["gn", "bn+l1"]
    for v in summary["variants"]:
        assert {
            "name",
            "norm",
            "l1",
            "l2",
            "params",
            "final_test_acc",
            "best_test_acc",
            "best_epoch",
            "epochs",
            "seconds",
            "seeds",
        } <= v.keys()
        assert 0 <= v["final_test_acc"] <= 100 and v["epochs"] == 2
        run = out / v["name"] / "seed0"
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == [
            "epoch",
            "train_loss",
            "train_acc",
            "test_loss",
            "test_acc",
            "lr",
            "seconds",
        ]
        assert float(rows[-1]["test_acc"]) == pytest.approx(v["final_test_acc"])
        state = torch.load(run / "model.pt", weights_only=True)
        assert any(k.endswith("weight") for k in state)
        with np.load(run / "predictions.npz", allow_pickle=False) as p:
            assert len(p["pred"]) == len(p["conf"]) == 300
            acc = 100 * (p["pred"] == p["target"]).mean()
        assert acc == pytest.approx(v["final_test_acc"], abs=1e-3)
    assert summary["variants"][1]["l1"] > 0 and summary["variants"][0]["l1"] == 0
    # Re-running the same command resumes: nothing left to do, same summary.
    again = normlab(*args)
    assert again.returncode == 0 and "skipped" in again.stdout
    assert json.loads((out / "summary.json").read_text()) == summary
