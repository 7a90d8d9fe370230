"""Small prepared files without NWB files: Lorenz latents -> log-linear rates -> Poisson counts.

Used by the benchmark (`bench/`, outside the package) and the model tests. The files are written by
the prepared format's one writer (`lfads.formats.prepared`), with the true rates under `truth`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lfads.data.lorenz import euler_step
from lfads.formats.prepared import PreparedAttributes, PreparedSplit, write_prepared


def lorenz_latents(
    n_trials: int, n_bins: int, rng: np.random.Generator, steps_per_bin: int = 6, dt: float = 0.01
) -> np.ndarray:
    """(n_trials, n_bins, 3) z-scored Lorenz trajectories from random points on the attractor."""
    state = rng.normal(0, 1, (n_trials, 3)) + np.array([0.0, 0.0, 25.0])
    for _ in range(500):  # burn in onto the attractor, each trial from its own start
        state = euler_step(state, dt)
    latents = np.empty((n_trials, n_bins, 3))
    for t in range(n_bins):
        for _ in range(steps_per_bin):
            state = euler_step(state, dt)
        latents[:, t] = state
    return (latents - latents.mean(axis=(0, 1))) / latents.std(axis=(0, 1))


def write_lorenz_prepared(
    path: Path,
    n_trials: int = 200,
    n_obs_bins: int = 20,
    n_fwd_bins: int = 5,
    n_heldin: int = 20,
    n_heldout: int = 6,
    n_eval: int = 20,
    valid_fraction: float = 0.2,
    seed: int = 0,
    base_rate: float = 0.3,
    weight_scale: float = 0.8,
) -> Path:
    """Write a prepared file (lfads/README.md layout) with true rates; rates in spikes per bin.

    log rate = latents @ W + log(base_rate), W ~ N(0, weight_scale^2) per latent and neuron.
    """
    rng = np.random.default_rng(seed)
    n_neurons, n_bins = n_heldin + n_heldout, n_obs_bins + n_fwd_bins
    latents = lorenz_latents(n_trials + n_eval, n_bins, rng)
    weights = rng.normal(0, weight_scale, (3, n_neurons))
    rates = np.exp(latents @ weights + np.log(base_rate)).astype(np.float32)  # (N, T + F, H)
    spikes = rng.poisson(rates).astype(np.float32)
    order = rng.permutation(n_trials)
    n_valid = round(valid_fraction * n_trials)
    rows = {
        "valid": np.sort(order[:n_valid]),
        "train": np.sort(order[n_valid:]),
        "eval": np.arange(n_trials, n_trials + n_eval),
    }
    splits = {
        split: PreparedSplit(
            encod_data=spikes[index, :n_obs_bins, :n_heldin],
            recon_data=spikes[index] if split != "eval" else None,
            nlb_index=index if split != "eval" else np.arange(n_eval),
            condition=np.zeros(len(index), dtype=np.int64),
            truth=rates[index],
        )
        for split, index in rows.items()
    }
    attributes = PreparedAttributes(
        dataset="lorenz_test",
        nlb_layout="mc_maze",
        phase="val",
        bin_width_ms=20,
        n_heldin=n_heldin,
        n_heldout=n_heldout,
        n_obs_bins=n_obs_bins,
        n_fwd_bins=n_fwd_bins,
        valid_fraction=valid_fraction,
        split_seed=seed,
        has_truth=True,
    )
    unit_ids = {"heldin": np.arange(n_heldin), "heldout": np.arange(n_heldin, n_neurons)}
    return write_prepared(path, attributes, splits, unit_ids)
