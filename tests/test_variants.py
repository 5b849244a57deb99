"""Variant names parse to what they say and bad ones are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.config import DEFAULT_L1, DEFAULT_L2, StudyConfig, TrainOptions, parse_variants
from normlab.config import parse_variant as pv
from normlab.errors import NormlabError
from normlab.store.results import run_dir
from normlab.studyfile import load_study, parse_study


def test_assignment_variants() -> None:
    assert [v.name for v in parse_variants("gn,ln,bn+l1")] == ["gn", "ln", "bn+l1"]
    v = pv("bn+l1+l2")
    assert (v.norm, v.l1, v.l2) == ("bn", DEFAULT_L1, DEFAULT_L2)
    assert pv("gn").l1 == pv("gn").l2 == 0


def test_strengths_default_from_flags_and_inline() -> None:
    assert pv("bn+l1", l1=5e-5).l1 == 5e-5
    assert pv("bn+l1=0.002").l1 == 0.002
    assert pv("bn+l1=0.002").name == "bn+l1=0.002"
    assert pv(" BN + L2 ").name == "bn+l2"


@pytest.mark.parametrize("text", ["xx", "bn+l3", "bn+l1+l1", "bn+l1=abc", "bn+l1=-1", "+l1", ""])
def test_bad_variants(text: str) -> None:
    with pytest.raises(NormlabError):
        parse_variants(text)


def test_duplicate_variant_refused() -> None:
    with pytest.raises(NormlabError, match="twice"):
        parse_variants("gn,gn")


def test_config_round_trips_through_json_form() -> None:
    config = StudyConfig(
        variants=tuple(parse_variants("gn,bn+l1=0.001")),
        seeds=2,
        train=TrainOptions(epochs=3, groups=2),
    )
    assert StudyConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kw", [{"epochs": 0}, {"batch_size": -1}, {"lr": 0.0}, {"groups": 0}])
def test_bad_train_options(kw: dict) -> None:
    with pytest.raises(NormlabError):
        TrainOptions(**kw)


@pytest.mark.parametrize(
    "text, norm, l1, l2",
    [
        ("ws+gn", "ws+gn", 0.0, 0.0),
        ("ws+gn+l1", "ws+gn", DEFAULT_L1, 0.0),
        (" WS + GN + l2=0.001 ", "ws+gn", 0.0, 0.001),
        ("ws+gn+l1=5e-5+l2", "ws+gn", 5e-5, DEFAULT_L2),
        ("evonorm-b0+l1", "evonorm-b0", DEFAULT_L1, 0.0),
    ],
)
def test_a_norm_whose_name_has_a_plus_is_read_whole(
    text: str, norm: str, l1: float, l2: float
) -> None:
    """The longest known norm name comes first, so `ws+gn+l1` is ws+gn with L1."""
    v = pv(text)
    assert (v.norm, v.l1, v.l2) == (norm, l1, l2)
    assert pv(v.name) == v


@pytest.mark.parametrize("text", ["ws", "ws+l1", "gn+ws", "ws+gn+gn", "ws+gn+l1+l1"])
def test_half_a_compound_norm_is_refused(text: str) -> None:
    with pytest.raises(NormlabError, match=r"not a norm|not a regularizer"):
        pv(text)


def test_compound_norm_variants_get_their_own_folders(tmp_path: Path) -> None:
    variants = parse_variants("ws+gn,ws+gn+l1,gn")
    assert [v.name for v in variants] == ["ws+gn", "ws+gn+l1", "gn"]
    folder = run_dir(tmp_path, variants[1].name, 0)
    assert folder.relative_to(tmp_path).parts == ("ws+gn+l1", "seed0")
    folder.mkdir(parents=True)
    assert pv(folder.parent.name) == variants[1]


def test_study_files_name_the_later_norms_in_lists_and_grids(tmp_path: Path) -> None:
    study = tmp_path / "later.yaml"
    study.write_text("variants: [ws+gn+l1, frn, evonorm-s0]\nepochs: 1\n")
    assert [v.name for v in load_study(str(study)).variants] == ["ws+gn+l1", "frn", "evonorm-s0"]
    grid = parse_study({"grid": {"norm": ["ws+gn", "brn"], "l1": [0, DEFAULT_L1]}})
    assert [v.name for v in grid.variants] == ["ws+gn", "ws+gn+l1", "brn", "brn+l1"]
