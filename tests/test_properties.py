"""Property-based tests for the two parsers users type into: variant names and the study
configuration. Whatever they are given, they either succeed or raise NormlabError; what they
accept round-trips exactly."""

from __future__ import annotations

import math
from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from normlab.config import (
    DEVICES,
    PRECISIONS,
    Anneal,
    StudyConfig,
    TrainOptions,
    Variant,
    parse_variant,
    parse_variants,
)
from normlab.core.augment import AUGMENT_STEPS
from normlab.core.norms import NORMS
from normlab.errors import NormlabError
from normlab.validation import MAX_MOMENTUM, MOMENTUM_SWING

strengths = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-12, max_value=1e3, allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-5, 1e-4, 5e-5, 2e-3]),
)
variants = st.builds(Variant, st.sampled_from(NORMS), strengths, strengths)


@given(variants)
def test_variant_name_round_trips(variant: Variant):
    parsed = parse_variant(variant.name)
    assert parsed == variant
    assert parsed.name == variant.name


@given(st.lists(variants, min_size=1, max_size=5, unique_by=lambda v: v.name))
def test_variant_list_round_trips(listed: list[Variant]):
    assert parse_variants(",".join(v.name for v in listed)) == listed


@given(variants)
def test_different_strengths_never_share_a_folder(variant: Variant):
    other = Variant(variant.norm, math.nextafter(variant.l1, math.inf), variant.l2)
    assert other.name != variant.name


tokens = st.sampled_from(
    [*NORMS, "l1", "l2", "l3", "=", "+", ",", "e-5", "1", "0", "-1", "nan", "inf", " ", "BN", "x"]
)
typed = st.one_of(st.text(max_size=30), st.lists(tokens, max_size=8).map("".join))


@given(typed)
def test_variant_parser_fails_only_with_normlab_error(text: str):
    try:
        parsed = parse_variants(text)
    except NormlabError:
        return
    assert parse_variants(",".join(v.name for v in parsed)) == parsed


# --- the configuration validator --------------------------------------------------------------

counts = st.integers(min_value=1, max_value=10_000)
train_options = st.builds(
    TrainOptions,
    epochs=counts,
    batch_size=counts,
    lr=st.floats(min_value=1e-6, max_value=10, allow_nan=False),
    momentum=st.just(0.0) | st.floats(min_value=MOMENTUM_SWING, max_value=MAX_MOMENTUM),
    anneal=st.sampled_from(get_args(Anneal)),
    groups=st.none() | st.integers(1, 64),
    precision=st.sampled_from(PRECISIONS),
    augment=st.sampled_from(["auto", "none", "crop+flip", *AUGMENT_STEPS]),
    eval_batch_size=counts,
    norm_batch=st.none() | st.just(1),  # 1 divides every batch size
    precise_bn=st.integers(0, 100),
    activation_stats=st.booleans(),
)
configs = st.builds(
    StudyConfig,
    dataset=st.sampled_from(["mnist", "cifar10", "/data/pets"]),
    variants=st.lists(variants, min_size=1, max_size=4, unique_by=lambda v: v.name).map(tuple),
    seeds=st.integers(1, 20),
    train=train_options,
    limit_train=st.none() | counts,
    limit_test=st.none() | counts,
    device=st.sampled_from(DEVICES),
)


@given(configs)
def test_valid_configs_round_trip(config: StudyConfig):
    assert StudyConfig.from_dict(config.to_dict()) == config


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
train_fields = ["epochs", "batch_size", "lr", "momentum", "groups", "precision", "augment"]
train_fields += ["norm_batch", "precise_bn", "anneal", "swa_epochs"]
study_fields = ["dataset", "data_dir", "variants", "seeds", "train", "limit_train", "device"]
study_fields += ["norm_batches"]


@given(configs, st.sampled_from(train_fields), anything)
def test_bad_train_option_is_normlab_error_or_valid(config, key: str, value: object):
    """Any value in any field: either a valid configuration that round-trips, or a
    NormlabError (never a TypeError or a silently accepted bool/NaN)."""
    d = config.to_dict()
    d["train"][key] = value
    try:
        parsed = StudyConfig.from_dict(d)
    except NormlabError:
        return
    assert not isinstance(value, bool)
    assert not (isinstance(value, float) and not math.isfinite(value))
    assert StudyConfig.from_dict(parsed.to_dict()) == parsed


@given(configs, st.sampled_from(study_fields), anything)
def test_bad_study_field_is_normlab_error_or_valid(config, key: str, value: object):
    d = config.to_dict()
    d[key] = value
    try:
        parsed = StudyConfig.from_dict(d)
    except NormlabError:
        return
    assert not isinstance(value, bool)
    assert StudyConfig.from_dict(parsed.to_dict()) == parsed


@given(configs, st.sampled_from(["norm", "l1", "l2", "colour"]), anything)
def test_bad_stored_variant_is_normlab_error_or_valid(config, key: str, value: object):
    d = config.to_dict()
    d["variants"][0][key] = value
    try:
        parsed = StudyConfig.from_dict(d)
    except NormlabError:
        return
    assert key != "colour"
    assert StudyConfig.from_dict(parsed.to_dict()) == parsed
