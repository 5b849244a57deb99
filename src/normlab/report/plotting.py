"""What every figure shares: matplotlib on a file-only backend, one colour cycle, and saving
as PNG and SVG atomically."""

from __future__ import annotations

import io
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from normlab.atomic import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend: figures are written, never shown, and
    a headless machine has no display. Imported late so the CLI starts fast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: Path) -> list[Path]:
    """`path` as PNG (for the report and README) and SVG (for print); closes the figure.
    Each file is written atomically, like everything else in a study folder."""
    paths = [path.with_suffix(".png"), path.with_suffix(".svg")]
    for p in paths:
        buf = io.BytesIO()
        fig.savefig(buf, format=p.suffix[1:], dpi=120)
        write_atomic(p, buf.getvalue())
    pyplot().close(fig)
    return paths
