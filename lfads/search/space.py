"""Hyperparameter search space: a crossed grid and/or a seeded random search, one run per point.

A run's folder name is built only from the values it searches, e.g.
`dropout~0.1_lr~0.004` (`readin_dim~null` for a null value), so it is stable when unrelated
config keys change, and changing one grid value changes (and reruns) only the runs that carry it.
Grid values are plain scalars (numbers, strings, true/false, null): a run's name must be one
short, safe folder name, so values that cannot be part of one are refused with the key.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np

from lfads.infra.paths import MAX_NAME_BYTES

# A run's name is a folder name (runs/<run>/, checkpoints/<run>/) and a file name
# (logs/train/<run>.log, benchmarks/train/<run>.tsv), so it leaves room for those suffixes.
MAX_RUN_NAME_BYTES = MAX_NAME_BYTES - len(".log")
# Characters a value may bring into a run name (letters and digits are always fine).
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
HYPERPARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Run:
    name: str  # folder name, e.g. "dropout~0.1_lr~0.004"
    params: dict  # hyperparameter overrides of this run


def format_value(value) -> str:
    """Short, exact-enough text of a value for a folder name (4 significant digits for floats)."""
    if value is None:
        return "null"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.4g}"


def run_name(params: dict) -> str:
    return "_".join(f"{key}~{format_value(params[key])}" for key in sorted(params)) or "base"


def _check_key(key, where: str) -> None:
    """Searched keys are hyperparameter names (identifiers): they are part of the run names too."""
    if not isinstance(key, str) or not HYPERPARAMETER_NAME.match(key):
        raise ValueError(f"{where}: {key!r} is not a hyperparameter name")


def _check_grid_value(key: str, index: int, value) -> None:
    """A grid value must be a scalar that can be part of a folder name; ValueError otherwise."""
    where = f"search.grid.{key}[{index}]"
    if isinstance(value, dict | list | tuple):
        raise ValueError(
            f"{where}: {value!r} is a {'mapping' if isinstance(value, dict) else 'list'}; a grid "
            "lists plain values (numbers, strings, true/false, null). Search the flat keys of a "
            "part's options instead (e.g. cd_rate), or give the part in model.hparams."
        )
    if isinstance(value, str) and not SAFE_NAME.match(value):
        raise ValueError(
            f"{where}: {value!r} cannot be part of a run's folder name; use letters, digits "
            "and _ . + - only"
        )


def _grid_points(grid: dict) -> list[dict]:
    for key, values in grid.items():
        _check_key(key, "search.grid")
        for index, value in enumerate(values):
            _check_grid_value(key, index, value)
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]


def _random_points(random: dict) -> list[dict]:
    """`n` points drawn with `seed` from `log_uniform` and `uniform` ranges {key: [low, high]}."""
    rng = np.random.default_rng(random.get("seed", 0))
    for kind in ("log_uniform", "uniform"):
        for key, (low, high) in random.get(kind, {}).items():
            _check_key(key, f"search.random.{kind}")
            lowest = 0.0 if kind == "log_uniform" else -math.inf
            if not (lowest < low <= high < math.inf):
                bounds = "0 < low <= high" if kind == "log_uniform" else "low <= high, both finite"
                raise ValueError(
                    f"search.random.{kind}.{key}: [low, high] must have {bounds}, got {[low, high]}"
                )
    ranges = [
        (key, "log_uniform", bounds)
        for key, bounds in sorted(random.get("log_uniform", {}).items())
    ]
    ranges += [
        (key, "uniform", bounds) for key, bounds in sorted(random.get("uniform", {}).items())
    ]
    points = []
    for _ in range(random["n"]):
        point = {}
        for key, kind, (low, high) in ranges:
            if kind == "log_uniform":
                value = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                value = rng.uniform(low, high)
            point[key] = float(format_value(value))  # the value trained is the value named
        points.append(point)
    return points


def expand_search(search: dict | None) -> list[Run]:
    """Runs of a `search` config: every grid point crossed with every random point, each
    `seeds` times with seeds 0 .. seeds - 1 (its replicas, named `..._seed~<i>`).

    search: {"grid": {key: [values]}, "random": {"n": N, "seed": S,
    "log_uniform": {key: [low, high]}, "uniform": {key: [low, high]}}, "seeds": k}; all optional.
    """
    search = search or {}
    grid = _grid_points(search["grid"]) if search.get("grid") else [{}]
    random = _random_points(search["random"]) if search.get("random") else [{}]
    seeds = search.get("seeds", 1)
    if seeds > 1:
        searched = set(search.get("grid", {})) | {
            key
            for kind in ("log_uniform", "uniform")
            for key in search.get("random", {}).get(kind, {})
        }
        if "seed" in searched:
            raise ValueError(
                "search.seeds: the search also varies seed; give the seeds in one place"
            )
        random = [{**point, "seed": seed} for point in random for seed in range(seeds)]
    overlap = set(search.get("grid", {})) & (
        set(search.get("random", {}).get("log_uniform", {}))
        | set(search.get("random", {}).get("uniform", {}))
    )
    if overlap:
        raise ValueError(
            f"search: {sorted(overlap)} appear in both grid and random; keep each in one"
        )
    runs = [
        Run(run_name(params), params)
        for params in (
            {**grid_point, **random_point} for grid_point in grid for random_point in random
        )
    ]
    for run in runs:  # (keys and values are safe characters, so only the length can be wrong)
        size = len(run.name.encode())
        if size > MAX_RUN_NAME_BYTES:
            raise ValueError(
                f"search: the run name {run.name[:60]!r}... is {size} bytes long; a run's folder "
                f"and log file names allow {MAX_RUN_NAME_BYTES}. Search fewer keys at once, or "
                "use shorter string values."
            )
    names = [run.name for run in runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"search: several runs share the name(s) {duplicates}; remove repeated grid values"
        )
    return runs


def run_hparams(base: dict, searched: dict) -> dict:
    """Plain hyperparameters of one run: the configfile's base values, then its searched ones."""
    return {**base, **searched}


def pack_runs(
    runs: dict[str, dict], shared: dict[str, object], pack_size: int
) -> dict[str, list[str]]:
    """{pack name: its runs}: runs that can share a pack (equal `shared[run]`, the settings a
    pack's members share) in consecutive packs of at most `pack_size`, in the search's order.

    Packs are named pack00, pack01, ... in that order, so a run keeps its pack when another
    pack's values change.
    """
    groups: list[tuple[object, list[str]]] = []
    for run in runs:
        for key, members in groups:
            if key == shared[run]:
                members.append(run)
                break
        else:
            groups.append((shared[run], [run]))
    chunks = [
        members[start : start + pack_size]
        for _, members in groups
        for start in range(0, len(members), pack_size)
    ]
    width = max(2, len(str(len(chunks) - 1)))
    return {f"pack{index:0{width}d}": chunk for index, chunk in enumerate(chunks)}
