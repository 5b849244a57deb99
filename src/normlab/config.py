"""One study configuration, validated once before any work starts.

A *study* is variants (`variants`: a norm plus regularizers, `bn+l1`) x batch sizes x learning
rates x norm batches (the images BatchNorm's statistics span) x seeds, all trained with the same
`TrainOptions`; `normlab run` is the study of one of each. A norm whose statistics are per image
never sees the norm batch, so it runs once per seed, not once per norm batch. CLI flags, study
files, presets and the notebook all build this one `StudyConfig`, and it is stored with the
results, so a result is never separated from the settings that produced it.

Validation is pydantic's (see `validation`), so one mechanism serves every source; its errors
become a `ConfigError` naming the setting the way the user wrote it: `epochs` in a study file,
`--epochs` on the command line.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from normlab.core.augment import parse_augment
from normlab.core.device import BY_DEVICE
from normlab.core.ghost import last_group
from normlab.core.models import ARCHS, check_network, parse_arch
from normlab.core.norms import BATCH_DEPENDENT
from normlab.data.named import INPUT_SHAPES
from normlab.errors import NormlabError
from normlab.validation import (
    FILE_KEYS,
    MAX_MOMENTUM,
    MOMENTUM_SWING,
    RANGES,
    STRICT,
    WARM_UP,
    Axis,
    ConfigError,
    Count,
    Rate,
    Validated,
)
from normlab.variants import (
    DEFAULT_L1,
    DEFAULT_L2,
    Variant,
    parse_variant,
    spell_strength,
    variant_from,
)

DEFAULT_VARIANTS = ("gn", "ln", "bn+l1")
PRECISE_BN_BATCHES = 32  # default of --precise-bn: 4,096 images at the default batch of 128
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]
Anneal = Literal["linear", "cos"]
DEVICES: tuple[str, ...] = get_args(Device)
PRECISIONS: tuple[str, ...] = get_args(Precision)


def averaged_at_most(epochs: int) -> int:
    """The most epochs `swa_epochs` may average: those after OneCycle's warm-up."""
    return math.floor(epochs * (1 - WARM_UP))


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


@dataclass(frozen=True, config=STRICT)
class TrainOptions(Validated):
    """Everything about one training run except the variant and the seed."""

    epochs: Count = 20
    batch_size: Count = 128
    lr: Rate = 0.1
    momentum: Annotated[float, Field(ge=0, le=MAX_MOMENTUM)] = 0.9  # core.train.make_optimizer
    anneal: Anneal = "linear"  # shape of both OneCycle lr ramps (core.train.make_optimizer)
    groups: Count | None = None
    precision: Precision = "auto"
    augment: str = "auto"
    eval_batch_size: Count = BY_DEVICE  # by device (core.device.eval_batch_size); else as given
    compile: bool = False  # torch.compile the model: pays on a GPU, rarely on a small CPU
    model: str = "auto"  # a name in models.ARCHS or a spec string; auto = by input shape
    norm_batch: Count | None = None  # images a BatchNorm statistic spans (core.ghost); None: all
    precise_bn: Annotated[int, Field(ge=0)] = PRECISE_BN_BATCHES  # core.evaluation; 0: off
    activation_stats: bool = False  # the norm layers' statistics (core.activations)
    swa_epochs: Annotated[int, Field(ge=0)] = 0  # weight averaging at the end (core.average)

    @field_validator("augment")
    @classmethod
    def _augment(cls, augment: str) -> str:
        if augment != "auto":
            parse_augment(augment)  # raises on an unknown step, before any work starts
        return augment

    @field_validator("model")
    @classmethod
    def _model(cls, model: str) -> str:
        if not model.strip():
            raise ConfigError("model", " must be auto, a network name or a spec string")
        if model != "auto":
            parse_arch(ARCHS.get(model, model))  # a misspelt spec fails now, not mid-study
        return model

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, momentum: float) -> float:
        """OneCycle swings the momentum `MOMENTUM_SWING` either side of this value, so a value
        closer to 0 than that (other than 0 itself, plain SGD) would swing below 0."""
        if 0 < momentum < MOMENTUM_SWING:
            raise ConfigError(
                "momentum",
                f" must be {RANGES['momentum']}, got {momentum}",
            )
        return momentum

    @model_validator(mode="after")
    def _stats_uncompiled(self) -> TrainOptions:
        """The statistics' hooks come and go mid-run, which a compiled graph would not survive
        without recompiling (core.activations), so the two are refused together."""
        if self.activation_stats and self.compile:
            raise ConfigError("activation_stats", " cannot be combined with compile")
        return self

    @model_validator(mode="after")
    def _swa_after_the_peak(self) -> TrainOptions:
        """Averaging holds the lr where the schedule stops (core.average): that must be past
        the warm-up, or the held lr would be one still rising, not the recipe's."""
        if self.swa_epochs > averaged_at_most(self.epochs):
            need = next(e for e in itertools.count(1) if averaged_at_most(e) >= self.swa_epochs)
            raise ConfigError(
                "swa_epochs",
                f" must leave the lr's warm-up (the first quarter of the epochs) to the schedule:"
                f" at most {averaged_at_most(self.epochs)} of {self.epochs} epochs, got"
                f" {self.swa_epochs}; give at least {need} epochs (--epochs) or a smaller"
                " swa_epochs",
            )
        return self


AXIS_KEYS = ("batch_size", "lr", "norm_batch")  # train options that a study can make grid axes
TRAIN_KEYS = tuple(f.name for f in fields(TrainOptions) if f.name not in AXIS_KEYS)


@dataclass(frozen=True)
class RunSpec:
    """One run: a variant, a seed and the training options it uses, plus its folder.

    `path` is the run's folder relative to the study folder and names what differs between
    runs (`bn+l1/seed0`, or `bn/bs32/seed0` in a batch-size sweep, `bn/nb4/seed0` in a
    norm-batch sweep, where a per-image norm's runs are `gn/seed0`); `group` is that path
    without the seed, the unit seeds are aggregated over.
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
            "variant": {"name": self.variant.name, **asdict(self.variant)},
            "seed": self.seed,
            "train": asdict(self.train),
        }


def default_variants() -> tuple[Variant, ...]:
    return tuple(parse_variant(v) for v in DEFAULT_VARIANTS)


def ghost_group(batch: int, k: int | None) -> int:
    """The fewest images of a `batch` that share a statistic with norm batch `k`: the last
    group (`ghost.last_group`)."""
    return batch if k is None or k >= batch else last_group(batch, k)


def smallest_group(
    batch_sizes: Iterable[int], norm_batches: Iterable[int | None], train_images: int | None
) -> int:
    """The fewest images any training statistic spans: at every batch size (all of a split
    smaller than it, `data.batches`) and norm batch, that batch's smallest ghost group. Per
    batch size, because the smallest batch need not leave the smallest remainder: of 97
    images, batch 32 makes groups of 32 and batch 128 (all 97) a last group of one."""
    ks = tuple(norm_batches)
    batches = [bs if train_images is None else min(bs, train_images) for bs in batch_sizes]
    return min(ghost_group(batch, k) for batch in batches for k in ks)


@dataclass(frozen=True, config=STRICT)
class StudyConfig(Validated):
    """A whole study: which data, which variants, how many seeds, the grid of batch sizes,
    learning rates and norm batches, and how to train each run. `train.batch_size`, `train.lr`
    and `train.norm_batch` are the first grid point, the whole grid for `normlab run`; without
    axes, `train`'s values are the grid."""

    dataset: Annotated[str, Field(min_length=1)] = "mnist"
    data_dir: Annotated[Path, Field(strict=False)] = Path("data")
    variants: Annotated[tuple[Variant, ...], Field(strict=False)] = Field(
        default_factory=default_variants
    )
    seeds: Count = 1
    train: TrainOptions = Field(default_factory=TrainOptions)
    batch_sizes: Annotated[tuple[Count, ...], Axis] | None = None
    lrs: Annotated[tuple[Rate, ...], Axis] | None = None
    norm_batches: Annotated[tuple[Count | None, ...], Axis] | None = None
    lr_reference_batch: Count | None = None
    limit_train: Count | None = None
    limit_test: Count | None = None
    device: Device = "auto"
    name: str = "study"
    description: str = ""

    @field_validator("variants", mode="before")
    @classmethod
    def _variants(cls, value: object) -> tuple[Variant, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError("variants", f" must be a non-empty list, got {value!r}")
        return tuple(variant_from(v) for v in value)

    @field_validator("train", mode="before")
    @classmethod
    def _train(cls, value: object) -> TrainOptions:
        if isinstance(value, dict):
            return TrainOptions(**value)
        return value  # type: ignore[return-value]

    @field_validator("batch_sizes", "lrs", "norm_batches")
    @classmethod
    def _distinct(cls, axis: tuple | None, info: Any) -> tuple | None:
        if axis is not None and len(set(axis)) < len(axis):
            key = FILE_KEYS[info.field_name]
            raise ConfigError(key, f" must list distinct values, got {list(axis)!r}")
        return axis

    @model_validator(mode="after")
    def _grid(self) -> StudyConfig:
        """The axes and `train` agree (the axes win: they are what runs), every norm batch
        divides every batch size, and no two runs share a folder."""
        sizes = self.batch_sizes or (self.train.batch_size,)
        lrs = self.lrs or (self.train.lr,)
        norm_batches = self.norm_batches or (self.train.norm_batch,)
        object.__setattr__(self, "batch_sizes", sizes)
        object.__setattr__(self, "lrs", lrs)
        object.__setattr__(self, "norm_batches", norm_batches)
        train = replace(self.train, batch_size=sizes[0], lr=lrs[0], norm_batch=norm_batches[0])
        object.__setattr__(self, "train", train)
        bad = [f"{k} does not divide {b}" for k in norm_batches for b in sizes if k and b % k]
        if bad:  # a ghost batch is a part of every training batch
            raise ConfigError("norm_batch", f" must divide the batch size: {bad[0]}")
        self.runs()
        return self

    def lr_for(self, lr: float, batch_size: int) -> float:
        """The learning rate a run uses: scaled linearly with its batch size when a reference
        batch is set (Goyal et al. 2017), so small batches do not take huge noisy steps."""
        if self.lr_reference_batch is None:
            return lr
        return lr * batch_size / self.lr_reference_batch

    def runs(self) -> list[RunSpec]:
        """Every variant x batch size x learning rate x norm batch x seed, each in a folder of
        its own: `bn+l1/seed0`, `bn/bs32/seed0`, `bn/bs32-lr0.1/seed0`, `bn/nb4/seed0` (only what
        varies is named).

        A norm with per-image statistics (every norm but `BATCH_DEPENDENT`'s) computes the same
        network under every norm batch, so it is not expanded over them: one run per seed, with
        norm_batch None and no `nbK` in its folder (`gn/seed0` beside `bn/nb4/seed0`), where
        retraining it would only spend compute on copies.

        Learning rates are spelled like strengths (exactly, so 0.1 and 0.1000001 never share
        `lr0.1`); two runs that would still share a folder are refused before any work starts.
        """
        sizes, lrs, seeds = self.batch_sizes, self.lrs, range(self.seeds)
        runs = []
        for v in self.variants:
            ks = self.norm_batches if v.norm in BATCH_DEPENDENT else (None,)
            for bs, lr, k, seed in itertools.product(sizes, lrs, ks, seeds):
                parts = [f"bs{bs}"] if len(sizes) > 1 else []
                parts += [f"lr{spell_strength(lr)}"] if len(lrs) > 1 else []
                parts += [f"nb{k or bs}"] if len(ks) > 1 else []
                middle = "-".join(parts) + "/" if parts else ""
                opts = replace(self.train, batch_size=bs, lr=self.lr_for(lr, bs), norm_batch=k)
                runs.append(RunSpec(v, seed, opts, f"{v.name}/{middle}seed{seed}"))
        paths = [r.path for r in runs]
        if len(set(paths)) < len(paths):
            twice = next(p for p in paths if paths.count(p) > 1)
            raise NormlabError(
                f"two runs would share the folder {twice!r}; make their settings differ"
            )
        return runs

    def check_network(
        self, input_shape: tuple[int, int, int] | None = None, train_size: int | None = None
    ) -> None:
        """Build every variant's network and push a dummy batch through it, so that a spec
        that does not fit the images, a group count that does not divide a width, or a batch
        of one reaching BatchNorm fails before a run starts. Called when the configuration is
        read (with the named dataset's known shape) and again once the data is loaded (an
        image folder's shape and the training split's size are known only then)."""
        shape = input_shape or INPUT_SHAPES.get(self.dataset)
        limits = [n for n in (self.limit_train, train_size) if n is not None]
        group = smallest_group(self.batch_sizes, self.norm_batches, min(limits, default=None))
        norms = (v.norm for v in self.variants)
        check_network(self.train.model, shape, norms, self.train.groups, group)

    def to_dict(self) -> dict:
        """JSON-ready form, stored as study.json's `config`."""
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["variants"] = [{"name": v.name, **asdict(v)} for v in self.variants]
        d.update({axis: list(d[axis]) for axis in ("batch_sizes", "lrs", "norm_batches")})
        return d

    def settings(self) -> dict:
        """What results depend on: `to_dict` without the name and description (a study
        renamed, or written before studies had names, is still the same study)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("name", "description")}

    @classmethod
    def from_dict(cls, d: object) -> StudyConfig:
        """Inverse of `to_dict`; also reads the forms older versions stored (without grid
        axes, or without train options added since, which take their defaults: what those
        versions ran with). Anything malformed is a NormlabError, never a TypeError."""
        if not isinstance(d, dict):
            raise NormlabError(f"a study configuration must be a mapping, got {type(d).__name__}")
        return cls(**d)
