"""The study folder: the contract between training and everything that reads results.

    OUT/study.json                    configuration, package versions, device
    OUT/summary.json                  one entry per variant, per-seed values inside
    OUT/<variant>/seed<k>/metrics.csv epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds
    OUT/<variant>/seed<k>/model.pt    state_dict (load with weights_only=True)
    OUT/<variant>/seed<k>/predictions.npz  pred, conf, target (int32) for every test image
    OUT/<variant>/seed<k>/run.json    status, parameters, epochs done, the run's configuration,
                                      and for batch-dependent norms the statistics gap
    OUT/<variant>/seed<k>/activations.npz  with --activation-stats: layer (labels), epoch (of
                                      each measured step), act_mean, act_std, grad_mean,
                                      grad_std (steps x layers; see core.activations)

A diverged run (run.json status "diverged", with diverged_epoch) has metrics.csv up to its last
good epoch and no model.pt or predictions.npz: its weights are not a model anyone can use; its
activations.npz goes up to the divergence.

A sweep (`normlab sweep`) nests what else differs between runs, e.g. OUT/bn/bs32/seed0; every
run folder holds the same files, and summary.json has one entry per group of seeds.

Every file is written to a temporary name and renamed into place, so a killed process leaves
either the old file or the new one, never half of one. Reading needs no model in memory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from normlab.core.records import STAT_NAMES, ActivationStats, EpochMetrics, RunResult
from normlab.errors import NormlabError

if TYPE_CHECKING:
    from normlab.config import RunSpec
from normlab.atomic import write_atomic

METRIC_COLUMNS = [f.name for f in fields(EpochMetrics)]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a two-sided Student-t confidence interval (lo, hi) for the mean.

    One value has no spread: its interval is (nan, nan), so callers cannot mistake a single
    run for a precise one.
    """
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    from scipy import stats as sps  # ~1.5 s to import: not at start-up, where nothing needs it

    # The standard t's interval, scaled by the standard error: scipy's own loc/scale form
    # returns nan for a zero scale, and identical seeds have an interval, of width 0.
    sem = statistics.stdev(values) / math.sqrt(len(values))
    lo, hi = sps.t.interval(level, len(values) - 1)
    return mean, float(mean + sem * lo), float(mean + sem * hi)


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NormlabError(f"{path} not found; is this a normlab study folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NormlabError(f"{path} is not valid JSON ({exc}); re-run the study") from None


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return Path(out) / variant / f"seed{seed}"


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays compressed into one .npz, written atomically (read back without pickles)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue())


def activation_arrays(stats: ActivationStats) -> dict[str, np.ndarray]:
    """activations.npz's arrays: the layer labels as text (no pickle needed to read them), the
    measured steps' epochs, and each of `STAT_NAMES` as a steps x layers array."""
    values = stats.values.numpy()
    named = {name: values[:, :, i] for i, name in enumerate(STAT_NAMES)}
    return {"layer": np.array(stats.layers, dtype=str), "epoch": stats.epoch.numpy(), **named}


def write_run(out: Path, run: RunSpec, result: RunResult) -> Path:
    """Write one run's files; run.json last, so its presence means the run is complete.
    A diverged run gets no model.pt or predictions.npz (any left from before are removed)."""
    d = Path(out) / run.path
    buf = io.StringIO()
    writer = csv.DictWriter(buf, METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for m in result.metrics:
        writer.writerow(
            {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(m).items()}
        )
    write_atomic(d / "metrics.csv", buf.getvalue().encode())
    if result.status == "diverged":
        (d / "model.pt").unlink(missing_ok=True)
        (d / "predictions.npz").unlink(missing_ok=True)
    else:
        model = io.BytesIO()
        torch.save(result.state_dict, model)
        write_atomic(d / "model.pt", model.getvalue())
        write_npz(d / "predictions.npz", {k: v.numpy() for k, v in result.predictions.items()})
    if result.activations is None:  # none recorded: none from an earlier attempt stays either
        (d / "activations.npz").unlink(missing_ok=True)
    else:
        write_npz(d / "activations.npz", activation_arrays(result.activations))
    write_json(
        d / "run.json",
        {
            "variant": result.variant.name,
            "seed": result.seed,
            "status": result.status,
            "diverged_epoch": result.diverged_epoch,
            "params": result.params,
            "epochs_done": len(result.metrics),
            "config": run.to_dict(),
            "statistics_gap": asdict(result.statistics_gap) if result.statistics_gap else None,
        },
    )
    return d


def read_metrics(d: Path) -> list[dict[str, float]]:
    """metrics.csv as a list of rows, numbers parsed."""
    with open(Path(d) / "metrics.csv", newline="") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def run_file(d: Path, name: str) -> Path:
    """A run's model.pt or predictions.npz; a missing one is a NormlabError, which says why
    when the run diverged (such a run stores neither)."""
    path = Path(d) / name
    if not path.exists():
        status_file = Path(d) / "run.json"
        diverged = status_file.exists() and read_json(status_file).get("status") == "diverged"
        why = "the run diverged, so it stores no model or predictions" if diverged else "not found"
        raise NormlabError(f"{path}: {why}")
    return path


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, loaded without pickles (a tampered file cannot run code)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_predictions(d: Path) -> dict[str, np.ndarray]:
    """predictions.npz: pred, conf and target arrays."""
    return read_npz(run_file(d, "predictions.npz"))


def read_activations(d: Path) -> dict[str, np.ndarray] | None:
    """activations.npz (see `activation_arrays`), or None for a run without one: recorded
    without --activation-stats, or before it existed."""
    path = Path(d) / "activations.npz"
    return read_npz(path) if path.exists() else None


def load_state_dict(d: Path) -> dict[str, torch.Tensor]:
    """model.pt, loaded safely: tensors only, never arbitrary pickled objects."""
    return torch.load(run_file(d, "model.pt"), map_location="cpu", weights_only=True)


def run_summary(d: Path) -> dict:
    """One run's line in summary.json, from its files alone."""
    info = read_json(d / "run.json")
    rows = read_metrics(d)
    entry = {
        "seed": info["seed"],
        "status": info["status"],
        "params": info["params"],
        "epochs": len(rows),
        "seconds": round(sum(r["seconds"] for r in rows), 2),
    }
    if info["status"] == "diverged":
        # Its accuracies stop at the last good epoch: not a final result, so none is given
        # (a mean over seeds, an interval or a sweep table would take it for one).
        entry["diverged_epoch"] = info["diverged_epoch"]
    elif rows:
        best = max(rows, key=lambda r: r["test_acc"])
        entry.update(
            final_test_acc=rows[-1]["test_acc"],
            best_test_acc=best["test_acc"],
            best_epoch=best["epoch"],
            final_test_loss=rows[-1]["test_loss"],
        )
        if info.get("statistics_gap"):  # runs of batch-dependent norms (see core.evaluation)
            entry["statistics_gap"] = info["statistics_gap"]
    return entry


def summarize(out: Path, runs: list[RunSpec]) -> dict:
    """summary.json: one entry per group of seeds (a variant, in a sweep a variant with its
    batch size and learning rate) with the mean over seeds of each figure, the per-seed values,
    and for accuracies with more than one seed the standard deviation and a 95% interval.
    Diverged seeds have no accuracy to average (see `run_summary`), so they are left out."""
    groups: dict[str, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    out_groups = []
    for name, members in groups.items():
        done = [run_summary(Path(out) / r.path) for r in members if finished(out, r)]
        if not done:
            continue
        first = members[0]
        entry = {
            "name": name,
            "variant": first.variant.name,
            "norm": first.variant.norm,
            "l1": first.variant.l1,
            "l2": first.variant.l2,
            "batch_size": first.train.batch_size,
            "lr": first.train.lr,
            "norm_batch": first.train.norm_batch,
            "params": done[0]["params"],
        }
        for key in ("final_test_acc", "best_test_acc", "best_epoch", "epochs", "seconds"):
            values = [r[key] for r in done if key in r]
            if values:
                entry[key] = round(statistics.fmean(values), 4)
                if len(values) > 1 and key.endswith("acc"):
                    _, lo, hi = mean_ci(values)
                    entry[key + "_std"] = round(statistics.stdev(values), 4)
                    entry[key + "_ci95"] = [round(lo, 4), round(hi, 4)]
        entry["status"] = "diverged" if any(r["status"] == "diverged" for r in done) else "finished"
        entry["seeds"] = done
        out_groups.append(entry)
    return {"variants": out_groups}


def finished(out: Path, run: RunSpec) -> bool:
    """Whether the run's folder holds a complete run (run.json is written last)."""
    return (Path(out) / run.path / "run.json").exists()
