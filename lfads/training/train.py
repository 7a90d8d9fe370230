"""Train LFADS models: a pack of members in one process (`train_pack`), or one model, a pack of
one (`train_model`, `python -m lfads train`): afresh, resumed from `last.ckpt`, or only writing
the outputs of a finished state.

The driver: it reads the sessions, decides what the checkpoint folder's state is to this pack
(`resume.plan_run`: a state of another pack is set aside, never resumed), fits, and writes each
member's outputs, each atomically into its `out_dir`: `model.ckpt` (its best epoch's model,
`lfads.formats.checkpoints`: the file a single run writes), `metrics.csv` (one row per epoch,
`lfads.formats.metrics`) and `hparams.yaml`. While training, `checkpoint_dir` holds `last.ckpt`
(the whole pack, rewritten atomically after every epoch), `<member>.metrics.csv` so far and
`run.json` (the pack's identity; `delivered` once the outputs are written). A member that meets a
non-finite value has diverged: it is frozen, the others go on, and its outputs are written all
the same with the reason in model.ckpt. The jobs it calls: `lightning_trainer` (Lightning's
plumbing), `resume` (what a checkpoint folder holds), `readins` (the PCR start of the readins).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lfads.formats.checkpoints import (
    Divergence,
    MemberState,
    RunRecord,
    SavedModel,
    write_model,
    write_run_record,
)
from lfads.formats.metrics import write_metrics_csv
from lfads.infra.io import write_text
from lfads.model.hparams import HParams
from lfads.model.lfads import LFADS
from lfads.training.resume import LAST_CHECKPOINT, RUN_RECORD, RunIdentity, RunPlan, plan_run

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


@dataclass(frozen=True)
class Member:
    """One run of a pack: its name (the run's folder), hyperparameters and output folder."""

    name: str
    hparams: HParams
    out_dir: Path


def train_model(
    data_files: list[Path],
    hparams: HParams,
    out_dir: Path,
    checkpoint_dir: Path | None = None,
    device: str = "auto",
    max_epochs: int | None = None,
    rnn_impl: str = "fast",
) -> Path:
    """Train one model (a pack of one) on the prepared files (session i = data_files[i]);
    returns out_dir / "model.ckpt". checkpoint_dir: default out_dir / "checkpoints"."""
    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoints"
    if max_epochs is not None:
        hparams = hparams.replace(max_epochs=max_epochs)
    member = Member(out_dir.name or "run", hparams, out_dir)
    return train_pack([member], data_files, checkpoint_dir, device, rnn_impl)[0]


def train_pack(
    members: list[Member],
    data_files: list[Path],
    checkpoint_dir: Path,
    device: str = "auto",
    rnn_impl: str = "fast",
) -> list[Path]:
    """Train the members together on the prepared files (session i = data_files[i]); returns
    each member's out_dir / "model.ckpt".

    The members must share a pack (`lfads.model.hparams.pack_settings`: every key but
    MEMBER_KEYS). checkpoint_dir holds the pack's state: an interrupted pack of the same
    identity (each member's hyperparameters, the prepared files' content) resumes exactly; a
    finished one only writes its outputs; a state of another pack is set aside
    (`resume.plan_run`). A member that meets a NaN or infinite value is not an exception: its
    outputs record the divergence (`read_model(path).diverged`) and keep its best epoch before
    it, if one finished.
    """
    data_files = [Path(p) for p in data_files]
    checkpoint_dir = Path(checkpoint_dir)
    hparams = [member.hparams for member in members]
    device = resolve_device(device)
    first = hparams[0]
    data = pack_data(data_files, hparams)
    identity = RunIdentity.of(hparams, data_files)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_run(checkpoint_dir, identity, first.max_epochs)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)  # (again: a folder set aside was renamed)
    module = fit_pack(members, data, identity, plan, checkpoint_dir, device, rnn_impl)
    return deliver(members, module.states, data.sessions, checkpoint_dir, identity)


def fit_pack(
    members: list[Member],
    data,
    identity: RunIdentity,
    plan: RunPlan,
    checkpoint_dir: Path,
    device: str,
    rnn_impl: str,
    search: dict | None = None,
) -> LFADSModule:
    """Train the pack as `plan` says (afresh, resume, or nothing for "deliver") to the members'
    max_epochs; returns the module, whose `states` hold every member's bookkeeping and best
    weights. search: a PBT record to keep in the pack's state (`lfads.search.pbt`)."""
    from lfads.training.lightning_trainer import fit
    from lfads.training.module import LFADSModule
    from lfads.training.readins import set_pcr_readins

    hparams = [member.hparams for member in members]
    names = [member.name for member in members]
    model = LFADS(hparams, [s.dims for s in data.sessions], rnn_impl=rnn_impl)
    module = LFADSModule(model, names, identity=identity.to_dict())
    module.search = search
    max_epochs = hparams[0].max_epochs
    if plan.action == "deliver":
        module.states = plan.state.members
        for state, name in zip(module.states, names):
            state.name = name
        _log_delivery(checkpoint_dir, plan, max_epochs)
        return module
    if plan.action == "afresh":
        set_pcr_readins(module.model, data.sessions)
    else:
        log.info(
            "resumed from epoch %d (%s); continuing at epoch %d of %d",
            plan.epochs_done,
            plan.checkpoint,
            plan.epochs_done + 1,
            max_epochs,
        )
    write_run_record(
        checkpoint_dir / RUN_RECORD, RunRecord(identity.to_dict(), max_epochs, delivered=False)
    )
    log.info(
        "training %d member(s) of %d parameters each on %s: %s",
        len(members),
        sum(p[0].numel() for p in module.model.parameters()),
        device,
        ", ".join(
            f"{s.path.name} ({s.n_trials('train')} train, {s.n_trials('valid')} valid trials)"
            for s in data.sessions
        ),
    )
    fit(
        module,
        data,
        max_epochs=max_epochs,
        device=device,
        out_dirs=[member.out_dir for member in members],
        last_checkpoint=checkpoint_dir / LAST_CHECKPOINT,
        metrics_csvs=[checkpoint_dir / f"{name}.metrics.csv" for name in names],
        resume_from=plan.checkpoint if plan.action == "resume" else None,
    )
    for state in module.states:
        if state.stop_reason:
            log.info("%s stopped: %s", state.name, state.stop_reason)
    return module


def _log_delivery(checkpoint_dir: Path, plan: RunPlan, max_epochs: int) -> None:
    delivered = plan.record is not None and plan.record.delivered
    log.info(
        "%s: this pack has finished (%d of %d epochs%s); writing its outputs without training%s",
        checkpoint_dir,
        plan.epochs_done,
        max_epochs,
        ", every member stopped or diverged" if plan.epochs_done < max_epochs else "",
        " again (its identity is unchanged; delete the folder to train afresh)"
        if delivered
        else "",
    )


def deliver(
    members: list[Member],
    states: list[MemberState],
    sessions,
    checkpoint_dir: Path,
    identity: RunIdentity,
) -> list[Path]:
    """Write each member's outputs (model.ckpt, metrics.csv, hparams.yaml) from its state, then
    mark the folder's run.json delivered; returns the model.ckpt paths."""
    paths = []
    for member, state in zip(members, states):
        paths.append(_write_member(member, state, sessions))
    epochs = max((len(state.history) for state in states), default=0)
    write_run_record(
        checkpoint_dir / RUN_RECORD,
        RunRecord(identity.to_dict(), members[0].hparams.max_epochs, True, epochs),
    )
    return paths


def _write_member(member: Member, state: MemberState, sessions) -> Path:
    diverged = Divergence.from_dict(state.diverged)
    best_loss = state.best_valid_recon_smoothed if state.best_epoch else math.nan
    member.out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(member.out_dir / "metrics.csv", state.history)
    write_text(member.out_dir / "hparams.yaml", member.hparams.to_yaml())
    model_path = member.out_dir / "model.ckpt"
    saved = SavedModel(
        state_dict=state.best_weights,
        hparams=member.hparams,
        sessions=[s.dims for s in sessions],
        data=[{"file": str(s.path), **s.attrs} for s in sessions],
        epochs=len(state.history),
        stop_reason=state.stop_reason,
        best_epoch=state.best_epoch,
        best_valid_recon_smoothed=best_loss,
        diverged=diverged,
    )
    write_model(model_path, saved)
    if diverged is not None:
        log.warning(
            "wrote %s of a run that diverged at epoch %d: %s",
            model_path,
            diverged.epoch,
            f"the weights of epoch {state.best_epoch}, its best"
            if state.best_epoch
            else "no weights",
        )
    else:
        log.info(
            "wrote %s after %d epochs: the weights of epoch %d, the lowest smoothed valid "
            "recon (%.6g)",
            model_path,
            len(state.history),
            state.best_epoch,
            best_loss,
        )
    return model_path


def pack_data(data_files: list[Path], hparams: list[HParams]):
    """The pack's LFADSDataModule, set up (each member's batch order from its seed), after
    checking that the data hold the targets the members' reconstruction needs."""
    from lfads.training.module import LFADSDataModule

    first = hparams[0]
    data = LFADSDataModule(data_files, first.batch_size, [hp.seed for hp in hparams], first.sv_rate)
    data.setup()
    check_missing_targets(data.sessions, first)
    return data


def check_missing_targets(sessions, hparams: HParams) -> None:
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
    return 3 if read_model(model_path).diverged else 0
