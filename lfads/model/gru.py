"""The GRU of the TF LFADS, and the time loop every encoder runs.

Differences from `torch.nn.GRU` (which is therefore not used): the reset gate
multiplies the state *before* the recurrent matmul of the candidate, there is
no recurrent bias (TF has none; lfads-torch keeps one frozen at zero), the
update and reset gates start with bias 1, and the new state is clipped.

`scan` is the one place an encoder GRU steps through time. The decoder's loop
(controller and generator, coupled through the factors) is `Decoder.forward`.
A faster implementation (fused or compiled) belongs behind these two.
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

    def step(self, x_proj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step from a projected input (B, 3H) and state (B, H) -> new state (B, H)."""
        hidden = self.hidden_size
        u_zr, u_n = self.weight_hh[: 2 * hidden], self.weight_hh[2 * hidden:]
        x_zr, x_n = x_proj[:, : 2 * hidden], x_proj[:, 2 * hidden:]
        z, r = torch.sigmoid(x_zr + h @ u_zr.T).chunk(2, dim=1)
        n = torch.tanh(x_n + (r * h) @ u_n.T)
        return torch.clamp(z * h + (1.0 - z) * n, -self.clip, self.clip)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.step(self.project_input(x), h)


def scan(cell: ClippedGRUCell, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Run `cell` over time. x: (B, T, I), h0: (B, H) -> states (B, T, H)."""
    x_proj = cell.project_input(x)  # (B, T, 3H): one matmul for every step
    h, states = h0, []
    for t in range(x.shape[1]):
        h = cell.step(x_proj[:, t], h)
        states.append(h)
    return torch.stack(states, dim=1)


class BidirectionalGRU(nn.Module):
    """Forward and backward clipped GRUs with learnable initial states (TF encoder initialisation)."""

    def __init__(self, input_size: int, hidden_size: int, clip: float):
        super().__init__()
        self.hidden_size = hidden_size
        self.forward_cell = ClippedGRUCell(input_size, hidden_size, clip, fan_in=input_size + hidden_size)
        self.backward_cell = ClippedGRUCell(input_size, hidden_size, clip, fan_in=input_size + hidden_size)
        self.h0 = nn.Parameter(torch.zeros(2, hidden_size))  # (direction, H)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, I) -> forward states (B, T, H), backward states (B, T, H) aligned with x's time.

        The last forward state is `forward[:, -1]`, the last backward one `backward[:, 0]`.
        """
        batch = x.shape[0]
        forward = scan(self.forward_cell, x, self.h0[0].expand(batch, -1))
        backward = scan(self.backward_cell, x.flip(1), self.h0[1].expand(batch, -1)).flip(1)
        return forward, backward

    def recurrent_weights(self) -> list[torch.Tensor]:
        return [self.forward_cell.weight_hh, self.backward_cell.weight_hh]
