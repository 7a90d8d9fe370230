"""Validate a workflow configfile against its JSON schema, with errors that name the key.

`snakemake.utils.validate` reports jsonschema's raw message; users need the
dotted key, the bad value and what is allowed. Defaults declared in the schema
are filled in, so rules can rely on every key being present.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """A configfile does not match the schema; the message lists every problem."""


def load_yaml(path: str | Path) -> Any:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _dotted(path) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(f"{where}.{key}" if error.absolute_path else key for key in unknown)
        return f"unknown key {keys}; allowed here: {', '.join(allowed)}"
    if error.validator in ("minProperties", "maxProperties") and where == "source":
        return f"source: give exactly one of {', '.join(sorted(error.schema['properties']))}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    return f"{where}: {error.instance!r} is not valid: {error.message}"


def _resolve(schema: dict, root: dict) -> dict:
    if "$ref" in schema:
        return root["$defs"][schema["$ref"].split("/")[-1]]
    return schema


def _fill_defaults(instance: Any, schema: dict, root: dict) -> None:
    schema = _resolve(schema, root)
    if not isinstance(instance, dict):
        return
    for key, subschema in schema.get("properties", {}).items():
        subschema = _resolve(subschema, root)
        if key not in instance and "default" in subschema:
            instance[key] = copy.deepcopy(subschema["default"])
        if key in instance:
            _fill_defaults(instance[key], subschema, root)


def validate_config(config: dict, schema_path: str | Path, source: str = "configfile") -> dict:
    """Return a copy of `config` with defaults filled in; raise ConfigError naming each bad key."""
    schema = load_yaml(schema_path)
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(config).__name__}")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(error)}" for error in errors)
        raise ConfigError(
            f"{source} is invalid ({len(errors)} problem{'s' * (len(errors) > 1)}):\n{lines}\n"
            "Fix these keys (config/README.md documents every key) and run again."
        )
    config = copy.deepcopy(config)
    _fill_defaults(config, schema, schema)
    return config


def check_config(config: dict) -> dict[str, dict]:
    """The checks of a validated configfile that its schema cannot express; returns its runs.

    Checks that model.bin_width is one of bin_widths, that the source can produce the
    nlb_layout, the synthetic settings (lfads.data.synthetic.SyntheticSettings), the search
    (lfads.search.space) and every run's hyperparameters (lfads.model.hparams.HParams, without
    importing plugins: that would run their code whenever the workflow is parsed). Raises
    ConfigError naming the key. Returns {run name: its searched values}.
    """
    from lfads.data.synthetic import SYNTHETIC_LAYOUTS, SyntheticSettings
    from lfads.model.hparams import HParams
    from lfads.search.space import expand_search, run_hparams

    model = config["model"]
    if model["bin_width"] not in config["bin_widths"]:
        raise ConfigError(
            f"model.bin_width: {model['bin_width']} is not one of bin_widths "
            f"{config['bin_widths']}; add it to bin_widths or choose one of them."
        )
    if "synthetic" in config["source"]:
        if config["nlb_layout"] not in SYNTHETIC_LAYOUTS:
            raise ConfigError(
                f"nlb_layout: the synthetic source writes the MC_Maze layout, not "
                f"{config['nlb_layout']!r}; use one of {list(SYNTHETIC_LAYOUTS)}, or a dandi or "
                "local source for other layouts."
            )
        try:
            SyntheticSettings.from_dict(config["source"]["synthetic"])
        except ValueError as error:
            raise ConfigError(f"source.synthetic: {error}") from None
    try:
        runs = {run.name: run.params for run in expand_search(config["search"])}
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for name, params in runs.items():
        try:
            HParams.from_dict(run_hparams(model["hparams"], params), import_plugins=False)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model.hparams / search (run {name}): {error}") from None
    return runs
