"""The GRU of the TF LFADS, and the time loops the encoders run.

Differences from `torch.nn.GRU` (which is therefore not used): the reset gate
multiplies the state *before* the recurrent matmul of the candidate, there is
no recurrent bias (TF has none; lfads-torch keeps one frozen at zero), the
update and reset gates start with bias 1, and the new state is clipped.

The step is `gru_step`, written once: every loop below, the decoder's and the
fused ones (`lfads.model.fused`) call it. Two ways to run GRUs over time, with
the same numbers (tested); which one the model uses is chosen once, in
`lfads.model.loops`:
- `scan_reference`: one GRU at a time, `ClippedGRUCell.reference_step` per bin;
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

from lfads.model.members import init_normal_, member_linear


class ClippedGRUCell(nn.Module):
    """h' = clip(z * h + (1 - z) * tanh(W_n x + b_n + U_n (r * h))), z, r = sigmoid(W x + b + U h).

    One GRU per member: weight_ih (P, 3H, I), bias_ih (P, 3H), weight_hh (P, 3H, H).
    Gate order along the 3 * hidden axis of the weights: update z, reset r, candidate n.
    fan_in: variance scale of both weight matrices; the TF encoders use
    input + hidden (one kernel over [x, h]), the controller and generator use
    each matrix's own fan-in (None). generators: one per member (`members.init_generators`).
    """

    def __init__(
        self,
        *,
        input_size: int,
        hidden_size: int,
        generators: list[torch.Generator],
        clip: float = math.inf,
        fan_in: int | None = None,
    ):
        super().__init__()
        self.input_size, self.hidden_size, self.clip = input_size, hidden_size, clip
        n_members = len(generators)
        self.weight_ih = nn.Parameter(torch.empty(n_members, 3 * hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(n_members, 3 * hidden_size))
        self.weight_hh = nn.Parameter(torch.empty(n_members, 3 * hidden_size, hidden_size))
        init_normal_(self.weight_ih, (fan_in or max(input_size, 1)) ** -0.5, generators)
        init_normal_(self.weight_hh, (fan_in or hidden_size) ** -0.5, generators)
        with torch.no_grad():
            self.bias_ih.fill_(1.0)
            self.bias_ih[:, 2 * hidden_size :] = 0.0  # candidate bias starts at 0

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        """(P, ..., input_size) -> (P, ..., 3 * hidden): every gate's input part, all bins."""
        return member_linear(x, self.weight_ih, self.bias_ih)

    def split_recurrent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Transposed recurrent weights of the gates (P, H, 2H) and of the candidate (P, H, H).

        Split and transposed once per sequence, not per step: each split or
        transpose inside the loop would add a node per step to the backward pass.
        """
        u_zr, u_n = self.weight_hh.split([2 * self.hidden_size, self.hidden_size], dim=1)
        return u_zr.transpose(1, 2), u_n.transpose(1, 2)

    def split_projection(self, x_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3H) projected inputs -> gates part (..., 2H) and candidate part (..., H)."""
        return x_proj.split([2 * self.hidden_size, self.hidden_size], dim=-1)

    def reference_step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step, x (P, B, input_size), h (P, B, H) -> new state (P, B, H): `gru_step` on
        this bin's projected input."""
        x_zr, x_n = self.split_projection(self.project_input(x))
        return gru_step(x_zr, x_n, h, *self.split_recurrent(), self.clip)[0]

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.reference_step(x, h)


def _tanh(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh; without autograd on the CPU as 2 sigmoid(2x) - 1, since torch's CPU tanh is several
    times slower than its sigmoid (measured 125 vs 16 us on 600 x 200 floats; 46 us this way).
    Absolute error ~1 ulp of 1. Then it overwrites x: pass a temporary."""
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return torch.tanh(x, out=out)
    return torch.sigmoid(x.mul_(2.0), out=out).mul_(2.0).sub_(1.0)


def gru_step(x_zr, x_n, h, u_zr, u_n, clip: float, out=(None, None, None)):
    """The GRU step, written once for every loop: -> new state h', gates [z | r], candidate n.

    x_zr (K, B, 2H), x_n (K, B, H): the step's projected inputs (with bias); h (K, B, H);
    u_zr (K, H, 2H), u_n (K, H, H): transposed recurrent weights (`split_recurrent`).
        z, r = sigmoid(x_zr + h @ u_zr)    n = tanh(x_n + (r * h) @ u_n)    h' = clip(n + z (h - n))
    out: optional (state, gates, candidate) tensors to write into (the fused loops' buffers).
    """
    h_out, gates_out, n_out = out
    gates = torch.sigmoid(torch.baddbmm(x_zr, h, u_zr), out=gates_out)
    z, r = gates.chunk(2, dim=-1)
    n = _tanh(torch.baddbmm(x_n, r * h, u_n), out=n_out)
    h_new = torch.lerp(n, h, z, out=h_out)
    if not math.isinf(clip):
        h_new = torch.clamp(h_new, -clip, clip, out=h_out)
    return h_new, gates, n


def scan_reference(
    cells: list[ClippedGRUCell], inputs: list[torch.Tensor], h0s: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Run each GRU over its own sequence, one at a time, with `reference_step` per bin.

    inputs[k]: (P, B, T_k, I_k), h0s[k]: (P, B, H_k) -> states (P, B, T_k, H_k).
    """
    states = []
    for cell, x, h in zip(cells, inputs, h0s):
        steps = []
        for t in range(x.shape[2]):
            h = cell.reference_step(x[:, :, t], h)
            steps.append(h)
        states.append(torch.stack(steps, dim=2))
    return states


# A stacked loop: (x_zr (K, B, T, 2H), x_n (K, B, T, H), h0 (K, B, H), u_zr (K, H, 2H),
# u_n (K, H, H), clip) -> states (K, B, T, H); `StackedGRUSequence.apply` or `stacked_loop`.
# K counts GRUs and members together.
StackedLoop = Callable[..., torch.Tensor]


def scan_together(
    cells: list[ClippedGRUCell],
    inputs: list[torch.Tensor],
    h0s: list[torch.Tensor],
    *,
    loop: StackedLoop,
) -> list[torch.Tensor]:
    """Run independent GRUs over their own sequences; the numbers of `scan_reference`.

    GRUs with the same hidden size, clip and sequence length share one time loop, their
    weights (and every member's) stacked along a leading axis and multiplied with `bmm`: the
    encoders' four GRUs of a pack of P usually take one loop of 4P GRUs.
    inputs[k]: (P, B, T_k, I_k), h0s[k]: (P, B, H_k) -> states (P, B, T_k, H_k).
    """
    groups: dict[tuple, list[int]] = {}
    for k, (cell, x) in enumerate(zip(cells, inputs)):
        groups.setdefault((cell.hidden_size, cell.clip, x.shape[2]), []).append(k)
    states: list[torch.Tensor | None] = [None] * len(cells)
    for (hidden, clip, _), group in groups.items():
        # projected inputs of every step, one matmul per GRU: (K P, B, T, 2H) and (K P, B, T, H)
        projected = torch.stack([cells[k].project_input(inputs[k]) for k in group])
        x_zr, x_n = projected.flatten(0, 1).split([2 * hidden, hidden], 3)
        u = torch.stack([cells[k].weight_hh for k in group]).flatten(0, 1)  # (K P, 3H, H)
        u_zr, u_n = u.transpose(1, 2).split([2 * hidden, hidden], dim=2)
        h0 = torch.stack([h0s[k] for k in group]).flatten(0, 1)  # (K P, B, H)
        stacked = loop(x_zr, x_n, h0, u_zr, u_n, clip)  # (K P, B, T, H)
        for k, gru_states in zip(group, stacked.unflatten(0, (len(group), -1))):
            states[k] = gru_states
    return states


def stacked_loop(x_zr, x_n, h, u_zr, u_n, clip: float) -> torch.Tensor:
    """The loop of `StackedGRUSequence` with autograd: what `rnn_impl="compiled"` compiles."""
    steps = []
    for t in range(x_zr.shape[2]):
        h = gru_step(x_zr[:, :, t], x_n[:, :, t], h, u_zr, u_n, clip)[0]
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

    def __init__(
        self, *, input_size: int, hidden_size: int, clip: float, generators: list[torch.Generator]
    ):
        super().__init__()
        self.hidden_size = hidden_size
        fan_in = input_size + hidden_size
        cell = dict(input_size=input_size, hidden_size=hidden_size, clip=clip, fan_in=fan_in)
        self.forward_cell = ClippedGRUCell(**cell, generators=generators)
        self.backward_cell = ClippedGRUCell(**cell, generators=generators)
        self.h0 = nn.Parameter(torch.zeros(len(generators), 2, hidden_size))  # (P, direction, H)

    def runs(self, x: torch.Tensor) -> list[tuple[ClippedGRUCell, torch.Tensor, torch.Tensor]]:
        """(cell, input, h0) of both directions, to scan; the backward input is time-reversed.

        x: (P, B, T, I).
        """
        n_members, batch = x.shape[:2]
        return [
            (self.forward_cell, x, self.h0[:, None, 0].expand(n_members, batch, -1)),
            (self.backward_cell, x.flip(2), self.h0[:, None, 1].expand(n_members, batch, -1)),
        ]

    @staticmethod
    def align(
        forward: torch.Tensor, backward_reversed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scanned states of `runs` -> forward (P, B, T, H), backward (P, B, T, H), in input time.

        The last forward state is `forward[:, :, -1]`, the last backward one `backward[:, :, 0]`.
        """
        return forward, backward_reversed.flip(2)

    def recurrent_weights(self) -> list[torch.Tensor]:
        return [self.forward_cell.weight_hh, self.backward_cell.weight_hh]
