"""The checkpoint files: the model (`model.ckpt`), the training state (`last.ckpt`) and the run
record (`run.json`).

The two .ckpt files hold only tensors, numbers, strings, lists and dicts, so they load with
`torch.load(weights_only=True)`; layouts in lfads/README.md.

- `model.ckpt` is ours alone: `write_model` writes a `SavedModel`, `read_model` reads it back
  and `load_model` builds the LFADS module from it. It holds the weights of the run's best epoch
  (lowest smoothed validation reconstruction loss) and, for a run that diverged, its
  `Divergence`.
- `last.ckpt` is Lightning's checkpoint dict (weights, optimiser, loops), written and read by
  Lightning; what we add is the `TrainingState` under the key TRAINING_STATE
  (`add_training_state` when Lightning saves, `training_state` when it loads) and
  `read_training_checkpoint` reads that part of a file.
- `run.json` (`RunRecord`, `write_run_record`, `read_run_record`) says which pack of runs a
  checkpoint folder holds (its identity) and whether its outputs were delivered.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from lfads.formats.version import FORMAT_VERSION_KEY, check_format_version
from lfads.infra.io import atomic_path, write_json
from lfads.model.hparams import HParams
from lfads.model.lfads import SessionDims

MODEL_FORMAT = "lfads-model"
MODEL_FORMAT_VERSION = 1
MODEL_REMEDY = (
    "Retrain it (rule `train`, or `python -m lfads train`) to write a current model.ckpt."
)

TRAINING_STATE = "lfads"  # our key in Lightning's checkpoint dict
TRAINING_FORMAT_VERSION = 2  # 2: a pack of members
TRAINING_REMEDY = (
    "It cannot be resumed by this code: `train` sets its folder aside and starts afresh; delete it "
    "if you do not need it."
)

RUN_RECORD_FORMAT = "lfads-run"
RUN_RECORD_FORMAT_VERSION = 2  # 2: the identity of a pack
RUN_RECORD_REMEDY = "`train` sets its folder aside and starts afresh."


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint file of ours as plain data (weights_only=True), on the CPU by default. A file
    that torch cannot read (truncated, damaged, not a checkpoint) raises ValueError naming it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(
            f"{path}: torch cannot read it ({type(error).__name__}: {first_line}); the file is "
            "truncated or damaged"
        ) from None


@dataclass(frozen=True)
class Divergence:
    """Why a run stopped with a non-finite value, and in which epoch (from 1, as the log counts)."""

    reason: str  # the error: the loss term or parameter, split, epoch and what to try
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Divergence | None:
        return None if data is None else cls(str(data["reason"]), int(data["epoch"]))


# -- model.ckpt ---------------------------------------------------------------------------
@dataclass
class SavedModel:
    """Everything in a model.ckpt besides its format and version."""

    # one member's weights (LFADS.member_state_dict: no member axis), on the CPU, at best_epoch;
    # empty when no epoch finished
    state_dict: dict[str, torch.Tensor]
    hparams: HParams
    sessions: list[SessionDims]  # per session, in training order
    data: list[dict[str, Any]]  # per session: "file" and the prepared file's SESSION_ATTRIBUTES
    epochs: int  # epochs trained (finished)
    stop_reason: str  # why training stopped early ("" when it ran max_epochs)
    best_epoch: int | None = None  # epoch (from 1) of the weights; 0: none; None: `epochs`
    best_valid_recon_smoothed: float = math.nan  # its smoothed valid reconstruction loss
    diverged: Divergence | None = None  # set when training met a non-finite value

    def __post_init__(self) -> None:
        if self.best_epoch is None:
            self.best_epoch = self.epochs


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
        "best_epoch": model.best_epoch,
        "best_valid_recon_smoothed": model.best_valid_recon_smoothed,
        "diverged": model.diverged.to_dict() if model.diverged else None,
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_model(path: str | Path) -> SavedModel:
    """The SavedModel of a model.ckpt; another file, or another format version, is an error.

    A file written before models kept their best epoch holds its final weights (best_epoch is
    then `epochs`).
    """
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
        best_epoch=checkpoint.get("best_epoch"),
        best_valid_recon_smoothed=float(checkpoint.get("best_valid_recon_smoothed", math.nan)),
        diverged=Divergence.from_dict(checkpoint.get("diverged")),
    )


def load_model(path: str | Path, device: str = "cpu", rnn_impl: str = "fast"):
    """(LFADS model in eval mode on `device`, its SavedModel) from a model.ckpt.

    rnn_impl: how the model's loops run (lfads.model.loops); it does not change the numbers.
    A model of a run that diverged before any epoch finished has no weights: a ValueError.
    """
    model, (saved,) = load_pack([path], device, rnn_impl)
    return model, saved


def load_pack(paths: list[str | Path], device: str = "cpu", rnn_impl: str = "fast"):
    """(one LFADS pack in eval mode on `device`, each file's SavedModel) from several model.ckpt
    files whose runs can share a pack (the same architecture and sessions): member m holds
    paths[m]'s weights, so a pack samples all of them in one pass."""
    from lfads.model.lfads import LFADS

    saved = [read_model(path) for path in paths]
    for path, model in zip(paths, saved):
        if not model.state_dict:
            reason = model.diverged.reason if model.diverged else "none saved"
            raise ValueError(f"{path}: no weights: {reason}")
    if any(model.sessions != saved[0].sessions for model in saved):
        raise ValueError(f"{', '.join(map(str, paths))}: the models were trained on other data")
    try:
        pack = LFADS([model.hparams for model in saved], saved[0].sessions, rnn_impl=rnn_impl)
    except ValueError as error:
        raise ValueError(f"{', '.join(map(str, paths))}: cannot share a pack: {error}") from None
    for member, (path, model) in enumerate(zip(paths, saved)):
        try:
            pack.load_member_state_dict(model.state_dict, member)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return pack.to(device).eval(), saved


# -- last.ckpt ----------------------------------------------------------------------------
@dataclass
class MemberState:
    """One member's training bookkeeping, beyond the pack's weights and optimiser."""

    name: str  # the run's name (its outputs' folder)
    hparams: dict[str, Any]  # HParams.to_dict() of the member
    history: list[dict[str, float]]  # the metrics.csv rows of the epochs done
    valid_smoothed: float = math.nan  # smoothed valid reconstruction loss
    best_smoothed: float = math.inf  # best valid_smoothed since the ramps ended (early stopping)
    epochs_since_best: int = 0
    stop_reason: str = ""  # "" unless the member stopped by itself (early stopping, lr_stop)
    schedule: dict[str, Any] | None = None  # its PlateauSchedule, None without a scheduler
    best_epoch: int = 0  # epoch (from 1) of the lowest valid_smoothed so far; 0: none yet
    best_valid_recon_smoothed: float = math.inf
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # its weights there
    diverged: dict[str, Any] | None = None  # Divergence.to_dict() once it met a non-finite value

    @property
    def finished(self) -> bool:
        """Stopped by itself or diverged: it trains no further."""
        return bool(self.stop_reason) or self.diverged is not None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(MemberState)}


@dataclass
class TrainingState:
    """What a resumed pack needs beyond Lightning's weights, optimiser and loop counters."""

    sessions: list[dict[str, int]]  # SessionDims.to_dict() per session
    members: list[MemberState]  # in slot order
    rng: dict[str, Any]  # the members' generator states (lfads.model.members.MemberRandom)
    # what makes the pack's result (lfads.training.resume.RunIdentity.to_dict())
    identity: dict[str, Any] = field(default_factory=dict)
    # a PBT search's record so far (lfads.search.pbt: plans and results), None for other packs
    search: dict[str, Any] | None = None


def add_training_state(checkpoint: dict[str, Any], state: TrainingState) -> None:
    """Put `state` into Lightning's checkpoint dict, with our format version."""
    checkpoint[TRAINING_STATE] = {
        FORMAT_VERSION_KEY: TRAINING_FORMAT_VERSION,
        "sessions": state.sessions,
        "members": [member.to_dict() for member in state.members],
        "rng": state.rng,
        "identity": state.identity,
        "search": state.search,
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
    return TrainingState(
        sessions=state["sessions"],
        members=[MemberState(**member) for member in state["members"]],
        rng=state["rng"],
        identity=state.get("identity", {}),
        search=state.get("search"),
    )


def read_training_checkpoint(path: str | Path) -> TrainingState:
    """The TrainingState of a last.ckpt file."""
    return training_state(load_checkpoint_file(path), path)


# -- run.json -----------------------------------------------------------------------------
@dataclass
class RunRecord:
    """The pack a checkpoint folder holds, and how far it got.

    Written when training starts (delivered false) and again once every member's model.ckpt,
    metrics.csv and hparams.yaml are written (delivered true): a finished state that is not
    delivered was killed before its outputs were written.
    """

    identity: dict[str, Any]  # lfads.training.resume.RunIdentity.to_dict()
    max_epochs: int  # the epoch budget it was trained for
    delivered: bool  # its outputs were written
    epochs: int = 0  # epochs finished when delivered


def write_run_record(path: str | Path, record: RunRecord) -> None:
    """Write a run.json atomically."""
    write_json(
        path,
        {
            "format": RUN_RECORD_FORMAT,
            FORMAT_VERSION_KEY: RUN_RECORD_FORMAT_VERSION,
            **asdict(record),
        },
    )


def read_run_record(path: str | Path) -> RunRecord:
    """The RunRecord of a run.json; another file or format version is a ValueError."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != RUN_RECORD_FORMAT:
        raise ValueError(
            f"{path}: not a run record of `lfads train` (no format {RUN_RECORD_FORMAT!r})"
        )
    check_format_version(
        path, data.get(FORMAT_VERSION_KEY), RUN_RECORD_FORMAT_VERSION, RUN_RECORD_REMEDY
    )
    return RunRecord(
        identity=data["identity"],
        max_epochs=int(data["max_epochs"]),
        delivered=bool(data["delivered"]),
        epochs=int(data["epochs"]),
    )
