"""The `normlab` commands: a thin layer that parses flags, builds the configuration, calls
the library and draws what it returns.

`run` and `sweep` share one set of study options, declared once (`STUDY_OPTIONS`): both build
the same `StudyConfig` through `studyfile`, `run` from the flags alone (the study of one batch
size and one learning rate, by default the assignment), `sweep` from a study file or preset
with the flags on top.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from normlab.cli.bench import BenchRow, run_bench
from normlab.cli.display import (
    RichReporter,
    bench_table,
    console,
    max_rss_mib,
    progress_bars,
    show_blocks,
    summary_table,
)
from normlab.cli.options import flag, given, study_command
from normlab.config import DEFAULT_VARIANTS, ConfigError, StudyConfig, TrainOptions, Variant
from normlab.core.models import ARCHS, Net, choose_arch, count_params, layer_summary
from normlab.core.norms import NORM_NAMES, NORMS
from normlab.data import INPUT_SHAPES, folder_name
from normlab.errors import NormlabError
from normlab.report.doc import to_markdown
from normlab.report.explain import example_tensor, explain_blocks, parse_values
from normlab.report.report import write_report
from normlab.run.executors import make_executor
from normlab.run.study import run_study
from normlab.store.results import read_json
from normlab.studyfile import load_study, parse_study, presets

app = typer.Typer(
    help="normlab: the normalization study (BatchNorm, GroupNorm, LayerNorm), fast and "
    "reproducible.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def execute(config: StudyConfig, out: Path, settings: dict) -> dict:
    """Run (or resume) the study with progress bars; returns its summary."""
    executor = make_executor(settings["workers"], settings["ray_address"], settings["cpus_per_run"])
    with progress_bars() as progress:
        summary = run_study(
            config,
            out,
            RichReporter(progress),
            settings["fresh"],
            executor,
            tensorboard=settings["tensorboard"],
        )
    data = read_json(out / "study.json")["data"]
    console.print(f"augmentation: {data['augment']} ({data['augment_reason']})", highlight=False)
    return summary


@app.command()
@study_command
def run(
    out: Annotated[
        Path | None, typer.Option(help="Study folder.", show_default="runs/<dataset>-<timestamp>")
    ] = None,
    **settings: Any,
) -> None:
    """Train every variant for every seed and write the study folder and its report."""
    raw = given(settings)
    raw.setdefault("variants", ",".join(DEFAULT_VARIANTS))
    for key in ("batch_size", "lr", "norm_batch"):
        if "," in raw.get(key, ""):
            raise NormlabError(
                f"{flag(key)} takes one value in run; a grid of them is a sweep, e.g. "
                f"'normlab sweep assignment {flag(key)} {raw[key]}'"
            )
    try:
        config = parse_study({"name": "run", **raw})
    except ConfigError as exc:
        raise exc.spelled(flag) from None
    out = (
        out
        or Path("runs") / f"{folder_name(Path(config.dataset))}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    epochs, seeds = config.train.epochs, config.seeds
    resuming = "resuming the " if not settings["fresh"] and (out / "study.json").exists() else ""
    console.print(
        f"normlab: {resuming}study of {', '.join(v.name for v in config.variants)} on "
        f"{config.dataset}, {epochs} epochs x {seeds} seed(s) -> {out}"
    )
    start = time.perf_counter()
    summary = execute(config, out, settings)
    console.print(summary_table(summary, f"{config.dataset}: {epochs} epochs, {seeds} seed(s)"))
    console.print(
        f"wrote {out} in {time.perf_counter() - start:.0f}s, peak memory (max RSS) "
        f"{max_rss_mib():.0f} MiB"
    )
    console.print(f"report: {write_report(out, config.data_dir)}")


@app.command()
@study_command
def sweep(
    spec: Annotated[
        str | None, typer.Argument(help="A study file (YAML) or a preset name (see --list).")
    ] = None,
    list_presets: Annotated[
        bool, typer.Option("--list", help="List the presets and exit.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Study folder.", show_default="runs/<name>-<timestamp>")
    ] = None,
    **settings: Any,
) -> None:
    """Run a study file or preset: variants or a grid x batch sizes x learning rates x norm
    batches x seeds; the options override the file's settings."""
    if list_presets:
        for name in presets():
            config = load_study(name)
            console.print(f"{name:>12}  {len(config.runs()):>3} runs  {config.description}")
        return
    if spec is None:
        raise NormlabError("name a study file or preset, e.g. 'normlab sweep batch-size'")
    config = load_study(spec, given(settings))
    out = out or Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs = config.runs()
    console.print(f"normlab: sweep {config.name}, {len(runs)} runs -> {out}")
    start = time.perf_counter()
    summary = execute(config, out, settings)
    from normlab.report.sweep_figures import write_sweep_report

    written = write_sweep_report(out)
    console.print(summary_table(summary, f"{config.name}: {len(runs)} runs"))
    console.print(
        f"wrote {out} ({', '.join(p.name for p in written)}) in {time.perf_counter() - start:.0f}s"
    )


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="Study folder written by `normlab run`.")],
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the test images are.", show_default="the study's own --data-dir"),
    ] = None,
) -> None:
    """Redraw the figures and write report.md and report.html from a stored study."""
    console.print(f"report: {write_report(out, data_dir)}")


@app.command()
def explain(
    values: Annotated[
        str | None,
        typer.Option(
            help="N*16 numbers for an (N, 4, 2, 2) tensor.", show_default="seeded integers"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the default example tensor.")] = 0,
    markdown: Annotated[
        bool, typer.Option(help="Print markdown (for a report or README).")
    ] = False,
) -> None:
    """Show, with numbers, which elements each norm normalizes together, checked against the
    layer normlab builds."""
    x = parse_values(values) if values is not None else example_tensor(seed)
    blocks = explain_blocks(x)
    if markdown:
        print(to_markdown(blocks), end="")
        return
    show_blocks(blocks)


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
def params(
    dataset: Annotated[
        str, typer.Option(help=f"Whose network: {', '.join(INPUT_SHAPES)} (by input shape).")
    ] = "mnist",
    norm: Annotated[str, typer.Option(help="Norm to show the layers of.")] = "gn",
    groups: Annotated[int | None, typer.Option(help="Groups of gn, ws+gn and evonorm-s0.")] = None,
    model: Annotated[
        str,
        typer.Option(help=f"auto (by input shape), a name ({', '.join(ARCHS)}) or a spec string."),
    ] = "auto",
) -> None:
    """Print the network's per-layer parameter summary, and the total for every norm."""
    if dataset not in INPUT_SHAPES:
        raise NormlabError(f"unknown dataset {dataset!r}; choose one of {', '.join(INPUT_SHAPES)}")
    shape = INPUT_SHAPES[dataset]
    try:  # every norm's network, checked as a study of them would be
        every = tuple(Variant(n) for n in NORMS)
        train = TrainOptions(groups=groups, model=model)
        StudyConfig(dataset=dataset, variants=every, train=train).check_network()
    except ConfigError as exc:
        raise exc.spelled(flag) from None
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
