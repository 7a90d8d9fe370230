"""Resuming a run: read its last.ckpt, check that it may be resumed, and say what to continue."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lfads.formats.checkpoints import read_training_checkpoint
from lfads.model.hparams import HParams

# Hyperparameters that may change on resume: the epochs in all.
MAY_CHANGE_ON_RESUME = ("max_epochs",)


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path  # the last.ckpt
    epochs_done: int  # epochs finished, counting from 1
    stop_reason: str  # why the run had stopped by itself (early stopping, lr_stop), else ""

    def max_epochs(self, hparams: HParams) -> int:
        """Epochs in all for the Trainer: a run that had stopped is not continued (its outputs are
        only rewritten); any other continues to hparams.max_epochs."""
        return self.epochs_done if self.stop_reason else hparams.max_epochs


def resume_point(last_checkpoint: Path, hparams: HParams) -> ResumePoint | None:
    """Where a run continues: None without a last.ckpt. A last.ckpt trained with other
    hyperparameters (besides MAY_CHANGE_ON_RESUME) is a ValueError; one of another format
    version a FormatVersionError."""
    if not last_checkpoint.exists():
        return None
    state = read_training_checkpoint(last_checkpoint)
    given = hparams.to_dict()
    differing = sorted(
        k for k in given if k not in MAY_CHANGE_ON_RESUME and state.hparams.get(k) != given[k]
    )
    if differing:
        raise ValueError(
            f"{last_checkpoint} was trained with other hyperparameters ({differing}); "
            "delete it to start afresh or use another checkpoint directory"
        )
    return ResumePoint(last_checkpoint, len(state.history), state.stop_reason)
