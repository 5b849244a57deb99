"""The report side: statistics, the worked example, galleries, and the files a real run writes
(figures, report.md, report.html opened in headless Chromium, the notebook)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normlab.core.norms import NORMS
from normlab.errors import NormlabError
from normlab.report.explain import (
    PANELS,
    axes_figure,
    example_tensor,
    explain,
    explain_blocks,
    parse_values,
)
from normlab.report.gallery import confident_mistakes, confusion
from normlab.report.plotting import pyplot, save_figure
from normlab.report.stats import holm, mcnemar_exact, seeds_test, wilson_interval
from tests.conftest import REPO
from tests.conftest import run_cli as normlab

CURVES = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
VARIANTS = ("gn", "bn+l1")

# ---------------------------------------------------------------------------------------------
# statistics, against values worked out by hand


def test_mcnemar_exact_is_a_binomial_test_on_the_discordant_images() -> None:
    a = np.array([True] * 10 + [False] * 2 + [True] * 50 + [False] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 50 + [False] * 5)
    t = mcnemar_exact(a, b)
    # two-sided: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert t.p == pytest.approx(2 * 79 / 4096)
    assert t.discordant == (10, 2)
    assert t.diff == pytest.approx(100 * 8 / len(a))
    assert mcnemar_exact(a, a).p == 1.0
    with pytest.raises(NormlabError, match="same test images"):
        mcnemar_exact(a, b[:-1])


def test_seeds_test_is_a_paired_t_test() -> None:
    t = seeds_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # t = 2 / (1 / sqrt 3); two degrees of freedom: p = 1 - t / sqrt(2 + t^2)
    stat = 2 * math.sqrt(3)
    assert t.p == pytest.approx(1 - stat / math.sqrt(2 + stat**2))
    assert t.diff == pytest.approx(2.0)
    assert math.isnan(seeds_test([1.0, 2.0], [0.5, 1.5]).p)
    with pytest.raises(NormlabError, match="at least 2"):
        seeds_test([1.0], [2.0])


def test_wilson_interval_and_holm() -> None:
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0, abs=1e-12)
    z2 = 1.959963984540054**2
    assert hi == pytest.approx(100 * z2 / (10 + z2))
    lo, hi = wilson_interval(990, 1000)
    assert lo < 99.0 < hi < 100.0
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([math.nan, 0.2])
    assert math.isnan(adjusted[0]) and adjusted[1] == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------
# the worked example, held to PyTorch


@pytest.mark.parametrize(
    "x", [example_tensor(0), example_tensor(7), torch.randn(3, 4, 2, 2).double()]
)
def test_explain_numbers_equal_pytorch(x: torch.Tensor) -> None:
    examples = explain(x)
    assert sorted(e.key for e in examples) == sorted(n for n in NORMS if n != "none")
    assert all(e.matches for e in examples)
    bn, ln, gn, inorm = examples[:4]
    bn_stats, ln_stats, gn_stats, in_stats = (e.stats[0].values for e in examples[:4])
    torch.testing.assert_close(bn_stats["mean"], x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn_stats["variance"], x.var(dim=(0, 2, 3), unbiased=False))
    torch.testing.assert_close(bn.output, F.batch_norm(x, None, None, training=True, eps=1e-5))
    torch.testing.assert_close(ln_stats["mean"], x.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(ln.output, F.layer_norm(x, x.shape[1:], eps=1e-5))
    torch.testing.assert_close(gn_stats["mean"], x.reshape(len(x), 2, -1).mean(2).flatten())
    torch.testing.assert_close(gn.output, F.group_norm(x, 2, eps=1e-5))
    torch.testing.assert_close(in_stats["variance"], x.var(dim=(2, 3), unbiased=False).flatten())
    torch.testing.assert_close(inorm.output, F.instance_norm(x, eps=1e-5))
    # group labels: how many elements share each mean
    n, c = x.shape[:2]
    for e, groups in ((bn, c), (ln, n), (gn, 2 * n), (inorm, n * c)):
        counts = torch.bincount(e.group_of.flatten())
        assert len(counts) == groups and (counts == x.numel() // groups).all()


@pytest.mark.parametrize(
    "x", [example_tensor(0), example_tensor(7), torch.randn(3, 4, 2, 2).double() * 4]
)
def test_explain_later_norms_numbers(x: torch.Tensor) -> None:
    e = {ex.key: ex for ex in explain(x)}
    n, c = x.shape[:2]
    ln2d, rms, frn = e["ln2d"], e["rms"], e["frn"]
    torch.testing.assert_close(ln2d.stats[0].values["mean"], x.mean(dim=1).flatten())
    per_pixel = F.layer_norm(x.permute(0, 2, 3, 1), (c,), eps=1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln2d.output, per_pixel)
    torch.testing.assert_close(rms.stats[0].values["mean square"], x.square().mean((1, 2, 3)))
    torch.testing.assert_close(rms.output, F.rms_norm(x, x.shape[1:], eps=1e-5))
    torch.testing.assert_close(
        frn.output, (x / x.square().mean((2, 3), True).add(1e-5).sqrt()).relu()
    )
    standardized = e["ws+gn"].output.reshape(n, -1)  # the example read as n filters
    torch.testing.assert_close(standardized.mean(1), torch.zeros(n, dtype=x.dtype))
    for name, values in e["ws+gn"].stats[1].values.items():  # its activations: GroupNorm's
        assert torch.equal(values, e["gn"].stats[0].values[name])
    brn = e["brn"].stats[0].values  # a fresh layer's running statistics (0, 1), limits (3, 5)
    free = ((brn["r"] > 1 / 3) & (brn["r"] < 3) & (brn["d"].abs() < 5)).view(1, -1, 1, 1)
    torch.testing.assert_close(  # unclipped: what evaluation with (0, 1) gives, x itself
        e["brn"].output * free, x / (1 + 1e-5) ** 0.5 * free
    )
    b0 = e["evonorm-b0"]
    torch.testing.assert_close(b0.stats[0].values["variance"], e["bn"].stats[0].values["variance"])
    torch.testing.assert_close(b0.stats[1].values["variance"], e["in"].stats[0].values["variance"])


def test_axes_panels_name_only_norms_that_share_the_panels_groups() -> None:
    examples = {ex.key: ex for ex in explain(example_tensor(0))}
    drawn = set()
    for panel in PANELS:
        (key, index), *others = panel
        for other, i in others:
            assert torch.equal(
                examples[other].stats[i].group_of, examples[key].stats[index].group_of
            )
        drawn |= {k for k, _ in panel}
    assert drawn == set(examples)  # every norm is in the figure


def test_a_report_explains_the_classic_norms_and_only_the_later_ones_it_ran(
    tmp_path: Path,
) -> None:
    x = example_tensor(0)
    assert [e.key for e in explain(x, {"gn", "bn"})] == ["bn", "ln", "gn", "in"]
    assert [e.key for e in explain(x, {"frn", "ws+gn"})][4:] == ["ws+gn", "frn"]
    classic = explain_blocks(x, norms={"gn"})
    assert "later norms" not in classic[0].text
    assert "later norms" in explain_blocks(x, norms={"rms"})[0].text
    assert classic[-1].text.startswith("BatchNorm is the one whose output")
    both = explain_blocks(x, norms={"brn"})[-1].text
    assert both.startswith("BatchNorm and Batch Renormalization are the ones")
    (tmp_path / "axes.svg").write_text("an older version's copy")
    png = axes_figure(x, tmp_path / "axes", {"gn", "ln", "bn"})[0]
    assert png.exists() and (tmp_path / "axes.svg").read_text() != "an older version's copy"


def test_a_figure_written_in_fewer_formats_leaves_no_stale_copy(tmp_path: Path) -> None:
    (tmp_path / "grid.svg").write_text("an older version's copy")
    fig = pyplot().figure()
    assert save_figure(fig, tmp_path / "grid", ("png",)) == [tmp_path / "grid.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_parse_values() -> None:
    x = parse_values(" ".join(str(i) for i in range(32)))
    assert x.shape == (2, 4, 2, 2) and x[1, 3, 1, 1] == 31
    assert parse_values(",".join(["1"] * 16)).shape == (1, 4, 2, 2)
    with pytest.raises(NormlabError, match="multiple of 16"):
        parse_values("1,2,3")
    with pytest.raises(NormlabError, match="--values"):
        parse_values("1,two")


# ---------------------------------------------------------------------------------------------
# gallery selection


def test_confident_mistakes_and_confusion() -> None:
    target = np.array([0, 1, 2, 3, 4, 5, 1])
    pred = np.array([0, 2, 2, 1, 4, 3, 2])
    conf = np.array([0.9, 0.6, 0.99, 0.8, 0.7, 0.6, 0.95])
    # mistakes at 1 (0.6), 3 (0.8), 5 (0.6), 6 (0.95): by confidence, ties to the lower index
    assert confident_mistakes(pred, conf, target, 3).tolist() == [6, 3, 1]
    assert confident_mistakes(pred, conf, target).tolist() == [6, 3, 1, 5]
    counts = confusion(pred, target, 6)
    assert counts.sum() == len(target) and np.trace(counts) == 3
    assert counts[1, 2] == 2 and counts[5, 3] == 1


# ---------------------------------------------------------------------------------------------
# a real run on a small real subset


def expected_figures() -> list[str]:
    """The curves and the axes figure as PNG and SVG, the galleries and confusion matrices
    (grids read on screen) as PNG."""
    names = [*CURVES, "normalization_axes"]
    grids = [f"{kind}_{v}.png" for kind in ("misclassified", "confusion") for v in VARIANTS]
    return [f"{n}.{ext}" for n in names for ext in ("png", "svg")] + grids


@pytest.fixture(scope="module")
def study(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    done = normlab(
        "run", "--data-dir", str(mnist_dir), "--limit-train", "384", "--limit-test", "300",
        "--epochs", "2", "--variants", ",".join(VARIANTS), "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_run_writes_every_file_and_report_rebuilds_them(study: Path) -> None:
    figures = study / "figures"
    assert sorted(p.name for p in figures.iterdir()) == sorted(expected_figures())
    md = (study / "report.md").read_text()
    for v in VARIANTS:
        assert f"figures/misclassified_{v}.png" in md
    assert "McNemar exact" in md and "Galleries skipped" not in md
    shutil.rmtree(figures)
    (study / "report.html").unlink()
    done = normlab("report", str(study))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in figures.iterdir()) == sorted(expected_figures())
    html = (study / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 4 + 2 * len(VARIANTS) + 1
    assert all(src.startswith("data:image/png;base64,") for src in images)


def test_report_without_the_data_says_galleries_were_skipped(study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("figures", "report.*"))
    done = normlab("report", str(copy), "--data-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 0, done.stderr
    md = (copy / "report.md").read_text()
    assert "Galleries skipped" in md and "MNIST not found" in md
    names = {p.name for p in (copy / "figures").iterdir()}
    assert "confusion_gn.png" in names and not any(n.startswith("misclassified") for n in names)


def test_report_of_a_folder_that_is_not_a_study(tmp_path: Path) -> None:
    done = normlab("report", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("normlab: error:") and "study.json" in done.stderr


def test_explain_cli() -> None:
    done = normlab("explain", "--markdown", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(equal)") == 15 and "DIFFERENT" not in done.stdout
    assert "GroupNorm(1, C)" in done.stdout
    bad = normlab("explain", "--values", "1,2")
    assert bad.returncode == 2 and "multiple of 16" in bad.stderr


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]

PROBE = """<div id="probe"></div><script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const broken = imgs.filter((i) => !i.complete || i.naturalWidth === 0).length;
  document.getElementById("probe").textContent = `images=${imgs.length} broken=${broken}`;
});
</script></body>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing: .ci/run installs it")
        pytest.skip("chromium not installed")
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_html_opens_in_chromium(study: Path, tmp_path: Path) -> None:
    html = (study / "report.html").read_text()
    assert "<script" not in html
    probe = study / "probe.html"
    probe.write_text(html.replace("</body>", PROBE))
    dom = chromium(tmp_path, "--dump-dom", probe.as_uri())
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    found = re.search(r"images=(\d+) broken=(\d+)", dom.stdout)
    assert found, dom.stdout[-500:]
    assert int(found[1]) == html.count("<img ") and int(found[2]) == 0
    shot = study / "report_screenshot.png"
    done = chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1200,2400",
        (study / "report.html").as_uri(),
    )
    assert [line for line in done.stderr.splitlines() if ":CONSOLE" in line] == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_notebook_runs_on_a_tiny_configuration(mnist_dir: Path, tmp_path: Path) -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "normalization_study.ipynb", as_version=4)
    env = {
        "NORMLAB_NB_EPOCHS": "1",
        "NORMLAB_NB_LIMIT_TRAIN": "256",
        "NORMLAB_NB_LIMIT_TEST": "200",
        "NORMLAB_NB_DATA_DIR": str(mnist_dir),
        "NORMLAB_NB_OUT": str(tmp_path / "nb"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "src"),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4 + 3 + 1  # curves, three galleries, the axes figure
    assert (tmp_path / "nb" / "report.html").exists()


# ---------------------------------------------------------------------------------------------
# diverged runs, written through the results API (no training needed)

# test accuracy per epoch of each run; a diverged run stops before its diverged epoch
RUNS = {
    ("bn", 0): ([40.0, 45.0], 3),
    ("bn", 1): ([41.0], 2),
    ("gn", 0): ([55.0, 65.0, 72.0], None),
    ("gn", 1): ([90.0], 2),  # high, so that counting its last good epoch would change the ranking
    ("ln", 0): ([50.0, 60.0, 68.0], None),
    ("ln", 1): ([52.0, 61.0, 69.0], None),
}


def write_diverged_study(out: Path) -> None:
    """Three variants x two seeds over 3 epochs: every bn seed diverged, gn's seed 1 diverged,
    ln finished. study.json has no data block, as in an old or hand-written study."""
    from normlab.config import StudyConfig, TrainOptions, parse_variant
    from normlab.core.records import EpochMetrics, RunResult
    from normlab.store.results import summarize, write_json, write_run

    config = StudyConfig(
        data_dir=out / "nowhere",
        variants=tuple(parse_variant(v) for v in ("bn", "gn", "ln")),
        seeds=2,
        train=TrainOptions(epochs=3),
    )
    target = torch.arange(20, dtype=torch.int16) % 10
    for run in config.runs():
        accs, diverged = RUNS[(run.variant.name, run.seed)]
        metrics = [
            EpochMetrics(e, 1.0 / e, acc - 1, 0.5 / e, acc, 0.1, 1.0)
            for e, acc in enumerate(accs, 1)
        ]
        pred = target.clone()
        pred[:5] = (pred[:5] + 1) % 10
        predictions = {} if diverged else {"pred": pred, "conf": torch.rand(20), "target": target}
        status = "diverged" if diverged else "finished"
        result = RunResult(run.variant, run.seed, 1234, metrics, {}, predictions, status, diverged)
        write_run(out, run, result)
    write_json(out / "study.json", {"config": config.to_dict(), "created": "now"})
    write_json(out / "summary.json", summarize(out, config.runs()))


def test_report_marks_diverged_runs_and_leaves_them_out(tmp_path: Path) -> None:
    import matplotlib

    from normlab.report.report import write_report

    out = tmp_path / "study"
    write_diverged_study(out)
    assert not (out / "bn" / "seed0" / "predictions.npz").exists()
    assert not (out / "bn" / "seed0" / "model.pt").exists()
    matplotlib.rcParams["svg.fonttype"] = "none"  # legends as text in the SVG, to read them
    try:
        write_report(out)
    finally:
        matplotlib.rcParams["svg.fonttype"] = "path"
    md = (out / "report.md").read_text()
    # gn is ranked on its finished seed alone (72), not with seed 1's last good epoch (90)
    assert "Ranking by final test accuracy: gn 72.00% > ln 68.50% (" in md
    assert "not ranked: bn." in md
    assert "bn seed 0 diverged at epoch 3, seed 1 diverged at epoch 2" in md
    assert "gn seed 1 diverged at epoch 2" in md
    assert "left out of every mean, interval and paired test" in md
    assert re.search(r"^\| - \| bn \(BatchNorm\) \| 1,234 \| seed 0 diverged at epoch 3", md, re.M)
    assert "| 1 | gn (GroupNorm); seed 1 diverged at epoch 2 |" in md
    assert " vs bn" not in md and "bn vs " not in md
    # CIFAR-like accuracies: relative convergence only, no 99% column or sentence
    assert "gn at epoch 3, ln at epoch 3" in md
    assert "≥ 99" not in md and "above 99" not in md
    assert "? train / ? test images" in md
    assert "no gallery: bn (seed 0 diverged at epoch 3, seed 1 diverged at epoch 2)" in md
    figures = {p.name for p in (out / "figures").iterdir()}
    assert "confusion_gn.png" in figures and "confusion_bn.png" not in figures
    svg = (out / "figures" / "test_accuracy.svg").read_text()
    assert "bn (BatchNorm): seed 0 diverged at epoch 3, seed 1 diverged at epoch 2" in svg
    assert "gn (GroupNorm): final 72.00% (seed 1 diverged at epoch 2; not drawn)" in svg
    assert "ln (LayerNorm): final 68.50 ± 0.71%" in svg and "nan" not in svg


def test_summary_gives_a_diverged_seed_no_final_accuracy(tmp_path: Path) -> None:
    import json

    write_diverged_study(tmp_path)
    groups = {g["name"]: g for g in json.loads((tmp_path / "summary.json").read_text())["variants"]}
    assert "final_test_acc" not in groups["bn"] and groups["bn"]["status"] == "diverged"
    assert groups["gn"]["final_test_acc"] == 72.0 and "final_test_acc_ci95" not in groups["gn"]
    assert groups["ln"]["final_test_acc"] == 68.5


def test_run_blocks_of_a_sweep_show_the_batch_sizes_and_lrs_it_ran() -> None:
    from normlab.report.report import run_blocks
    from normlab.store.reader import read_study

    sweep = REPO / "docs" / "results" / "batch-size"
    if not (sweep / "summary.json").exists():
        pytest.skip("the committed batch-size sweep is not in this checkout")
    table = run_blocks(read_study(sweep))[0]
    optimizer = dict(table.rows)["optimizer"]
    assert "batch size at peak lr: 2 at 0.00625, 4 at 0.0125" in optimizer
    assert "128" not in optimizer  # the old sweep form's unused train.batch_size
    assert "cosine" not in optimizer
    stored = read_study(sweep)
    stored.config["train"]["anneal"] = "cos"
    assert "OneCycle (cosine anneal); batch size" in dict(run_blocks(stored)[0].rows)["optimizer"]
    stored.config["train"]["swa_epochs"] = 5
    assert dict(run_blocks(stored)[0].rows)["optimizer"].endswith(
        "; SWA: lr held for the last 5 epochs, tested on their average weights"
    )


def test_the_train_test_gap_of_an_averaged_study_says_what_each_side_measures() -> None:
    """With SWA the test side is the average's and the train side the trained weights': the gap
    is not the augmentation's alone (docs/results/mnist-8k's swa5-g2 ends every norm below 0)."""
    from normlab.report.findings import study_findings
    from normlab.report.text import gap_item, statistics_gap_blocks
    from normlab.store.reader import read_study

    folder = REPO / "docs" / "results" / "mnist-8k" / "search"
    averaged = gap_item(study_findings(read_study(folder / "swa5-g2")))
    assert "in the last 5 epochs (SWA) the test accuracy is that of their average" in averaged
    assert "augmentation makes training harder" not in averaged
    plain = gap_item(study_findings(read_study(folder / "g2-4seeds")))
    assert "SWA" not in plain and "augmentation makes training harder" in plain
    gaps = statistics_gap_blocks(read_study(folder / "swa5-g2"))[1].text
    assert "recomputed for the averaged weights over the first 32 training batches" in gaps
    assert "SWA" not in statistics_gap_blocks(read_study(folder / "g2-4seeds"))[1].text


def test_sweep_table_keeps_a_group_whose_seeds_all_diverged(tmp_path: Path) -> None:
    from normlab.config import StudyConfig, parse_variant
    from normlab.report.sweep_figures import results_table
    from normlab.store.results import summarize

    write_diverged_study(tmp_path)
    runs = StudyConfig(variants=tuple(map(parse_variant, ("bn", "gn"))), seeds=2).runs()
    table = results_table(summarize(tmp_path, runs))
    assert "| bn | 2 | - | - | - | diverged (seed 0 at epoch 3, seed 1 at epoch 2) |" in table
    assert "| gn | 2 | 28.00 | - | one seed | diverged (seed 1 at epoch 2) |" in table
