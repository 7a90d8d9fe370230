"""The training step, once: augment -> forward (posteriors sampled) -> loss, for one batch.

Pure torch (no Lightning), so the LightningModule, the benchmark and the tests all run the
same step. Backward and the optimiser step are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lfads.model.batch import SessionBatch
from lfads.model.lfads import LFADS, LossTerms, SessionOutput


@dataclass
class StepResult:
    terms: LossTerms  # terms.loss is what the optimiser minimises
    outputs: dict[int, SessionOutput]  # per session, from the augmented batch
    metrics: dict[str, torch.Tensor]  # extra scalars the augmentations report, e.g. recon_sv


def run_step(
    model: LFADS, batch: dict[int, SessionBatch], epoch: int, training: bool = True
) -> StepResult:
    """One step on `batch` with the model's training augmentations (training) or its inference
    augmentations (validation); `epoch` (from 0) sets the KL and L2 ramps."""
    stack = model.train_augmentations if training else model.infer_augmentations
    augmented, memos = {}, {}
    for session in sorted(batch):
        augmented[session], memos[session] = stack.process_batch(batch[session])
    outputs = model(augmented, sample_posteriors=True)
    metrics: dict[str, torch.Tensor] = {}
    terms = model.loss(augmented, outputs, stack, memos, epoch, metrics)
    return StepResult(terms, outputs, metrics)
