"""Train one LFADS model (`python -m lfads train`, `train_model`), resuming from `last.ckpt` when present.

Outputs, each written atomically into `out_dir`: `model.ckpt` (the final model,
see `save_model`), `metrics.csv` (one row per epoch) and `hparams.yaml`.
While training, `checkpoint_dir` holds `last.ckpt` (rewritten atomically after
every epoch) and `metrics.csv` so far.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from lfads.infra.io import atomic_path, write_text
from lfads.model.hparams import HParams

log = logging.getLogger("lfads.training.train")

MODEL_FORMAT = "lfads-model"
MODEL_FORMAT_VERSION = 1


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible (use --device auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {device!r}")
    return device


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Any checkpoint of ours, loaded with weights_only=True (plain data only) on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _atomic_checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Writes beside the target and renames, so a kill mid-save leaves the previous checkpoint whole;
        reads with weights_only=True."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    return AtomicCheckpointIO()


def _epoch_checkpoint(checkpoint_dir: Path):
    from lightning.pytorch.callbacks import Checkpoint

    class EpochCheckpoint(Checkpoint):
        """After every epoch (and after the module's own epoch-end work): last.ckpt and metrics so far.

        A `Checkpoint` subclass, so Lightning runs it after `LightningModule.on_train_epoch_end`.
        """

        def on_train_epoch_end(self, trainer, module) -> None:
            trainer.save_checkpoint(
                checkpoint_dir / "last.ckpt", weights_only=False
            )  # (False: full state)
            write_metrics_csv(checkpoint_dir / "metrics.csv", module.history)

    return EpochCheckpoint()


def write_metrics_csv(path: Path, rows: list[dict[str, float]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (
                    int(v)
                    if k == "epoch"
                    else ("" if isinstance(v, float) and math.isnan(v) else repr(v))
                )
                for k, v in row.items()
            }
        )
    write_text(path, buffer.getvalue())


def save_model(path: Path, module, sessions) -> None:
    """The final model as plain data: loadable with torch.load(weights_only=True).

    Keys: format, format_version, state_dict, hparams (HParams.to_dict()),
    sessions (SessionDims per session file), data (attributes of each training file).
    """
    checkpoint = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in module.model.state_dict().items()},
        "hparams": module.config.to_dict(),
        "sessions": [d.to_dict() for d in module.model.sessions],
        "data": [{"file": str(s.path), **s.attrs} for s in sessions],
        "epochs": len(module.history),
        "stop_reason": module.stop_reason,
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_model(path: str | Path, device: str = "cpu", rnn_impl: str = "fast"):
    """(LFADS model in eval mode, checkpoint dict) from a model.ckpt written by `save_model`."""
    from lfads.model.lfads import LFADS, SessionDims

    checkpoint = load_checkpoint(path)
    if checkpoint.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path}: not an LFADS model file (no format {MODEL_FORMAT!r}); pass out_dir/model.ckpt"
        )
    hparams = HParams.from_dict(checkpoint["hparams"])
    model = LFADS(hparams, [SessionDims(**d) for d in checkpoint["sessions"]], rnn_impl=rnn_impl)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


def _initial_readins(module, sessions, hparams: HParams) -> None:
    """Principal-components-regression start of the per-session readins (multi-session models)."""
    from torch import nn

    from lfads.model.readin import pcr_readins, session_averages, shared_conditions

    if isinstance(module.model.readins[0], nn.Identity) or hparams.readin_init != "pcr":
        return
    conditions = shared_conditions([s.conditions.get("train") for s in sessions])
    averages = [
        session_averages(
            s.splits["train"]["encod_data"].numpy(), s.conditions.get("train"), conditions
        )
        for s in sessions
    ]
    readin_dim = module.model.readins[0].out_features
    module.model.set_readins(pcr_readins(averages, readin_dim, seed=hparams.seed))
    log.info(
        "readins of %d sessions set by PCR on %s",
        len(sessions),
        f"{len(conditions)} shared conditions" if conditions else "trial-averaged activity",
    )


def _check_resume(checkpoint_path: Path, hparams: HParams) -> tuple[int, str]:
    """(epochs done, stop reason) of last.ckpt; its hyperparameters must match (max_epochs and rnn_impl,
    which does not change the numbers, may differ)."""
    checkpoint = load_checkpoint(checkpoint_path)
    saved = checkpoint["lfads"]["hparams"]
    given = hparams.to_dict()
    differing = sorted(
        k for k in given if k not in ("max_epochs", "rnn_impl") and saved.get(k) != given[k]
    )
    if differing:
        raise ValueError(
            f"{checkpoint_path} was trained with other hyperparameters ({differing}); "
            "delete it to start afresh or use another checkpoint directory"
        )
    return len(checkpoint["lfads"]["history"]), checkpoint["lfads"]["stop_reason"]


def train_model(
    data_files: list[Path],
    hparams: HParams,
    out_dir: Path,
    checkpoint_dir: Path | None = None,
    device: str = "auto",
    max_epochs: int | None = None,
    rnn_impl: str = "fast",
) -> Path:
    """Train on the prepared files (session i = data_files[i]); returns out_dir / "model.ckpt".

    A `last.ckpt` already in checkpoint_dir (default out_dir / "checkpoints") is resumed:
    same epoch, optimiser, scheduler, metric history and RNG states.
    Raises NonFiniteLossError when a loss term stops being finite (last.ckpt is kept).
    """
    import lightning as L

    from lfads.training.datamodule import LFADSDataModule
    from lfads.training.module import LFADSModule

    data_files = [Path(p) for p in data_files]
    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoints"
    if max_epochs is not None:
        hparams = hparams.replace(max_epochs=max_epochs)
    device = resolve_device(device)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = checkpoint_dir / "last.ckpt"

    L.seed_everything(hparams.seed, workers=False, verbose=False)
    data = LFADSDataModule(data_files, hparams.batch_size, hparams.seed, hparams.sv_rate)
    data.setup()
    _check_missing_targets(data.sessions, hparams)
    module = LFADSModule(hparams, [s.dims for s in data.sessions], rnn_impl=rnn_impl)
    resume = last if last.exists() else None
    epochs = hparams.max_epochs
    if resume:
        done, stop_reason = _check_resume(last, hparams)
        if stop_reason:  # it had finished (early stopping, lr_stop): only the outputs are rewritten
            log.info("%s had stopped (%s); writing its outputs", last, stop_reason)
            epochs = done
        else:
            # N = epochs already done (the checkpoint's last epoch, counting from 1)
            log.info(
                "resumed from epoch %d (%s); continuing at epoch %d of %d",
                done,
                last,
                done + 1,
                hparams.max_epochs,
            )
    else:
        _initial_readins(module, data.sessions, hparams)
    log.info(
        "training %d parameters on %s: %s",
        sum(p.numel() for p in module.parameters()),
        device,
        ", ".join(
            f"{s.path.name} ({s.n_trials('train')} train, {s.n_trials('valid')} valid trials)"
            for s in data.sessions
        ),
    )

    interactive = sys.stderr.isatty()
    _quiet_lightning()
    with warnings.catch_warnings():
        for noise in (
            ".*`srun` command is available.*",
            ".*overridden `transfer_batch_to_device`.*",
            ".*isinstance.treespec, LeafSpec.*",
        ):
            warnings.filterwarnings("ignore", message=noise)
        trainer = L.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            max_epochs=epochs,
            gradient_clip_val=hparams.gradient_clip or None,
            logger=_tensorboard_logger(out_dir),
            callbacks=[_epoch_checkpoint(checkpoint_dir)],
            plugins=[_atomic_checkpoint_io(), _plain_environment()],
            num_sanity_val_steps=0,
            enable_progress_bar=interactive,
            enable_model_summary=False,
            default_root_dir=str(checkpoint_dir),
            log_every_n_steps=1,
        )
        trainer.fit(
            module, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True
        )

    if module.stop_reason:
        log.info("stopped: %s", module.stop_reason)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(out_dir / "metrics.csv", module.history)
    write_text(out_dir / "hparams.yaml", hparams.to_yaml())
    model_path = out_dir / "model.ckpt"
    save_model(model_path, module, data.sessions)
    log.info("wrote %s after %d epochs", model_path, len(module.history))
    return model_path


def _check_missing_targets(sessions, hparams: HParams) -> None:
    stacks = (hparams.train_augmentations, hparams.infer_augmentations)
    handled = all(any(spec.name == "selective_backprop" for spec in stack) for stack in stacks)
    for session in sessions:
        if not handled and session.has_missing_targets():
            raise ValueError(
                f"{session.path}: recon_data has NaN (unobserved) targets; add selective_backprop to both "
                "train_augmentations and infer_augmentations so they are left out of the loss"
            )


class _DropLightningTips(logging.Filter):
    """Lightning advertises its cloud logger at every `fit`; keep that out of training logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())


def _plain_environment():
    """Single-process environment: Lightning's SLURM auto-detection (and its requeue signal handlers)
    stays out of jobs that Snakemake schedules."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    return LightningEnvironment()


def _tensorboard_logger(out_dir: Path):
    """TensorBoard logs in out_dir/tensorboard when tensorboard is installed; else none (metrics.csv remains)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(str(out_dir), name="tensorboard", default_hp_metric=False)


# -- command line -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="prepared HDF5 file; repeat for several sessions",
    )
    parser.add_argument(
        "--config", type=Path, help="hyperparameters YAML (HParams fields); defaults if omitted"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (model.ckpt, metrics.csv, hparams.yaml)",
    )
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="where last.ckpt lives (default OUT/checkpoints)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-epochs", type=int, help="override max_epochs of the config")
    from lfads.model.loops import RNN_IMPLS

    parser.add_argument(
        "--rnn-impl", choices=list(RNN_IMPLS), default="fast", help="how the recurrent loops run"
    )


def run(args: argparse.Namespace) -> int:
    from lfads.infra.logs import configure
    from lfads.training.module import NonFiniteLossError

    configure()
    try:
        hparams = HParams.from_yaml(args.config) if args.config else HParams()
        train_model(
            args.data,
            hparams,
            args.out,
            args.checkpoint_dir,
            args.device,
            args.max_epochs,
            rnn_impl=args.rnn_impl,
        )
    except NonFiniteLossError as error:
        log.error("%s", error)
        return 3
    except ValueError as error:
        log.error("%s", error)
        return 2
    return 0
