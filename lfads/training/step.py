"""The training step, once: augment -> forward (posteriors sampled) -> loss, for one batch; and
the check that everything it computed is finite.

Pure torch (no Lightning), so the LightningModule, the benchmark and the tests all run the
same step. Backward and the optimiser step are the caller's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.distributions import Distribution

from lfads.model.batch import SessionBatch
from lfads.model.lfads import LFADS, LossTerms, SessionOutput

# What to try when a run meets a non-finite value (the end of every such error).
NON_FINITE_REMEDY = "Try a lower lr, a smaller cell_clip or a stronger gradient_clip."

# The outputs that parameterise a distribution, in the order they arise, and their names.
CHECKED_OUTPUTS = {
    "ic_mean": "IC posterior mean (ic_mean)",
    "ic_std": "IC posterior std (ic_std)",
    "co_mean": "CO posterior mean (co_mean)",
    "co_std": "CO posterior std (co_std)",
    "params": "reconstruction parameters (readout output)",
}
CHECKED_TERMS = ("recon", "kl_ic", "kl_co", "l2", "loss")


class NonFiniteLossError(RuntimeError):
    """A posterior or reconstruction parameter, or a loss term, is NaN or infinite."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch  # from 1, as the log counts


@dataclass
class StepResult:
    terms: LossTerms  # terms.loss is what the optimiser minimises
    outputs: dict[int, SessionOutput]  # per session, from the augmented batch
    metrics: dict[str, torch.Tensor]  # extra scalars the augmentations report, e.g. recon_sv


@contextlib.contextmanager
def unvalidated_distributions() -> Iterator[None]:
    """torch.distributions without argument validation: `check_finite` names a non-finite value
    instead of the "Expected parameter loc ..." of the first distribution that meets it. The
    numbers are the same."""
    previous = Distribution._validate_args  # (the default that set_default_validate_args sets)
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(previous)


def run_step(
    model: LFADS, batch: dict[int, SessionBatch], epoch: int, training: bool = True
) -> StepResult:
    """One step on `batch` with the model's training augmentations (training) or its inference
    augmentations (validation); `epoch` (from 0) sets the KL and L2 ramps."""
    stack = model.train_augmentations if training else model.infer_augmentations
    augmented, memos = {}, {}
    for session in sorted(batch):
        augmented[session], memos[session] = stack.process_batch(batch[session])
    with unvalidated_distributions():
        outputs = model(augmented, sample_posteriors=True)
        metrics: dict[str, torch.Tensor] = {}
        terms = model.loss(augmented, outputs, stack, memos, epoch, metrics)
    return StepResult(terms, outputs, metrics)


def check_finite(result: StepResult, split: str, epoch: int) -> None:
    """Raise NonFiniteLossError naming the first non-finite value of a step: the posterior and
    reconstruction parameters where they arise (per session), then each loss term.

    split: "train" or "valid"; epoch: from 0 (the message counts from 1, as the log does).
    """
    for session, out in sorted(result.outputs.items()):
        values = [getattr(out, key) for key in CHECKED_OUTPUTS]
        if bool(torch.stack([value.isfinite().all() for value in values]).all()):
            continue
        for name, value in zip(CHECKED_OUTPUTS.values(), values):
            if not bool(value.isfinite().all()):
                n_nan = int(value.isnan().sum())
                where = f" of session {session}" if len(result.outputs) > 1 else ""
                _raise(
                    f"{split} {name}{where} is not finite ({n_nan} NaN, "
                    f"{int(value.isinf().sum())} infinite of {value.numel()} values)",
                    epoch,
                )
    for name in CHECKED_TERMS:
        value = float(getattr(result.terms, name).detach())
        if not math.isfinite(value):
            _raise(f"{split} loss term {name!r} is {value}", epoch)


def _raise(what: str, epoch: int) -> None:
    raise NonFiniteLossError(
        f"{what} at epoch {epoch + 1}; training stopped. {NON_FINITE_REMEDY}", epoch + 1
    )
