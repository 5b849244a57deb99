"""Variants and the study configuration, validated once before any work starts.

A *variant* is a norm plus regularizers, written like `gn`, `bn+l1`, `gn+l2` or `bn+l1+l2`;
a regularizer may carry its own strength, `bn+l1=5e-5`. The study configuration holds every
setting a run depends on and is stored with the results, so a result is never separated from
the settings that produced it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from normlab.core.augment import parse_augment
from normlab.core.norms import NORMS
from normlab.errors import NormlabError

DEFAULT_L1 = 1e-5  # lambda for the L1 penalty lambda * sum|w| added to the loss
DEFAULT_L2 = 1e-4  # SGD weight decay
DEFAULT_VARIANTS = ("gn", "ln", "bn+l1")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


def is_number(value: object) -> bool:
    """A real number as a setting: int or float, but not bool (YAML's `yes` is not 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_count(value: object) -> bool:
    """A positive int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def spell_strength(value: float) -> str:
    """The shortest spelling of a strength that parses back to exactly `value`: `:g` where it
    is exact (5e-05), else repr. Folder names are variant names, so two different strengths
    must never share one, and name -> parse -> name must be the identity."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclass(frozen=True)
class Variant:
    """A norm and the strengths of its regularizers (0 = off)."""

    norm: str
    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise NormlabError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        for reg in ("l1", "l2"):
            value = getattr(self, reg)
            if not is_number(value) or not 0 <= value < math.inf:
                raise NormlabError(
                    f"variant {self.norm!r}: {reg} strength must be a non-negative finite "
                    f"number, got {value!r}"
                )

    @property
    def name(self) -> str:
        """The canonical spelling, also the variant's folder name: `bn+l1`, `gn+l2=0.002`."""
        parts = [self.norm]
        for reg, value, default in (("l1", self.l1, DEFAULT_L1), ("l2", self.l2, DEFAULT_L2)):
            if value:
                parts.append(reg if value == default else f"{reg}={spell_strength(value)}")
        return "+".join(parts)


def parse_variant(text: str, l1: float = DEFAULT_L1, l2: float = DEFAULT_L2) -> Variant:
    """Parse `norm[+l1[=λ]][+l2[=λ]]`; `l1`/`l2` alone take the given default strengths."""
    tokens = [t.strip() for t in text.strip().lower().split("+")]
    norm, regs = tokens[0], tokens[1:]
    if norm not in NORMS:
        raise NormlabError(
            f"unknown variant {text!r}: {norm!r} is not a norm; write NORM[+l1][+l2] with NORM "
            f"one of {', '.join(NORMS)} (e.g. bn+l1)"
        )
    strengths = {"l1": 0.0, "l2": 0.0}
    defaults = {"l1": l1, "l2": l2}
    for reg in regs:
        key, _, value = reg.partition("=")
        if key not in strengths or strengths[key]:
            raise NormlabError(
                f"unknown variant {text!r}: {reg!r} is not a regularizer (or repeats one); "
                "use +l1 and/or +l2, optionally with a strength such as +l1=5e-5"
            )
        try:
            strengths[key] = float(value) if value else defaults[key]
        except ValueError:
            raise NormlabError(
                f"unknown variant {text!r}: strength {value!r} is not a number (e.g. +l1=5e-5)"
            ) from None
        if not strengths[key] > 0 or strengths[key] == float("inf"):
            raise NormlabError(f"variant {text!r}: {key} strength must be a positive finite number")
    return Variant(norm, strengths["l1"], strengths["l2"])


def parse_variants(text: str, l1: float = DEFAULT_L1, l2: float = DEFAULT_L2) -> list[Variant]:
    """A comma-separated list of variants, duplicates refused (they would share a folder)."""
    variants = [parse_variant(t, l1, l2) for t in text.split(",") if t.strip()]
    if not variants:
        raise NormlabError("no variants given; e.g. --variants gn,ln,bn+l1")
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NormlabError(f"variant {dupes[0]!r} is listed twice; list each variant once")
    return variants


@dataclass(frozen=True)
class TrainOptions:
    """Everything about one training run except the variant and the seed."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    groups: int | None = None
    precision: str = "auto"
    augment: str = "auto"
    eval_batch_size: int = 1000  # this default means by device (train.eval_batch_size)
    compile: bool = False  # torch.compile the model: pays on a GPU, rarely on a small CPU
    model: str = "auto"  # a name in models.ARCHS or a spec string; auto = by input shape

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not is_count(value):
                flag = name.replace("_", "-")
                raise NormlabError(f"--{flag} must be a positive integer, got {value!r}")
        if not is_number(self.lr) or not 0 < self.lr < math.inf:
            raise NormlabError(f"--lr must be a positive finite number, got {self.lr!r}")
        if not is_number(self.momentum) or not 0 <= self.momentum < 1:
            raise NormlabError(f"--momentum must be a number in [0, 1), got {self.momentum!r}")
        if self.groups is not None and not is_count(self.groups):
            raise NormlabError(f"--groups must be a positive integer, got {self.groups!r}")
        if self.augment != "auto":
            parse_augment(self.augment)  # raises on an unknown step, before any work starts
        if not isinstance(self.model, str) or not self.model.strip():
            raise NormlabError(
                f"--model must be auto, a network name or a spec string, got {self.model!r}"
            )
        if self.precision not in PRECISIONS:
            raise NormlabError(
                f"--precision {self.precision!r} unknown; choose one of {', '.join(PRECISIONS)}"
            )
        if not isinstance(self.compile, bool):
            raise NormlabError(f"compile must be true or false, got {self.compile!r}")


@dataclass(frozen=True)
class RunSpec:
    """One run: a variant, a seed and the training options it uses, plus its folder.

    `path` is the run's folder relative to the study folder and names what differs between
    runs (`bn+l1/seed0`, or `bn/bs32/seed0` in a batch-size sweep); `group` is that path
    without the seed, the unit that seeds are aggregated over.
    """

    variant: Variant
    seed: int
    train: TrainOptions
    path: str

    @property
    def group(self) -> str:
        return self.path.rsplit("/", 1)[0]

    def to_dict(self) -> dict:
        """The run's full configuration, stored in its run.json."""
        return {
            "path": self.path,
            "group": self.group,
            "variant": {"name": self.variant.name, **dataclasses.asdict(self.variant)},
            "seed": self.seed,
            "train": dataclasses.asdict(self.train),
        }


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: which data, which variants, how many seeds, how to train each run."""

    dataset: str = "mnist"
    data_dir: Path = Path("data")
    variants: tuple[Variant, ...] = field(
        default_factory=lambda: tuple(parse_variant(v) for v in DEFAULT_VARIANTS)
    )
    seeds: int = 1
    train: TrainOptions = field(default_factory=TrainOptions)
    limit_train: int | None = None
    limit_test: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise NormlabError(f"--dataset must be a name or a folder, got {self.dataset!r}")
        if not isinstance(self.data_dir, (str, Path)):
            raise NormlabError(f"--data-dir must be a folder, got {self.data_dir!r}")
        object.__setattr__(self, "data_dir", Path(self.data_dir))  # frozen: coerce str once
        if not isinstance(self.train, TrainOptions):
            raise NormlabError(f"train options must be TrainOptions, got {self.train!r}")
        if not self.variants or not all(isinstance(v, Variant) for v in self.variants):
            raise NormlabError(f"variants must be a non-empty list, got {self.variants!r}")
        names = [v.name for v in self.variants]
        if len(set(names)) < len(names):
            raise NormlabError(f"a variant is listed twice in {names}; list each variant once")
        if not is_count(self.seeds):
            raise NormlabError(f"--seeds must be a positive integer, got {self.seeds!r}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and not is_count(value):
                flag = name.replace("_", "-")
                raise NormlabError(f"--{flag} must be a positive integer, got {value!r}")
        if self.device not in DEVICES:
            raise NormlabError(
                f"--device {self.device!r} unknown; choose one of {', '.join(DEVICES)}"
            )

    def runs(self) -> list[RunSpec]:
        """Every variant x every seed, all with the same options, in `variant/seed<k>`."""
        return [
            RunSpec(v, seed, self.train, f"{v.name}/seed{seed}")
            for v in self.variants
            for seed in range(self.seeds)
        ]

    def to_dict(self) -> dict:
        """JSON-ready form, stored as study.json."""
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["variants"] = [{"name": v.name, **dataclasses.asdict(v)} for v in self.variants]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StudyConfig:
        """Inverse of `to_dict` (extra top-level keys such as versions are ignored). Anything
        malformed, as in a hand-edited study.json, is a NormlabError, never a TypeError."""
        if not isinstance(d, dict):
            raise NormlabError(f"a study configuration must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["data_dir"] = kw.get("data_dir", "data")
        kw["variants"] = tuple(variant_from(v) for v in _as_list(kw.get("variants", [])))
        train = kw.get("train", {})
        if not isinstance(train, dict):
            raise NormlabError(f"train options must be a mapping, got {train!r}")
        unknown = sorted(set(train) - {f.name for f in dataclasses.fields(TrainOptions)})
        if unknown:
            raise NormlabError(f"unknown train option(s): {', '.join(map(str, unknown))}")
        kw["train"] = TrainOptions(**train)
        return cls(**kw)


def _as_list(value: object) -> list:
    if not isinstance(value, (list, tuple)):
        raise NormlabError(f"variants must be a list, got {value!r}")
    return list(value)


def variant_from(value: object) -> Variant:
    """A variant from its name (`bn+l1`) or its stored form ({"norm", "l1", "l2"})."""
    if isinstance(value, str):
        return parse_variant(value)
    if not isinstance(value, dict) or "norm" not in value:
        raise NormlabError(f"a variant must be a name such as 'bn+l1', got {value!r}")
    unknown = sorted(set(value) - {"name", "norm", "l1", "l2"})
    if unknown:
        raise NormlabError(f"unknown variant key(s): {', '.join(map(str, unknown))}")
    return Variant(value["norm"], value.get("l1", 0.0), value.get("l2", 0.0))
