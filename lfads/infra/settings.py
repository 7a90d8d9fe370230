"""Plain mappings (parsed YAML) -> typed, frozen settings dataclasses: the one way to do it.

`HParams` (a run's hyperparameters) and `SyntheticSettings` (the built-in dataset) are
dataclasses whose fields hold every default once. `from_mapping` builds one from plain data:
unknown keys are named with the known ones, each value is converted to its field's type
(whole floats to int, ints to float, YAML 1.1's "1e-3" strings to float, lists to tuples of
strings) or refused with the key and the value, and non-finite numbers are refused. Range
checks stay with each class (`__post_init__`), written with `require` so that every message
reads `key: what it must be, got value`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def require(ok: bool, key: str, what: str, value: Any) -> None:
    """Raise ValueError("key: what, got value") unless `ok`."""
    if not ok:
        raise ValueError(f"{key}: {what}, got {value!r}")


def from_mapping(
    cls: type[T],
    values: Any,
    *,
    what: str,
    converters: Mapping[str, Callable[[str, Any], Any]] | None = None,
) -> T:
    """An instance of the dataclass `cls` from plain data; omitted keys take the field defaults.

    what: the name of one setting in messages ("hyperparameter", "synthetic setting").
    converters: field name -> function(key, value) for fields that are not plain scalars.
    Raises ValueError naming the key for unknown keys and values of the wrong type.
    """
    return cls(**converted_values(cls, values, what=what, converters=converters))


def did_you_mean(unknown: list[str], known: list[str]) -> str | None:
    """ "did you mean 'x'?" naming the nearest known name of each of `unknown` (difflib); None
    when one has no close match (the caller then lists the known names)."""
    import difflib

    nearest = [difflib.get_close_matches(name, known, n=1) for name in unknown]
    if not all(nearest):
        return None
    return "did you mean " + ", ".join(f"{found[0]!r}" for found in nearest) + "?"


def converted_values(
    cls: type,
    values: Any,
    *,
    what: str,
    converters: Mapping[str, Callable[[str, Any], Any]] | None = None,
) -> dict[str, Any]:
    """The keyword arguments `from_mapping` passes to `cls`: the given keys, converted."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ValueError(
            f"{what}s: expected a mapping of names to values, got {type(values).__name__}"
        )
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(key) for key in values if key not in hints)
    if unknown:
        hint = did_you_mean(unknown, known) or f"known: {sorted(known)}"
        raise ValueError(f"unknown {what}(s) {unknown}; {hint}")
    converters = converters or {}
    converted = {}
    for key, value in values.items():
        convert = converters.get(key)
        converted[key] = convert(key, value) if convert else coerce(key, value, hints[key])
    return converted


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` (bool, int, float, str, `X | None`, tuple[str, ...])."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arguments = typing.get_args(hint)
        if type(None) in arguments:
            if value is None:
                return None
            (hint,) = (argument for argument in arguments if argument is not type(None))
    if hint is bool:
        require(isinstance(value, bool), key, "expected true or false", value)
        return value
    if hint is int:
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        require(whole and not isinstance(value, bool), key, "expected an integer", value)
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        number = isinstance(value, int | float) and not isinstance(value, bool)
        require(number, key, "expected a number", value)
        require(math.isfinite(value), key, "expected a finite number", value)
        return float(value)
    if hint is str:
        require(isinstance(value, str), key, "expected a string", value)
        return value
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        strings = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        require(strings, key, "expected a list of strings", value)
        return tuple(value)
    raise TypeError(f"{key}: no conversion for type {hint}")  # a new field type needs a branch
