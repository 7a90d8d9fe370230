"""Hyperparameter search space: a crossed grid and/or a seeded random search, one run per point.

A run's folder name is built only from the values it searches, e.g.
`dropout~0.1_lr~0.004`, so it is stable when unrelated config keys change, and
changing one grid value changes (and reruns) only the runs that carry it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Run:
    name: str  # folder name, e.g. "dropout~0.1_lr~0.004"
    params: dict  # hyperparameter overrides of this run


def format_value(value) -> str:
    """Short, exact-enough text of a value for a folder name (4 significant digits for floats)."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.4g}"


def run_name(params: dict) -> str:
    return "_".join(f"{key}~{format_value(params[key])}" for key in sorted(params)) or "base"


def _grid_points(grid: dict) -> list[dict]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]


def _random_points(random: dict) -> list[dict]:
    """`n` points drawn with `seed` from `log_uniform` and `uniform` ranges {key: [low, high]}."""
    rng = np.random.default_rng(random.get("seed", 0))
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
    """Runs of a `search` config: every grid point crossed with every random point.

    search: {"grid": {key: [values]}, "random": {"n": N, "seed": S,
    "log_uniform": {key: [low, high]}, "uniform": {key: [low, high]}}}; both optional.
    """
    search = search or {}
    grid = _grid_points(search["grid"]) if search.get("grid") else [{}]
    random = _random_points(search["random"]) if search.get("random") else [{}]
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
