"""Validate a workflow configfile against its JSON schema, with errors that name the key.

At the top of the package, above every stage: the configfile check asks each stage (data,
model, search, evaluation) whether its part of the configfile is valid, so nothing below imports
it (tests/test_conventions.py checks the layers).

`snakemake.utils.validate` reports jsonschema's raw message; users need the
dotted key, the bad value and what is allowed. Defaults declared in the schema
are filled in, so rules can rely on every key being present.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lfads.infra.settings import did_you_mean


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
        hint = did_you_mean(unknown, allowed) or f"allowed here: {', '.join(allowed)}"
        return f"unknown key {keys}; {hint}"
    if error.validator in ("minProperties", "maxProperties") and where == "source":
        return f"source: give exactly one of {', '.join(sorted(error.schema['properties']))}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator in ("pattern", "maxLength") and "description" in error.schema:
        return f"{where}: {error.instance!r} is not valid: expected {error.schema['description']}"
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


def check_configfiles(paths: Iterable[str | Path]) -> None:
    """Refuse configfiles of which more than one sets `search` (ConfigError naming them):
    Snakemake merges configfiles key by key, so their grids would cross into runs that neither
    file asks for. One configfile that sets the search, the others without `search`, is fine."""
    setting = [str(path) for path in paths if "search" in (load_yaml(path) or {})]
    if len(setting) > 1:
        raise ConfigError(
            f"search: set in {len(setting)} configfiles ({', '.join(setting)}); Snakemake would "
            "merge them key by key and cross their grids into runs that none of them asks for. "
            "Keep `search` in one configfile (or give the search with --config search=...)."
        )


@dataclass(frozen=True)
class SearchRuns:
    """A configfile's search: its runs and how they are packed."""

    runs: dict[str, dict]  # {run name: its searched values}
    packs: dict[str, list[str]]  # {pack name: its runs}; {} for a PBT search (one pack, rule pbt)
    notes: list[str]  # what a user should know about the packing (keys that split the runs)


def check_config(config: dict) -> SearchRuns:
    """The checks of a validated configfile that its schema cannot express; returns its runs.

    Checks that model.bin_width is one of bin_widths, that the source can produce the
    nlb_layout, the synthetic settings (lfads.data.synthetic.SyntheticSettings), the paths built
    from the dataset name and asset paths (lfads.infra.paths), the search and its run names
    (lfads.search.space) and every run's hyperparameters (lfads.model.hparams.HParams, without
    importing plugins: that would run their code whenever the workflow is parsed), and that
    ensemble.top_k is at most the number of runs. Raises
    ConfigError naming the key. Returns the runs and their packs (`search.pack_size` runs that
    share their architecture train as one pack, `lfads.model.hparams.pack_settings`).
    """
    from lfads.data.dandi import MAX_ASSET_NAME_BYTES
    from lfads.data.layouts import NLB_DANDISETS
    from lfads.data.synthetic import SyntheticSettings
    from lfads.infra.paths import check_name, relative_parts
    from lfads.model.hparams import HParams, pack_settings
    from lfads.search.space import expand_search, pack_runs, run_hparams

    model = config["model"]
    if model["bin_width"] not in config["bin_widths"]:
        raise ConfigError(
            f"model.bin_width: {model['bin_width']} is not one of bin_widths "
            f"{config['bin_widths']}; add it to bin_widths or choose one of them."
        )
    (kind, source), layout = next(iter(config["source"].items())), config["nlb_layout"]
    if kind == "synthetic":
        try:
            SyntheticSettings.from_dict(source, layout)
        except ValueError as error:
            raise ConfigError(f"source.synthetic: {error}") from None
    else:
        holds = NLB_DANDISETS.get(source["dandiset"], layout)
        if holds != layout:
            raise ConfigError(
                f"nlb_layout: DANDI:{source['dandiset']} (source.{kind}.dandiset) holds the "
                f"{holds} files, not {layout!r}; set nlb_layout: {holds}, or name the dandiset "
                f"of {layout} ({_dandiset_of(layout, NLB_DANDISETS)})."
            )
    try:
        check_name(config["dataset"], "dataset")
        for role, asset in (source.get("assets") or {}).items() if kind != "synthetic" else ():
            # a downloaded file that fails its SHA-256 is renamed `<name>.sha256-mismatch-<hash>`
            relative_parts(asset["path"], f"source.{kind}.assets.{role}.path", MAX_ASSET_NAME_BYTES)
        if "pbt" in config["search"]:
            runs = _check_pbt(config["search"], model["hparams"])
        else:
            runs = {run.name: run.params for run in expand_search(config["search"])}
    except ValueError as error:
        raise ConfigError(str(error)) from None
    built = {}
    for name, params in runs.items():
        try:
            built[name] = HParams.from_dict(
                run_hparams(model["hparams"], params), import_plugins=False
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model.hparams / search (run {name}): {error}") from None
    if "ensemble" in config:
        _check_ensemble(config["ensemble"]["top_k"], runs)
    if "pbt" in config["search"]:
        return SearchRuns(runs, {}, [])
    pack_size = config["search"].get("pack_size", DEFAULT_PACK_SIZE)
    packs = pack_runs(runs, {name: pack_settings(hp) for name, hp in built.items()}, pack_size)
    empty = [f"search.{kind}" for kind in ("grid", "random") if config["search"].get(kind) == {}]
    notes = [
        f"{key} is empty, so it searches nothing: {len(runs)} run(s) of model.hparams"
        for key in empty
    ]
    return SearchRuns(runs, packs, notes + _pack_notes(built, packs, pack_size))


# Runs per pack when search.pack_size is not given: the demo's grid is one pack; a pack of 8
# trains at about 0.4x a single run's seconds per epoch per member on 2 CPU cores.
DEFAULT_PACK_SIZE = 8


def _pack_notes(built: dict, packs: dict[str, list[str]], pack_size: int) -> list[str]:
    """Why the runs train in more packs than pack_size needs: the keys that split them."""
    from lfads.model.hparams import pack_conflicts

    needed = -(-len(built) // pack_size)
    if len(packs) <= needed:
        return []
    first = next(iter(built.values()))
    keys = sorted({key for hp in built.values() for key in pack_conflicts(first, hp)})
    return [
        f"search: the {len(built)} runs train in {len(packs)} packs, not {needed}: they differ "
        f"in {keys}, which the members of a pack share (search.pack_size {pack_size})"
    ]


def _check_pbt(search: dict, base_hparams: dict) -> dict[str, dict]:
    """The runs of a PBT search (its final workers, searched values unknown until it ends), after
    checking its settings and every initial worker's hyperparameters (ValueError naming the key)."""
    from lfads.model.hparams import HParams
    from lfads.search.pbt import PBTSettings, initial_plan, run_names, worker_hparams

    others = sorted(set(search) - {"pbt", "pack_size"})
    if others:
        raise ValueError(
            f"search.pbt: a PBT search runs on its own, but search also has {others}; remove "
            f"search.{others[0]}, or move it to another configfile"
        )
    settings = PBTSettings.from_config(search["pbt"])
    if base_hparams.get("lr_scheduler"):
        raise ValueError(
            "model.hparams.lr_scheduler: PBT controls the learning rate (search.pbt), so no "
            "scheduler may change it; set lr_scheduler: false"
        )
    plan = initial_plan(settings)
    for index, worker in enumerate(plan.workers):
        values = worker_hparams(base_hparams, worker.hyperparameters, plan.end_epoch, index)
        try:
            HParams.from_dict(values, import_plugins=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"model.hparams / search.pbt (worker {worker.name}, generation 0): {error}"
            ) from None
    return {name: {} for name in run_names(settings)}


def _check_ensemble(top_k: int, runs: dict[str, dict]) -> None:
    from lfads.evaluation.ensemble import ensemble_name

    if top_k > len(runs):
        raise ConfigError(
            f"ensemble.top_k: {top_k} is more than the {len(runs)} run(s) of the search; set it "
            f"to at most {len(runs)}, search more runs, or remove the ensemble key."
        )
    if ensemble_name(top_k) in runs:
        raise ConfigError(
            f"ensemble.top_k: the ensemble's name {ensemble_name(top_k)} is also a run of the "
            "search; rename that run's searched key."
        )


def _dandiset_of(layout: str, dandisets: dict[str, str]) -> str:
    found = [f"DANDI:{dandiset}" for dandiset, name in dandisets.items() if name == layout]
    return found[0] if found else "see config/"


def check_output_paths(paths: Iterable[str | Path]) -> None:
    """Raise ConfigError unless every path is relative and inside resources/ or results/.

    The workflow calls this with the folders and files it builds from the configfile, after
    check_config: it catches what a new path built from a configfile value would let escape.
    """
    from lfads.infra.paths import check_inside_project

    for path in paths:
        try:
            check_inside_project(str(path), "the workflow's output path")
        except ValueError as error:
            raise ConfigError(
                f"{error}. Outputs go below resources/ and results/ only; fix the configfile "
                "value this path is built from (dataset, source assets, search)."
            ) from None


def finished_results(configfile: str | Path, workdir: str | Path = ".") -> Path:
    """The absolute results/<dataset>/<phase>/ of `configfile` below `workdir`, once its workflow
    has written summary.tsv there (`make report`); ConfigError, one line, before that."""
    config = load_yaml(configfile) or {}
    results = (Path(workdir) / "results" / str(config.get("dataset"))).resolve()
    results = results / str(config.get("phase", "val"))
    if not (results / "summary.tsv").exists():
        raise ConfigError(
            f"{configfile}: no results to report yet ({results}/summary.tsv is missing); run its "
            f"workflow first: .venv/bin/snakemake --cores 2 --configfile {configfile}"
        )
    return results


if __name__ == "__main__":  # `make report`: python -m lfads.config CONFIGFILE [WORKDIR]
    import sys

    try:
        print(finished_results(*sys.argv[1:]))
    except ConfigError as error:
        sys.exit(f"make report: {error}")
