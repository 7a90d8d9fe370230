"""Epoch metrics accumulated over batches: bits per spike by region, and R^2 against true rates.

Accumulating per-neuron sums gives the exact full-split value (the null model
of bits/spike is each neuron's mean over the whole split, as in nlb_tools),
not an average of per-batch values.
"""

from __future__ import annotations

import math

import torch


class BitsPerSpike:
    """Poisson log-likelihood gain of predicted rates over each neuron's mean, in bits per spike.

    Targets may hold NaN (unobserved): those elements are ignored.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, rates: torch.Tensor, spikes: torch.Tensor) -> None:
        """rates, spikes: (B, T, N) in spikes per bin."""
        rates, spikes = rates.detach().double(), spikes.detach().double()
        observed = ~torch.isnan(spikes)
        k = torch.where(observed, spikes, 0.0)
        rates = torch.where(observed, rates, 1.0)
        log_factorial = torch.lgamma(k + 1.0)
        nll_model = torch.where(observed, rates - torch.xlogy(k, rates) + log_factorial, 0.0)
        batch = {
            "nll_model": nll_model.sum(dim=(0, 1)),
            "spikes": k.sum(dim=(0, 1)),
            "count": observed.sum(dim=(0, 1)).double(),
            "log_factorial": log_factorial.sum(dim=(0, 1)),
        }
        for key, value in batch.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def compute(self) -> float:
        if not self.sums or float(self.sums["spikes"].sum()) == 0:
            return math.nan
        s = self.sums
        null_rate = s["spikes"] / s["count"].clamp_min(1.0)
        nll_null = s["count"] * null_rate - torch.xlogy(s["spikes"], null_rate) + s["log_factorial"]
        gain = (nll_null - s["nll_model"]).sum()
        return float(gain / (s["spikes"].sum() * math.log(2)))


class RateR2:
    """R^2 of predicted against true rates per neuron (all trials and bins), mean over neurons."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, rates: torch.Tensor, truth: torch.Tensor) -> None:
        rates, truth = rates.detach().double().flatten(0, 1), truth.detach().double().flatten(0, 1)
        batch = {
            "n": torch.tensor(float(truth.shape[0]), dtype=torch.float64, device=truth.device),
            "truth": truth.sum(0),
            "truth_sq": (truth**2).sum(0),
            "residual_sq": ((truth - rates) ** 2).sum(0),
        }
        for key, value in batch.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def compute(self) -> float:
        if not self.sums:
            return math.nan
        s = self.sums
        total = s["truth_sq"] - s["truth"] ** 2 / s["n"]
        return float(torch.mean(1.0 - s["residual_sq"] / total))


class RegionMetrics:
    """bps (held-in neurons, observed bins), co_bps (held-out neurons, observed bins),
    fp_bps (all neurons, forward bins) and rate_r2 (all), for one session layout."""

    def __init__(self, n_heldin: int, n_obs_bins: int) -> None:
        self.n_heldin, self.n_obs_bins = n_heldin, n_obs_bins
        self.bps, self.co_bps, self.fp_bps, self.r2 = (
            BitsPerSpike(),
            BitsPerSpike(),
            BitsPerSpike(),
            RateR2(),
        )

    def update(
        self, rates: torch.Tensor, recon_data: torch.Tensor, truth: torch.Tensor | None
    ) -> None:
        """rates, recon_data, truth: (B, T + F, H) spikes per bin."""
        n_in, n_obs = self.n_heldin, self.n_obs_bins
        self.bps.update(rates[:, :n_obs, :n_in], recon_data[:, :n_obs, :n_in])
        if recon_data.shape[2] > n_in:
            self.co_bps.update(rates[:, :n_obs, n_in:], recon_data[:, :n_obs, n_in:])
        if recon_data.shape[1] > n_obs:
            self.fp_bps.update(rates[:, n_obs:], recon_data[:, n_obs:])
        if truth is not None:
            self.r2.update(rates, truth)

    def compute(self) -> dict[str, float]:
        return {
            "bps": self.bps.compute(),
            "co_bps": self.co_bps.compute(),
            "fp_bps": self.fp_bps.compute(),
            "rate_r2": self.r2.compute(),
        }


def mean_over_sessions(values: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over the sessions that have it."""
    out = {}
    for key in values[0] if values else []:
        finite = [v[key] for v in values if not math.isnan(v[key])]
        out[key] = sum(finite) / len(finite) if finite else math.nan
    return out
