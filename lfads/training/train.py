"""Train one LFADS model (`python -m lfads train`, `train_model`): afresh, resumed from `last.ckpt`,
or only writing the outputs of a finished state.

The driver: it reads the sessions, decides what the checkpoint folder's state is to this run
(`resume.plan_run`: a state of another run is set aside, never resumed), fits, and writes the
outputs, each atomically into `out_dir`: `model.ckpt` (the best epoch's model,
`lfads.formats.checkpoints`), `metrics.csv` (one row per epoch, `lfads.formats.metrics`) and
`hparams.yaml`. While training, `checkpoint_dir` holds `last.ckpt` (rewritten atomically after
every epoch), `metrics.csv` so far and `run.json` (the run's identity; `delivered` once the
outputs are written). A run that meets a non-finite value has diverged: its outputs are written
all the same, with the reason in model.ckpt, and the error is logged. The jobs it calls:
`lightning_trainer` (Lightning's plumbing), `resume` (what a checkpoint folder holds), `readins`
(the PCR start of the readins).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lfads.formats.checkpoints import (
    Divergence,
    RunRecord,
    SavedModel,
    TrainingState,
    write_model,
    write_run_record,
)
from lfads.formats.metrics import write_metrics_csv
from lfads.infra.io import write_text
from lfads.model.hparams import HParams
from lfads.training.resume import LAST_CHECKPOINT, RUN_RECORD, RunIdentity, plan_run
from lfads.training.step import NonFiniteLossError

if TYPE_CHECKING:
    from lfads.training.module import LFADSModule

log = logging.getLogger("lfads.training.train")


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible (use --device auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {device!r}")
    return device


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

    checkpoint_dir (default out_dir / "checkpoints") holds the run's state: an interrupted run
    of the same identity (hyperparameters and prepared files' content) resumes exactly; a state
    of another run, or one already delivered, is set aside (`resume.plan_run`). A run that meets
    a NaN or infinite value is not an exception: its outputs record the divergence
    (`read_model(path).diverged`) and keep the best epoch before it, if one finished.
    """
    import lightning as L

    from lfads.training.datamodule import LFADSDataModule
    from lfads.training.lightning_trainer import fit
    from lfads.training.module import LFADSModule
    from lfads.training.readins import set_pcr_readins

    data_files = [Path(p) for p in data_files]
    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoints"
    if max_epochs is not None:
        hparams = hparams.replace(max_epochs=max_epochs)
    device = resolve_device(device)

    L.seed_everything(hparams.seed, workers=False, verbose=False)
    data = LFADSDataModule(data_files, hparams.batch_size, hparams.seed, hparams.sv_rate)
    data.setup()
    _check_missing_targets(data.sessions, hparams)
    identity = RunIdentity.of(hparams, data_files)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_run(checkpoint_dir, identity, hparams.max_epochs)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)  # (again: a folder set aside was renamed)
    outputs = _RunOutputs(out_dir, checkpoint_dir, hparams, identity, data.sessions)
    if plan.action == "deliver":
        state, diverged = plan.state, plan.record.diverged if plan.record else None
        if diverged is not None:
            log.info(
                "%s: this run diverged at epoch %d and that is final until its hyperparameters or "
                "data change; writing its outputs again without training (%s)",
                checkpoint_dir,
                diverged.epoch,
                diverged.reason,
            )
        else:
            log.info(
                "%s had finished (%s) but its outputs were not written; writing them",
                plan.checkpoint,
                state.stop_reason or f"{len(state.history)} of {hparams.max_epochs} epochs",
            )
        return outputs.write(state, diverged)

    module = LFADSModule(
        hparams, [s.dims for s in data.sessions], rnn_impl=rnn_impl, identity=identity.to_dict()
    )
    if plan.action == "afresh":
        set_pcr_readins(module.model, data.sessions)
    else:
        log.info(
            "resumed from epoch %d (%s); continuing at epoch %d of %d",
            plan.epochs_done,
            plan.checkpoint,
            plan.epochs_done + 1,
            hparams.max_epochs,
        )
    write_run_record(
        checkpoint_dir / RUN_RECORD,
        RunRecord(identity.to_dict(), hparams.max_epochs, delivered=False),
    )
    log.info(
        "training %d parameters on %s: %s",
        sum(p.numel() for p in module.parameters()),
        device,
        ", ".join(
            f"{s.path.name} ({s.n_trials('train')} train, {s.n_trials('valid')} valid trials)"
            for s in data.sessions
        ),
    )
    diverged = None
    try:
        fit(
            module,
            data,
            max_epochs=hparams.max_epochs,
            device=device,
            gradient_clip=hparams.gradient_clip,
            out_dir=out_dir,
            last_checkpoint=checkpoint_dir / LAST_CHECKPOINT,
            metrics_csv=checkpoint_dir / "metrics.csv",
            resume_from=plan.checkpoint if plan.action == "resume" else None,
        )
    except NonFiniteLossError as error:
        log.error("%s", error)
        diverged = Divergence(str(error), error.epoch)
    if module.stop_reason:
        log.info("stopped: %s", module.stop_reason)
    return outputs.write(module, diverged)


class _RunOutputs:
    """Writes a run's outputs (model.ckpt, metrics.csv, hparams.yaml), then marks its run.json
    delivered."""

    def __init__(self, out_dir, checkpoint_dir, hparams: HParams, identity: RunIdentity, sessions):
        self.out_dir, self.checkpoint_dir = out_dir, checkpoint_dir
        self.hparams, self.identity, self.sessions = hparams, identity, sessions

    def write(
        self, epochs_done: LFADSModule | TrainingState | None, diverged: Divergence | None
    ) -> Path:
        """Returns the model.ckpt path.

        epochs_done: the LFADSModule after training, or the TrainingState of a last.ckpt (None
        when no epoch finished); both have `history`, `stop_reason`, `best_epoch` (from 1),
        `best_valid_recon_smoothed` and `best_weights` (the LFADS state_dict after best_epoch).
        """
        if epochs_done is None:  # a run that diverged in its first epoch
            history, stop_reason, best_epoch, best_loss, weights = [], "", 0, math.nan, {}
        else:
            history, stop_reason = epochs_done.history, epochs_done.stop_reason
            best_epoch, best_loss = epochs_done.best_epoch, epochs_done.best_valid_recon_smoothed
            weights = epochs_done.best_weights
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(self.out_dir / "metrics.csv", history)
        write_text(self.out_dir / "hparams.yaml", self.hparams.to_yaml())
        model_path = self.out_dir / "model.ckpt"
        saved = SavedModel(
            state_dict=weights,
            hparams=self.hparams,
            sessions=[s.dims for s in self.sessions],
            data=[{"file": str(s.path), **s.attrs} for s in self.sessions],
            epochs=len(history),
            stop_reason=stop_reason,
            best_epoch=best_epoch,
            best_valid_recon_smoothed=best_loss,
            diverged=diverged,
        )
        write_model(model_path, saved)
        write_run_record(
            self.checkpoint_dir / RUN_RECORD,
            RunRecord(
                self.identity.to_dict(),
                self.hparams.max_epochs,
                delivered=True,
                epochs=len(history),
                diverged=diverged,
            ),
        )
        if diverged is not None:
            log.warning(
                "wrote %s of a run that diverged at epoch %d: %s",
                model_path,
                diverged.epoch,
                f"the weights of epoch {best_epoch}, its best" if best_epoch else "no weights",
            )
        else:
            log.info(
                "wrote %s after %d epochs: the weights of epoch %d, the lowest smoothed valid "
                "recon (%.6g)",
                model_path,
                len(history),
                best_epoch,
                best_loss,
            )
        return model_path


def _check_missing_targets(sessions, hparams: HParams) -> None:
    stacks = (hparams.train_augmentations, hparams.infer_augmentations)
    handled = all(any(spec.name == "selective_backprop" for spec in stack) for stack in stacks)
    for session in sessions:
        if not handled and session.has_missing_targets():
            raise ValueError(
                f"{session.path}: recon_data has NaN (unobserved) targets; add "
                "selective_backprop to both train_augmentations and infer_augmentations so they "
                "are left out of the loss"
            )


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
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run (auto: CUDA when torch sees a GPU)",
    )
    parser.add_argument("--max-epochs", type=int, help="override max_epochs of the config")
    from lfads.model.loops import RNN_IMPLS

    parser.add_argument(
        "--rnn-impl", choices=list(RNN_IMPLS), default="fast", help="how the recurrent loops run"
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0: trained; 2: bad input; 3: the run diverged (its outputs say so)."""
    from lfads.formats.checkpoints import read_model
    from lfads.infra.logs import configure

    configure()
    try:
        hparams = HParams.from_yaml(args.config) if args.config else HParams()
        model_path = train_model(
            args.data,
            hparams,
            args.out,
            args.checkpoint_dir,
            args.device,
            args.max_epochs,
            rnn_impl=args.rnn_impl,
        )
    except ValueError as error:
        log.error("%s", error)
        return 2
    return 3 if read_model(model_path).diverged else 0
