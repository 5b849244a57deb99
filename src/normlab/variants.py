"""A variant: a norm plus regularizers, its one spelling and how text becomes one.

A variant is written like `gn`, `bn+l1`, `gn+l2` or `bn+l1+l2`; a regularizer may carry its own
strength, `bn+l1=5e-5`. A norm's own name may contain '+' (`ws+gn`, and `ws+gn+l1` with L1).
The spelling is also the variant's folder name, so it must be one-to-one: `Variant.name` and
`parse_variant` are inverses. A study's list of them, its defaults and its grid are `config`'s.
"""

from __future__ import annotations

from pydantic import field_validator
from pydantic.dataclasses import dataclass

from normlab.core.norms import NORMS
from normlab.errors import NormlabError
from normlab.validation import STRICT, Strength, Validated

DEFAULT_L1 = 1e-5  # lambda for the L1 penalty lambda * sum|w| added to the loss
DEFAULT_L2 = 1e-4  # SGD weight decay


def spell_strength(value: float) -> str:
    """The shortest spelling of a strength that parses back to exactly `value`: `:g` where it
    is exact (5e-05), else repr. Folder names are variant names, so two different strengths
    must never share one, and name -> parse -> name must be the identity."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclass(frozen=True, config=STRICT)
class Variant(Validated):
    """A norm and the strengths of its regularizers (0 = off)."""

    norm: str
    l1: Strength = 0.0
    l2: Strength = 0.0

    @field_validator("norm")
    @classmethod
    def _known(cls, norm: str) -> str:
        if norm not in NORMS:
            raise NormlabError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        return norm

    @property
    def name(self) -> str:
        """The canonical spelling, also the variant's folder name: `bn+l1`, `gn+l2=0.002`."""
        parts = [self.norm]
        for reg, value, default in (("l1", self.l1, DEFAULT_L1), ("l2", self.l2, DEFAULT_L2)):
            if value:
                parts.append(reg if value == default else f"{reg}={spell_strength(value)}")
        return "+".join(parts)


def parse_variant(text: str, l1: float = DEFAULT_L1, l2: float = DEFAULT_L2) -> Variant:
    """Parse `norm[+l1[=λ]][+l2[=λ]]`; `l1`/`l2` alone take the given default strengths.

    A norm's name may itself contain '+' (`ws+gn`), so the norm is the longest run of leading
    '+'-separated tokens that names one: `ws+gn+l1` is ws+gn with l1."""
    tokens = [t.strip() for t in text.strip().lower().split("+")]
    known = [k for k in range(len(tokens), 0, -1) if "+".join(tokens[:k]) in NORMS]
    split = known[0] if known else 1
    norm, regs = "+".join(tokens[:split]), tokens[split:]
    if norm not in NORMS:
        raise NormlabError(
            f"unknown variant {text!r}: {norm!r} is not a norm; write NORM[+l1][+l2] with NORM "
            f"one of {', '.join(NORMS)} (e.g. bn+l1)"
        )
    strengths = {"l1": 0.0, "l2": 0.0}
    defaults = {"l1": l1, "l2": l2}
    for reg in regs:
        key, _, value = reg.partition("=")
        if key not in strengths or strengths[key]:
            raise NormlabError(
                f"unknown variant {text!r}: {reg!r} is not a regularizer (or repeats one); "
                "use +l1 and/or +l2, optionally with a strength such as +l1=5e-5"
            )
        try:
            strengths[key] = float(value) if value else defaults[key]
        except ValueError:
            raise NormlabError(
                f"unknown variant {text!r}: strength {value!r} is not a number (e.g. +l1=5e-5)"
            ) from None
        if not strengths[key] > 0 or strengths[key] == float("inf"):
            raise NormlabError(f"variant {text!r}: {key} strength must be a positive finite number")
    return Variant(norm, strengths["l1"], strengths["l2"])


def variant_from(value: object) -> Variant:
    """A variant from its name (`bn+l1`), its stored form ({"name", "norm", "l1", "l2"}; the
    name is derived, so it is dropped) or a Variant."""
    if isinstance(value, Variant):
        return value
    if isinstance(value, str):
        return parse_variant(value)
    if not isinstance(value, dict) or "norm" not in value:
        raise NormlabError(f"a variant must be a name such as 'bn+l1', got {value!r}")
    return Variant(**{k: v for k, v in value.items() if k != "name"})
