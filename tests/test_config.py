"""One configuration, however it is built: flags, study files, presets and the stored forms of
older versions all give the same `StudyConfig`, so the committed studies still resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from normlab.config import ConfigError, StudyConfig, TrainOptions
from normlab.errors import NormlabError
from normlab.run.study import prepare_folder
from normlab.studyfile import load_study, parse_study
from tests.conftest import REPO, assert_one_line_error, main_in_process

RESULTS = REPO / "docs" / "results"
# The commands that wrote the committed studies (README), as the flags' settings.
COMMITTED = {
    "mnist": {"data_dir": "../shared/data", "variants": "gn,ln,bn+l1,bn", "epochs": 20},
    "cifar10": {"dataset": "/work/shared/data/cifar10-jpg.tar.gz", "variants": "bn,gn,ln"},
}


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_run_folders_resume_under_the_command_that_wrote_them(
    name: str, tmp_path: Path
) -> None:
    """study.json of `normlab run` before studies had grid axes or names (cifar10's also
    before `compile`): the same command today finds nothing different."""
    out = tmp_path / name
    out.mkdir()
    shutil.copy(RESULTS / name / "study.json", out / "study.json")
    config = parse_study({"name": "run", **COMMITTED[name]})
    assert prepare_folder(out, config, fresh=False) is None
    changed = parse_study({"name": "run", **COMMITTED[name], "epochs": 3})
    with pytest.raises(NormlabError, match="differs in: train"):
        prepare_folder(out, changed, fresh=False)


def test_committed_sweep_folder_resumes_under_its_command(tmp_path: Path) -> None:
    """The batch-size sweep stored the old sweep form (batch_sizes, lrs, an unused
    train.batch_size of 128): its command today is the same study."""
    out = tmp_path / "bs"
    out.mkdir()
    shutil.copy(RESULTS / "batch-size" / "study.json", out / "study.json")
    flags = {"data_dir": "../shared/data", "variants": "bn,gn,ln", "batch_size": "2,4,8,16,32"}
    config = load_study("batch-size", {**flags, "epochs": 1, "seeds": 3, "lr": "0.4"})
    assert prepare_folder(out, config, fresh=False) is None
    stored = json.loads((out / "study.json").read_text())["config"]
    assert [r.path for r in StudyConfig.from_dict(stored).runs()] == [r.path for r in config.runs()]


def test_run_is_the_one_point_study() -> None:
    """`normlab run`'s settings and the assignment preset build equal configurations."""
    preset = load_study("assignment")
    flags = parse_study({"name": "assignment", "variants": "gn,ln,bn+l1"})
    assert flags.settings() == preset.settings()
    assert flags.batch_sizes == (128,) and flags.lrs == (0.1,)
    assert [r.train for r in flags.runs()] == [flags.train] * 3


def test_the_axes_are_what_runs() -> None:
    """`train.batch_size` and `train.lr` follow the grid's first point: no stored setting
    that no run used."""
    config = StudyConfig(train=TrainOptions(batch_size=64, lr=0.3), batch_sizes=(8, 16))
    assert config.train.batch_size == 8 and config.train.lr == 0.3
    assert sorted({r.train.batch_size for r in config.runs()}) == [8, 16]


def test_errors_name_the_setting_as_the_user_wrote_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_study({"variants": "gn", "batch_size": "8,0"})
    assert str(info.value) == "batch_size must be a positive integer, got 0"
    flag = info.value.spelled(lambda key: "--" + key.replace("_", "-"))
    assert str(flag) == "--batch-size must be a positive integer, got 0"


def test_exponents_in_study_files_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads `1e-3` as text; a study file means a number."""
    f = tmp_path / "s.yaml"
    f.write_text("variants: [gn]\nlr: 2e-1\nmomentum: 9E-1\n")
    config = load_study(str(f))
    assert config.lrs == (0.2,) and config.train.momentum == 0.9


def test_a_lone_l2_strength_is_the_l2_strength() -> None:
    config = parse_study({"variants": "gn+l1,bn+l2", "l2": 1e-3})
    assert [v.name for v in config.variants] == ["gn+l1", "bn+l2=0.001"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"variants": ["gn+l1"], "l1": "abc"}, "l1 must be a number, got 'abc'"),
        ({"grid": {"norm": "bn", "l1": [0, "x"]}}, "l1 must be a number, got 'x'"),
        ({"grid": {"norm": "bn", "l2": [float("inf")]}}, "l2 must be a non-negative finite"),
        ({"variants": ["gn"], "dataset": ""}, "dataset must be a name or a folder"),
        ({"variants": ["gn"], "device": "tpu"}, "choose one of auto, cpu, cuda"),
        ({"variants": ["bn"], "norm_batch": 0}, "norm_batch must be one or more distinct posit"),
        ({"variants": ["bn"], "norm_batch": "2,two"}, "norm_batch must be a positive integer"),
        ({"variants": ["bn"], "norm_batch": [4, 4]}, "norm_batch must list distinct values"),
        ({"variants": ["bn"], "precise_bn": -1}, "precise_bn must be a number of batches, 0 or"),
    ],
)
def test_every_bad_setting_is_one_sentence_naming_it(raw: dict, message: str) -> None:
    with pytest.raises(NormlabError) as info:
        parse_study(raw)
    assert message in str(info.value)


def test_run_takes_one_batch_size(capsys: pytest.CaptureFixture) -> None:
    code, _, err = main_in_process(capsys, "run", "--batch-size", "8,16", "--out", "/nonexistent")
    assert_one_line_error(code, err, "--batch-size takes one value in run", "normlab sweep")


def test_norm_batch_is_a_grid_axis_named_in_the_folders_only_when_it_varies(
    tmp_path: Path,
) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("variants: [bn, gn]\nbatch_size: 32\nnorm_batch: [2, 8, 32]\n")
    config = load_study(str(f))
    runs = {r.path: r.train for r in config.runs()}
    assert list(runs) == ["bn/nb2/seed0", "bn/nb8/seed0", "bn/nb32/seed0", "gn/seed0"]
    assert [t.norm_batch for t in runs.values()] == [2, 8, 32, None]
    assert {t.batch_size for t in runs.values()} == {32}  # the optimizer's batch is unchanged
    both = parse_study({"variants": "bn", "batch_size": "8,16", "norm_batch": "2,4"})
    assert [r.path for r in both.runs()][:2] == ["bn/bs8-nb2/seed0", "bn/bs8-nb4/seed0"]
    one = parse_study({"variants": "bn", "norm_batch": "4"})
    assert [r.path for r in one.runs()] == ["bn/seed0"] and one.train.norm_batch == 4
    unset = parse_study({"variants": "bn"})
    assert unset.train.norm_batch is None and unset.norm_batches == (None,)
    assert StudyConfig.from_dict(config.to_dict()).settings() == config.settings()


def test_per_image_norms_run_once_per_seed_whatever_the_norm_batches() -> None:
    """Only the batch-dependent norms expand over the norm batches: GN, LN and WS+GN compute the
    same network at every K, so each runs once per seed, in a folder without `nbK`, and K is
    None in its options (it sees none)."""
    ks = [2, 4, 8, 16, 32, 128]
    config = parse_study({"variants": "bn,brn,gn,ln,ws+gn", "norm_batch": ks, "seeds": 3})
    runs = config.runs()
    per_norm = {n: [r for r in runs if r.variant.norm == n] for n in ("bn", "brn", "gn", "ln")}
    assert len(runs) == 2 * 6 * 3 + 3 * 3
    assert [r.path for r in per_norm["bn"][:4]] == [
        "bn/nb2/seed0",
        "bn/nb2/seed1",
        "bn/nb2/seed2",
        "bn/nb4/seed0",
    ]
    assert sorted({r.train.norm_batch for r in per_norm["brn"]}) == ks
    assert [r.path for r in per_norm["gn"]] == ["gn/seed0", "gn/seed1", "gn/seed2"]
    assert {r.train.norm_batch for r in per_norm["ln"]} == {None}
    assert {r.group for r in runs if r.variant.norm == "ws+gn"} == {"ws+gn"}
    assert {r.train.batch_size for r in runs} == {128}

    # The other axes still name the folder; one norm batch names nothing, as before.
    both = parse_study({"variants": "bn,gn", "batch_size": "8,16", "norm_batch": "2,4"})
    assert [r.path for r in both.runs()][-2:] == ["gn/bs8/seed0", "gn/bs16/seed0"]
    one = parse_study({"variants": "bn,gn", "norm_batch": "4"})
    assert [(r.path, r.train.norm_batch) for r in one.runs()] == [
        ("bn/seed0", 4),
        ("gn/seed0", None),
    ]


def test_a_norm_batch_must_divide_every_batch_size() -> None:
    with pytest.raises(ConfigError) as info:
        parse_study({"variants": "bn", "batch_size": "8,12", "norm_batch": "4,8"})
    assert str(info.value) == "norm_batch must divide the batch size: 8 does not divide 12"


@pytest.mark.parametrize("split", [None, 97])  # 97: --limit-train here, the loaded split's size
def test_the_smallest_ghost_group_is_looked_for_at_every_batch_size(split: int | None) -> None:
    """Batch 32 of 97 images makes groups of 32; batch 128 takes all 97, whose last group of 32
    is one image, a 1x1 map after four poolings: refused before a run starts, the flag that
    caused it named. The smallest batch (32) does not have the smallest group."""
    study = {"variants": "bn", "batch_size": "32,128", "norm_batch": "32", "model": "8 M M M M 8"}
    limit = {} if split else {"limit_train": 97}
    with pytest.raises(NormlabError, match=r"at least 2 \(--batch-size, --norm-batch,"):
        parse_study(study | limit).check_network(None, split)
    parse_study(study | {"limit_train": 98}).check_network()  # 98 = 3 x 32 + 2: groups of 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--norm-batch", "5"], "--norm-batch must divide the batch size: 5 does not divide 128"),
        (["--norm-batch", "0"], "--norm-batch must be one or more distinct positive integers"),
        (["--norm-batch", "2,4"], "--norm-batch takes one value in run"),
        (["--precise-bn", "-1"], "--precise-bn must be a number of batches, 0 or more, got -1"),
    ],
)
def test_bad_norm_batch_and_precise_bn_flags_are_one_line(
    capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    code, _, err = main_in_process(capsys, "run", *args, "--out", "/nonexistent")
    assert_one_line_error(code, err, message)


def test_a_bad_norm_batch_in_a_study_file_is_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("variants: [bn]\nbatch_size: 64\nnorm_batch: [4, 48]\n")
    code, _, err = main_in_process(capsys, "sweep", f, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "norm_batch must divide the batch size: 48 does not divide 64")
