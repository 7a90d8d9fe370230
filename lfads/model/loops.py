"""How the recurrent loops run: one `RecurrentLoops` per `rnn_impl`, chosen when LFADS is built.

All three give the same numbers for the same weights and seed (tests/test_model_paths.py); they
differ in speed only, so the choice is an execution option of training and inference, not a
hyperparameter stored with the model:

- "fast" (default): the encoders' GRUs stacked into one loop (`StackedGRUSequence`) and the
  decoder's fused loop (`DecoderLoop`), both with hand-written backward passes
  (`lfads.model.fused`); posterior samples of a batch go through the decoder together;
- "reference": each GRU in its own plain loop (`scan_reference`), the decoder cell bin by bin
  (`unroll_plain`), and posterior samples one at a time: the baseline of the benchmark;
- "compiled": the fast path's loops written plainly (`stacked_loop`, `unroll_plain`) through
  torch.compile (CUDA graphs on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lfads.model.decoder import Decoder, DecoderNoise, DecoderOutput, unroll_plain
from lfads.model.fused import StackedGRUSequence, unroll_fused
from lfads.model.gru import ClippedGRUCell, compiled, scan_reference, scan_together, stacked_loop

# (cells, inputs (B, T_k, I_k), initial states (B, H_k)) -> states (B, T_k, H_k), one per GRU
ScanGRUs = Callable[[list[ClippedGRUCell], list[torch.Tensor], list[torch.Tensor]], list]
# (decoder, gen_init (B, G), ci (B, T + F, ci_dim), ext_input (B, T + F, E), noise) -> output
UnrollDecoder = Callable[
    [Decoder, torch.Tensor, torch.Tensor, torch.Tensor, DecoderNoise], DecoderOutput
]


@dataclass(frozen=True)
class RecurrentLoops:
    """One implementation of every recurrent loop of the model."""

    name: str  # the rnn_impl it implements
    scan_encoders: ScanGRUs  # the encoders' independent GRUs
    unroll_decoder: UnrollDecoder  # the decoder over all bins


def _scan_fast(cells, inputs, h0s):
    return scan_together(cells, inputs, h0s, loop=StackedGRUSequence.apply)


def _scan_compiled(cells, inputs, h0s):
    return scan_together(cells, inputs, h0s, loop=_stacked_loop_compiled)


def _stacked_loop_compiled(x_zr, x_n, h0, u_zr, u_n, clip: float) -> torch.Tensor:
    return compiled(stacked_loop, x_zr.device)(x_zr, x_n, h0, u_zr, u_n, clip)


def _unroll_compiled(decoder, gen_init, ci, ext_input, noise) -> DecoderOutput:
    return compiled(unroll_plain, ci.device)(decoder, gen_init, ci, ext_input, noise)


RNN_IMPLS: dict[str, RecurrentLoops] = {
    loops.name: loops
    for loops in (
        RecurrentLoops("fast", _scan_fast, unroll_fused),
        RecurrentLoops("reference", scan_reference, unroll_plain),
        RecurrentLoops("compiled", _scan_compiled, _unroll_compiled),
    )
}


def recurrent_loops(rnn_impl: str) -> RecurrentLoops:
    """The implementation named `rnn_impl`; a ValueError lists the names there are."""
    if rnn_impl not in RNN_IMPLS:
        raise ValueError(f"rnn_impl: must be one of {list(RNN_IMPLS)}, got {rnn_impl!r}")
    return RNN_IMPLS[rnn_impl]
