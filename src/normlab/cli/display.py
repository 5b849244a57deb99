"""What the terminal shows: progress bars and a line per epoch while a study runs, and the
tables at the end. Only the CLI draws; the library reports through `Reporter` hooks."""

from __future__ import annotations

import resource
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from normlab.config import RunSpec
from normlab.core.records import EpochMetrics
from normlab.report.doc import Block, Heading, Para
from normlab.report.doc import Table as DocTable
from normlab.run.progress import Reporter

console = Console()
err_console = Console(stderr=True)


class RichReporter(Reporter):
    """Draws one progress bar per run and prints a line per finished epoch. Runs in this process
    move their bar step by step; runs in other processes (several at once) move theirs an epoch
    at a time, as their epochs arrive."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, tuple[int, int]] = {}  # run path -> (bar, steps per epoch)
        self.current: int | None = None  # the bar `step` advances: the run in this process

    def run_started(self, run: RunSpec, total_steps: int, done_steps: int) -> None:
        if done_steps:
            self.progress.console.print(
                f"{run.path:>16}: resuming from its checkpoint "
                f"({done_steps}/{total_steps} steps already done)"
            )
        self.current = self.progress.add_task(run.path, total=total_steps, completed=done_steps)
        self.tasks[run.path] = (self.current, total_steps // run.train.epochs)

    def step(self) -> None:
        self.progress.advance(self.current)

    def epoch_done(self, run: RunSpec, m: EpochMetrics) -> None:
        bar, per_epoch = self.tasks[run.path]
        self.progress.update(bar, completed=m.epoch * per_epoch)
        self.progress.console.print(
            f"{run.path:>16} epoch {m.epoch:>3}  "
            f"train loss {m.train_loss:.4f} acc {m.train_acc:6.2f}%  "
            f"test loss {m.test_loss:.4f} acc {m.test_acc:6.2f}%  "
            f"lr {m.lr:.4f}  {m.seconds:5.1f}s"
        )

    def run_done(self, run: RunSpec, status: str, skipped: bool) -> None:
        if skipped:
            self.progress.console.print(f"{run.path:>16}: already {status} in this folder, skipped")
        elif status == "diverged":
            self.progress.console.print(f"[red]{run.path:>16}: diverged (non-finite loss)[/red]")
        else:
            self.progress.console.print(f"{run.path:>16}: {status}")
        if run.path in self.tasks:
            self.progress.remove_task(self.tasks.pop(run.path)[0])

    def note(self, text: str) -> None:
        self.progress.console.print(f"[yellow]note: {text}[/yellow]", highlight=False)


def summary_table(summary: dict, title: str) -> Table:
    """The end-of-study table: one row per variant."""
    table = Table(title=title)
    for col in (
        "variant",
        "params",
        "final test acc %",
        "best test acc %",
        "best epoch",
        "s / epoch",
        "status",
    ):
        table.add_column(col, justify="left" if col in ("variant", "status") else "right")
    for v in summary["variants"]:
        spread = f" ± {v['final_test_acc_std']:.2f}" if "final_test_acc_std" in v else ""
        per_epoch = v["seconds"] / v["epochs"] if v.get("epochs") else float("nan")
        table.add_row(
            v["name"],
            f"{v['params']:,}",
            f"{v['final_test_acc']:.2f}{spread}" if "final_test_acc" in v else "-",
            f"{v['best_test_acc']:.2f}" if "best_test_acc" in v else "-",
            f"{v.get('best_epoch', '-')}",
            f"{per_epoch:.1f}",
            v["status"],
        )
    return table


def progress_bars() -> Progress:
    """The progress display shared by `run` and `sweep`."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def max_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def bench_table(result: dict) -> Table:
    """The bench figures, one row per variant, with what each column counts."""
    table = Table(
        title=f"normlab bench: {result['limit_train']} training images + "
        f"{result['test_images']} test images, batch {result['batch_size']}",
        caption="img/s = training images / (train + test pass seconds); typical = the faster of "
        "num_workers 0 and 2 (w); ratio = normlab/typical; efficiency = normlab/compute-only",
    )
    for col in ("variant", "normlab img/s", "typical img/s (w)", "compute-only img/s", "ratio",
                "efficiency", "model GFLOP/s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in result["rows"]:
        table.add_row(
            row["norm"],
            f"{row['normlab_img_s']:,.0f}",
            f"{row['typical_img_s']:,.0f} ({row['typical_workers']})",
            f"{row['compute_img_s']:,.0f}",
            f"{row['ratio']:.2f}",
            f"{row['efficiency']:.2f}",
            f"{row['flops_per_s'] / 1e9:.2f}",
        )
    return table


def show_blocks(blocks: list[Block]) -> None:
    """Document blocks (as `normlab explain` builds them) as rich tables, rules and text."""
    for b in blocks:
        if isinstance(b, DocTable):
            table = Table(title=b.title)
            for i, col in enumerate(b.columns):
                table.add_column(col, justify="right" if i in b.right else "left")
            for row in b.rows:
                table.add_row(*row)
            console.print(table)
        elif isinstance(b, Heading):
            console.rule(b.text)
        elif isinstance(b, Para):
            console.print(b.text, markup=False, highlight=False)
