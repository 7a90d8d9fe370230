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
    ".*does not have many workers.*",
)


def fit(
    module,
    data,
    *,
    max_epochs: int,
    device: str,
    out_dirs: list[Path],
    last_checkpoint: Path,
    metrics_csvs: list[Path],
    resume_from: Path | None,
) -> None:
    """Run Lightning's fit of the pack `module` on the datamodule `data` for max_epochs (in all).

    device: "cpu" or "cuda". After every epoch last_checkpoint and each member's metrics_csvs
    (rows so far) are rewritten; resume_from: a last.ckpt to continue from. TensorBoard logs go
    to each member's out_dirs[m]/tensorboard: every metrics.csv column (the learning rate `lr`
    included) per epoch, and a figure of one validation trial every FIGURE_EVERY_EPOCHS epochs.
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
            logger=False,
            callbacks=[
                _epoch_checkpoint(last_checkpoint, metrics_csvs),
                _tensorboard(out_dirs),
            ],
            plugins=[_atomic_checkpoint_io(), _plain_environment()],
            num_sanity_val_steps=0,
            enable_progress_bar=sys.stderr.isatty(),
            enable_model_summary=False,
            default_root_dir=str(last_checkpoint.parent),
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


def _epoch_checkpoint(last_checkpoint: Path, metrics_csvs: list[Path]):
    from lightning.pytorch.callbacks import Checkpoint

    class EpochCheckpoint(Checkpoint):
        """After every epoch (and after the module's own epoch-end work): last.ckpt and each
        member's metrics so far.

        A `Checkpoint` subclass, so Lightning runs it after `LightningModule.on_train_epoch_end`.
        """

        def on_train_epoch_end(self, trainer, module) -> None:
            trainer.save_checkpoint(last_checkpoint, weights_only=False)  # (False: full state)
            for path, state in zip(metrics_csvs, module.states):
                write_metrics_csv(path, state.history)

    return EpochCheckpoint()


class _DropLightningTips(logging.Filter):
    """Lightning advertises its cloud logger at every `fit`; keep that out of training logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning_logs() -> None:
    """Drop Lightning's tips from its loggers, and its console handler where the root logger
    writes its lines already (idempotent)."""
    from lfads.infra.logs import drop_duplicate_handlers

    drop_duplicate_handlers()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())


def _plain_environment():
    """Single-process environment: Lightning's SLURM auto-detection (and its requeue signal
    handlers) stays out of jobs that Snakemake schedules."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    return LightningEnvironment()


# TensorBoard's image of one validation trial: at the first epoch, then every this many epochs.
FIGURE_EVERY_EPOCHS = 100
FIGURE_TAG = "valid/first_trial"


def _tensorboard(out_dirs: list[Path]):
    from lightning.pytorch.callbacks import Checkpoint

    class TensorBoardMembers(Checkpoint):
        """Each member's TensorBoard log (out_dir/tensorboard): its metrics.csv row of every epoch
        it trained, by epoch, an image of the first validation trial's spikes, posterior-mean
        rates and factors (from the model's deterministic pass, which draws nothing) at the
        first epoch and every FIGURE_EVERY_EPOCHS, and at the end its hyperparameters with its
        best epoch and smoothed valid recon (the HPARAMS tab compares runs by them).

        A `Checkpoint` subclass, so Lightning runs its epoch end after the module's, which
        appends the epoch's rows."""

        def __init__(self):
            self.writers = None

        def _writer(self, m: int):
            if self.writers is None:
                from torch.utils.tensorboard import SummaryWriter

                self.writers = [SummaryWriter(str(Path(d) / "tensorboard")) for d in out_dirs]
            return self.writers[m]

        def on_train_epoch_end(self, trainer, module) -> None:
            epoch = trainer.current_epoch
            for m, state in enumerate(module.states):
                if not state.history or state.history[-1]["epoch"] != epoch:
                    continue
                writer = self._writer(m)
                for key, value in state.history[-1].items():
                    if key != "epoch":
                        writer.add_scalar(key.replace("_", "/", 1), value, epoch + 1)
                writer.flush()

        def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, *_):
            epoch = trainer.current_epoch
            if batch_idx != 0 or epoch % FIGURE_EVERY_EPOCHS:
                return
            session = min(batch)
            with torch.no_grad():
                processed = module.model.infer_augmentations.process_batch(
                    batch[session], module.model.random
                )[0]
                output = module.model({session: processed}, sample_posteriors=False)[session]
                rates = module.model.rates(session, output)[:, 0].float().cpu().numpy()
                factors = output.factors[:, 0].float().cpu().numpy()
            spikes = batch[session].recon_data[:, 0].float().cpu().numpy()
            for m, state in enumerate(module.states):
                if not state.finished:
                    figure = trial_figure(spikes[m], rates[m], factors[m])
                    self._writer(m).add_figure(FIGURE_TAG, figure, global_step=epoch + 1)

        def on_fit_end(self, trainer, module) -> None:
            # the HPARAMS tab: each member's hyperparameters beside what chose its epoch
            for m, state in enumerate(module.states):
                values = {
                    key: value if isinstance(value, (int, float, str, bool)) else str(value)
                    for key, value in state.hparams.items()
                }
                metrics = {
                    "hparam/best_valid_recon_smoothed": state.best_valid_recon_smoothed,
                    "hparam/best_epoch": state.best_epoch,
                }
                self._writer(m).add_hparams(values, metrics, run_name=".")
            for writer in self.writers or []:
                writer.close()

    return TensorBoardMembers()


def trial_figure(spikes, rates, factors):
    """A matplotlib Figure of one trial: spikes and rates (bins x neurons, spikes per bin) as
    images, factors (bins x fac_dim) as lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for ax, values, title in ((axes[0], spikes, "spikes"), (axes[1], rates, "rates")):
        ax.imshow(values.T, aspect="auto", interpolation="nearest", cmap="Greys")
        ax.set(title=f"{title} (per bin)", xlabel="bin", ylabel="neuron")
    axes[2].plot(factors)
    axes[2].set(title="factors", xlabel="bin")
    return figure
