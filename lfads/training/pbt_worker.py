"""One PBT worker for one generation: start from its parent's end-of-generation state with the
plan's hyperparameters, train to the generation's last epoch, and write its result.

The decisions live in `lfads.search.pbt`; this module only trains. A worker of generation 0
trains afresh (`train_model`). A worker of a later generation starts from `start_state`, the
full training state (`last.ckpt`: weights, optimiser, epoch, ramps, random streams, best epoch)
that its parent saved at the end of the previous generation. The state is copied into the
worker's checkpoint folder as a state of this worker's run: its identity becomes the worker's
hyperparameters, and the optimiser's learning rate the planned `lr`. `train_model` then resumes
it like any interrupted run, so a worker job killed mid-generation resumes from its own last
epoch when Snakemake reruns it. A folder whose run was delivered already, or that holds a state
of other hyperparameters, is set aside and started again from the parent's state.

Outputs in `out_dir`: train_model's (model.ckpt, metrics.csv with the whole lineage's epochs,
hparams.yaml), `state.ckpt` (the end-of-generation state that the next generation copies) and
`result.json` (`lfads.search.pbt.WorkerResult`).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from lfads.formats.checkpoints import (
    TRAINING_STATE,
    RunRecord,
    load_checkpoint_file,
    read_model,
    read_run_record,
    read_training_checkpoint,
    write_run_record,
)
from lfads.formats.metrics import VALID_RECON_SMOOTHED
from lfads.infra.io import atomic_path
from lfads.model.hparams import HParams
from lfads.search.pbt import WorkerResult, write_result
from lfads.training.resume import LAST_CHECKPOINT, RUN_RECORD, RunIdentity, set_aside
from lfads.training.train import train_model

log = logging.getLogger("lfads.training.pbt_worker")

STATE = "state.ckpt"
RESULT = "result.json"


def train_worker(
    name: str,
    data_files: list[Path],
    hparams: HParams,
    searched: Mapping[str, float],
    start_state: Path | None,
    out_dir: Path,
    checkpoint_dir: Path,
    device: str = "auto",
    rnn_impl: str = "fast",
) -> WorkerResult:
    """Train worker `name` to hparams.max_epochs (the generation's end) and write its outputs.

    hparams: the run's full hyperparameters, the plan's `searched` values included;
    start_state: the parent's `state.ckpt`, or None in generation 0 (afresh).
    """
    data_files = [Path(path) for path in data_files]
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    if start_state is not None:
        identity = RunIdentity.of(hparams, data_files)
        if not _resumable(checkpoint_dir, identity):
            _start_from(Path(start_state), checkpoint_dir, hparams, identity)
    model_path = train_model(
        data_files, hparams, out_dir, checkpoint_dir, device=device, rnn_impl=rnn_impl
    )
    saved = read_model(model_path)
    last = checkpoint_dir / LAST_CHECKPOINT
    loss = math.nan
    with atomic_path(out_dir / STATE) as tmp:
        if last.exists():
            shutil.copyfile(last, tmp)
            history = read_training_checkpoint(last).history
            if saved.diverged is None and history:
                loss = float(history[-1][VALID_RECON_SMOOTHED])
        else:  # diverged in its first epoch: no state, and a diverged worker is never copied
            torch.save({"diverged": saved.diverged.reason if saved.diverged else "no state"}, tmp)
    result = WorkerResult(name, dict(searched), loss)
    write_result(out_dir / RESULT, result)
    log.info(
        "%s: smoothed valid recon %.6g after %d epochs%s",
        name,
        loss,
        saved.epochs,
        f" (diverged: {saved.diverged.reason})" if saved.diverged else "",
    )
    return result


def _resumable(checkpoint_dir: Path, identity: RunIdentity) -> bool:
    """True when the folder holds an undelivered state of this very run (a killed job's)."""
    record_path, last = checkpoint_dir / RUN_RECORD, checkpoint_dir / LAST_CHECKPOINT
    if not (record_path.exists() and last.exists()):
        return False
    try:
        record = read_run_record(record_path)
    except Exception:  # unreadable: train_model's plan_run sets it aside with the reason
        return False
    return not record.delivered and not identity.differences(record.identity)


def _start_from(
    start_state: Path, checkpoint_dir: Path, hparams: HParams, identity: RunIdentity
) -> None:
    """Copy the parent's state into `checkpoint_dir` as an interrupted state of this run."""
    if checkpoint_dir.exists() and any(checkpoint_dir.iterdir()):
        set_aside(checkpoint_dir, "it is not an interrupted state of this worker's generation")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint_file(start_state)
    if TRAINING_STATE not in checkpoint:
        raise ValueError(
            f"{start_state}: no training state (its worker diverged before saving one); the "
            "plan copies only workers that did not diverge: delete the plan and rerun"
        )
    state = checkpoint[TRAINING_STATE]
    state.update(identity=identity.to_dict(), hparams=hparams.to_dict(), stop_reason="")
    for optimizer in checkpoint.get("optimizer_states", []):
        for group in optimizer["param_groups"]:
            group["lr"] = hparams.lr
    with atomic_path(checkpoint_dir / LAST_CHECKPOINT) as tmp:
        torch.save(checkpoint, tmp)
    write_run_record(
        checkpoint_dir / RUN_RECORD,
        RunRecord(identity.to_dict(), hparams.max_epochs, delivered=False),
    )
    log.info(
        "starting from %s (epoch %d) with lr %.3g",
        start_state,
        len(state["history"]),
        hparams.lr,
    )
