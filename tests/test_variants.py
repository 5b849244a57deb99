"""Variant names parse to what they say and bad ones are refused."""

from __future__ import annotations

import pytest

from normlab.config import DEFAULT_L1, DEFAULT_L2, StudyConfig, TrainOptions, parse_variants
from normlab.config import parse_variant as pv
from normlab.errors import NormlabError


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
