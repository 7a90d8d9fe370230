"""Observation models: how the readout's outputs become a likelihood of the recorded data.

Interface (`Reconstruction`): `n_params` outputs per neuron; `reshape_output_params`
turns the readout's (P, B, T, n_params * H) into (P, B, T, H, n_params);
`compute_loss(data, params)` is the elementwise negative log-likelihood (P, B, T, H);
`compute_means(params)` the expected data (P, B, T, H), e.g. spikes per bin; `penalty()` a loss
on the part's own parameters, per member (P,) or 0. Parameters have a leading member axis P.
Constructors take keyword arguments only: `n_neurons` (H), `n_members` (P) and the options of
the config.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Reconstruction(nn.Module):
    n_params: int = 1

    def __init__(self, *, n_neurons: int, n_members: int = 1):
        super().__init__()
        self.n_neurons = n_neurons  # H

    def reshape_output_params(self, output: torch.Tensor) -> torch.Tensor:
        """(..., n_params * H) -> (..., H, n_params); parameter p of all neurons is one block."""
        return torch.stack(output.chunk(self.n_params, dim=-1), dim=-1)

    def compute_loss(self, data: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_means(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self) -> torch.Tensor | float:
        """Extra loss on the reconstruction's own parameters (added to the L2 term), (P,) or 0."""
        return 0.0


class Poisson(Reconstruction):
    """Counts ~ Poisson(exp(log_rate)); one parameter, the log rate in log(spikes per bin)."""

    def compute_loss(self, data: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # Exact log(k!) (F.poisson_nll_loss(full=True) uses Stirling's approximation).
        log_rate = params[..., 0]
        return torch.exp(log_rate) - data * log_rate + torch.lgamma(data + 1.0)

    def compute_means(self, params: torch.Tensor) -> torch.Tensor:
        return torch.exp(params[..., 0])


class Gaussian(Reconstruction):
    """data ~ Normal(mean, exp(log_variance)); the full negative log-density (with log 2 pi)."""

    n_params = 2

    def compute_loss(self, data: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        mean, log_variance = params.unbind(-1)
        return 0.5 * (
            log_variance + (data - mean) ** 2 * torch.exp(-log_variance) + math.log(2 * math.pi)
        )

    def compute_means(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0]


class Gamma(Reconstruction):
    """data ~ Gamma(concentration exp(p0), rate exp(p1)), for positive data."""

    n_params = 2

    def compute_loss(self, data: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        concentration, rate = torch.exp(params).unbind(-1)
        return -torch.distributions.Gamma(concentration, rate).log_prob(data)

    def compute_means(self, params: torch.Tensor) -> torch.Tensor:
        concentration, rate = torch.exp(params).unbind(-1)
        return concentration / rate


class ZeroInflatedGamma(Reconstruction):
    """Calcium imaging (RADICaL): zero with probability 1 - q, else gamma_loc + Gamma(alpha, beta).

    alpha and beta are sigmoid outputs times learnable per-neuron scales, which
    an L2 penalty pulls toward `scale_prior`.
    """

    n_params = 3

    def __init__(
        self,
        *,
        n_neurons: int,
        n_members: int = 1,
        gamma_loc: float = 0.1,
        scale_init: float = 20.0,
        scale_prior: float = 20.0,
        scale_penalty: float = 1e-4,
    ):
        super().__init__(n_neurons=n_neurons)
        self.gamma_loc, self.scale_prior, self.scale_penalty = gamma_loc, scale_prior, scale_penalty
        # scales of alpha (row 0) and beta (row 1) per member and neuron, (P, 2, H)
        self.scale = nn.Parameter(torch.full((n_members, 2, n_neurons), float(scale_init)))

    def _scaled(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unit = torch.clamp_min(torch.sigmoid(params), 1e-5)  # keeps alpha, beta, q away from 0
        alpha_unit, beta_unit, q = unit.unbind(-1)  # (P, B, T, H) each
        scale = self.scale.view(self.scale.shape[0], *[1] * (alpha_unit.dim() - 2), 2, -1)
        return alpha_unit * scale[..., 0, :], beta_unit * scale[..., 1, :], q

    def compute_loss(self, data: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        alpha, beta, q = self._scaled(params)
        # Zeros are evaluated at a dummy positive value, then replaced.
        shifted = torch.where(data == 0, torch.ones_like(data), data - self.gamma_loc)
        gamma_nll = -torch.distributions.Gamma(alpha, beta).log_prob(shifted)
        return torch.where(data == 0, -torch.log1p(-q), gamma_nll - torch.log(q))

    def compute_means(self, params: torch.Tensor) -> torch.Tensor:
        alpha, beta, q = self._scaled(params)
        return q * (alpha / beta + self.gamma_loc)

    def penalty(self) -> torch.Tensor:
        return (
            0.5 * self.scale_penalty * torch.sum((self.scale - self.scale_prior) ** 2, dim=(1, 2))
        )


class MSE(Reconstruction):
    """Squared error: the Gaussian negative log-density with variance 1/2, less 0.5 log(pi)."""

    def compute_loss(self, data: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return (data - params[..., 0]) ** 2

    def compute_means(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0]
