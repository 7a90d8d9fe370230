"""The GRU of the TF LFADS, and the time loops the encoders run.

Differences from `torch.nn.GRU` (which is therefore not used): the reset gate
multiplies the state *before* the recurrent matmul of the candidate, there is
no recurrent bias (TF has none; lfads-torch keeps one frozen at zero), the
update and reset gates start with bias 1, and the new state is clipped.

Two ways to run GRUs over time, with the same numbers (tested); which one the
model uses is chosen once, in `lfads.model.loops`:
- `scan_reference`: one GRU at a time, `ClippedGRUCell.reference_step` per bin,
  each gate from its own slices of the weights;
- `scan_together`: the inputs of all bins projected in one matmul, and several
  independent GRUs of one size in one loop with `bmm`; the loop itself is
  `lfads.model.fused.StackedGRUSequence` (hand-written backward) or
  `stacked_loop` through torch.compile.
The decoder's loop (controller and generator, coupled through the factors) is
in `lfads.model.decoder`; the overview is in lfads/README.md, "Where the time goes".
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
    """h' = clip(z * h + (1 - z) * tanh(W_n x + b_n + U_n (r * h))), z, r = sigmoid(W x + b + U h).

    Gate order along the 3 * hidden axis of the weights: update z, reset r, candidate n.
    fan_in: variance scale of both weight matrices; the TF encoders use
    input + hidden (one kernel over [x, h]), the controller and generator use
    each matrix's own fan-in (None).
    """

    def __init__(
        self,
        *,
        input_size: int,
        hidden_size: int,
        clip: float = math.inf,
        fan_in: int | None = None,
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
        """(..., input_size) -> (..., 3 * hidden): every gate's input part, for all bins at once."""
        return x @ self.weight_ih.T + self.bias_ih

    def split_recurrent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Transposed recurrent weights of the gates (H, 2H) and of the candidate (H, H).

        Split and transposed once per sequence, not per step: each split or
        transpose inside the loop would add a node per step to the backward pass.
        """
        u_zr, u_n = self.weight_hh.split([2 * self.hidden_size, self.hidden_size])
        return u_zr.T, u_n.T

    def split_projection(self, x_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3H) projected inputs -> gates part (..., 2H) and candidate part (..., H)."""
        return x_proj.split([2 * self.hidden_size, self.hidden_size], dim=-1)

    def reference_step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step written plainly: each gate from its own slices of the weights.

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

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.reference_step(x, h)


def scan_reference(
    cells: list[ClippedGRUCell], inputs: list[torch.Tensor], h0s: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Run each GRU over its own sequence, one at a time, with `reference_step` per bin.

    inputs[k]: (B, T_k, I_k), h0s[k]: (B, H_k) -> states (B, T_k, H_k).
    """
    states = []
    for cell, x, h in zip(cells, inputs, h0s):
        steps = []
        for t in range(x.shape[1]):
            h = cell.reference_step(x[:, t], h)
            steps.append(h)
        states.append(torch.stack(steps, dim=1))
    return states


# A stacked loop: (x_zr (K, B, T, 2H), x_n (K, B, T, H), h0 (K, B, H), u_zr (K, H, 2H),
# u_n (K, H, H), clip) -> states (K, B, T, H); `StackedGRUSequence.apply` or `stacked_loop`.
StackedLoop = Callable[..., torch.Tensor]


def scan_together(
    cells: list[ClippedGRUCell],
    inputs: list[torch.Tensor],
    h0s: list[torch.Tensor],
    *,
    loop: StackedLoop,
) -> list[torch.Tensor]:
    """Run independent GRUs over their own sequences; the numbers of `scan_reference`.

    GRUs with the same hidden size, clip and sequence length share one time loop,
    their weights stacked along a leading axis and multiplied with `bmm`: the
    encoders' four GRUs usually take one loop instead of four.
    inputs[k]: (B, T_k, I_k), h0s[k]: (B, H_k) -> states (B, T_k, H_k).
    """
    groups: dict[tuple, list[int]] = {}
    for k, (cell, x) in enumerate(zip(cells, inputs)):
        groups.setdefault((cell.hidden_size, cell.clip, x.shape[1]), []).append(k)
    states: list[torch.Tensor | None] = [None] * len(cells)
    for (hidden, clip, _), members in groups.items():
        # projected inputs of every step, one matmul per GRU: (K, B, T, 2H) and (K, B, T, H)
        x_zr, x_n = torch.stack([cells[k].project_input(inputs[k]) for k in members]).split(
            [2 * hidden, hidden], 3
        )
        u = torch.stack([cells[k].weight_hh for k in members]).transpose(1, 2)  # (K, H, 3H)
        u_zr, u_n = u.split([2 * hidden, hidden], dim=2)
        h0 = torch.stack([h0s[k] for k in members])  # (K, B, H)
        stacked = loop(x_zr, x_n, h0, u_zr, u_n, clip)  # (K, B, T, H)
        for i, k in enumerate(members):
            states[k] = stacked[i]
    return states


def stacked_loop(x_zr, x_n, h, u_zr, u_n, clip: float) -> torch.Tensor:
    """The loop of `StackedGRUSequence` with autograd: what `rnn_impl="compiled"` compiles."""
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
    """Forward and backward clipped GRUs with learnable initial states (TF encoder initialisation).

    `runs` gives what to scan; `align` turns the scanned states back into input time.
    """

    def __init__(self, *, input_size: int, hidden_size: int, clip: float):
        super().__init__()
        self.hidden_size = hidden_size
        fan_in = input_size + hidden_size
        self.forward_cell = ClippedGRUCell(
            input_size=input_size, hidden_size=hidden_size, clip=clip, fan_in=fan_in
        )
        self.backward_cell = ClippedGRUCell(
            input_size=input_size, hidden_size=hidden_size, clip=clip, fan_in=fan_in
        )
        self.h0 = nn.Parameter(torch.zeros(2, hidden_size))  # (direction, H)

    def runs(self, x: torch.Tensor) -> list[tuple[ClippedGRUCell, torch.Tensor, torch.Tensor]]:
        """(cell, input, h0) of both directions, to scan; the backward input is time-reversed.

        x: (B, T, I).
        """
        batch = x.shape[0]
        return [
            (self.forward_cell, x, self.h0[0].expand(batch, -1)),
            (self.backward_cell, x.flip(1), self.h0[1].expand(batch, -1)),
        ]

    @staticmethod
    def align(
        forward: torch.Tensor, backward_reversed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scanned states of `runs` -> forward (B, T, H), backward (B, T, H), in the input's time.

        The last forward state is `forward[:, -1]`, the last backward one `backward[:, 0]`.
        """
        return forward, backward_reversed.flip(1)

    def recurrent_weights(self) -> list[torch.Tensor]:
        return [self.forward_cell.weight_hh, self.backward_cell.weight_hh]
