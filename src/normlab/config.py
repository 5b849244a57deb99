"""Variants and the study configuration, validated once before any work starts.

A *variant* is a norm plus regularizers, written like `gn`, `bn+l1`, `gn+l2` or `bn+l1+l2`;
a regularizer may carry its own strength, `bn+l1=5e-5`. The study configuration holds every
setting a run depends on and is stored with the results, so a result is never separated from
the settings that produced it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from normlab.errors import NormlabError
from normlab.norms import NORMS

DEFAULT_L1 = 1e-5  # lambda for the L1 penalty lambda * sum|w| added to the loss
DEFAULT_L2 = 1e-4  # SGD weight decay
DEFAULT_VARIANTS = ("gn", "ln", "bn+l1")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Variant:
    """A norm and the strengths of its regularizers (0 = off)."""

    norm: str
    l1: float = 0.0
    l2: float = 0.0

    @property
    def name(self) -> str:
        """The canonical spelling, also the variant's folder name: `bn+l1`, `gn+l2=0.002`."""
        parts = [self.norm]
        for reg, value, default in (("l1", self.l1, DEFAULT_L1), ("l2", self.l2, DEFAULT_L2)):
            if value:
                parts.append(reg if value == default else f"{reg}={value:g}")
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
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                flag = name.replace("_", "-")
                raise NormlabError(f"--{flag} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise NormlabError(f"--lr must be positive, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise NormlabError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        if self.groups is not None and self.groups < 1:
            raise NormlabError(f"--groups must be a positive integer, got {self.groups!r}")
        if self.precision not in PRECISIONS:
            raise NormlabError(
                f"--precision {self.precision!r} unknown; choose one of {', '.join(PRECISIONS)}"
            )


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
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise NormlabError(f"--seeds must be a positive integer, got {self.seeds!r}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                flag = name.replace("_", "-")
                raise NormlabError(f"--{flag} must be a positive integer, got {value!r}")
        if self.device not in DEVICES:
            raise NormlabError(
                f"--device {self.device!r} unknown; choose one of {', '.join(DEVICES)}"
            )

    def to_dict(self) -> dict:
        """JSON-ready form, stored as study.json."""
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["variants"] = [{"name": v.name, **dataclasses.asdict(v)} for v in self.variants]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StudyConfig:
        """Inverse of `to_dict` (extra keys such as versions are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["data_dir"] = Path(kw.get("data_dir", "data"))
        kw["variants"] = tuple(Variant(v["norm"], v["l1"], v["l2"]) for v in kw.get("variants", []))
        kw["train"] = TrainOptions(**kw.get("train", {}))
        return cls(**kw)
