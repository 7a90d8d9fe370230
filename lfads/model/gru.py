"""The GRU of the TF LFADS, and the time loop every encoder runs.

Differences from `torch.nn.GRU` (which is therefore not used): the reset gate
multiplies the state *before* the recurrent matmul of the candidate, there is
no recurrent bias (TF has none; lfads-torch keeps one frozen at zero), the
update and reset gates start with bias 1, and the new state is clipped.

The encoders' time loops are `scan` (one GRU, step by step: the reference path)
and `scan_together` (several independent GRUs batched in one loop); the
decoder's loop (controller and generator, coupled through the factors) is
`Decoder.forward`. A faster implementation (fused or compiled) belongs behind
these, tested equal to `scan`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def init_fan_in_(weight: torch.Tensor, fan_in: int) -> None:
    """Weights ~ N(0, 1/fan_in), as the TF original's variance-scaling initialiser."""
    nn.init.normal_(weight, std=1.0 / math.sqrt(fan_in))


def fan_in_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A linear layer initialised N(0, 1/in_features) with zero bias."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    init_fan_in_(linear.weight, in_features)
    if bias:
        nn.init.zeros_(linear.bias)
    return linear


class ClippedGRUCell(nn.Module):
    """h' = clip(z * h + (1 - z) * tanh(W_n x + b_n + U_n (r * h))), gates z, r = sigmoid(W x + b + U h).

    Gate order along the 3 * hidden axis of the weights: update z, reset r, candidate n.
    fan_in: variance scale of both weight matrices; the TF encoders use
    input + hidden (one kernel over [x, h]), the controller and generator use
    each matrix's own fan-in (None).
    """

    def __init__(self, input_size: int, hidden_size: int, clip: float = math.inf, fan_in: int | None = None):
        super().__init__()
        self.input_size, self.hidden_size, self.clip = input_size, hidden_size, clip
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        init_fan_in_(self.weight_ih, fan_in or max(input_size, 1))
        init_fan_in_(self.weight_hh, fan_in or hidden_size)
        with torch.no_grad():
            self.bias_ih.fill_(1.0)
            self.bias_ih[2 * hidden_size:] = 0.0  # candidate bias starts at 0

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_size) -> (..., 3 * hidden): the input half of every gate, for all steps at once."""
        return x @ self.weight_ih.T + self.bias_ih

    def split_recurrent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Recurrent weights of the gates (2H, H) and of the candidate (H, H); split once per sequence,
        not per step (each split in the graph costs a full-size gradient)."""
        return self.weight_hh.split([2 * self.hidden_size, self.hidden_size])

    def step(self, x_proj: torch.Tensor, h: torch.Tensor,
             recurrent: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One step from a projected input (B, 3H) and state (B, H) -> new state (B, H)."""
        u_zr, u_n = recurrent if recurrent is not None else self.split_recurrent()
        x_zr, x_n = x_proj.split([2 * self.hidden_size, self.hidden_size], dim=1)
        z, r = torch.sigmoid(x_zr + h @ u_zr.T).chunk(2, dim=1)
        n = torch.tanh(x_n + (r * h) @ u_n.T)
        return torch.clamp(z * h + (1.0 - z) * n, -self.clip, self.clip)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.step(self.project_input(x), h)


def scan(cell: ClippedGRUCell, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Run `cell` over time, one step at a time (the reference path). x: (B, T, I), h0: (B, H) -> (B, T, H)."""
    x_proj = cell.project_input(x)  # (B, T, 3H): one matmul for every step
    h, states, recurrent = h0, [], cell.split_recurrent()
    for x_t in x_proj.unbind(1):  # (unbind: one backward for all steps; indexing would copy per step)
        h = cell.step(x_t, h, recurrent)
        states.append(h)
    return torch.stack(states, dim=1)


def scan_together(cells: list[ClippedGRUCell], inputs: list[torch.Tensor],
                  h0s: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run independent GRUs over their own sequences; same results as `scan` on each.

    GRUs with the same hidden size, clip and sequence length share one time loop,
    their weights stacked along a leading axis and multiplied with `bmm`: the
    encoders' four GRUs (IC and CI, both directions) usually take one loop instead
    of four. inputs[k]: (B, T_k, I_k), h0s[k]: (B, H_k) -> states (B, T_k, H_k).
    """
    groups: dict[tuple, list[int]] = {}
    for k, (cell, x) in enumerate(zip(cells, inputs)):
        groups.setdefault((cell.hidden_size, cell.clip, x.shape[1]), []).append(k)
    states: list[torch.Tensor | None] = [None] * len(cells)
    for (hidden, clip, n_bins), members in groups.items():
        if len(members) == 1:
            k = members[0]
            states[k] = scan(cells[k], inputs[k], h0s[k])
            continue
        x_proj = torch.stack([cells[k].project_input(inputs[k]) for k in members])  # (K, B, T, 3H)
        x_zr, x_n = x_proj.split([2 * hidden, hidden], dim=3)
        u = torch.stack([cells[k].weight_hh for k in members]).transpose(1, 2)  # (K, H, 3H)
        u_zr, u_n = u[:, :, : 2 * hidden].contiguous(), u[:, :, 2 * hidden:].contiguous()
        h = torch.stack([h0s[k] for k in members])  # (K, B, H)
        steps = []
        for x_zr_t, x_n_t in zip(x_zr.unbind(2), x_n.unbind(2)):  # (K, B, 2H), (K, B, H)
            z, r = torch.sigmoid(x_zr_t + torch.bmm(h, u_zr)).chunk(2, dim=2)
            n = torch.tanh(x_n_t + torch.bmm(r * h, u_n))
            h = torch.clamp(z * h + (1.0 - z) * n, -clip, clip)
            steps.append(h)
        stacked = torch.stack(steps, dim=2)  # (K, B, T, H)
        for i, k in enumerate(members):
            states[k] = stacked[i]
    return states


class BidirectionalGRU(nn.Module):
    """Forward and backward clipped GRUs with learnable initial states (TF encoder initialisation)."""

    def __init__(self, input_size: int, hidden_size: int, clip: float):
        super().__init__()
        self.hidden_size = hidden_size
        self.forward_cell = ClippedGRUCell(input_size, hidden_size, clip, fan_in=input_size + hidden_size)
        self.backward_cell = ClippedGRUCell(input_size, hidden_size, clip, fan_in=input_size + hidden_size)
        self.h0 = nn.Parameter(torch.zeros(2, hidden_size))  # (direction, H)

    def runs(self, x: torch.Tensor) -> list[tuple[ClippedGRUCell, torch.Tensor, torch.Tensor]]:
        """(cell, input, h0) of both directions, for `scan_together`; the backward input is time-reversed."""
        batch = x.shape[0]
        return [(self.forward_cell, x, self.h0[0].expand(batch, -1)),
                (self.backward_cell, x.flip(1), self.h0[1].expand(batch, -1))]

    @staticmethod
    def align(forward: torch.Tensor, backward_reversed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States of `runs` -> forward (B, T, H), backward (B, T, H) both aligned with the input's time."""
        return forward, backward_reversed.flip(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, I) -> forward states (B, T, H), backward states (B, T, H) aligned with x's time.

        The last forward state is `forward[:, -1]`, the last backward one `backward[:, 0]`.
        """
        return self.align(*scan_together(*zip(*self.runs(x))))

    def recurrent_weights(self) -> list[torch.Tensor]:
        return [self.forward_cell.weight_hh, self.backward_cell.weight_hh]
