"""Hyperparameters of one LFADS run: a typed, validated dataclass that round-trips plain data.

Defaults are lfads-torch's NLB mc_maze settings at 20 ms bins (the table in lfads/README.md,
checked by tests/test_documented_defaults.py). Sizes of the
data (neurons, bins, external inputs) are not hyperparameters: they come from
the prepared files; nor is how the recurrent loops run (`rnn_impl`, an option
of training and inference: `lfads.model.loops`). This module does not import
torch, so the workflow can validate every run's hyperparameters when it starts.

Some options of parts have a flat key too, so that a search can vary them
(`cd_rate` is coordinated_dropout's `rate`; `LINKED_OPTIONS`). When
hyperparameters are read, each such setting is resolved once into both places:
a flat key fills the parts' options, an option given only in a part fills the
flat key, and two values that disagree are an error naming both keys.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfads.infra.settings import coerce, converted_values, require
from lfads.model import registry


@dataclass(frozen=True)
class Component:
    """One interchangeable part: a registered name plus keyword options for its constructor."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, where: str, kind: str, unregistered_ok: bool = False) -> Component:
        """From `"poisson"` or `{"name": "poisson", **options}`; `where` names the key in errors.

        unregistered_ok: accept a name no module has registered yet (plugins not imported).
        """
        if isinstance(value, Component):
            return value
        if isinstance(value, str):
            name, options = value, {}
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            name, options = value["name"], {k: v for k, v in value.items() if k != "name"}
        else:
            raise ValueError(
                f"{where}: expected a name or a mapping with a 'name' key, got {value!r}"
            )
        if name not in registry.names(kind) and not unregistered_ok:
            raise ValueError(
                f"{where}: no {kind} named {name!r}; known: {registry.names(kind)}. "
                "A part from your own module must be listed under `plugins`."
            )
        for key, option in options.items():
            _check_plain(option, f"{where}.{key}")
        registry.check_options(kind, name, options, where)  # built-in parts' option ranges
        return cls(name, dict(options))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def _check_plain(value: Any, where: str) -> None:
    """Options must stay plain data (saved in checkpoints, which load with weights_only=True)."""
    if isinstance(value, bool | int | float | str) or value is None:
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: {value!r} is not plain data (numbers, strings, lists, mappings)")


def _component(name: str, **options: Any) -> Any:
    return field(default_factory=lambda: Component(name, dict(options)))


@dataclass(frozen=True)
class HParams:
    # -- run -------------------------------------------------------------------------
    seed: int = 0  # seeds weights, sampling, dropout and the batch order
    batch_size: int = 256  # trials per training batch (all sessions together)
    max_epochs: int = 1000
    # -- architecture ----------------------------------------------------------------
    ic_enc_seq_len: int = 0  # leading bins seen only by the IC encoder (0: it sees all bins)
    ic_enc_dim: int = 64  # units of each direction of the IC encoder GRU
    ci_enc_dim: int = 64  # units of each direction of the controller-input encoder GRU
    ci_lag: int = 1  # bins by which the forward CI encoder lags the controller
    con_dim: int = 64  # controller GRU units (0, like co_dim 0, removes the controller)
    co_dim: int = 4  # inferred inputs u_t (0: autonomous generator)
    ic_dim: int = 64  # initial-condition latent
    gen_dim: int = 200  # generator GRU units
    fac_dim: int = 100  # factors
    # per-session readin width; None: no readin for one session, fac_dim for several
    readin_dim: int | None = None
    readin_init: str = "pcr"  # "pcr" (principal-components regression) or "random"
    readin_trainable: bool = False  # PCR readins stay frozen unless True
    dropout: float = 0.3  # on encoder inputs and outputs, controller input, generator state
    cell_clip: float = 5.0  # every recurrent state is clipped to +-cell_clip
    ic_post_var_min: float = 1e-4  # floor of the IC posterior variance
    variational: bool = True  # False: posterior means are used everywhere; priors must be "null"
    # -- interchangeable parts (names in lfads.model.registry) ----------------------
    ic_prior: Component = _component("multivariate_normal", mean=0.0, variance=0.1)
    co_prior: Component = _component("autoregressive_normal", tau=10.0, noise_variance=0.1)
    reconstruction: Component = _component("poisson")
    train_augmentations: tuple[Component, ...] = (Component("coordinated_dropout"),)
    infer_augmentations: tuple[Component, ...] = ()
    plugins: tuple[str, ...] = ()  # modules imported first, to register your own parts
    # flat keys of part options (LINKED_OPTIONS), kept equal to the options in both stacks
    cd_rate: float = 0.3  # coordinated dropout: fraction of input elements masked
    cd_pass_rate: float = 0.0  # coordinated dropout: fraction of kept elements passing gradients
    sv_rate: float = 0.0  # sample validation: fraction of input elements held out of training
    # -- loss ------------------------------------------------------------------------
    loss_scale: float = 1e4  # multiplies the whole loss (keeps AdamW in a good range)
    # mean over elements (False: sum over bins and neurons, mean over trials)
    recon_reduce_mean: bool = True
    l2_start_epoch: int = 0
    l2_increase_epoch: int = 80
    l2_ic_enc_scale: float = 0.0
    l2_ci_enc_scale: float = 0.0
    l2_gen_scale: float = 0.0
    l2_con_scale: float = 0.0
    kl_start_epoch: int = 0
    kl_increase_epoch: int = 80
    kl_ic_scale: float = 1e-7
    kl_co_scale: float = 1e-7
    # -- optimiser -------------------------------------------------------------------
    lr: float = 4e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0  # AdamW's decoupled decay, ramped with the L2 ramp
    lr_scheduler: bool = False  # ReduceLROnPlateau on the smoothed validation reconstruction
    lr_decay: float = 0.95
    lr_patience: int = 6
    lr_stop: float = 1e-5  # training stops when the learning rate falls to this
    valid_smoothing: float = 0.3  # weight of the newest epoch in the smoothed validation loss
    gradient_clip: float = 200.0  # max norm of all gradients together (0: no clipping)
    # epochs without a better smoothed valid loss (0: off); never during ramps
    early_stopping_patience: int = 200

    # ---------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        _validate(self)
        _fill_linked_options(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, import_plugins: bool = True) -> HParams:
        """Build from plain data; unknown keys and bad values raise ValueError naming the key.

        A part option with a flat key (`LINKED_OPTIONS`) that only the part gives is copied to
        the flat key; the flat key's value (given or default) then fills every such option.
        import_plugins: import the `plugins` modules first, so that their parts are known (this
        runs their code). False checks everything else and accepts part names that are not
        registered yet, when plugins are listed: the workflow checks a configfile this way.
        """
        data = dict(data or {})
        for key, instead in _REMOVED.items():
            if key in data:
                raise ValueError(f"{key}: no longer a hyperparameter; {instead}")
        plugins = coerce("plugins", data.get("plugins", ()), tuple[str, ...])
        if import_plugins:
            registry.import_plugins(plugins)
        unregistered_ok = bool(plugins) and not import_plugins

        def part(kind: str, many: bool):
            def convert(key: str, value: Any) -> Component | tuple[Component, ...]:
                if not many:
                    return Component.parse(value, key, kind, unregistered_ok)
                return tuple(
                    Component.parse(item, f"{key}[{i}]", kind, unregistered_ok)
                    for i, item in enumerate(_as_list(value, key))
                )

            return convert

        converters = {
            name: part(kind, name.endswith("augmentations"))
            for name, kind in _COMPONENT_KIND.items()
        }
        values = converted_values(cls, data, what="hyperparameter", converters=converters)
        values.update(_flat_keys_from_options(values, typing.get_type_hints(cls)))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> HParams:
        import yaml

        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a mapping of hyperparameters, got {type(data).__name__}"
            )
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (numbers, strings, lists, dicts): for YAML and weights_only checkpoints."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Component):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [item.to_dict() if isinstance(item, Component) else item for item in value]
            out[f.name] = value
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> HParams:
        """A copy with `changes` (plain data, as for `from_dict`).

        A changed flat key (`cd_rate`, ...) also changes the part options it sets, and a changed
        stack's part option its flat key; the other stack's copies follow.
        """
        data = self.to_dict()
        redefined = {key for key in _LINKED_KEYS if key in changes}
        for stack in _AUGMENTATION_STACKS:
            if stack in changes:
                redefined |= _flat_keys_set_by(changes[stack])
        for key in redefined - changes.keys():  # set by the changed stack's option
            del data[key]
        for stack in _AUGMENTATION_STACKS:
            if stack not in changes:  # its copies of the redefined options are refilled
                data[stack] = [
                    {
                        option: value
                        for option, value in spec.items()
                        if LINKED_OPTIONS.get(spec["name"], {}).get(option) not in redefined
                    }
                    for spec in data[stack]
                ]
        return HParams.from_dict({**data, **changes})

    @property
    def use_controller(self) -> bool:
        return self.ci_enc_dim > 0 and self.con_dim > 0 and self.co_dim > 0


# The hyperparameters that may differ between the members of one pack (`lfads.model.members`):
# each member holds its own value, as a per-member tensor, optimiser setting or its own
# bookkeeping. Every other key (sizes, parts, data, bin width, batch size, epochs, ramps) is the
# pack's, shared by all its members.
MEMBER_KEYS = (
    "seed",
    "dropout",
    "cd_rate",
    "cd_pass_rate",
    "kl_ic_scale",
    "kl_co_scale",
    "l2_ic_enc_scale",
    "l2_ci_enc_scale",
    "l2_gen_scale",
    "l2_con_scale",
    "lr",
    "weight_decay",
    "gradient_clip",
    "lr_scheduler",
    "lr_decay",
    "lr_patience",
    "lr_stop",
    "valid_smoothing",
    "early_stopping_patience",
)


def pack_settings(hparams: HParams) -> dict[str, Any]:
    """What the members of one pack must share: `to_dict()` without MEMBER_KEYS (and without the
    part options that a member key sets, e.g. coordinated_dropout's rate)."""
    data = {k: v for k, v in hparams.to_dict().items() if k not in MEMBER_KEYS}
    for stack in _AUGMENTATION_STACKS:
        data[stack] = [
            {
                option: value
                for option, value in spec.items()
                if LINKED_OPTIONS.get(spec["name"], {}).get(option) not in MEMBER_KEYS
            }
            for spec in data[stack]
        ]
    return data


def pack_conflicts(first: HParams, other: HParams) -> list[str]:
    """The keys whose values keep `other` out of a pack with `first` ([] when they can share)."""
    a, b = pack_settings(first), pack_settings(other)
    return sorted(key for key in a if a[key] != b[key])


# Keys that were hyperparameters once: what to do instead.
_REMOVED = {
    "rnn_impl": "choose how the loops run when training or sampling "
    "(train_model(..., rnn_impl=...), posterior_sample(..., rnn_impl=...), --rnn-impl)",
}

# Part options that a flat hyperparameter also sets (so that a search can vary them):
# part name -> {option: flat key}. HParams keeps the two equal in both augmentation stacks.
LINKED_OPTIONS: dict[str, dict[str, str]] = {
    "coordinated_dropout": {
        "rate": "cd_rate",
        "pass_rate": "cd_pass_rate",
        "ic_enc_seq_len": "ic_enc_seq_len",
    },
    "sample_validation": {"rate": "sv_rate", "ic_enc_seq_len": "ic_enc_seq_len"},
}
_LINKED_KEYS = {key for options in LINKED_OPTIONS.values() for key in options.values()}
_AUGMENTATION_STACKS = ("train_augmentations", "infer_augmentations")


def _flat_keys_set_by(specs: Any) -> set[str]:
    """The flat keys whose linked options a stack of specs (Components or plain data) gives."""
    keys = set()
    for spec in specs if isinstance(specs, list | tuple) else ():
        if isinstance(spec, Component):
            name, options = spec.name, spec.options
        elif isinstance(spec, dict):
            name, options = spec.get("name"), spec
        else:  # a bare name gives no options
            continue
        keys |= {key for option, key in LINKED_OPTIONS.get(name, {}).items() if option in options}
    return keys


def _flat_keys_from_options(values: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    """Flat keys absent from `values` that a part option sets: flat key -> the option's value."""
    found: dict[str, tuple[str, Any]] = {}  # flat key -> (where, value)
    for stack in _AUGMENTATION_STACKS:
        for index, spec in enumerate(values.get(stack, ())):
            for option, key in LINKED_OPTIONS.get(spec.name, {}).items():
                if option not in spec.options or key in values:
                    continue
                where = f"{stack}[{index}].{option}"
                value = coerce(where, spec.options[option], hints[key])
                if key in found and found[key][1] != value:
                    raise ValueError(
                        f"{found[key][0]} ({found[key][1]!r}) and {where} ({value!r}) are both "
                        f"{key}: set {key} once instead"
                    )
                found.setdefault(key, (where, value))
    return {key: value for key, (_, value) in found.items()}


def _fill_linked_options(hp: HParams) -> None:
    """Write each flat key into the part options it sets; an option that differs is an error."""
    hints = typing.get_type_hints(HParams)
    for stack in _AUGMENTATION_STACKS:
        specs = []
        for index, spec in enumerate(getattr(hp, stack)):
            options = dict(spec.options)
            for option, key in LINKED_OPTIONS.get(spec.name, {}).items():
                flat = getattr(hp, key)
                if option in options:
                    where = f"{stack}[{index}].{option}"
                    if coerce(where, options[option], hints[key]) != flat:
                        raise ValueError(
                            f"{where} is {options[option]!r} but {key} is {flat!r}: they are one "
                            f"setting; give it once (or the same value in both)"
                        )
                options[option] = flat
            specs.append(Component(spec.name, options))
        object.__setattr__(hp, stack, tuple(specs))  # (frozen: set once, while being built)


def _as_list(value: Any, where: str) -> list:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    return list(value)


_COMPONENT_KIND = {
    "ic_prior": "prior",
    "co_prior": "prior",
    "reconstruction": "reconstruction",
    "train_augmentations": "augmentation",
    "infer_augmentations": "augmentation",
}


def _validate(hp: HParams) -> None:
    def check(ok: bool, key: str, what: str) -> None:
        require(ok, key, what, getattr(hp, key))

    for key in ("batch_size", "max_epochs", "ic_enc_dim", "ic_dim", "gen_dim", "fac_dim"):
        check(getattr(hp, key) >= 1, key, "must be at least 1")
    for key in (
        "ic_enc_seq_len",
        "ci_enc_dim",
        "ci_lag",
        "con_dim",
        "co_dim",
        "l2_start_epoch",
        "l2_increase_epoch",
        "kl_start_epoch",
        "kl_increase_epoch",
        "lr_patience",
        "early_stopping_patience",
        "seed",
    ):
        check(getattr(hp, key) >= 0, key, "must be >= 0")
    for key in ("dropout", "cd_rate", "sv_rate"):
        check(0.0 <= getattr(hp, key) < 1.0, key, "must be in [0, 1)")
    check(0.0 <= hp.cd_pass_rate <= 1.0, "cd_pass_rate", "must be in [0, 1]")
    for key in ("cell_clip", "lr", "loss_scale", "adam_epsilon", "lr_stop"):
        check(getattr(hp, key) > 0 and not math.isnan(getattr(hp, key)), key, "must be > 0")
    for key in (
        "ic_post_var_min",
        "weight_decay",
        "gradient_clip",
        "l2_ic_enc_scale",
        "l2_ci_enc_scale",
        "l2_gen_scale",
        "l2_con_scale",
        "kl_ic_scale",
        "kl_co_scale",
    ):
        check(getattr(hp, key) >= 0, key, "must be >= 0")
    for key in ("adam_beta1", "adam_beta2", "lr_decay", "valid_smoothing"):
        check(
            0.0 < getattr(hp, key) <= 1.0
            if key == "valid_smoothing"
            else 0.0 <= getattr(hp, key) < 1.0,
            key,
            "must be in [0, 1)" if key != "valid_smoothing" else "must be in (0, 1]",
        )
    check(hp.readin_dim is None or hp.readin_dim >= 1, "readin_dim", "must be at least 1 or null")
    check(hp.readin_init in ("pcr", "random"), "readin_init", "must be 'pcr' or 'random'")
    if not hp.variational and (
        hp.ic_prior.name != "null" or (hp.use_controller and hp.co_prior.name != "null")
    ):
        raise ValueError(
            f"variational: false needs null priors (ic_prior: null, co_prior: null), "
            f"got ic_prior {hp.ic_prior.name!r}, co_prior {hp.co_prior.name!r}"
        )
