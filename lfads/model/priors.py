"""Priors over the initial condition g0 and the inferred inputs u_t, and their KL penalties.

Interface (`Prior`): `standard_noise(shape, like, random)` draws each member's standard noise
eps (P, *shape) from its own stream (`lfads.model.members.MemberRandom`), so that a
reparameterised sample is `mean + std * eps` (`sample`); `forward(mean, std, random)` returns
each member's KL of the posterior from the prior (P,), summed over every dimension but the
members' and the trials', and averaged over trials. IC posteriors are (P, B, ic_dim); CO
posteriors are (P, B, T, co_dim). Parameters have a leading member axis P. A prior whose
posterior is not of that location-scale form overrides `sample` instead; the decoder then calls
it bin by bin on the plain path. Constructors take keyword arguments only: `dim` (the latent
width, ic_dim or co_dim), `n_members` and the options of the config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Independent, Normal, StudentT, kl_divergence

from lfads.model.members import MemberRandom


class Prior(nn.Module):
    """Base class of the priors (see the module docstring)."""

    def standard_noise(
        self, shape: Sequence[int], like: torch.Tensor, random: MemberRandom
    ) -> torch.Tensor:
        """Standard normal noise (P, *shape) (Gaussian posterior): mean + std * noise."""
        return random.randn(shape, like)

    def sample(self, mean: torch.Tensor, std: torch.Tensor, random: MemberRandom) -> torch.Tensor:
        """Reparameterised posterior sample; mean, std (P, ...)."""
        return mean + std * self.standard_noise(mean.shape[1:], mean, random)

    @property
    def location_scale(self) -> bool:
        """True when samples are `mean + std * standard_noise` (`sample` not overridden)."""
        return type(self).sample is Prior.sample

    def forward(self, mean: torch.Tensor, std: torch.Tensor, random: MemberRandom) -> torch.Tensor:
        raise NotImplementedError


def _mean_over_trials(kl: torch.Tensor) -> torch.Tensor:
    """(P, B, ...) -> (P,): sum over all but the members' and trials' axes, mean over trials."""
    return kl.reshape(kl.shape[0], kl.shape[1], -1).sum(dim=2).mean(dim=1)


def _per_member(parameter: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (P, dim) parameter viewed to broadcast against (P, B, ..., dim)."""
    return parameter.view(parameter.shape[0], *[1] * (like.dim() - 2), parameter.shape[1])


class NullPrior(Prior):
    """No prior: the posterior mean is the sample and there is no KL (non-variational mode)."""

    def __init__(self, *, dim: int = 0, n_members: int = 1):  # no parameters
        super().__init__()

    def standard_noise(self, shape, like, random):
        return like.new_zeros(like.shape[0], *shape)

    def forward(self, mean, std, random):
        return mean.new_zeros(mean.shape[0])


class MultivariateNormalPrior(Prior):
    """N(mu, variance I) with learnable mean mu and fixed variance; analytic KL."""

    def __init__(self, *, dim: int, n_members: int = 1, mean: float = 0.0, variance: float = 0.1):
        super().__init__()
        self.mean = nn.Parameter(torch.full((n_members, dim), float(mean)))
        self.register_buffer("logvar", torch.full((n_members, dim), math.log(variance)))

    def forward(self, mean, std, random):
        posterior = Normal(mean, std)
        prior = Normal(
            _per_member(self.mean, mean), _per_member(torch.exp(0.5 * self.logvar), mean)
        )
        return _mean_over_trials(kl_divergence(posterior, prior))


class AutoregressiveNormalPrior(Prior):
    """AR(1) process per input dimension: u_t = a u_{t-1} + noise, a = exp(-1 / tau).

    tau (bins) and noise_variance are learnable; the process starts from its
    stationary distribution, variance noise_variance / (1 - a^2). The KL over
    (P, B, T, dim) posteriors is a one-sample Monte Carlo estimate.
    """

    def __init__(
        self, *, dim: int, n_members: int = 1, tau: float = 10.0, noise_variance: float = 0.1
    ):
        super().__init__()
        self.log_tau = nn.Parameter(torch.full((n_members, dim), math.log(tau)))
        self.log_noise_variance = nn.Parameter(
            torch.full((n_members, dim), math.log(noise_variance))
        )

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """log p(u) of sequences u (P, B, T, dim) -> (P, B)."""
        alpha = torch.exp(-1.0 / torch.exp(self.log_tau))  # (P, dim)
        noise_std = torch.exp(0.5 * self.log_noise_variance)
        stationary_std = noise_std / torch.sqrt(1.0 - alpha**2)
        first = Normal(0.0, stationary_std[:, None]).log_prob(u[:, :, 0])  # (P, B, dim)
        rest = Normal(alpha[:, None, None] * u[:, :, :-1], noise_std[:, None, None]).log_prob(
            u[:, :, 1:]
        )  # (P, B, T-1, dim)
        return first.sum(dim=2) + rest.sum(dim=(2, 3))

    def forward(self, mean, std, random):
        posterior = Independent(Normal(mean, std), 2)
        u = mean + std * random.randn(mean.shape[1:], mean)
        return (posterior.log_prob(u) - self.log_prob(u)).mean(dim=1)


class MultivariateStudentTPrior(Prior):
    """Heavy-tailed prior for inputs that are mostly quiet with rare large pulses.

    Prior: Student-t(df, loc, scale) per dimension with learnable loc and scale;
    the posterior is Student-t(df, mean, std) too, so `sample` draws t noise.
    KL: one-sample Monte Carlo. (lfads-torch initialises loc from `scale`; here
    loc starts at `loc`.)
    """

    def __init__(
        self,
        *,
        dim: int,
        n_members: int = 1,
        loc: float = 0.0,
        scale: float = 0.1,
        df: float = 5.0,
    ):
        super().__init__()
        self.loc = nn.Parameter(torch.full((n_members, dim), float(loc)))
        self.log_scale = nn.Parameter(torch.full((n_members, dim), math.log(scale)))
        self.df = float(df)

    def standard_noise(self, shape, like, random):
        """Student-t(df, 0, 1) noise, normal / sqrt(chi2 / df): StudentT(df, mean, std) = mean +
        std * noise. The chi2 draw (torch takes no generator for it) is made with the member's
        stream set as torch's global one."""
        normal = random.randn(shape, like)
        chi2 = []
        for generator in random.generators(like.device):
            with _global_stream(generator):
                chi2.append(
                    torch.distributions.Chi2(
                        torch.tensor(self.df, dtype=like.dtype, device=like.device)
                    ).sample(tuple(shape))
                )
        return normal / torch.sqrt(torch.stack(chi2) / self.df)

    def forward(self, mean, std, random):
        posterior = StudentT(self.df, mean, std)
        prior = StudentT(
            self.df, _per_member(self.loc, mean), _per_member(torch.exp(self.log_scale), mean)
        )
        u = mean + std * self.standard_noise(mean.shape[1:], mean, random)
        return _mean_over_trials(posterior.log_prob(u) - prior.log_prob(u))


class _global_stream:
    """Within the block, torch's global generator of the generator's device is `generator`'s
    stream (for draws that take no generator argument); its state goes back to `generator`."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __enter__(self) -> None:
        device = self.generator.device
        if device.type == "cuda":
            self.saved = torch.cuda.get_rng_state(device)
            torch.cuda.set_rng_state(self.generator.get_state(), device)
        else:
            self.saved = torch.get_rng_state()
            torch.set_rng_state(self.generator.get_state())

    def __exit__(self, *exc) -> None:
        device = self.generator.device
        if device.type == "cuda":
            self.generator.set_state(torch.cuda.get_rng_state(device))
            torch.cuda.set_rng_state(self.saved, device)
        else:
            self.generator.set_state(torch.get_rng_state())
            torch.set_rng_state(self.saved)
