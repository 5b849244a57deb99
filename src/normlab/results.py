"""The study folder: the contract between training and everything that reads results.

    OUT/study.json                    configuration, package versions, device
    OUT/summary.json                  one entry per variant, per-seed values inside
    OUT/<variant>/seed<k>/metrics.csv epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds
    OUT/<variant>/seed<k>/model.pt    state_dict (load with weights_only=True)
    OUT/<variant>/seed<k>/predictions.npz  pred, conf, target for every test image
    OUT/<variant>/seed<k>/run.json    status, parameters, epochs done

Every file is written to a temporary name and renamed into place, so a killed process leaves
either the old file or the new one, never half of one. Reading needs no model in memory.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from normlab.atomic import write_atomic
from normlab.errors import NormlabError
from normlab.train import EpochMetrics, RunResult

METRIC_COLUMNS = [f.name for f in fields(EpochMetrics)]


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


def write_run(out: Path, result: RunResult) -> Path:
    """Write one run's files; run.json last, so its presence means the run is complete."""
    d = run_dir(out, result.variant.name, result.seed)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for m in result.metrics:
        writer.writerow(
            {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(m).items()}
        )
    write_atomic(d / "metrics.csv", buf.getvalue().encode())
    model = io.BytesIO()
    torch.save(result.state_dict, model)
    write_atomic(d / "model.pt", model.getvalue())
    if result.predictions:
        pred = io.BytesIO()
        np.savez_compressed(pred, **{k: v.numpy() for k, v in result.predictions.items()})
        write_atomic(d / "predictions.npz", pred.getvalue())
    write_json(
        d / "run.json",
        {
            "variant": result.variant.name,
            "seed": result.seed,
            "status": result.status,
            "diverged_epoch": result.diverged_epoch,
            "params": result.params,
            "epochs_done": len(result.metrics),
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


def read_predictions(d: Path) -> dict[str, np.ndarray]:
    """predictions.npz: pred, conf and target arrays (no pickles are loaded)."""
    with np.load(Path(d) / "predictions.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_state_dict(d: Path) -> dict[str, torch.Tensor]:
    """model.pt, loaded safely: tensors only, never arbitrary pickled objects."""
    return torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)


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
        entry["diverged_epoch"] = info["diverged_epoch"]
    if rows:
        best = max(rows, key=lambda r: r["test_acc"])
        entry.update(
            final_test_acc=rows[-1]["test_acc"],
            best_test_acc=best["test_acc"],
            best_epoch=best["epoch"],
            final_test_loss=rows[-1]["test_loss"],
        )
    return entry


def summarize(out: Path, variants: list[dict], seeds: int) -> dict:
    """summary.json: per variant the mean over seeds of each figure, the per-seed values,
    and the spread (standard deviation) when there is more than one seed."""
    out_variants = []
    for v in variants:
        runs = [
            run_summary(run_dir(out, v["name"], s))
            for s in range(seeds)
            if (run_dir(out, v["name"], s) / "run.json").exists()
        ]
        if not runs:
            continue
        entry = {
            "name": v["name"],
            "norm": v["norm"],
            "l1": v["l1"],
            "l2": v["l2"],
            "params": runs[0]["params"],
        }
        for key in ("final_test_acc", "best_test_acc", "best_epoch", "epochs", "seconds"):
            values = [r[key] for r in runs if key in r]
            if values:
                entry[key] = round(statistics.fmean(values), 4)
                if len(values) > 1 and key.endswith("acc"):
                    entry[key + "_std"] = round(statistics.stdev(values), 4)
        entry["status"] = "diverged" if any(r["status"] == "diverged" for r in runs) else "finished"
        entry["seeds"] = runs
        out_variants.append(entry)
    return {"variants": out_variants}
