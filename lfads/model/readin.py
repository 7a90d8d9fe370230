"""Per-session readins (neurons -> shared encoder input), with a principal-components start.

With several sessions, each has its own linear readin into a common space of
`readin_dim` channels, and its own readout (in lfads.py) from the shared
factors. The readin starts from principal-components regression (PCR): the
sessions' trial-averaged activity, side by side, gives common principal
components; each session's readin is the ridge regression of its own
activity onto them, so that the same latent state enters the encoders alike
whichever session it came from.
"""

from __future__ import annotations

import numpy as np


def session_averages(
    encod_data: np.ndarray, condition: np.ndarray | None, conditions: list[int] | None
) -> np.ndarray:
    """Rows of time-aligned average activity: (n_conditions * T, n_heldin); (T, n_heldin) without
    conditions.

    encod_data: (N, T, n_heldin) spikes per bin; condition: (N,) condition index per trial.
    """
    if conditions is None:
        return encod_data.mean(axis=0)
    return np.concatenate([encod_data[condition == c].mean(axis=0) for c in conditions])


def shared_conditions(conditions: list[np.ndarray | None]) -> list[int] | None:
    """Condition indices (>= 0) present in every session, or None when any session lacks them."""
    if any(c is None for c in conditions):
        return None
    common = set.intersection(
        *(set(np.asarray(c)[np.asarray(c) >= 0].tolist()) for c in conditions)
    )
    return sorted(common) or None


def pcr_readins(
    averages: list[np.ndarray], readin_dim: int, ridge: float = 1e-2, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Readins (weight (readin_dim, n_s), bias (readin_dim,)) from each session's averages (R, n_s).

    All sessions' averages must have the same rows R (same bins and conditions).
    The common components are scaled to unit mean variance. When there are
    fewer than `readin_dim` components (R - 1 or fewer), the remaining readin
    rows are random N(0, 1/n_s), so no channel of the encoder input is dead.
    """
    rows = {a.shape[0] for a in averages}
    if len(rows) != 1:
        raise ValueError(f"PCR: sessions have different numbers of average rows {sorted(rows)}")
    centred = [a - a.mean(axis=0) for a in averages]
    joined = np.concatenate(centred, axis=1)  # (R, sum n_s)
    u, s, _ = np.linalg.svd(joined, full_matrices=False)
    n_components = int(min(readin_dim, np.sum(s > s[0] * 1e-6) if s.size else 0))
    scores = u[:, :n_components] * s[:n_components]  # (R, k)
    if n_components:
        scores = scores / np.sqrt(np.mean(scores.var(axis=0)))
    rng = np.random.default_rng(seed)
    readins = []
    for average, x in zip(averages, centred):
        n = x.shape[1]
        weight = rng.normal(0.0, 1.0 / np.sqrt(n), size=(readin_dim, n))
        # ridge regression x @ w ~ scores: w = (x'x + ridge I)^-1 x' scores, (n, k)
        w = np.linalg.solve(x.T @ x + ridge * np.eye(n), x.T @ scores)
        weight[:n_components] = w.T
        bias = -weight @ average.mean(axis=0)
        readins.append((weight.astype(np.float32), bias.astype(np.float32)))
    return readins
