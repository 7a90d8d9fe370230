"""Decoder: the controller infers inputs u_t, the generator integrates them, factors read the generator out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lfads.model.gru import ClippedGRUCell, fan_in_linear


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


# Draws the posterior sample of u_t from its mean and std (B, co_dim); None passes the mean.
CoSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


class Decoder(nn.Module):
    def __init__(self, ic_dim: int, gen_dim: int, fac_dim: int, con_dim: int, co_dim: int, ci_dim: int,
                 ext_input_dim: int, use_controller: bool, dropout: float, cell_clip: float):
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

    def forward(self, ic_sample: torch.Tensor, ci: torch.Tensor, ext_input: torch.Tensor,
                sample_co: CoSampler = None) -> DecoderOutput:
        """Unroll over T + F bins.

        ic_sample (B, ic_dim); ci (B, T + F, ci_dim); ext_input (B, T + F, ext_input_dim).
        sample_co(mean, std) draws u_t from its posterior; None uses the mean.
        """
        batch, n_bins, _ = ci.shape
        gen_init = self.ic_to_g0(ic_sample)  # (B, G)
        gen_state = gen_init
        factor_weight = F.normalize(self.factor_linear.weight, p=2, dim=1)  # rows normalised once, not per bin
        factor = self.dropout(gen_init) @ factor_weight.T  # (B, fac)
        ext_input = self.dropout(ext_input)
        zeros = ci.new_zeros(batch, n_bins, 0)
        gen_states, factors, con_states, co_means, co_stds, gen_inputs = [], [], [], [], [], []

        gen_recurrent = self.generator.split_recurrent()
        if self.use_controller:
            # The ci half of the controller's input projection, for all bins in one matmul.
            w_ci, w_fac = self.controller.weight_ih.split([self.ci_dim, self.controller.input_size - self.ci_dim], 1)
            con_ci_proj = self.dropout(ci) @ w_ci.T + self.controller.bias_ih  # (B, T + F, 3C)
            con_recurrent = self.controller.split_recurrent()
            con_state = self.con_h0.expand(batch, -1)
        else:
            con_ci_proj = zeros
        for con_ci_t, ext_t in zip(con_ci_proj.unbind(1), ext_input.unbind(1)):
            if self.use_controller:
                con_state = self.controller.step(con_ci_t + self.dropout(factor) @ w_fac.T, con_state, con_recurrent)
                co_mean, co_logvar = self.co_linear(con_state).chunk(2, dim=1)
                co_std = torch.exp(0.5 * co_logvar)
                u = co_mean if sample_co is None else sample_co(co_mean, co_std)
                gen_input = torch.cat([u, ext_t], dim=1)
                con_states.append(con_state), co_means.append(co_mean), co_stds.append(co_std)
            else:
                gen_input = ext_t
            gen_state = self.generator.step(self.generator.project_input(gen_input), gen_state, gen_recurrent)
            factor = self.dropout(gen_state) @ factor_weight.T
            gen_states.append(gen_state), factors.append(factor), gen_inputs.append(gen_input)

        def stacked(steps: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(steps, dim=1) if steps else zeros

        return DecoderOutput(gen_init, stacked(gen_states), stacked(factors), stacked(con_states),
                             stacked(co_means), stacked(co_stds), stacked(gen_inputs))

    def recurrent_weights(self) -> dict[str, list[torch.Tensor]]:
        weights = {"gen": [self.generator.weight_hh]}
        if self.use_controller:
            weights["con"] = [self.controller.weight_hh]
        return weights
