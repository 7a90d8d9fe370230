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
from collections.abc import Callable, Iterable
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
