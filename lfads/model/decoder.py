"""Decoder: the controller infers inputs u_t, the generator integrates them, factors read the generator out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lfads.model.fused import DecoderLoop
from lfads.model.gru import ClippedGRUCell, compiled, fan_in_linear
from lfads.model.priors import Prior


class RowNormalizedLinear(nn.Linear):
    """Linear map whose weight rows are scaled to unit L2 norm (keeps factors on a fixed scale)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, p=2, dim=1), self.bias)


@dataclass
class DecoderOutput:
    gen_init: torch.Tensor  # (B, gen_dim) generator state before the first bin
    gen_states: torch.Tensor  # (B, T + F, gen_dim)
    factors: torch.Tensor  # (B, T + F, fac_dim)
    con_states: torch.Tensor  # (B, T + F, con_dim), width 0 without a controller
    co_mean: torch.Tensor  # (B, T + F, co_dim) posterior mean of u_t
    co_std: torch.Tensor  # (B, T + F, co_dim) posterior std of u_t
    gen_inputs: torch.Tensor  # (B, T + F, co_dim + ext_input_dim) what drove the generator


@dataclass
class DecoderNoise:
    """Every random draw of one unroll, made before the loop so that all paths see the same numbers.

    eps (T + F, B, co_dim): standard noise of u_t's posterior, None to use the mean (or when the
    prior draws its own samples: `sampler`); factor_masks (T + F, B, fac_dim): dropout of the
    controller's factor input; gen_masks (T + F + 1, B, gen_dim): dropout of the generator state
    before each factor readout (index 0: the initial state). Masks are None in eval mode.
    """

    eps: torch.Tensor | None
    factor_masks: torch.Tensor | None
    gen_masks: torch.Tensor | None
    sampler: Prior | None = None


def dropout_mask(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """Dropout mask: 0 with probability p (rounded to a multiple of 1/65536), else 1 / (1 - p).

    Built from 16 random bits per element, four per 64-bit draw: a quarter of the
    generator calls of `bernoulli_` (measured 3-4x faster for a whole unroll's masks on CPU).
    """
    count = math.prod(shape)
    words = torch.randint(
        -(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=like.device
    )
    keep = (
        words.view(torch.int16)[:count] >= round(p * 65536) - 32768
    )  # int16 is uniform on [-32768, 32767]
    return (keep.to(like.dtype) * (1.0 / (1.0 - p))).view(shape)


class Decoder(nn.Module):
    def __init__(
        self,
        ic_dim: int,
        gen_dim: int,
        fac_dim: int,
        con_dim: int,
        co_dim: int,
        ci_dim: int,
        ext_input_dim: int,
        use_controller: bool,
        dropout: float,
        cell_clip: float,
    ):
        super().__init__()
        self.use_controller = use_controller
        self.co_dim = co_dim if use_controller else 0
        self.con_dim = con_dim if use_controller else 0
        self.dropout = nn.Dropout(dropout)
        self.ic_to_g0 = fan_in_linear(ic_dim, gen_dim)
        self.generator = ClippedGRUCell(self.co_dim + ext_input_dim, gen_dim, cell_clip)
        self.factor_linear = RowNormalizedLinear(gen_dim, fac_dim, bias=False)
        nn.init.normal_(self.factor_linear.weight, std=gen_dim**-0.5)
        if use_controller:
            self.ci_dim = ci_dim
            self.controller = ClippedGRUCell(ci_dim + fac_dim, con_dim, cell_clip)
            self.co_linear = fan_in_linear(con_dim, 2 * co_dim)  # -> [mean | log-variance]
            self.con_h0 = nn.Parameter(torch.zeros(con_dim))
        self.impl = "fast"  # "fast" (lfads.model.fused), "reference" (plain loop), "compiled" (plain loop compiled)

    def forward(
        self,
        ic_sample: torch.Tensor,
        ci: torch.Tensor,
        ext_input: torch.Tensor,
        co_prior: Prior | None = None,
    ) -> DecoderOutput:
        """Unroll over T + F bins.

        ic_sample (B, ic_dim); ci (B, T + F, ci_dim); ext_input (B, T + F, ext_input_dim).
        co_prior: draws u_t from its posterior; None uses the posterior mean.
        """
        gen_init = self.ic_to_g0(ic_sample)  # (B, G)
        ci, ext_input = self.dropout(ci), self.dropout(ext_input)
        noise = self.draw_noise(ci.shape[0], ci.shape[1], co_prior, ci)
        if self.impl == "fast" and noise.sampler is None:
            columns = self._unroll_fused(gen_init, ci, ext_input, noise)
        elif self.impl == "compiled" and noise.sampler is None:
            columns = compiled(_unroll_plain, ci.device)(self, gen_init, ci, ext_input, noise)
        else:  # the reference path, and priors that draw their own samples
            columns = _unroll_plain(self, gen_init, ci, ext_input, noise)
        return DecoderOutput(gen_init, *columns)

    def draw_noise(
        self, batch: int, n_bins: int, co_prior: Prior | None, like: torch.Tensor
    ) -> DecoderNoise:
        dropout = self.training and self.dropout.p > 0

        def mask(*shape: int) -> torch.Tensor | None:
            return dropout_mask(shape, self.dropout.p, like) if dropout else None

        gen_masks = mask(n_bins + 1, batch, self.generator.hidden_size)
        factor_masks = (
            mask(n_bins, batch, self.factor_linear.out_features) if self.use_controller else None
        )
        if not self.use_controller or co_prior is None:
            return DecoderNoise(None, factor_masks, gen_masks)
        if not co_prior.location_scale:
            return DecoderNoise(None, factor_masks, gen_masks, sampler=co_prior)
        return DecoderNoise(
            co_prior.standard_noise(like.new_empty(n_bins, batch, self.co_dim)),
            factor_masks,
            gen_masks,
        )

    def _unroll_fused(
        self, gen_init, ci, ext_input, noise: DecoderNoise
    ) -> tuple[torch.Tensor, ...]:
        """The fast path: `lfads.model.fused.DecoderLoop`, with the inputs known before the loop (ci,
        external inputs, biases) projected for all bins in one matmul, and weights split and transposed."""
        gen, n_u = self.generator, self.co_dim
        w_u, w_ext = gen.weight_ih.split([n_u, gen.input_size - n_u], dim=1)
        batch, n_bins, _ = ci.shape
        if ext_input.shape[2]:
            gen_proj = ext_input @ w_ext.T + gen.bias_ih
        else:  # no external inputs: the bias alone, broadcast (no (B, T + F, 3G) tensor of zeros)
            gen_proj = gen.bias_ih.expand(batch, n_bins, -1)
        gen_zr, gen_n = gen.split_projection(gen_proj)  # (B, T + F, 2G), (B, T + F, G)
        w_u_zr, w_u_n = gen.split_projection(w_u.T)
        ug_zr, ug_n = gen.split_recurrent()
        w_factor = F.normalize(self.factor_linear.weight, p=2, dim=1).T  # (G, fac)
        if self.use_controller:
            con = self.controller
            w_ci, w_fac = con.weight_ih.split([self.ci_dim, con.input_size - self.ci_dim], dim=1)
            con_zr, con_n = con.split_projection(ci @ w_ci.T + con.bias_ih)
            w_fac_zr, w_fac_n = con.split_projection(w_fac.T)
            uc_zr, uc_n = con.split_recurrent()
            con_h0 = self.con_h0.expand(batch, -1)
            w_co, b_co = self.co_linear.weight.T, self.co_linear.bias
        else:
            con_zr = con_n = con_h0 = w_fac_zr = w_fac_n = uc_zr = uc_n = w_co = b_co = None
        gen_states, factors, con_states, co_mean, co_std, u = DecoderLoop.apply(
            con_zr,
            con_n,
            gen_zr,
            gen_n,
            gen_init,
            con_h0,
            w_fac_zr,
            w_fac_n,
            uc_zr,
            uc_n,
            w_co,
            b_co,
            w_u_zr,
            w_u_n,
            ug_zr,
            ug_n,
            w_factor,
            noise.eps,
            noise.factor_masks,
            noise.gen_masks,
            gen.clip,
        )
        gen_inputs = torch.cat([u, ext_input], dim=2) if self.use_controller else ext_input
        return gen_states, factors, con_states, co_mean, co_std, gen_inputs

    def recurrent_weights(self) -> dict[str, list[torch.Tensor]]:
        weights = {"gen": [self.generator.weight_hh]}
        if self.use_controller:
            weights["con"] = [self.controller.weight_hh]
        return weights


def _unroll_plain(
    decoder: Decoder, gen_init, ci, ext_input, noise: DecoderNoise
) -> tuple[torch.Tensor, ...]:
    """The plain path: every bin concatenates its inputs and calls the cells' `reference_step`.

    -> gen_states, factors, con_states, co_mean, co_std, gen_inputs, each (B, T + F, .).
    """
    batch, n_bins, _ = ci.shape
    masks_f, masks_g = noise.factor_masks, noise.gen_masks
    gen_state = gen_init
    factor = decoder.factor_linear(gen_init * masks_g[0] if masks_g is not None else gen_init)
    gen_states, factors, con_states, co_means, co_stds, gen_inputs = [], [], [], [], [], []
    if decoder.use_controller:
        con_state = decoder.con_h0.expand(batch, -1)
    for t in range(n_bins):
        if decoder.use_controller:
            factor_in = factor * masks_f[t] if masks_f is not None else factor
            con_state = decoder.controller.reference_step(
                torch.cat([ci[:, t], factor_in], dim=1), con_state
            )
            co_mean, co_logvar = decoder.co_linear(con_state).chunk(2, dim=1)
            co_std = torch.exp(0.5 * co_logvar)
            if noise.eps is not None:
                u = co_mean + co_std * noise.eps[t]
            elif noise.sampler is not None:
                u = noise.sampler.sample(co_mean, co_std)
            else:
                u = co_mean
            gen_input = torch.cat([u, ext_input[:, t]], dim=1)
            con_states.append(con_state), co_means.append(co_mean), co_stds.append(co_std)
        else:
            gen_input = ext_input[:, t]
        gen_state = decoder.generator.reference_step(gen_input, gen_state)
        factor = decoder.factor_linear(
            gen_state * masks_g[t + 1] if masks_g is not None else gen_state
        )
        gen_states.append(gen_state), factors.append(factor), gen_inputs.append(gen_input)

    def stacked(column: list[torch.Tensor]) -> torch.Tensor:  # per-bin (B, D) -> (B, T + F, D)
        return torch.stack(column, dim=1) if column else ci.new_zeros(batch, n_bins, 0)

    return (
        stacked(gen_states),
        stacked(factors),
        stacked(con_states),
        stacked(co_means),
        stacked(co_stds),
        stacked(gen_inputs),
    )
