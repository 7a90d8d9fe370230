"""Name -> class tables of the interchangeable parts: priors, reconstructions, augmentations.

The config names each part by a string (`ic_prior: {name: multivariate_normal}`).
Built-in parts are listed here as "module:Class" and imported only when built,
so validating a config never imports torch. A user adds a part from their own
module, without editing this package:

    # mypackage/laplace.py
    from lfads.model.priors import Prior
    from lfads.model.registry import register_prior

    @register_prior("laplace")
    class LaplacePrior(Prior): ...

and lists that module under `plugins: [mypackage.laplace]` in the config;
`HParams.from_dict` imports it, which runs the decorator.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

KINDS = ("prior", "reconstruction", "augmentation")

# Built-in implementations, imported on first use.
_BUILTINS: dict[str, dict[str, str]] = {
    "prior": {
        "null": "lfads.model.priors:NullPrior",
        "multivariate_normal": "lfads.model.priors:MultivariateNormalPrior",
        "autoregressive_normal": "lfads.model.priors:AutoregressiveNormalPrior",
        "multivariate_student_t": "lfads.model.priors:MultivariateStudentTPrior",
    },
    "reconstruction": {
        "poisson": "lfads.model.recons:Poisson",
        "gaussian": "lfads.model.recons:Gaussian",
        "gamma": "lfads.model.recons:Gamma",
        "zero_inflated_gamma": "lfads.model.recons:ZeroInflatedGamma",
        "mse": "lfads.model.recons:MSE",
    },
    "augmentation": {
        "coordinated_dropout": "lfads.model.augmentations:CoordinatedDropout",
        "sample_validation": "lfads.model.augmentations:SampleValidation",
        "temporal_shift": "lfads.model.augmentations:TemporalShift",
        "spike_jitter": "lfads.model.augmentations:SpikeJitter",
        "selective_backprop": "lfads.model.augmentations:SelectiveBackprop",
    },
}


@dataclass(frozen=True)
class OptionRange:
    """The values one option of a built-in part accepts: a finite number (or an integer) in a
    range, e.g. `OptionRange(low=0, low_open=True)` for "a number > 0"."""

    integer: bool = False
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` ("expected a number", "must be > 0"), None if nothing."""
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (self.integer and not isinstance(value, int)):
            return "expected an integer" if self.integer else "expected a number"
        if not math.isfinite(value):
            return "expected a finite number"
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return None if above and below else f"must be {self.describe()}"

    def describe(self) -> str:
        """The range as messages give it: "> 0", ">= 0", "in [0, 1)", "finite"."""
        if math.isinf(self.low) and math.isinf(self.high):
            return "finite"
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if math.isinf(self.low):
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


_NUMBER = OptionRange()
_POSITIVE = OptionRange(low=0, low_open=True)
_NON_NEGATIVE = OptionRange(low=0)
_RATE = OptionRange(low=0, high=1, high_open=True)
_FRACTION = OptionRange(low=0, high=1)
_COUNT = OptionRange(integer=True, low=0)

# Every option of each built-in part (the keywords of its constructor besides the sizes the model
# supplies) and the values it accepts, checked when hyperparameters are read
# (`check_options`), so that a bad value stops the workflow before any job, not inside every
# train job. tests/test_config.py checks this table against the constructors.
BUILTIN_OPTIONS: dict[str, dict[str, dict[str, OptionRange]]] = {
    "prior": {
        "null": {},
        "multivariate_normal": {"mean": _NUMBER, "variance": _POSITIVE},
        "autoregressive_normal": {"tau": _POSITIVE, "noise_variance": _POSITIVE},
        "multivariate_student_t": {"loc": _NUMBER, "scale": _POSITIVE, "df": _POSITIVE},
    },
    "reconstruction": {
        "poisson": {},
        "gaussian": {},
        "gamma": {},
        "zero_inflated_gamma": {
            "gamma_loc": _NON_NEGATIVE,
            "scale_init": _POSITIVE,
            "scale_prior": _POSITIVE,
            "scale_penalty": _NON_NEGATIVE,
        },
        "mse": {},
    },
    "augmentation": {
        "coordinated_dropout": {"rate": _RATE, "pass_rate": _FRACTION, "ic_enc_seq_len": _COUNT},
        "sample_validation": {"rate": _RATE, "ic_enc_seq_len": _COUNT},
        "temporal_shift": {"std": _NON_NEGATIVE, "max_shift": _COUNT},
        "spike_jitter": {"width": _COUNT},
        "selective_backprop": {"fill_value": _NUMBER},
    },
}


def check_options(kind: str, name: str, options: dict[str, Any], where: str) -> None:
    """Raise ValueError("<where>.<option>: ...") for an unknown or out-of-range option of a
    built-in part. Parts of plugins are not checked here (their constructors check them)."""
    _check_kind(kind)
    if name not in _BUILTINS[kind]:
        return
    accepted = BUILTIN_OPTIONS[kind][name]
    for option, value in options.items():
        if option not in accepted:
            raise ValueError(
                f"{where}: {kind} {name!r} has no option {option!r}; its options are "
                f"{sorted(accepted) or 'none'}"
            )
        problem = accepted[option].problem(value)
        if problem:
            hint = ""
            if isinstance(value, str) and _reads_as_number(value):
                hint = " (YAML reads a number without a dot, like 1e-3, as a string: write 1.0e-3)"
            raise ValueError(f"{where}.{option}: {problem}, got {value!r}{hint}")


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# Implementations registered at run time by plugins (and tests).
_REGISTERED: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {list(KINDS)}")


def register(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator: make `cls` available to configs as `name` among the `kind` parts."""
    _check_kind(kind)

    def decorator(cls: type) -> type:
        if name in _BUILTINS[kind]:
            raise ValueError(
                f"{kind} {name!r} is a built-in name; choose another name for {cls.__qualname__}"
            )
        _REGISTERED[kind][name] = cls
        return cls

    return decorator


def register_prior(name: str) -> Callable[[type], type]:
    """Decorator for a `lfads.model.priors.Prior` subclass."""
    return register("prior", name)


def register_reconstruction(name: str) -> Callable[[type], type]:
    """Decorator for a `lfads.model.recons.Reconstruction` subclass."""
    return register("reconstruction", name)


def register_augmentation(name: str) -> Callable[[type], type]:
    """Decorator for a `lfads.model.augmentations.Augmentation` subclass."""
    return register("augmentation", name)


def names(kind: str) -> list[str]:
    """Every name a config may use for `kind`, built-in first."""
    _check_kind(kind)
    return [*_BUILTINS[kind], *sorted(_REGISTERED[kind])]


def lookup(kind: str, name: str) -> type:
    """The class registered as `name`; imports a built-in's module on first use."""
    _check_kind(kind)
    if name in _REGISTERED[kind]:
        return _REGISTERED[kind][name]
    if name not in _BUILTINS[kind]:
        raise ValueError(
            f"no {kind} named {name!r}; known: {names(kind)}. Register your own with "
            f"lfads.model.registry.register_{kind} and list its module under `plugins`."
        )
    module_name, class_name = _BUILTINS[kind][name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def import_plugins(modules: Iterable[str]) -> None:
    """Import each plugin module so that its `register_*` decorators run."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(
                f"plugins: cannot import {module!r} ({error}); is it on PYTHONPATH?"
            ) from error


def build(kind: str, spec: Any, **sizes: Any) -> Any:
    """Instantiate the part a spec names, with its options and the sizes the model supplies.

    spec: an object with `.name` and `.options` (`lfads.model.hparams.Component`); both the
    options and the sizes (`dim=`, `n_neurons=`) are passed as keywords. A wrong option is
    reported with the part's name and the options it accepts.
    """
    import inspect

    cls = lookup(kind, spec.name)
    try:
        return cls(**sizes, **spec.options)
    except TypeError as error:
        parameters = [
            p
            for p in inspect.signature(cls).parameters
            if p not in sizes and p not in ("self", "kwargs")
        ]
        raise ValueError(
            f"{kind} {spec.name!r}: bad options {sorted(spec.options)} ({error}); "
            f"it accepts {parameters}"
        ) from error
