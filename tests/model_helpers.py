"""Small prepared files for model tests: Lorenz latents -> log-linear rates -> Poisson counts."""

from __future__ import annotations

import numpy as np

from lfads.bench.toydata import lorenz_latents, write_lorenz_prepared  # noqa: F401 (used by the tests)

TINY_HPARAMS = dict(
    ic_enc_dim=16,
    ci_enc_dim=16,
    con_dim=16,
    co_dim=2,
    ic_dim=8,
    gen_dim=32,
    fac_dim=8,
    batch_size=40,
    lr=0.01,
    kl_increase_epoch=2,
    l2_increase_epoch=2,
    dropout=0.0,
)


def smoothed_rates(spikes: np.ndarray, width_bins: float = 2.0) -> np.ndarray:
    """Gaussian-smoothed spikes per trial (B, T, N): the smoothing baseline of NLB."""
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(spikes.astype(np.float64), width_bins, axis=1, mode="nearest")
