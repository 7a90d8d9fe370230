"""Whether a checkpoint folder's pack is this pack, and what to do with it: resume, only write
its outputs, or set it aside and train afresh.

A pack's identity is everything that changes its members' results besides the epoch budget:
each member's hyperparameters (HParams.to_dict() without max_epochs), in slot order, and the
content (SHA-256) of each prepared file, in session order. The folder's `last.ckpt`
(TrainingState.identity) and `run.json` (RunRecord) both carry it. What `plan_run` decides, for
a folder that holds:

- nothing: train afresh;
- another identity, or an unreadable or older-format file: set it aside, train afresh;
- an interrupted pack (outputs not delivered) with fewer epochs than max_epochs: resume;
- a finished pack (every member stopped by itself or diverged, or max_epochs reached): write its
  outputs, no training; delivered or not, so a touched input, a forced rerun or deleted outputs
  cost no training;
- a pack with fewer epochs than a raised max_epochs, some member not finished: resume
  (continues a delivered pack);
- an interrupted pack with more epochs than max_epochs: set it aside, train afresh.

To train a finished pack again from scratch, delete its checkpoint folder. Setting aside renames
the folder to `<folder>.superseded-<UTC time>`; nothing is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfads.formats.checkpoints import (
    RunRecord,
    TrainingState,
    read_run_record,
    read_training_checkpoint,
)
from lfads.model.hparams import HParams
from lfads.training.set_aside import set_aside

log = logging.getLogger("lfads.training.resume")

LAST_CHECKPOINT = "last.ckpt"
RUN_RECORD = "run.json"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(2**22):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What a pack's results depend on, besides its epoch budget (max_epochs)."""

    members: tuple[dict[str, Any], ...]  # per member: HParams.to_dict() without max_epochs
    data: tuple[dict[str, str], ...]  # per session: "file" (for messages) and "sha256"
    # a PBT search's settings (its members' values change as it goes; these do not)
    search: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        members: HParams | list[HParams],
        data_files: list[Path],
        search: dict[str, Any] | None = None,
    ) -> RunIdentity:
        """The identity of training `members` on `data_files`; hashes each file (logs the time)."""
        members = [members] if isinstance(members, HParams) else members
        data = []
        for path in data_files:
            start = time.perf_counter()
            data.append({"file": str(path), "sha256": file_sha256(path)})
            log.info(
                "sha256 of %s (%.1f MB) in %.2f s",
                path,
                path.stat().st_size / 1e6,
                time.perf_counter() - start,
            )
        settings = tuple(
            {k: v for k, v in member.to_dict().items() if k != "max_epochs"} for member in members
        )
        # as plain JSON data (lists, not tuples), as run.json and last.ckpt give it back
        return cls(settings, tuple(data), json.loads(json.dumps(search)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": [dict(member) for member in self.members],
            "data": [dict(entry) for entry in self.data],
            "search": self.search,
        }

    def differences(self, recorded: dict[str, Any] | None) -> list[str]:
        """What differs from a recorded identity (`to_dict()` form), as phrases that complete "it
        was trained with ..."; [] when the same."""
        if not recorded or "members" not in recorded:
            return ["no recorded run identity (written by an older version)"]
        found = []
        old_members = recorded["members"]
        if len(old_members) != len(self.members):
            found.append(f"{len(old_members)} member(s), not {len(self.members)}")
        for slot, (old, new) in enumerate(zip(old_members, self.members)):
            keys = sorted(k for k in new.keys() | old.keys() if k != "max_epochs")
            differing = [k for k in keys if new.get(k) != old.get(k)]
            if differing:
                where = f" in member {slot}" if len(self.members) > 1 else ""
                found.append(f"other hyperparameters {differing}{where}")
        if recorded.get("search") != self.search:
            found.append("other search settings (search.pbt)")
        old_data = recorded.get("data", [])
        if len(old_data) != len(self.data):
            found.append(f"{len(old_data)} prepared file(s), not {len(self.data)}")
        for session, (old, new) in enumerate(zip(old_data, self.data)):
            if old.get("sha256") != new["sha256"]:
                was, now = str(old.get("sha256"))[:12], new["sha256"][:12]
                found.append(
                    f"another prepared file for session {session} ({old.get('file')}, sha256 "
                    f"{was}; now {new['file']}, sha256 {now})"
                )
        return found


@dataclass(frozen=True)
class RunPlan:
    """What `train_pack` does with a checkpoint folder."""

    action: str  # "afresh", "resume" or "deliver" (write the outputs of the state, no training)
    state: TrainingState | None = None  # the folder's last.ckpt ("resume", "deliver")
    record: RunRecord | None = None  # the folder's run.json, if any
    checkpoint: Path | None = None  # the last.ckpt ("resume", "deliver")

    @property
    def epochs_done(self) -> int:
        return max((len(m.history) for m in self.state.members), default=0) if self.state else 0


def plan_run(checkpoint_dir: Path, identity: RunIdentity, max_epochs: int) -> RunPlan:
    """Decide what to do with `checkpoint_dir` (module docstring); a folder that is set aside is
    renamed here, and the plan is then "afresh"."""
    last, record_path = checkpoint_dir / LAST_CHECKPOINT, checkpoint_dir / RUN_RECORD
    found = {}
    for path, read in ((record_path, read_run_record), (last, read_training_checkpoint)):
        if not path.exists():
            continue
        try:
            found[path] = read(path)
        except Exception as error:  # truncated, unreadable or of another format version
            first_sentence = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
            reason = f"{path.name} is unreadable ({type(error).__name__}: {first_sentence})"
            set_aside(checkpoint_dir, reason, warn=True)
            return RunPlan("afresh")
    record, state = found.get(record_path), found.get(last)

    differences: list[str] = []
    for found in (saved.identity for saved in (record, state) if saved is not None):
        differences += [d for d in identity.differences(found) if d not in differences]
    if differences:
        set_aside(checkpoint_dir, f"it was trained with {'; '.join(differences)}")
        return RunPlan("afresh")
    if state is None:
        return RunPlan("afresh", record=record)
    plan = RunPlan("resume", state, record, last)
    if plan.epochs_done > max_epochs:
        set_aside(
            checkpoint_dir, f"it has {plan.epochs_done} epochs, more than max_epochs {max_epochs}"
        )
        return RunPlan("afresh")
    if plan.epochs_done == max_epochs or all(member.finished for member in state.members):
        return RunPlan("deliver", state, record, last)
    return plan
