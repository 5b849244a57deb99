"""Study files and presets: a YAML file names the data, the training options and either a list
of variants or a grid, and expands to runs (variant x batch size x learning rate x seed).

    dataset: mnist
    epochs: 5
    seeds: 3
    batch_size: [2, 8, 32, 128]   # a list is a grid axis
    lr: 0.05
    lr_reference_batch: 32        # lr is for batch 32 and scales linearly with the batch size
    grid:                         # or: variants: [gn, ln, bn+l1]
      - {norm: bn, l1: [0, 1e-3], l2: [0, 1e-3]}
      - {norm: [gn, ln], l2: [0, 1e-3]}

A file is read with `yaml.safe_load` and validated as a whole before any work starts; every
problem is one NormlabError naming the key and what would be valid. The run folders name what
varies: `bn+l1=0.001/seed0` for variants alone, `bn/bs32/seed0` when the batch size varies,
`bn/bs32-lr0.1/seed0` when both do.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from normlab.config import (
    DEVICES,
    RunSpec,
    TrainOptions,
    Variant,
    parse_variants,
    spell_strength,
)
from normlab.core.models import check_network
from normlab.core.norms import NORMS
from normlab.data import INPUT_SHAPES
from normlab.errors import NormlabError

TRAIN_KEYS = (
    "epochs",
    "momentum",
    "groups",
    "precision",
    "augment",
    "eval_batch_size",
    "model",
    "compile",
)
KEYS = (
    "name",
    "description",
    "dataset",
    "data_dir",
    "limit_train",
    "limit_test",
    "device",
    "seeds",
    "batch_size",
    "lr",
    "lr_reference_batch",
    "variants",
    "grid",
    *TRAIN_KEYS,
)
GRID_KEYS = ("norm", "l1", "l2")


@dataclass(frozen=True)
class SweepConfig:
    """A validated study file: shared settings, the variants, and the grid axes."""

    name: str
    variants: tuple[Variant, ...]
    batch_sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    seeds: int = 1
    lr_reference_batch: int | None = None
    train: TrainOptions = field(default_factory=TrainOptions)
    dataset: str = "mnist"
    data_dir: Path = Path("data")
    limit_train: int | None = None
    limit_test: int | None = None
    device: str = "auto"
    description: str = ""

    def lr_for(self, lr: float, batch_size: int) -> float:
        """The learning rate a run uses: scaled linearly with its batch size when a reference
        batch is set (Goyal et al. 2017), so small batches do not take huge noisy steps."""
        if self.lr_reference_batch is None:
            return lr
        return lr * batch_size / self.lr_reference_batch

    def runs(self) -> list[RunSpec]:
        """Every variant x batch size x learning rate x seed, each in a folder of its own.

        Learning rates are spelled like strengths (exactly, so 0.1 and 0.1000001 never share
        `lr0.1`); a collision left anyway would make two runs overwrite one folder, so it is
        refused here, before any work starts.
        """
        runs = []
        for v, bs, lr, seed in itertools.product(
            self.variants, self.batch_sizes, self.lrs, range(self.seeds)
        ):
            parts = []
            if len(self.batch_sizes) > 1:
                parts.append(f"bs{bs}")
            if len(self.lrs) > 1:
                parts.append(f"lr{spell_strength(lr)}")
            middle = "-".join(parts) + "/" if parts else ""
            opts = dataclasses.replace(self.train, batch_size=bs, lr=self.lr_for(lr, bs))
            runs.append(RunSpec(v, seed, opts, f"{v.name}/{middle}seed{seed}"))
        paths = [r.path for r in runs]
        if len(set(paths)) < len(paths):
            twice = next(p for p in paths if paths.count(p) > 1)
            raise NormlabError(
                f"two runs would share the folder {twice!r}; make their settings differ"
            )
        return runs

    def to_dict(self) -> dict:
        """JSON-ready form, stored as study.json (compared on resume)."""
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["variants"] = [{"name": v.name, **dataclasses.asdict(v)} for v in self.variants]
        d["batch_sizes"], d["lrs"] = list(self.batch_sizes), list(self.lrs)
        return d


def presets() -> dict[str, str]:
    """Preset name -> its YAML text, from the package data."""
    folder = resources.files("normlab") / "presets"
    return {
        p.name.removesuffix(".yaml"): p.read_text()
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".yaml")
    }


def load_sweep(spec: str, overrides: dict | None = None) -> SweepConfig:
    """A study file (path) or preset (name), with `overrides` (non-None values) on top."""
    path = Path(spec)
    if path.is_file():
        text, source = path.read_text(), str(path)
    elif spec in presets():
        text, source = presets()[spec], f"preset {spec!r}"
    else:
        raise NormlabError(
            f"{spec!r} is neither a study file nor a preset; presets: {', '.join(presets())} "
            "(see 'normlab sweep --list')"
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise NormlabError(f"{source} is not valid YAML{line}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise NormlabError(f"{source} must be a mapping of settings (key: value), not {raw!r}")
    raw.setdefault("name", path.stem if path.is_file() else spec)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
            if key == "variants":  # --variants replaces the file's grid
                raw.pop("grid", None)
    try:
        return parse_sweep(raw)
    except NormlabError as exc:
        raise NormlabError(f"{source}: {exc}") from None


def _integer(key: str, value: object, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NormlabError(f"{key} must be a positive integer, got {value!r}")
    return value


def _number(key: str, value: object) -> float:
    """A float; also from a string, since YAML reads `1e-3` (no dot) as text."""
    if isinstance(value, bool):
        raise NormlabError(f"{key} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise NormlabError(f"{key} must be a number, got {value!r}") from None


def _listed(value: object) -> list:
    """A grid axis: a YAML list, one value, or a comma-separated string (from the CLI)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, list | tuple) else [value]


def _int_axis(key: str, value: object) -> tuple[int, ...]:
    items = []
    for v in _listed(value):
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        items.append(_integer(key, v))
    if not items or len(set(items)) != len(items):
        raise NormlabError(f"{key} must list one or more distinct values, got {value!r}")
    return tuple(items)  # type: ignore[arg-type]


def _lr_axis(value: object) -> tuple[float, ...]:
    items = [_number("lr", v) for v in _listed(value)]
    if not items or len(set(items)) != len(items) or not all(0 < v < float("inf") for v in items):
        raise NormlabError(f"lr must list one or more distinct positive numbers, got {value!r}")
    return tuple(items)


def _grid_variants(grid: object) -> list[Variant]:
    """Expand `grid` (a mapping, or a list of them) to variants: norm x l1 x l2 each."""
    blocks = grid if isinstance(grid, list) else [grid]
    variants = []
    for block in blocks:
        if not isinstance(block, dict):
            raise NormlabError(f"grid entries must be mappings of norm/l1/l2, got {block!r}")
        unknown = sorted(set(block) - set(GRID_KEYS))
        if unknown:
            raise NormlabError(
                f"unknown grid key {unknown[0]!r}; a grid entry has {', '.join(GRID_KEYS)} "
                "(batch_size and lr are top-level keys)"
            )
        if "norm" not in block:
            raise NormlabError(f"grid entry {block!r} needs a norm (one of {', '.join(NORMS)})")
        norms = [str(n).lower() for n in _listed(block["norm"])]
        for n in norms:
            if n not in NORMS:
                raise NormlabError(f"grid norm {n!r} unknown; choose from {', '.join(NORMS)}")
        strengths = {}
        for key in ("l1", "l2"):
            strengths[key] = [_number(key, v) for v in _listed(block.get(key, 0.0))]
            if not all(0 <= v < float("inf") for v in strengths[key]):
                raise NormlabError(f"grid {key} strengths must be >= 0, got {block[key]!r}")
        variants += [
            Variant(n, l1, l2) for n, l1, l2 in itertools.product(norms, *strengths.values())
        ]
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NormlabError(f"the grid lists variant {dupes[0]!r} twice; list each once")
    return variants


def parse_sweep(raw: dict) -> SweepConfig:
    """Validate a study file's mapping and build the configuration."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise NormlabError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(KEYS)}")
    if ("variants" in raw) == ("grid" in raw):
        raise NormlabError("give either 'variants' (a list such as [gn, ln, bn+l1]) or 'grid'")
    for key in (
        "name",
        "description",
        "dataset",
        "data_dir",
        "precision",
        "augment",
        "device",
        "model",
    ):
        if key in raw and not isinstance(raw[key], str):
            raise NormlabError(f"{key} must be a string, got {raw[key]!r}")
    if raw.get("device", "auto") not in DEVICES:
        raise NormlabError(f"device {raw['device']!r} unknown; choose one of {', '.join(DEVICES)}")
    if "variants" in raw:
        listed = raw["variants"]
        if not isinstance(listed, list | str) or not all(isinstance(v, str) for v in listed):
            raise NormlabError(f"variants must be a list of names like bn+l1, got {listed!r}")
        variants = parse_variants(listed if isinstance(listed, str) else ",".join(listed))
    else:
        variants = _grid_variants(raw["grid"])
    train_kw = {k: raw[k] for k in TRAIN_KEYS if k in raw}
    for key in ("epochs", "eval_batch_size"):
        if key in train_kw:
            _integer(key, train_kw[key])
    if "groups" in train_kw:
        _integer("groups", train_kw["groups"], optional=True)
    if "momentum" in train_kw:
        train_kw["momentum"] = _number("momentum", train_kw["momentum"])
    batch_sizes = _int_axis("batch_size", raw.get("batch_size", 128))
    lrs = _lr_axis(raw.get("lr", 0.1))
    dataset = raw.get("dataset", "mnist")
    # a bad group count or model spec fails now, not after the data has loaded
    model = train_kw.get("model", "auto")
    check_network(
        model, INPUT_SHAPES.get(dataset), (v.norm for v in variants), train_kw.get("groups")
    )
    return SweepConfig(
        name=raw["name"],
        description=raw.get("description", ""),
        variants=tuple(variants),
        batch_sizes=batch_sizes,
        lrs=lrs,
        seeds=_integer("seeds", raw.get("seeds", 1)),  # type: ignore[arg-type]
        lr_reference_batch=_integer(
            "lr_reference_batch", raw.get("lr_reference_batch"), optional=True
        ),
        train=TrainOptions(**train_kw),
        dataset=dataset,
        data_dir=Path(raw.get("data_dir", "data")),
        limit_train=_integer("limit_train", raw.get("limit_train"), optional=True),
        limit_test=_integer("limit_test", raw.get("limit_test"), optional=True),
        device=raw.get("device", "auto"),
    )
