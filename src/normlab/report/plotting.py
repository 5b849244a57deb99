"""What every figure shares: matplotlib on a file-only backend, one colour cycle, the band over
seeds behind a mean curve, and saving as PNG and SVG atomically (pixel grids as PNG only)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from normlab.atomic import write_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend: figures are written, never shown, and
    a headless machine has no display. Imported late so the CLI starts fast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_scale(ax: Axes) -> None:
    """A log y-axis labelled with plain numbers (0.4, 2e-05) rather than powers of ten, and
    with as many minor ticks labelled as fit: all of them on an axis (as the plotted data
    sets it) spanning less than a decade, which would otherwise show one label or none; those
    at 2 and 5 on one of up to two decades; none on a longer one."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    span = hi / lo if lo > 0 else math.inf
    shown = set(range(1, 10)) if span < 10 else {2, 5} if span < 100 else set()

    def minor(value: float, _pos: int) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if mantissa in shown else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def seed_band(ax: Axes, x: np.ndarray, values: np.ndarray, color: str) -> None:
    """The min-max band over seeds (axis 0 of `values`) behind a mean curve; nothing for one
    seed, where it would be the curve itself."""
    if values.shape[0] > 1:
        lo, hi = np.nanmin(values, 0), np.nanmax(values, 0)
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)


FORMATS = ("png", "svg")


def save_figure(fig: Figure, path: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """`path` as PNG (for the report and README) and SVG (for print), or just the `formats`
    given; closes the figure. Each file is written atomically, like everything else in a
    study folder; a format not written is removed, so a report redrawn by a later version
    leaves no stale copy of the figure beside the new one."""
    paths = [path.with_suffix(f".{fmt}") for fmt in formats]
    for p in paths:
        buf = io.BytesIO()
        fig.savefig(buf, format=p.suffix[1:], dpi=120)
        write_atomic(p, buf.getvalue())
        fig.set_layout_engine("none")  # laid out once: the next format reuses the positions
    for fmt in set(FORMATS) - set(formats):
        path.with_suffix(f".{fmt}").unlink(missing_ok=True)
    pyplot().close(fig)
    return paths
