"""The `normlab` command line: a thin layer that parses flags, draws progress and tables, and
turns `NormlabError` into one line on stderr with exit status 2."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer
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
from typer.exceptions import TyperException

from normlab.cli.bench import BenchRow, run_bench
from normlab.config import (
    DEFAULT_L1,
    DEFAULT_L2,
    DEFAULT_VARIANTS,
    RunSpec,
    StudyConfig,
    TrainOptions,
    parse_variants,
)
from normlab.core.models import ARCHS, Net, check_network, choose_arch, count_params, layer_summary
from normlab.core.norms import NORM_NAMES, NORMS
from normlab.core.records import EpochMetrics
from normlab.data import INPUT_SHAPES, folder_name
from normlab.errors import NormlabError
from normlab.report.doc import Heading, Para, to_markdown
from normlab.report.doc import Table as DocTable
from normlab.report.explain import example_tensor, explain_blocks, parse_values
from normlab.report.report import write_report
from normlab.run.executors import make_executor
from normlab.run.progress import Reporter
from normlab.run.study import run_study
from normlab.studyfile import load_sweep, presets

app = typer.Typer(
    help="normlab: the normalization study (BatchNorm, GroupNorm, LayerNorm), fast and "
    "reproducible.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class RichReporter(Reporter):
    """Draws one progress bar per run and prints a line per finished epoch."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: int | None = None

    def run_started(self, run: RunSpec, total_steps: int, done_steps: int) -> None:
        if done_steps:
            self.progress.console.print(
                f"{run.path:>16}: resuming from its checkpoint "
                f"({done_steps}/{total_steps} steps already done)"
            )
        self.task = self.progress.add_task(run.path, total=total_steps, completed=done_steps)

    def step(self) -> None:
        self.progress.advance(self.task)

    def epoch_done(self, run: RunSpec, m: EpochMetrics) -> None:
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
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None

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


@app.command()
def run(
    dataset: Annotated[
        str,
        typer.Option(
            help="mnist, fashion-mnist, cifar10, or the path of an image folder with "
            "train/<class>/ and test/<class>/ (or a .tar.gz of one)."
        ),
    ] = "mnist",
    data_dir: Annotated[
        Path,
        typer.Option(
            help="Where datasets live (downloaded there when missing) and where image folders "
            "are cached after decoding."
        ),
    ] = Path("data"),
    variants: Annotated[
        str,
        typer.Option(help=f"Comma-separated variants: NORM[+l1][+l2], NORM in {', '.join(NORMS)}."),
    ] = ",".join(DEFAULT_VARIANTS),
    epochs: Annotated[int, typer.Option(help="Epochs per run.")] = 20,
    seeds: Annotated[int, typer.Option(help="Seeds per variant (0..N-1).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    limit_train: Annotated[
        int | None, typer.Option(help="Use only the first N training images.")
    ] = None,
    limit_test: Annotated[
        int | None, typer.Option(help="Use only the first N test images.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[
        Path | None, typer.Option(help="Study folder [default: runs/<dataset>-<timestamp>].")
    ] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the OneCycle schedule.")] = 0.1,
    l1: Annotated[float, typer.Option(help="Strength λ of +l1 (λ·Σ|w| on conv weights).")] = (
        DEFAULT_L1
    ),
    l2: Annotated[float, typer.Option(help="Strength of +l2 (weight decay on conv weights).")] = (
        DEFAULT_L2
    ),
    groups: Annotated[
        int | None, typer.Option(help="GroupNorm groups [default: about 4 channels a group].")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where the hardware is fast at it), bf16 or fp32.")
    ] = "auto",
    fresh: Annotated[
        bool, typer.Option(help="Discard a study already in --out instead of resuming it.")
    ] = False,
    compile: Annotated[
        bool, typer.Option(help="torch.compile the model (pays on a GPU; off by default).")
    ] = False,
    augment: Annotated[
        str,
        typer.Option(
            help="auto (digits for MNIST, crop+flip otherwise), none, or steps joined by '+' "
            "from digits, crop, flip, cutout."
        ),
    ] = "auto",
    model: Annotated[
        str,
        typer.Option(
            help=f"auto (chosen by input shape), a name ({', '.join(ARCHS)}) or a spec string "
            "such as '24s 32 32 M 40 48'."
        ),
    ] = "auto",
) -> None:
    """Train every variant for every seed and write the study folder."""
    config = StudyConfig(
        dataset=dataset,
        data_dir=data_dir,
        variants=tuple(parse_variants(variants, l1, l2)),
        seeds=seeds,
        train=TrainOptions(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            groups=groups,
            precision=precision,
            compile=compile,
            augment=augment,
            model=model,
        ),
        limit_train=limit_train,
        limit_test=limit_test,
        device=device,
    )
    # Fail on a bad group count or model spec now, not after the data has loaded.
    norms, batch = (v.norm for v in config.variants), min(batch_size, limit_train or batch_size)
    check_network(model, INPUT_SHAPES.get(dataset), norms, groups, batch)
    out = out or Path("runs") / f"{folder_name(Path(dataset))}-{time.strftime('%Y%m%d-%H%M%S')}"
    resuming = "resuming the " if not fresh and (out / "study.json").exists() else ""
    console.print(
        f"normlab: {resuming}study of {', '.join(v.name for v in config.variants)} on {dataset}, "
        f"{epochs} epochs x {seeds} seed(s) -> {out}"
    )
    start = time.perf_counter()
    with progress_bars() as progress:
        summary = run_study(config, out, RichReporter(progress), fresh=fresh)
    console.print(summary_table(summary, f"{dataset}: {epochs} epochs, {seeds} seed(s)"))
    console.print(
        f"wrote {out} in {time.perf_counter() - start:.0f}s, peak memory (max RSS) "
        f"{max_rss_mib():.0f} MiB"
    )
    console.print(f"report: {write_report(out, data_dir)}")


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


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="Study folder written by `normlab run`.")],
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the test images are [default: the study's own --data-dir]."),
    ] = None,
) -> None:
    """Redraw the figures and write report.md and report.html from a stored study."""
    console.print(f"report: {write_report(out, data_dir)}")


@app.command()
def explain(
    values: Annotated[
        str | None,
        typer.Option(help="N*16 numbers for an (N, 4, 2, 2) tensor [default: seeded integers]."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the default example tensor.")] = 0,
    markdown: Annotated[
        bool, typer.Option(help="Print markdown (for a report or README).")
    ] = False,
) -> None:
    """Show, with numbers, which elements BN, LN, GN and IN normalize together."""
    x = parse_values(values) if values is not None else example_tensor(seed)
    blocks = explain_blocks(x)
    if markdown:
        print(to_markdown(blocks), end="")
        return
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


@app.command()
def bench(
    data_dir: Annotated[Path, typer.Option(help="Where MNIST lives (MNIST/raw).")] = Path("data"),
    norms: Annotated[str, typer.Option(help="Comma-separated variants to time.")] = "bn,gn,ln",
    limit_train: Annotated[
        int, typer.Option(help="Training images per epoch (the test pass uses N/6).")
    ] = 6400,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile normlab's model.")] = False,
    repeats: Annotated[
        int, typer.Option(help="Measure each figure this many times and keep the best.")
    ] = 3,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """Time normlab's epoch against a typical DataLoader pipeline and the model's compute."""

    def show(row: BenchRow) -> None:
        console.print(f"{row.norm}: normlab {row.normlab_img_s:,.0f} img/s")

    result = run_bench(data_dir, norms, limit_train, batch_size, device, compile, repeats, show)
    console.print(bench_table(result))
    console.print(
        f"model {result['flops_per_s'] / 1e9:.2f} GFLOP/s over normlab's epochs vs a "
        f"{'bf16' if result['bf16'] else 'fp32'} 1024x1024 matmul at "
        f"{result['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({result['device']}, {result['threads']} thread(s))"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_out}")


@app.command()
def sweep(
    spec: Annotated[
        str | None, typer.Argument(help="A study file (YAML) or a preset name (see --list).")
    ] = None,
    list_presets: Annotated[
        bool, typer.Option("--list", help="List the presets and exit.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Study folder [default: runs/<name>-<timestamp>].")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Override: dataset.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Override: where datasets live.")] = None,
    variants: Annotated[
        str | None, typer.Option(help="Override: comma-separated variants (replaces a grid).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override: epochs per run.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Override: seeds per setting.")] = None,
    batch_size: Annotated[
        str | None, typer.Option(help="Override: batch size(s), comma-separated.")
    ] = None,
    lr: Annotated[
        str | None,
        typer.Option(
            help="Override: learning rate(s), comma-separated; with lr_reference_batch set in "
            "the study file, each is the rate at that batch size and scales with a run's batch."
        ),
    ] = None,
    limit_train: Annotated[
        int | None, typer.Option(help="Override: use only the first N training images.")
    ] = None,
    limit_test: Annotated[
        int | None, typer.Option(help="Override: use only the first N test images.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="Override: auto, cpu or cuda.")] = None,
    precision: Annotated[str | None, typer.Option(help="Override: auto, bf16 or fp32.")] = None,
    workers: Annotated[
        int,
        typer.Option(help="Local worker processes (on CPU, the cores shared out between them)."),
    ] = 1,
    cpus_per_run: Annotated[
        int, typer.Option(help="CPUs (torch threads) each Ray task asks for; with --ray-address.")
    ] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="Run each run as a task on this Ray cluster (or 'auto').")
    ] = None,
    tensorboard: Annotated[
        bool, typer.Option(help="Write TensorBoard event files in every run folder.")
    ] = False,
    fresh: Annotated[
        bool, typer.Option(help="Discard a study already in --out instead of resuming it.")
    ] = False,
) -> None:
    """Run a study file or preset: variants or a grid x batch sizes x learning rates x seeds."""
    if list_presets:
        for name in presets():
            config = load_sweep(name)
            console.print(f"{name:>12}  {len(config.runs()):>3} runs  {config.description}")
        return
    if spec is None:
        raise NormlabError("name a study file or preset, e.g. 'normlab sweep batch-size'")
    config = load_sweep(
        spec,
        {
            "dataset": dataset,
            "data_dir": None if data_dir is None else str(data_dir),
            "variants": variants,
            "epochs": epochs,
            "seeds": seeds,
            "batch_size": batch_size,
            "lr": lr,
            "limit_train": limit_train,
            "limit_test": limit_test,
            "device": device,
            "precision": precision,
        },
    )
    executor = make_executor(workers, ray_address, cpus_per_run)
    out = out or Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs = config.runs()
    console.print(f"normlab: sweep {config.name}, {len(runs)} runs -> {out}")
    start = time.perf_counter()
    with progress_bars() as progress:
        summary = run_study(
            config, out, RichReporter(progress), fresh, executor, tensorboard=tensorboard
        )
    from normlab.report.sweep_figures import write_sweep_report

    written = write_sweep_report(out)
    console.print(summary_table(summary, f"{config.name}: {len(runs)} runs"))
    console.print(
        f"wrote {out} ({', '.join(p.name for p in written)}) in {time.perf_counter() - start:.0f}s"
    )


@app.command()
def params(
    dataset: Annotated[
        str, typer.Option(help=f"Whose network: {', '.join(INPUT_SHAPES)} (by input shape).")
    ] = "mnist",
    norm: Annotated[str, typer.Option(help="Norm to show the layers of.")] = "gn",
    groups: Annotated[int | None, typer.Option(help="GroupNorm groups.")] = None,
    model: Annotated[
        str,
        typer.Option(help=f"auto (by input shape), a name ({', '.join(ARCHS)}) or a spec string."),
    ] = "auto",
) -> None:
    """Print the network's per-layer parameter summary, and the total for every norm."""
    if dataset not in INPUT_SHAPES:
        raise NormlabError(f"unknown dataset {dataset!r}; choose one of {', '.join(INPUT_SHAPES)}")
    shape = INPUT_SHAPES[dataset]
    check_network(model, shape, NORMS, groups)
    arch = choose_arch(shape, model)
    net = Net(norm, in_channels=shape[0], groups=groups, arch=arch)
    table = Table(title=f"{dataset} network with {NORM_NAMES.get(norm, norm)}: {arch}")
    for col in ("layer", "type", "output (C, H, W)", "params"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for row in layer_summary(net, shape):
        table.add_row(row.name, row.kind, "x".join(map(str, row.out_shape)), f"{row.params:,}")
    table.add_row("", "total", "", f"{count_params(net):,}")
    console.print(table)
    totals = ", ".join(
        f"{n}: {count_params(Net(n, shape[0], groups=groups, arch=arch)):,}" for n in NORMS
    )
    console.print(f"parameters per norm: {totals}")


def fail(message: str) -> NoReturn:
    """Print `message` as exactly one line on stderr (newlines from wrapped library or OS
    messages folded) and exit with status 2."""
    line = " ".join(message.split())
    err_console.print(f"normlab: error: {line}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Entry point: usage and input errors become one line on stderr and exit status 2."""
    try:
        code = app(standalone_mode=False)
    except NormlabError as exc:
        fail(str(exc))
    except OSError as exc:  # a safety net: the library wraps the OS errors it expects
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}")
    except TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        fail(f"{exc.format_message()}{hint}")
    except (typer.Abort, KeyboardInterrupt):
        err_console.print(
            "normlab: interrupted; finished runs are kept, re-run to resume",
            markup=False,
            highlight=False,
        )
        sys.exit(130)
    sys.exit(code or 0)
