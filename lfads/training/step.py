"""The training step, once: augment -> forward (posteriors sampled) -> loss, for one batch; and
the check, per member, that everything it computed is finite.

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


@dataclass
class StepResult:
    terms: LossTerms  # each member's terms (P,); their sum of terms.loss is minimised
    outputs: dict[int, SessionOutput]  # per session, from the augmented batch
    metrics: dict[str, torch.Tensor]  # extra values the augmentations report, (P,): recon_sv


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
    """One step on `batch` (fields (P, B, ...)) with the model's training augmentations (training)
    or its inference augmentations (validation); `epoch` (from 0) sets the KL and L2 ramps.
    Each member's terms are (P,)."""
    augmentations = model.train_augmentations if training else model.infer_augmentations
    augmented, memos = {}, {}
    for session in sorted(batch):
        augmented[session], memos[session] = augmentations.process_batch(
            batch[session], model.random
        )
    with unvalidated_distributions():
        outputs = model(augmented, sample_posteriors=True)
        metrics: dict[str, torch.Tensor] = {}
        terms = model.loss(augmented, outputs, augmentations, memos, epoch, metrics)
    return StepResult(terms, outputs, metrics)


def finite_members(result: StepResult) -> torch.Tensor:
    """(P,) bool: members whose posterior and reconstruction parameters and loss terms are all
    finite in this step."""
    finite = None
    for out in result.outputs.values():
        for key in CHECKED_OUTPUTS:
            value = getattr(out, key)
            ok = value.isfinite().reshape(value.shape[0], -1).all(dim=1)
            finite = ok if finite is None else finite & ok
    for name in CHECKED_TERMS:
        finite = finite & getattr(result.terms, name).detach().isfinite()
    return finite


def describe_non_finite(result: StepResult, member: int, split: str, epoch: int) -> str:
    """Member `member`'s first non-finite value of a step, in words: the posterior and
    reconstruction parameters where they arise (per session), then each loss term; with the
    epoch (from 1, as the log counts) and what to try.

    split: "train" or "valid"; epoch: from 0.
    """
    where = _first_non_finite(result, member, split)
    return f"{where} at epoch {epoch + 1}; training stopped. {NON_FINITE_REMEDY}"


def _first_non_finite(result: StepResult, member: int, split: str) -> str:
    for session, out in sorted(result.outputs.items()):
        for key, name in CHECKED_OUTPUTS.items():
            value = getattr(out, key)[member]
            if not bool(value.isfinite().all()):
                where = f" of session {session}" if len(result.outputs) > 1 else ""
                return (
                    f"{split} {name}{where} is not finite ({int(value.isnan().sum())} NaN, "
                    f"{int(value.isinf().sum())} infinite of {value.numel()} values)"
                )
    for name in CHECKED_TERMS:
        value = float(getattr(result.terms, name)[member].detach())
        if not math.isfinite(value):
            return f"{split} loss term {name!r} is {value}"
    return f"{split}: a non-finite value"
