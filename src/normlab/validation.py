"""How configuration is validated: pydantic, with strict types and unknown fields refused, and
its errors turned into one sentence that names the setting and what it must be.

Every configuration class derives from `Validated`, so a bad value from any source (Python,
JSON, YAML, flags) is a `ConfigError`, never a traceback; the CLI re-spells its key as a flag.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from normlab.errors import NormlabError

STRICT = ConfigDict(extra="forbid", strict=True)
Count = Annotated[int, Field(ge=1)]
Strength = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# A grid axis arrives as a list (YAML, JSON) and is kept as a tuple; its items stay strict.
Axis = Field(strict=False, min_length=1)
WARM_UP = 0.25  # OneCycle's share of the steps that rises to the peak lr (core.train)
MOMENTUM_SWING = 0.05  # OneCycle's momentum: this far either side of `momentum`, against the lr
MAX_MOMENTUM = 0.94  # so that the swing's top stays below 1
# What a value must be, by the setting's name, for range errors (type errors name the type).
BOUNDS = ("ge", "gt", "le", "lt")
RANGES = {
    "dataset": "a name or a folder",
    "epochs": "a positive integer",
    "batch_size": "a positive integer",
    "eval_batch_size": "a positive integer",
    "seeds": "a positive integer",
    "groups": "a positive integer",
    "limit_train": "a positive integer",
    "limit_test": "a positive integer",
    "lr_reference_batch": "a positive integer",
    "lr": "one or more distinct positive numbers",
    "norm_batch": "one or more distinct positive integers",
    "precise_bn": "a number of batches, 0 or more",
    "swa_epochs": "0 (off) or a number of epochs",
    "momentum": f"0 (plain SGD) or a number from {MOMENTUM_SWING} to {MAX_MOMENTUM}",
    "l1": "a non-negative finite number",
    "l2": "a non-negative finite number",
}
TYPES = {
    "int": "a positive integer",
    "float": "a number",
    "string": "a string",
    "bool": "true or false",
    "path": "a folder path",
    "tuple": "a list",
    "dataclass": "a mapping of settings",
}
# field -> the key a study file uses
FILE_KEYS = {"batch_sizes": "batch_size", "lrs": "lr", "norm_batches": "norm_batch"}


class ConfigError(NormlabError):
    """A setting that failed validation: `key` is the setting's study-file name, so the CLI
    can re-spell it as its flag (`spelled`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}{problem}")
        self.key, self.problem = key, problem

    def spelled(self, spell: Any) -> ConfigError:
        return ConfigError(spell(self.key), self.problem)


def config_error(exc: ValidationError, key: str | None = None) -> ConfigError:
    """pydantic's first error as one sentence a user can act on, naming the setting `key` (by
    default the field the error is in, spelled as a study file spells it)."""
    err = exc.errors()[0]
    field = next((p for p in err["loc"] if isinstance(p, str)), "setting")
    key = key or FILE_KEYS.get(field, field)
    value, kind, ctx = err.get("input"), err["type"], err.get("ctx", {})
    if kind == "literal_error":
        choices = ctx["expected"].replace("'", "").replace(" or ", ", ")
        return ConfigError(key, f" {value!r} unknown; choose one of {choices}")
    if kind == "unexpected_keyword_argument":
        return ConfigError(key, " is not a setting; check its spelling")
    if kind.endswith("_type"):  # the wrong kind of value: text for a number, a bool for a count
        what = TYPES.get(kind.removesuffix("_type"), f"a valid {key}")
    else:  # out of range: what the setting's constraint asks, in words where we have them
        bound = ", ".join(f"{op} {n}" for op, n in ctx.items() if op in BOUNDS)
        what = RANGES.get(key) or f"a number {bound}".replace("ge", ">=").replace("gt", ">")
    return ConfigError(key, f" must be {what}, got {value!r}")


def validated(key: str, value: object, kind: Any) -> Any:
    """`value` checked against the annotated type `kind` (strictly, as a field would be)."""
    try:
        return TypeAdapter(kind, config=ConfigDict(strict=True)).validate_python(value)
    except ValidationError as exc:
        raise config_error(exc, key) from None


class Validated:
    """Turns every pydantic error at construction into a `ConfigError`, so a bad value from
    any source (Python, JSON, YAML, flags) is one NormlabError, never a traceback."""

    @model_validator(mode="wrap")
    @classmethod
    def _as_config_error(cls, values: Any, handler: Any) -> Any:
        try:
            return handler(values)
        except ValidationError as exc:
            raise config_error(exc) from None
