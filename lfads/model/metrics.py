"""Epoch metrics accumulated over batches: bits per spike by region, and R^2 against true rates.

Accumulating per-neuron sums gives the exact full-split value (the null model
of bits/spike is each neuron's mean over the whole split, as in nlb_tools),
not an average of per-batch values. Every input has the members' axis first, (P, B, ...), and
every value is per member: `compute` returns a list of P floats.
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
        """rates, spikes: (P, B, T, N) in spikes per bin."""
        rates, spikes = rates.detach().double(), spikes.detach().double()
        observed = ~torch.isnan(spikes)
        k = torch.where(observed, spikes, 0.0)
        rates = torch.where(observed, rates, 1.0)
        log_factorial = torch.lgamma(k + 1.0)
        nll_model = torch.where(observed, rates - torch.xlogy(k, rates) + log_factorial, 0.0)
        batch = {  # (P, N) each
            "nll_model": nll_model.sum(dim=(1, 2)),
            "spikes": k.sum(dim=(1, 2)),
            "count": observed.sum(dim=(1, 2)).double(),
            "log_factorial": log_factorial.sum(dim=(1, 2)),
        }
        for key, value in batch.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def compute(self, n_members: int) -> list[float]:
        if not self.sums:
            return [math.nan] * n_members
        s = self.sums
        null_rate = s["spikes"] / s["count"].clamp_min(1.0)
        nll_null = s["count"] * null_rate - torch.xlogy(s["spikes"], null_rate) + s["log_factorial"]
        gain = (nll_null - s["nll_model"]).sum(dim=1)
        spikes = s["spikes"].sum(dim=1)
        return [
            float(g / (n * math.log(2))) if float(n) > 0 else math.nan
            for g, n in zip(gain.cpu(), spikes.cpu())
        ]


class RateR2:
    """R^2 of predicted against true rates per neuron (all trials and bins), mean over neurons."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, rates: torch.Tensor, truth: torch.Tensor) -> None:
        """rates, truth: (P, B, T, N)."""
        rates, truth = rates.detach().double().flatten(1, 2), truth.detach().double().flatten(1, 2)
        batch = {
            "n": torch.tensor(float(truth.shape[1]), dtype=torch.float64, device=truth.device),
            "truth": truth.sum(1),
            "truth_sq": (truth**2).sum(1),
            "residual_sq": ((truth - rates) ** 2).sum(1),
        }
        for key, value in batch.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def compute(self, n_members: int) -> list[float]:
        if not self.sums:
            return [math.nan] * n_members
        s = self.sums
        total = s["truth_sq"] - s["truth"] ** 2 / s["n"]
        return torch.mean(1.0 - s["residual_sq"] / total, dim=1).tolist()


class RegionMetrics:
    """bps (held-in neurons, observed bins), co_bps (held-out neurons, observed bins),
    fp_bps (all neurons, forward bins) and rate_r2 (all), for one session layout."""

    def __init__(self, n_heldin: int, n_obs_bins: int, n_members: int = 1) -> None:
        self.n_heldin, self.n_obs_bins, self.n_members = n_heldin, n_obs_bins, n_members
        self.bps, self.co_bps, self.fp_bps, self.r2 = (
            BitsPerSpike(),
            BitsPerSpike(),
            BitsPerSpike(),
            RateR2(),
        )

    def update(
        self, rates: torch.Tensor, recon_data: torch.Tensor, truth: torch.Tensor | None
    ) -> None:
        """rates, recon_data, truth: (P, B, T + F, H) spikes per bin."""
        n_in, n_obs = self.n_heldin, self.n_obs_bins
        self.bps.update(rates[..., :n_obs, :n_in], recon_data[..., :n_obs, :n_in])
        if recon_data.shape[-1] > n_in:
            self.co_bps.update(rates[..., :n_obs, n_in:], recon_data[..., :n_obs, n_in:])
        if recon_data.shape[-2] > n_obs:
            self.fp_bps.update(rates[..., n_obs:, :], recon_data[..., n_obs:, :])
        if truth is not None:
            self.r2.update(rates, truth)

    def compute(self) -> dict[str, list[float]]:
        """Each metric's value per member."""
        p = self.n_members
        return {
            "bps": self.bps.compute(p),
            "co_bps": self.co_bps.compute(p),
            "fp_bps": self.fp_bps.compute(p),
            "rate_r2": self.r2.compute(p),
        }


def mean_over_sessions(values: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over the sessions that have it."""
    out = {}
    for key in values[0] if values else []:
        finite = [v[key] for v in values if not math.isnan(v[key])]
        out[key] = sum(finite) / len(finite) if finite else math.nan
    return out
