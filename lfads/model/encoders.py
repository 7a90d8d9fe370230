"""Encoders: the initial-condition (IC) posterior and the controller inputs (CI) of the data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lfads.model.gru import BidirectionalGRU
from lfads.model.members import MemberDropout, MemberLinear, MemberRandom

if TYPE_CHECKING:
    from lfads.model.loops import RecurrentLoops


class Encoder(nn.Module):
    """Bidirectional GRUs over the (read-in) data -> g0 posterior mean/std and lagged CI.

    input_dim: width of the encoder data after the readin; n_obs_bins: T;
    n_recon_bins: T + F (the CI are zero over the F forward-prediction bins); dropout: each
    member's rate; generators: each member's initial-weight stream;
    loops: how the GRUs run (`lfads.model.loops.recurrent_loops`).
    """

    def __init__(
        self,
        *,
        input_dim: int,
        n_obs_bins: int,
        n_recon_bins: int,
        ic_enc_dim: int,
        ic_dim: int,
        ci_enc_dim: int,
        ci_lag: int,
        ic_enc_seq_len: int,
        use_controller: bool,
        dropout: list[float],
        cell_clip: float,
        ic_post_var_min: float,
        loops: RecurrentLoops,
        generators: list[torch.Generator],
    ):
        super().__init__()
        if not 0 <= ic_enc_seq_len < n_obs_bins:
            raise ValueError(
                f"ic_enc_seq_len: must be below the {n_obs_bins} observed bins, "
                f"got {ic_enc_seq_len}"
            )
        self.n_obs_bins, self.n_recon_bins = n_obs_bins, n_recon_bins
        self.ic_enc_seq_len, self.ci_lag = ic_enc_seq_len, ci_lag
        self.ic_post_var_min, self.loops = ic_post_var_min, loops
        self.dropout = MemberDropout(dropout)
        self.ic_encoder = BidirectionalGRU(
            input_size=input_dim, hidden_size=ic_enc_dim, clip=cell_clip, generators=generators
        )
        # -> [mean | log-variance]
        self.ic_linear = MemberLinear(2 * ic_enc_dim, 2 * ic_dim, generators)
        self.ci_encoder = (
            BidirectionalGRU(
                input_size=input_dim, hidden_size=ci_enc_dim, clip=cell_clip, generators=generators
            )
            if use_controller
            else None
        )

    def forward(
        self, data: torch.Tensor, random: MemberRandom
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """data (P, B, T, input_dim) -> ic_mean, ic_std (P, B, ic_dim),
        ci (P, B, T + F, 2 * ci_enc_dim)."""
        n_members, batch, n_bins, _ = data.shape
        if n_bins != self.n_obs_bins:
            raise ValueError(
                f"encoder data has {n_bins} bins; the model was built for {self.n_obs_bins}"
            )
        data = self.dropout(data, random)
        split = self.ic_enc_seq_len
        ic_data, ci_data = (data[:, :, :split], data[:, :, split:]) if split > 0 else (data, data)

        # (forward, backward) states of each bidirectional GRU, aligned with the input's time;
        # the fast loops run all four GRUs in one loop when their sizes allow
        runs = self.ic_encoder.runs(ic_data)
        if self.ci_encoder is not None:
            runs += self.ci_encoder.runs(ci_data)
        states = self.loops.scan_encoders(*map(list, zip(*runs)))
        pairs = [BidirectionalGRU.align(*states[i : i + 2]) for i in range(0, len(states), 2)]
        forward, backward = pairs[0]  # (P, B, T_ic, H) each
        last_states = torch.cat([forward[:, :, -1], backward[:, :, 0]], dim=-1)  # (P, B, 2H)
        ic_mean, ic_logvar = self.ic_linear(self.dropout(last_states, random)).chunk(2, dim=-1)
        ic_std = torch.sqrt(torch.exp(ic_logvar) + self.ic_post_var_min)

        if self.ci_encoder is None:
            return ic_mean, ic_std, data.new_zeros(n_members, batch, self.n_recon_bins, 0)
        forward, backward = pairs[1]  # (P, B, T_ci, C) each
        # Lag both halves by ci_lag bins so the controller at bin t never sees the
        # spikes of bins t - lag + 1 .. t + lag - 1 (it must not copy its target).
        lag = self.ci_lag
        if lag > 0:
            forward = F.pad(forward, (0, 0, lag, 0))[:, :, : forward.shape[2]]
            backward = F.pad(backward, (0, 0, 0, lag))[:, :, lag:]
        ci = torch.cat([forward, backward], dim=3)  # (P, B, T_ci, 2C)
        # Zero inputs over the IC-only leading bins and the forward-prediction bins.
        ci = F.pad(ci, (0, 0, split, self.n_recon_bins - self.n_obs_bins))  # (P, B, T + F, 2C)
        return ic_mean, ic_std, ci

    def recurrent_weights(self) -> dict[str, list[torch.Tensor]]:
        """Recurrent matrices for the L2 penalty, by penalty name."""
        weights = {"ic_enc": self.ic_encoder.recurrent_weights()}
        if self.ci_encoder is not None:
            weights["ci_enc"] = self.ci_encoder.recurrent_weights()
        return weights
