"""The two checkpoint files: the final model (`model.ckpt`) and the training state (`last.ckpt`).

Both hold only tensors, numbers, strings, lists and dicts, so they load with
`torch.load(weights_only=True)`; layouts in lfads/README.md.

- `model.ckpt` is ours alone: `write_model` writes a `SavedModel`, `read_model` reads it back
  and `load_model` builds the LFADS module from it.
- `last.ckpt` is Lightning's checkpoint dict (weights, optimiser, loops), written and read by
  Lightning; what we add is the `TrainingState` under the key TRAINING_STATE
  (`add_training_state` when Lightning saves, `training_state` when it loads) and
  `read_training_checkpoint` reads that part of a file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from lfads.formats.version import FORMAT_VERSION_KEY, check_format_version
from lfads.infra.io import atomic_path
from lfads.model.hparams import HParams
from lfads.model.lfads import SessionDims

MODEL_FORMAT = "lfads-model"
MODEL_FORMAT_VERSION = 1
MODEL_REMEDY = (
    "Retrain it (rule `train`, or `python -m lfads train`) to write a current model.ckpt."
)

TRAINING_STATE = "lfads"  # our key in Lightning's checkpoint dict
TRAINING_FORMAT_VERSION = 1
TRAINING_REMEDY = (
    "It cannot be resumed by this code: delete it to start afresh, or use another checkpoint "
    "directory."
)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint file of ours as plain data (weights_only=True), on the CPU by default."""
    return torch.load(path, map_location=map_location, weights_only=True)


# -- model.ckpt ---------------------------------------------------------------------------
@dataclass
class SavedModel:
    """Everything in a model.ckpt besides its format and version."""

    state_dict: dict[str, torch.Tensor]  # of lfads.model.lfads.LFADS, on the CPU
    hparams: HParams
    sessions: list[SessionDims]  # per session, in training order
    data: list[dict[str, Any]]  # per session: "file" and the prepared file's SESSION_ATTRIBUTES
    epochs: int  # epochs trained
    stop_reason: str  # why training stopped early ("" when it ran max_epochs)


def write_model(path: str | Path, model: SavedModel) -> None:
    """Write a model.ckpt atomically."""
    checkpoint = {
        "format": MODEL_FORMAT,
        FORMAT_VERSION_KEY: MODEL_FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict.items()},
        "hparams": model.hparams.to_dict(),
        "sessions": [dims.to_dict() for dims in model.sessions],
        "data": [dict(entry) for entry in model.data],
        "epochs": model.epochs,
        "stop_reason": model.stop_reason,
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_model(path: str | Path) -> SavedModel:
    """The SavedModel of a model.ckpt; another file, or another format version, is an error."""
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path}: not an LFADS model file (no format {MODEL_FORMAT!r}); pass out_dir/model.ckpt"
        )
    check_format_version(
        path, checkpoint.get(FORMAT_VERSION_KEY), MODEL_FORMAT_VERSION, MODEL_REMEDY
    )
    return SavedModel(
        state_dict=checkpoint["state_dict"],
        hparams=HParams.from_dict(checkpoint["hparams"]),
        sessions=[SessionDims(**dims) for dims in checkpoint["sessions"]],
        data=checkpoint["data"],
        epochs=int(checkpoint["epochs"]),
        stop_reason=checkpoint["stop_reason"],
    )


def load_model(path: str | Path, device: str = "cpu", rnn_impl: str = "fast"):
    """(LFADS model in eval mode on `device`, its SavedModel) from a model.ckpt.

    rnn_impl: how the model's loops run (lfads.model.loops); it does not change the numbers.
    """
    from lfads.model.lfads import LFADS

    saved = read_model(path)
    model = LFADS(saved.hparams, saved.sessions, rnn_impl=rnn_impl)
    model.load_state_dict(saved.state_dict)
    return model.to(device).eval(), saved


# -- last.ckpt ----------------------------------------------------------------------------
@dataclass
class TrainingState:
    """What a resumed run needs beyond Lightning's weights, optimiser and loop counters."""

    hparams: dict[str, Any]  # HParams.to_dict() of the run
    sessions: list[dict[str, int]]  # SessionDims.to_dict() per session
    history: list[dict[str, float]]  # the metrics.csv rows of the epochs done
    valid_smoothed: float  # smoothed valid reconstruction loss
    best_smoothed: float  # best valid_smoothed since the ramps ended
    epochs_since_best: int
    stop_reason: str  # "" unless training had stopped by itself (early stopping, lr_stop)
    scheduler: dict[str, Any] | None  # ReduceLROnPlateau.state_dict(), None without a scheduler
    rng: dict[str, Any]  # torch, cuda, numpy and Python RNG states (lfads.training.module)


def add_training_state(checkpoint: dict[str, Any], state: TrainingState) -> None:
    """Put `state` into Lightning's checkpoint dict, with our format version."""
    checkpoint[TRAINING_STATE] = {
        FORMAT_VERSION_KEY: TRAINING_FORMAT_VERSION,
        **{f.name: getattr(state, f.name) for f in fields(TrainingState)},
    }


def training_state(checkpoint: dict[str, Any], path: str | Path) -> TrainingState:
    """The TrainingState of a loaded Lightning checkpoint dict (from `path`), version checked."""
    state = checkpoint.get(TRAINING_STATE)
    if not isinstance(state, dict):
        raise ValueError(
            f"{path}: no {TRAINING_STATE!r} training state; not a last.ckpt of `lfads train`. "
            + TRAINING_REMEDY
        )
    check_format_version(
        path, state.get(FORMAT_VERSION_KEY), TRAINING_FORMAT_VERSION, TRAINING_REMEDY
    )
    return TrainingState(**{f.name: state[f.name] for f in fields(TrainingState)})


def read_training_checkpoint(path: str | Path) -> TrainingState:
    """The TrainingState of a last.ckpt file."""
    return training_state(load_checkpoint_file(path), path)
