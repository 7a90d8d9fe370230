"""Lightning plumbing of a training run: the Trainer, atomic checkpoint IO, the per-epoch
checkpoint and the quieting of Lightning's own logs and warnings.

Lightning is imported on first use: importing it costs ~0.2 GiB and 3 s.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import torch

from lfads.formats.checkpoints import load_checkpoint_file
from lfads.formats.metrics import write_metrics_csv
from lfads.infra.io import atomic_path

# Lightning warnings that say nothing about our runs.
IGNORED_WARNINGS = (
    ".*`srun` command is available.*",
    ".*overridden `transfer_batch_to_device`.*",
    ".*isinstance.treespec, LeafSpec.*",
)


def fit(
    module,
    data,
    *,
    max_epochs: int,
    device: str,
    gradient_clip: float,
    out_dir: Path,
    last_checkpoint: Path,
    metrics_csv: Path,
    resume_from: Path | None,
) -> None:
    """Run Lightning's fit of `module` on the datamodule `data` for max_epochs (in all).

    device: "cpu" or "cuda"; gradient_clip: max gradient norm (0: off). After every epoch
    last_checkpoint and metrics_csv (rows so far) are rewritten; resume_from: a last.ckpt to
    continue from. TensorBoard logs go to out_dir/tensorboard when tensorboard is installed.
    """
    import lightning as L

    quiet_lightning_logs()
    with warnings.catch_warnings():
        for noise in IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=noise)
        trainer = L.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            max_epochs=max_epochs,
            gradient_clip_val=gradient_clip or None,
            logger=_tensorboard_logger(out_dir),
            callbacks=[_epoch_checkpoint(last_checkpoint, metrics_csv)],
            plugins=[_atomic_checkpoint_io(), _plain_environment()],
            num_sanity_val_steps=0,
            enable_progress_bar=sys.stderr.isatty(),
            enable_model_summary=False,
            default_root_dir=str(last_checkpoint.parent),
            log_every_n_steps=1,
        )
        trainer.fit(
            module,
            datamodule=data,
            ckpt_path=str(resume_from) if resume_from else None,
            weights_only=True,
        )


def _atomic_checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Writes beside the target and renames, so a kill mid-save leaves the previous checkpoint
        whole; reads with weights_only=True."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return load_checkpoint_file(path, map_location=map_location or "cpu")

    return AtomicCheckpointIO()


def _epoch_checkpoint(last_checkpoint: Path, metrics_csv: Path):
    from lightning.pytorch.callbacks import Checkpoint

    class EpochCheckpoint(Checkpoint):
        """After every epoch (and after the module's own epoch-end work): last.ckpt and metrics.

        A `Checkpoint` subclass, so Lightning runs it after `LightningModule.on_train_epoch_end`.
        """

        def on_train_epoch_end(self, trainer, module) -> None:
            trainer.save_checkpoint(last_checkpoint, weights_only=False)  # (False: full state)
            write_metrics_csv(metrics_csv, module.history)

    return EpochCheckpoint()


class _DropLightningTips(logging.Filter):
    """Lightning advertises its cloud logger at every `fit`; keep that out of training logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning_logs() -> None:
    """Drop Lightning's tips from its loggers (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())


def _plain_environment():
    """Single-process environment: Lightning's SLURM auto-detection (and its requeue signal
    handlers) stays out of jobs that Snakemake schedules."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    return LightningEnvironment()


def _tensorboard_logger(out_dir: Path):
    """TensorBoard logs in out_dir/tensorboard when tensorboard is installed; else none."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(str(out_dir), name="tensorboard", default_hp_metric=False)
