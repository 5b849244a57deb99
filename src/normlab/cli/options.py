"""The options `run` and `sweep` share, declared once: every study setting as a flag named
like its study-file key (None unless given, so a file's value or the default stands), and how
the study is executed."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from normlab.config import (
    DEFAULT_L1,
    DEFAULT_L2,
    DEFAULT_VARIANTS,
    DEVICES,
    PRECISIONS,
    TrainOptions,
)
from normlab.core.models import ARCHS
from normlab.core.norms import NORMS

DEFAULT = TrainOptions()


def option(kind: Any, help: str, default: object = None) -> Any:
    """A study setting as a flag: None unless given, so that in `sweep` the study file's value
    stands, and in `run` the default named in the help."""
    shown = "" if default is None else f" (default {default}; in sweep, the study file's)"
    return Annotated[kind | None, typer.Option(help=help + shown, show_default=False)]


# The study settings as flags, each the study-file key of the same name (see studyfile).
STUDY_OPTIONS: dict[str, Any] = {
    "dataset": option(
        str,
        "mnist, fashion-mnist, cifar10, or the path of an image folder with train/<class>/ "
        "and test/<class>/ (or a .tar.gz of one).",
        "mnist",
    ),
    "data_dir": option(
        Path,
        "Where datasets live (downloaded there when missing) and where image folders are "
        "cached after decoding.",
        "data",
    ),
    "variants": option(
        str,
        f"Comma-separated variants: NORM[+l1][+l2], NORM in {', '.join(NORMS)} (in sweep, "
        "they replace the file's variants or grid).",
        ",".join(DEFAULT_VARIANTS),
    ),
    "epochs": option(int, "Epochs per run.", DEFAULT.epochs),
    "seeds": option(int, "Seeds per setting (0..N-1).", 1),
    "batch_size": option(
        str, "Training batch size; in sweep, several comma-separated are a grid.", 128
    ),
    "lr": option(
        str,
        "Peak learning rate of the OneCycle schedule; in sweep, several comma-separated are a "
        "grid, each the rate at the file's lr_reference_batch when it sets one.",
        DEFAULT.lr,
    ),
    "norm_batch": option(
        str,
        "Images that share BatchNorm's statistics (ghost batches of bn, brn, evonorm-b0) within "
        "each training batch, which the optimizer still steps on whole; must divide the batch "
        "size. In sweep, several comma-separated are a grid.",
        "the whole batch",
    ),
    "precise_bn": option(
        int,
        "Training batches over which BatchNorm's running statistics are recomputed at the end "
        "of a run to measure the test accuracy they cost (0: not measured); the model keeps "
        "its own.",
        DEFAULT.precise_bn,
    ),
    "l1": option(float, "Strength λ of +l1 (λ·Σ|w| on conv weights).", DEFAULT_L1),
    "l2": option(float, "Strength of +l2 (weight decay on conv weights).", DEFAULT_L2),
    "limit_train": option(int, "Use only the first N training images."),
    "limit_test": option(int, "Use only the first N test images."),
    "device": option(str, ", ".join(DEVICES) + ".", "auto"),
    "precision": option(
        str, f"{', '.join(PRECISIONS)}: auto is bf16 where the hardware is fast at it.", "auto"
    ),
    "groups": option(int, "Groups of gn, ws+gn and evonorm-s0.", "about 4 channels a group"),
    "augment": option(
        str,
        "auto (chosen for the dataset so that no label changes: see the study's report), "
        "none, or steps joined by '+' from digits, crop, flip, cutout.",
        "auto",
    ),
    "model": option(
        str,
        f"auto (chosen by input shape), a name ({', '.join(ARCHS)}) or a spec string such "
        "as '24s 32 32 M 40 48 H3' (its tokens: the README's Beyond MNIST section).",
        "auto",
    ),
    "compile": option(bool, "torch.compile the model (pays on a GPU).", "off"),
    "activation_stats": option(
        bool,
        "Record the mean and std of every norm layer's input and of its gradient at the run's "
        "first step and the last step of each quarter epoch (every step of an epoch of 4 steps "
        "or fewer), into activations.npz, which the report draws; not with --compile.",
        "off",
    ),
}
# How the study executes: (flag type, default), the same in `run` and `sweep`.
EXECUTION_OPTIONS: dict[str, tuple[Any, object]] = {
    "workers": (
        Annotated[
            str,
            typer.Option(
                metavar="<int|auto>",
                help="Local worker processes (on CPU, the cores shared out). auto: on a CPU, "
                "single-threaded processes, one per run up to one more than the cores; on a "
                "GPU, one.",
            ),
        ],
        "auto",
    ),
    "cpus_per_run": (
        Annotated[int, typer.Option(help="CPUs (torch threads) each Ray task asks for.")],
        1,
    ),
    "ray_address": (
        Annotated[str | None, typer.Option(help="Run each run as a task on this Ray cluster.")],
        None,
    ),
    "tensorboard": (
        Annotated[bool, typer.Option(help="Write TensorBoard event files in every run folder.")],
        False,
    ),
    "fresh": (
        Annotated[bool, typer.Option(help="Discard a study already in --out; else resume it.")],
        False,
    ),
}


def study_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a command the shared options after its own: typer builds a command's flags from
    its signature, so the shared ones are appended to it (`__signature__`), and the command
    takes them as `**settings`."""
    signature = inspect.signature(fn, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    kw = inspect.Parameter.KEYWORD_ONLY
    shared = [
        inspect.Parameter(k, kw, annotation=t, default=None) for k, t in STUDY_OPTIONS.items()
    ]
    shared += [
        inspect.Parameter(k, kw, annotation=t, default=default)
        for k, (t, default) in EXECUTION_OPTIONS.items()
    ]
    fn.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
    return fn


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def given(settings: dict) -> dict:
    """The study settings the user typed (None means not given)."""
    return {k: settings[k] for k in STUDY_OPTIONS if settings[k] is not None}
