"""Decoder: the LFADS cell, unrolled over the T + F bins of a trial.

Each bin, in order: the controller reads its inputs (ci_t) and the previous
factors; its state gives the posterior of the inferred input u_t, from which
u_t is drawn; the generator integrates u_t (and the external inputs); the
factors read the generator state out. `Decoder.step` is that cell, written
plainly, and `unroll_plain` runs it bin by bin. How the unroll runs (this plain
loop, the fused kernel of `lfads.model.fused`, or the plain loop compiled) is
chosen once, when the model is built (`lfads.model.loops`); the numbers are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lfads.model.gru import ClippedGRUCell
from lfads.model.members import MemberDropout, MemberLinear, MemberRandom, member_linear
from lfads.model.priors import Prior

if TYPE_CHECKING:
    from lfads.model.loops import RecurrentLoops


class RowNormalizedLinear(MemberLinear):
    """Linear map whose weight rows are scaled to unit L2 norm (keeps factors on a fixed scale)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return member_linear(x, F.normalize(self.weight, p=2, dim=2), self.bias)


@dataclass
class DecoderOutput:
    gen_states: torch.Tensor  # (P, B, T + F, gen_dim)
    factors: torch.Tensor  # (P, B, T + F, fac_dim)
    co_mean: (
        torch.Tensor
    )  # (P, B, T + F, co_dim) posterior mean of u_t (width 0 without controller)
    co_std: torch.Tensor  # (P, B, T + F, co_dim) posterior std of u_t


@dataclass
class DecoderNoise:
    """Every random draw of one unroll, made before the loop so that all paths see the same numbers.

    eps (T + F, P, B, co_dim): standard noise of u_t's posterior, None to use the mean (or when
    the prior draws its own samples: `sampler`); factor_masks (T + F, P, B, fac_dim): dropout of
    the controller's factor input; gen_masks (T + F + 1, P, B, gen_dim): dropout of the generator
    state before each factor readout (index 0: the initial state). Masks are None in eval mode.
    """

    eps: torch.Tensor | None
    factor_masks: torch.Tensor | None
    gen_masks: torch.Tensor | None
    sampler: Prior | None = None
    random: MemberRandom | None = None  # the members' streams, for `sampler`

    def inferred_input(self, mean: torch.Tensor, std: torch.Tensor, t: int) -> torch.Tensor:
        """u_t from its posterior (mean, std (P, B, co_dim)) with this unroll's draws of bin t."""
        if self.eps is not None:
            return mean + std * self.eps[t]
        if self.sampler is not None:
            return self.sampler.sample(mean, std, self.random)
        return mean


class DecoderState(NamedTuple):
    """What one bin of the cell hands to the next."""

    con_state: torch.Tensor | None  # (P, B, con_dim); None without a controller
    gen_state: torch.Tensor  # (P, B, gen_dim)
    factor: torch.Tensor  # (P, B, fac_dim)


def _time_major_draws(draws: torch.Tensor) -> torch.Tensor:
    """(P, T, B, D) draws of each member -> (T, P, B, D), contiguous for the loops."""
    return draws.transpose(0, 1).contiguous()


class Decoder(nn.Module):
    """g_init from the IC sample, then per bin: controller -> u_t posterior -> generator -> factors.

    ci_dim: width of the controller inputs (both CI encoder directions); dropout: each member's
    rate; generators: each member's initial-weight stream; loops: how the unroll runs
    (`lfads.model.loops.recurrent_loops`).
    """

    def __init__(
        self,
        *,
        ic_dim: int,
        gen_dim: int,
        fac_dim: int,
        con_dim: int,
        co_dim: int,
        ci_dim: int,
        ext_input_dim: int,
        use_controller: bool,
        dropout: list[float],
        cell_clip: float,
        loops: RecurrentLoops,
        generators: list[torch.Generator],
    ):
        super().__init__()
        self.use_controller, self.loops = use_controller, loops
        self.co_dim = co_dim if use_controller else 0
        self.dropout = MemberDropout(dropout)
        # layers are created in this order because their initial weights are drawn in it
        self.ic_to_g0 = MemberLinear(ic_dim, gen_dim, generators)
        self.generator = ClippedGRUCell(
            input_size=self.co_dim + ext_input_dim,
            hidden_size=gen_dim,
            clip=cell_clip,
            generators=generators,
        )
        self.factor_linear = RowNormalizedLinear(
            gen_dim, fac_dim, generators, bias=False, std=gen_dim**-0.5
        )
        if use_controller:
            self.ci_dim = ci_dim
            self.controller = ClippedGRUCell(
                input_size=ci_dim + fac_dim,
                hidden_size=con_dim,
                clip=cell_clip,
                generators=generators,
            )
            self.co_linear = MemberLinear(con_dim, 2 * co_dim, generators)  # -> [mean | log-var]
            self.con_h0 = nn.Parameter(torch.zeros(len(generators), con_dim))

    def forward(
        self,
        ic_sample: torch.Tensor,
        ci: torch.Tensor,
        ext_input: torch.Tensor,
        random: MemberRandom,
        co_prior: Prior | None = None,
    ) -> DecoderOutput:
        """Unroll over T + F bins.

        ic_sample (P, B, ic_dim); ci (P, B, T + F, ci_dim); ext_input (P, B, T + F, ext_input_dim).
        co_prior: draws u_t from its posterior; None uses the posterior mean.
        """
        gen_init = self.ic_to_g0(ic_sample)  # (P, B, G)
        ci, ext_input = self.dropout(ci, random), self.dropout(ext_input, random)
        noise = self.draw_noise(ci.shape[1], ci.shape[2], co_prior, ci, random)
        # a prior that draws its own samples is drawn bin by bin, so only in the plain loop
        unroll = self.loops.unroll_decoder if noise.sampler is None else unroll_plain
        return unroll(self, gen_init, ci, ext_input, noise)

    def step(
        self,
        state: DecoderState,
        ci_t: torch.Tensor,
        ext_t: torch.Tensor,
        noise: DecoderNoise,
        t: int,
    ) -> tuple[DecoderState, torch.Tensor | None, torch.Tensor | None]:
        """The LFADS cell at bin t -> (new state, co_mean, co_std); co_* None without a controller.

        ci_t (P, B, ci_dim), ext_t (P, B, ext_input_dim): this bin's controller and external
        inputs.
        """
        con_state, gen_state, factor = state
        co_mean = co_std = None
        if self.use_controller:
            # controller: this bin's inputs and the factors of the bin before
            masks = noise.factor_masks
            factor_in = factor * masks[t] if masks is not None else factor
            con_input = torch.cat([ci_t, factor_in], dim=-1)
            con_state = self.controller.reference_step(con_input, con_state)
            # inferred-input posterior, and u_t drawn from it
            co_mean, co_logvar = self.co_linear(con_state).chunk(2, dim=-1)
            co_std = torch.exp(0.5 * co_logvar)
            u = noise.inferred_input(co_mean, co_std, t)
            gen_input = torch.cat([u, ext_t], dim=-1)
        else:
            gen_input = ext_t
        # generator
        gen_state = self.generator.reference_step(gen_input, gen_state)
        # factors
        factor = self.read_factors(gen_state, noise.gen_masks, t + 1)
        return DecoderState(con_state, gen_state, factor), co_mean, co_std

    def read_factors(
        self, gen_state: torch.Tensor, gen_masks: torch.Tensor | None, index: int
    ) -> torch.Tensor:
        """Factors (P, B, fac_dim) of a generator state (P, B, gen_dim) after gen_masks[index]."""
        return self.factor_linear(
            gen_state * gen_masks[index] if gen_masks is not None else gen_state
        )

    def draw_noise(
        self,
        batch: int,
        n_bins: int,
        co_prior: Prior | None,
        like: torch.Tensor,
        random: MemberRandom,
    ) -> DecoderNoise:
        """Each member's draws from its own stream, in a fixed order: generator masks, factor
        masks, then the inferred inputs' noise."""
        dropout = self.training and bool((self.dropout.p > 0).any())

        def mask(*shape: int) -> torch.Tensor | None:
            if not dropout:
                return None
            return _time_major_draws(random.dropout_mask(shape, self.dropout.p, like))

        gen_masks = mask(n_bins + 1, batch, self.generator.hidden_size)
        factor_masks = (
            mask(n_bins, batch, self.factor_linear.out_features) if self.use_controller else None
        )
        if not self.use_controller or co_prior is None:
            return DecoderNoise(None, factor_masks, gen_masks)
        if not co_prior.location_scale:
            return DecoderNoise(None, factor_masks, gen_masks, sampler=co_prior, random=random)
        eps = co_prior.standard_noise((n_bins, batch, self.co_dim), like, random)
        return DecoderNoise(_time_major_draws(eps), factor_masks, gen_masks)

    def recurrent_weights(self) -> dict[str, list[torch.Tensor]]:
        weights = {"gen": [self.generator.weight_hh]}
        if self.use_controller:
            weights["con"] = [self.controller.weight_hh]
        return weights


def unroll_plain(
    decoder: Decoder,
    gen_init: torch.Tensor,
    ci: torch.Tensor,
    ext_input: torch.Tensor,
    noise: DecoderNoise,
) -> DecoderOutput:
    """`Decoder.step` bin by bin: the reference every other unroll must match.

    gen_init (P, B, gen_dim); ci (P, B, T + F, ci_dim); ext_input (P, B, T + F, ext_input_dim).
    """
    n_members, batch, n_bins, _ = ci.shape
    con_h0 = (
        decoder.con_h0.unsqueeze(1).expand(n_members, batch, -1) if decoder.use_controller else None
    )
    state = DecoderState(con_h0, gen_init, decoder.read_factors(gen_init, noise.gen_masks, 0))
    gen_states, factors, co_means, co_stds = [], [], [], []
    for t in range(n_bins):
        state, co_mean, co_std = decoder.step(state, ci[:, :, t], ext_input[:, :, t], noise, t)
        gen_states.append(state.gen_state), factors.append(state.factor)
        if co_mean is not None:
            co_means.append(co_mean), co_stds.append(co_std)

    def stacked(
        column: list[torch.Tensor],
    ) -> torch.Tensor:  # (P, B, D) per bin -> (P, B, T + F, D)
        return torch.stack(column, dim=2) if column else ci.new_zeros(n_members, batch, n_bins, 0)

    return DecoderOutput(
        gen_states=stacked(gen_states),
        factors=stacked(factors),
        co_mean=stacked(co_means),
        co_std=stacked(co_stds),
    )
