"""Train one LFADS model (`python -m lfads train`, `train_model`), resuming from `last.ckpt`.

The driver: it reads the sessions, sets up the model, resumes or starts afresh, fits and writes
the outputs, each written atomically into `out_dir`: `model.ckpt` (the final model,
`lfads.formats.checkpoints`), `metrics.csv` (one row per epoch, `lfads.formats.metrics`) and
`hparams.yaml`. While training, `checkpoint_dir` holds `last.ckpt` (rewritten atomically after
every epoch) and `metrics.csv` so far. The jobs it calls: `lightning_trainer` (Lightning's
plumbing), `resume` (what a last.ckpt continues), `readins` (the PCR start of the readins).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from lfads.infra.io import write_text
from lfads.model.hparams import HParams

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

    A `last.ckpt` already in checkpoint_dir (default out_dir / "checkpoints") is resumed:
    same epoch, optimiser, scheduler, metric history and RNG states.
    Raises NonFiniteLossError when a loss term stops being finite (last.ckpt is kept).
    """
    import lightning as L

    from lfads.formats.checkpoints import SavedModel, write_model
    from lfads.formats.metrics import write_metrics_csv
    from lfads.training.datamodule import LFADSDataModule
    from lfads.training.lightning_trainer import fit
    from lfads.training.module import LFADSModule
    from lfads.training.readins import set_pcr_readins
    from lfads.training.resume import resume_point

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
    resume = resume_point(last, hparams)
    if resume is None:
        set_pcr_readins(module.model, data.sessions)
    elif (
        resume.stop_reason
    ):  # it had finished (early stopping, lr_stop): only outputs are rewritten
        log.info("%s had stopped (%s); writing its outputs", last, resume.stop_reason)
    else:
        log.info(
            "resumed from epoch %d (%s); continuing at epoch %d of %d",
            resume.epochs_done,
            last,
            resume.epochs_done + 1,
            hparams.max_epochs,
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
    fit(
        module,
        data,
        max_epochs=resume.max_epochs(hparams) if resume else hparams.max_epochs,
        device=device,
        gradient_clip=hparams.gradient_clip,
        out_dir=out_dir,
        last_checkpoint=last,
        metrics_csv=checkpoint_dir / "metrics.csv",
        resume_from=resume.checkpoint if resume else None,
    )

    if module.stop_reason:
        log.info("stopped: %s", module.stop_reason)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(out_dir / "metrics.csv", module.history)
    write_text(out_dir / "hparams.yaml", hparams.to_yaml())
    model_path = out_dir / "model.ckpt"
    saved = SavedModel(
        state_dict=module.model.state_dict(),
        hparams=module.config,
        sessions=module.model.sessions,
        data=[{"file": str(s.path), **s.attrs} for s in data.sessions],
        epochs=len(module.history),
        stop_reason=module.stop_reason,
    )
    write_model(model_path, saved)
    log.info("wrote %s after %d epochs", model_path, len(module.history))
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
