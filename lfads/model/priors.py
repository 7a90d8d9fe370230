"""Priors over the initial condition g0 and the inferred inputs u_t, and their KL penalties.

Interface (`Prior`): `standard_noise(like)` draws the posterior's standard
noise eps, so that a reparameterised sample is `mean + std * eps` (`sample`);
`forward(mean, std)` returns the KL of the posterior from the prior, summed
over every dimension but the first (trials) and averaged over trials. IC
posteriors are (B, ic_dim); CO posteriors are (B, T, co_dim). A prior whose
posterior is not of that location-scale form overrides `sample` instead; the
decoder then calls it bin by bin on the plain path. Constructors take keyword
arguments only: `dim` (the latent width, ic_dim or co_dim) and the options of
the config.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Independent, Normal, StudentT, kl_divergence


class Prior(nn.Module):
    """Base class of the priors (see the module docstring)."""

    def standard_noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like` (Gaussian posterior): mean + std * noise."""
        return torch.randn_like(like)

    def sample(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Reparameterised posterior sample."""
        return mean + std * self.standard_noise(mean)

    @property
    def location_scale(self) -> bool:
        """True when samples are `mean + std * standard_noise` (`sample` not overridden)."""
        return type(self).sample is Prior.sample

    def forward(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _mean_over_trials(kl: torch.Tensor) -> torch.Tensor:
    """Sum over all but the first dimension, then mean over trials -> scalar."""
    return kl.reshape(kl.shape[0], -1).sum(dim=1).mean()


class NullPrior(Prior):
    """No prior: the posterior mean is the sample and there is no KL (non-variational mode)."""

    def __init__(self, *, dim: int = 0):  # no parameters, so the width is not needed
        super().__init__()

    def standard_noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like)

    def forward(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return mean.new_zeros(())


class MultivariateNormalPrior(Prior):
    """N(mu, variance I) with learnable mean mu and fixed variance; analytic KL."""

    def __init__(self, *, dim: int, mean: float = 0.0, variance: float = 0.1):
        super().__init__()
        self.mean = nn.Parameter(torch.full((dim,), float(mean)))
        self.register_buffer("logvar", torch.full((dim,), math.log(variance)))

    def forward(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        posterior = Normal(mean, std)
        prior = Normal(self.mean, torch.exp(0.5 * self.logvar))
        return _mean_over_trials(kl_divergence(posterior, prior))


class AutoregressiveNormalPrior(Prior):
    """AR(1) process per input dimension: u_t = a u_{t-1} + noise, a = exp(-1 / tau).

    tau (bins) and noise_variance are learnable; the process starts from its
    stationary distribution, variance noise_variance / (1 - a^2). The KL over
    (B, T, dim) posteriors is a one-sample Monte Carlo estimate.
    """

    def __init__(self, *, dim: int, tau: float = 10.0, noise_variance: float = 0.1):
        super().__init__()
        self.log_tau = nn.Parameter(torch.full((dim,), math.log(tau)))
        self.log_noise_variance = nn.Parameter(torch.full((dim,), math.log(noise_variance)))

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """log p(u) of sequences u (B, T, dim) -> (B,)."""
        alpha = torch.exp(-1.0 / torch.exp(self.log_tau))  # (dim,)
        noise_std = torch.exp(0.5 * self.log_noise_variance)
        stationary_std = noise_std / torch.sqrt(1.0 - alpha**2)
        first = Normal(torch.zeros_like(u[:, 0]), stationary_std).log_prob(u[:, 0])  # (B, dim)
        rest = Normal(alpha * u[:, :-1], noise_std).log_prob(u[:, 1:])  # (B, T-1, dim)
        return first.sum(dim=1) + rest.sum(dim=(1, 2))

    def forward(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        posterior = Independent(Normal(mean, std), 2)
        u = posterior.rsample()
        return (posterior.log_prob(u) - self.log_prob(u)).mean()


class MultivariateStudentTPrior(Prior):
    """Heavy-tailed prior for inputs that are mostly quiet with rare large pulses.

    Prior: Student-t(df, loc, scale) per dimension with learnable loc and scale;
    the posterior is Student-t(df, mean, std) too, so `sample` draws t noise.
    KL: one-sample Monte Carlo. (lfads-torch initialises loc from `scale`; here
    loc starts at `loc`.)
    """

    def __init__(self, *, dim: int, loc: float = 0.0, scale: float = 0.1, df: float = 5.0):
        super().__init__()
        self.loc = nn.Parameter(torch.full((dim,), float(loc)))
        self.log_scale = nn.Parameter(torch.full((dim,), math.log(scale)))
        self.df = float(df)

    def standard_noise(self, like: torch.Tensor) -> torch.Tensor:
        """Student-t(df, 0, 1) noise: StudentT(df, mean, std) = mean + std * noise."""
        return StudentT(torch.tensor(self.df, dtype=like.dtype, device=like.device)).sample(
            like.shape
        )

    def forward(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        posterior = StudentT(self.df, mean, std)
        prior = StudentT(self.df, self.loc, torch.exp(self.log_scale))
        u = posterior.rsample()
        return _mean_over_trials(posterior.log_prob(u) - prior.log_prob(u))
