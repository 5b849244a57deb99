"""Study files, presets and flags: every source's settings, as one flat mapping, become one
validated `StudyConfig`.

    dataset: mnist
    epochs: 5
    seeds: 3
    batch_size: [2, 8, 32, 128]   # a list is a grid axis
    lr: 0.05
    norm_batch: 2                 # BatchNorm's statistics over 2 images of each batch
    lr_reference_batch: 32        # lr is for batch 32 and scales linearly with the batch size
    grid:                         # or: variants: [gn, ln, bn+l1]
      - {norm: bn, l1: [0, 1e-3], l2: [0, 1e-3]}
      - {norm: [gn, ln], l2: [0, 1e-3]}

A file is read with `yaml.safe_load` (and `1e-3` is a number, as a user means it, not the
text YAML 1.1 makes of it) and validated as a whole before any work starts; every problem is
one NormlabError naming the key and what would be valid. The CLI's flags are the same keys.
"""

from __future__ import annotations

import itertools
import re
from importlib import resources
from pathlib import Path

import yaml

from normlab.config import TRAIN_KEYS, StudyConfig, Variant, parse_variants
from normlab.core.norms import NORMS
from normlab.errors import NormlabError
from normlab.validation import Strength, validated

STUDY_KEYS = ("name", "description", "dataset", "data_dir", "limit_train", "limit_test")
KEYS = (
    *STUDY_KEYS,
    "device",
    "seeds",
    "batch_size",
    "lr",
    "norm_batch",
    "lr_reference_batch",
    "variants",
    "grid",
    "l1",  # the strength `+l1` means in `variants` (default 1e-5)
    "l2",
    *TRAIN_KEYS,
)
GRID_KEYS = ("norm", "l1", "l2")


# YAML 1.1 (PyYAML) reads a float without a dot, `1e-3`, as text; a user means a number.
EXPONENT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


def as_numbers(value: object) -> object:
    """`value` from yaml.safe_load with every `1e-3`-style text read as the float it means."""
    if isinstance(value, dict):
        return {k: as_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_numbers(v) for v in value]
    if isinstance(value, str) and EXPONENT.fullmatch(value):
        return float(value)
    return value


def presets() -> dict[str, str]:
    """Preset name -> its YAML text, from the package data."""
    folder = resources.files("normlab") / "presets"
    return {
        p.name.removesuffix(".yaml"): p.read_text()
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".yaml")
    }


def read_yaml(spec: str) -> tuple[dict, str]:
    """A study file's (path) or preset's (name) mapping, and how to name it in errors."""
    path = Path(spec)
    if path.is_file():
        text, source, name = path.read_text(), str(path), path.stem
    elif spec in presets():
        text, source, name = presets()[spec], f"preset {spec!r}", spec
    else:
        raise NormlabError(
            f"{spec!r} is neither a study file nor a preset; presets: {', '.join(presets())} "
            "(see 'normlab sweep --list')"
        )
    try:
        raw = as_numbers(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise NormlabError(f"{source} is not valid YAML{line}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise NormlabError(f"{source} must be a mapping of settings (key: value), not {raw!r}")
    raw.setdefault("name", name)
    return raw, source


def load_study(spec: str, overrides: dict | None = None) -> StudyConfig:
    """A study file (path) or preset (name), with `overrides` (non-None values) on top;
    `variants` among them replaces the file's grid."""
    raw, source = read_yaml(spec)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
            if key == "variants":
                raw.pop("grid", None)
    try:
        return parse_study(raw)
    except NormlabError as exc:
        raise NormlabError(f"{source}: {exc}") from None


def listed(value: object) -> list:
    """A grid axis: a YAML list, one value, or a comma-separated string (from a flag)."""
    if isinstance(value, str):
        return [number(v.strip()) for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, list | tuple) else [value]


def number(text: str) -> object:
    """`8` -> 8, `0.1` -> 0.1, anything else unchanged (validation names what is wrong)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def floats(values: list) -> list:
    """Integers as floats (YAML's `0` for a strength); bools and text stay, to be refused."""
    return [float(v) if type(v) is int else v for v in values]


def grid_variants(grid: object) -> list[Variant]:
    """Expand `grid` (a mapping, or a list of them) to variants: norm x l1 x l2 each."""
    variants = []
    for block in grid if isinstance(grid, list) else [grid]:
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
        norms = [str(n).lower() for n in listed(block["norm"])]
        l1s, l2s = (floats(listed(block.get(key, 0.0))) for key in ("l1", "l2"))
        if any(isinstance(s, float) and s < 0 for s in [*l1s, *l2s]):
            raise NormlabError(f"grid l1 and l2 strengths must be >= 0, got {block!r}")
        cells = itertools.product(norms, l1s, l2s)
        variants += [Variant(norm=n, l1=a, l2=b) for n, a, b in cells]
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NormlabError(f"the grid lists variant {dupes[0]!r} twice; list each once")
    return variants


def study_variants(raw: dict) -> list[Variant]:
    """The variants a mapping names, as a list of names or a grid (exactly one of them)."""
    if ("variants" in raw) == ("grid" in raw):
        raise NormlabError("give either 'variants' (a list such as [gn, ln, bn+l1]) or 'grid'")
    if "grid" in raw:
        return grid_variants(raw["grid"])
    names = raw["variants"]
    if isinstance(names, list) and all(isinstance(v, str) for v in names):
        names = ",".join(names)
    if not isinstance(names, str):
        raise NormlabError(f"variants must be a list of names like bn+l1, got {names!r}")
    strengths = {k: validated(k, floats([raw[k]])[0], Strength) for k in ("l1", "l2") if k in raw}
    return parse_variants(names, **strengths)


def parse_study(raw: dict) -> StudyConfig:
    """Validate a flat mapping of settings (a study file's, or the CLI's flags) and build the
    configuration; its network is checked against the dataset's images when their shape is
    known without loading them."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise NormlabError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(KEYS)}")
    variants = study_variants(raw)
    config = StudyConfig(
        **{k: raw[k] for k in (*STUDY_KEYS, "device", "seeds", "lr_reference_batch") if k in raw},
        variants=tuple(variants),
        train={k: raw[k] for k in TRAIN_KEYS if k in raw},
        batch_sizes=listed(raw.get("batch_size", 128)),
        lrs=floats(listed(raw.get("lr", 0.1))),
        norm_batches=listed(raw["norm_batch"]) if raw.get("norm_batch") is not None else None,
    )
    config.check_network()
    return config
