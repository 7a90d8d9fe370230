"""The GRU of the TF LFADS, and the time loop every encoder runs.

Differences from `torch.nn.GRU` (which is therefore not used): the reset gate
multiplies the state *before* the recurrent matmul of the candidate, there is
no recurrent bias (TF has none; lfads-torch keeps one frozen at zero), the
update and reset gates start with bias 1, and the new state is clipped.

The recurrent loops run one of three ways (`rnn_impl`), with the same numbers (tested):
- reference: `ClippedGRUCell.reference_step` projects each step's input and
  computes each gate with its own matrices; `scan_reference` runs one GRU at a time;
- fast (default): `scan_together` projects the inputs of all steps in one
  matmul and runs several independent GRUs of one size in one loop with `bmm`,
  as `lfads.model.fused.StackedGRUSequence` (hand-written backward);
- compiled: the same stacked loop (`stacked_loop`) through torch.compile.
The decoder's loop (controller and generator, coupled through the factors) is
in `lfads.model.decoder`; the overview is in lfads/README.md, "Where the time goes".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lfads.model.fused import StackedGRUSequence


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

    def __init__(
        self, input_size: int, hidden_size: int, clip: float = math.inf, fan_in: int | None = None
    ):
        super().__init__()
        self.input_size, self.hidden_size, self.clip = input_size, hidden_size, clip
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        init_fan_in_(self.weight_ih, fan_in or max(input_size, 1))
        init_fan_in_(self.weight_hh, fan_in or hidden_size)
        with torch.no_grad():
            self.bias_ih.fill_(1.0)
            self.bias_ih[2 * hidden_size :] = 0.0  # candidate bias starts at 0

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_size) -> (..., 3 * hidden): the input half of every gate, for all steps at once."""
        return x @ self.weight_ih.T + self.bias_ih

    def split_recurrent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Transposed recurrent weights of the gates (H, 2H) and of the candidate (H, H).

        Split and transposed once per sequence, not per step: each split or
        transpose inside the loop would add a node per step to the backward pass.
        """
        u_zr, u_n = self.weight_hh.split([2 * self.hidden_size, self.hidden_size])
        return u_zr.T, u_n.T

    def reference_step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step written plainly: each gate from its own slices of the weights, input projected here.

        x (B, input_size), h (B, H) -> new state (B, H). The baseline of the fast loops
        (`lfads.model.fused`, `stacked_loop`).
        """
        w_z, w_r, w_n = self.weight_ih.chunk(3)
        b_z, b_r, b_n = self.bias_ih.chunk(3)
        u_z, u_r, u_n = self.weight_hh.chunk(3)
        z = torch.sigmoid(x @ w_z.T + b_z + h @ u_z.T)
        r = torch.sigmoid(x @ w_r.T + b_r + h @ u_r.T)
        n = torch.tanh(x @ w_n.T + b_n + (r * h) @ u_n.T)
        return torch.clamp(z * h + (1.0 - z) * n, -self.clip, self.clip)

    def split_projection(self, x_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3H) projected inputs -> gates part (..., 2H) and candidate part (..., H)."""
        return x_proj.split([2 * self.hidden_size, self.hidden_size], dim=-1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.reference_step(x, h)


def scan_reference(cell: ClippedGRUCell, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Run `cell` over time with `reference_step`. x: (B, T, I), h0: (B, H) -> (B, T, H)."""
    h, states = h0, []
    for t in range(x.shape[1]):
        h = cell.reference_step(x[:, t], h)
        states.append(h)
    return torch.stack(states, dim=1)


def scan(
    cell: ClippedGRUCell, x: torch.Tensor, h0: torch.Tensor, impl: str = "fast"
) -> torch.Tensor:
    """Run `cell` over time on the fast (or compiled) path. x: (B, T, I), h0: (B, H) -> (B, T, H)."""
    return scan_together([cell], [x], [h0], impl)[0]


def scan_together(
    cells: list[ClippedGRUCell],
    inputs: list[torch.Tensor],
    h0s: list[torch.Tensor],
    impl: str = "fast",
) -> list[torch.Tensor]:
    """Run independent GRUs over their own sequences; same results as `scan_reference` on each.

    GRUs with the same hidden size, clip and sequence length share one time loop,
    their weights stacked along a leading axis and multiplied with `bmm`: the
    encoders' four GRUs usually take one loop instead of four. The loop is
    `lfads.model.fused.StackedGRUSequence` (impl "fast") or `stacked_loop`
    through torch.compile ("compiled").
    inputs[k]: (B, T_k, I_k), h0s[k]: (B, H_k) -> states (B, T_k, H_k).
    """
    groups: dict[tuple, list[int]] = {}
    for k, (cell, x) in enumerate(zip(cells, inputs)):
        groups.setdefault((cell.hidden_size, cell.clip, x.shape[1]), []).append(k)
    states: list[torch.Tensor | None] = [None] * len(cells)
    for (hidden, clip, n_bins), members in groups.items():
        # projected inputs of every step, one matmul per GRU: (K, B, T, 2H) and (K, B, T, H)
        x_zr, x_n = torch.stack([cells[k].project_input(inputs[k]) for k in members]).split(
            [2 * hidden, hidden], 3
        )
        u = torch.stack([cells[k].weight_hh for k in members]).transpose(1, 2)  # (K, H, 3H)
        u_zr, u_n = u.split([2 * hidden, hidden], dim=2)
        h0 = torch.stack([h0s[k] for k in members])  # (K, B, H)
        if impl == "compiled":
            stacked = compiled(stacked_loop, x_zr.device)(x_zr, x_n, h0, u_zr, u_n, clip)
        else:
            stacked = StackedGRUSequence.apply(x_zr, x_n, h0, u_zr, u_n, clip)  # (K, B, T, H)
        for i, k in enumerate(members):
            states[k] = stacked[i]
    return states


def stacked_loop(x_zr, x_n, h, u_zr, u_n, clip: float) -> torch.Tensor:
    """The loop of `StackedGRUSequence` with autograd: the function `rnn_impl: compiled` compiles."""
    steps = []
    for t in range(x_zr.shape[2]):
        z, r = torch.sigmoid(torch.baddbmm(x_zr[:, :, t], h, u_zr)).chunk(2, dim=2)
        n = torch.tanh(torch.baddbmm(x_n[:, :, t], r * h, u_n))
        h = torch.lerp(n, h, z)
        h = h if math.isinf(clip) else torch.clamp(h, -clip, clip)
        steps.append(h)
    return torch.stack(steps, dim=2)


_COMPILED: dict = {}


def compiled(function, device: torch.device):
    """`function` through torch.compile, once per device type; on CUDA with CUDA graphs."""
    key = (function, device.type)
    if key not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None  # reduce-overhead: CUDA graphs
        _COMPILED[key] = torch.compile(function, mode=mode, dynamic=False)
    return _COMPILED[key]


class BidirectionalGRU(nn.Module):
    """Forward and backward clipped GRUs with learnable initial states (TF encoder initialisation)."""

    def __init__(self, input_size: int, hidden_size: int, clip: float):
        super().__init__()
        self.hidden_size = hidden_size
        self.forward_cell = ClippedGRUCell(
            input_size, hidden_size, clip, fan_in=input_size + hidden_size
        )
        self.backward_cell = ClippedGRUCell(
            input_size, hidden_size, clip, fan_in=input_size + hidden_size
        )
        self.h0 = nn.Parameter(torch.zeros(2, hidden_size))  # (direction, H)

    def runs(self, x: torch.Tensor) -> list[tuple[ClippedGRUCell, torch.Tensor, torch.Tensor]]:
        """(cell, input, h0) of both directions, for `scan_together`; the backward input is time-reversed."""
        batch = x.shape[0]
        return [
            (self.forward_cell, x, self.h0[0].expand(batch, -1)),
            (self.backward_cell, x.flip(1), self.h0[1].expand(batch, -1)),
        ]

    @staticmethod
    def align(
        forward: torch.Tensor, backward_reversed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """States of `runs` -> forward (B, T, H), backward (B, T, H) both aligned with the input's time."""
        return forward, backward_reversed.flip(1)

    def forward(self, x: torch.Tensor, impl: str = "fast") -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, I) -> forward states (B, T, H), backward states (B, T, H) aligned with x's time.

        The last forward state is `forward[:, -1]`, the last backward one `backward[:, 0]`.
        impl "reference": each direction on its own with `scan_reference`.
        """
        if impl == "reference":
            return self.align(*(scan_reference(*run) for run in self.runs(x)))
        return self.align(*scan_together(*zip(*self.runs(x)), impl=impl))

    def recurrent_weights(self) -> list[torch.Tensor]:
        return [self.forward_cell.weight_hh, self.backward_cell.weight_hh]
