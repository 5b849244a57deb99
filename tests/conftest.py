"""Shared fixtures and helpers: where the real data lives, small real subsets of it, and the
real `normlab` command in a fresh process, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from normlab import cli

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    """The environment of a CLI test: this checkout's source, one thread (the suite runs
    beside other work), and a terminal wide enough that help and tables do not wrap."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def normlab_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "normlab", *map(str, args)]


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`normlab ARGS` in a fresh process; its output as text."""
    return subprocess.run(
        normlab_cmd(*args), env=cli_env(), capture_output=True, text=True, cwd=cwd, timeout=600
    )


def main_in_process(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """`normlab ARGS` through cli.main in this process (cheap: no second torch import).
    Anything but a clean exit, a traceback included, fails the test by escaping."""
    old = sys.argv
    sys.argv = ["normlab", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit status 2, exactly one line on stderr, no traceback, and every fragment in it."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("normlab: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def captured_figures(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> dict[str, Figure]:
    """Keep each figure that `module` saves, by file name, drawn, instead of only its PNG."""
    figures: dict[str, Figure] = {}
    save = module.save_figure

    def keep(fig: Figure, path: Path) -> list[Path]:
        figures[path.name] = fig
        fig.canvas.draw()
        return save(fig, path)

    monkeypatch.setattr(module, "save_figure", keep)
    return figures


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout (as in CI), or $NORMLAB_SHARED_DATA."""
    return Path(os.environ.get("NORMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    d = shared_data_dir()
    if not (d / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        if os.environ.get("CI"):
            pytest.fail(f"real MNIST missing in {d}: CI must have ../shared/data")
        pytest.skip(f"real MNIST not found in {d} (set NORMLAB_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path):
    from normlab.data import load_dataset

    return load_dataset("mnist", mnist_dir, download=False)
