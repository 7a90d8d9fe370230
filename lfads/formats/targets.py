"""Evaluation targets: nlb_tools' own layout, plus our format_version (rule `targets`).

The file is what `nlb_tools.make_tensors.save_to_h5` writes of the target dict of
`make_eval_target_tensors`: one group per NLB dataset and bin width (`mc_maze_20`), read by
`nlb_tools.evaluation.evaluate` as it is. We add `format_version` as a root attribute, which
nlb_tools ignores. `write_targets_file` is the one writer, `read_targets` (and, before handing
the file to nlb_tools, `check_targets`) the readers.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from lfads.formats.version import FORMAT_VERSION_KEY, check_format_version, plain
from lfads.infra.io import atomic_path, open_hdf5

FORMAT_VERSION = 1
REMEDY = "Rewrite it with the rule that writes it (`targets`, or `python -m lfads targets`)."


@dataclass
class TargetsGroup:
    """The arrays we read from one group (nlb_tools' key names); None: absent or not asked for."""

    psth: np.ndarray | None = None  # (conditions, T, H) PSTHs of the eval trials, spikes per bin
    eval_cond_idx: np.ndarray | None = None  # (conditions,) object array of eval trial rows
    train_behavior: np.ndarray | None = None  # (N_train, T, n_behavior) of the NLB train trials
    eval_behavior: np.ndarray | None = None  # (N_eval, T, n_behavior)
    eval_spikes_heldout: np.ndarray | None = None  # (N_eval, T, n_heldout) spikes per bin
    # (N, n_decoders) bool: which trials each velocity decoder is fit and scored on (area2_bump:
    # active, passive); absent: one decoder for every trial
    train_decode_mask: np.ndarray | None = None
    eval_decode_mask: np.ndarray | None = None


TARGETS_KEYS = tuple(f.name for f in fields(TargetsGroup))


def write_targets_file(path: str | Path, targets: dict) -> Path:
    """Write nlb_tools' target dict {group: {key: array}} with its `save_to_h5`, atomically."""
    from nlb_tools.make_tensors import save_to_h5

    with atomic_path(path) as tmp:
        save_to_h5(targets, str(tmp))
        with h5py.File(tmp, "a") as handle:
            handle.attrs[FORMAT_VERSION_KEY] = FORMAT_VERSION
    return Path(path)


def check_targets(path: str | Path) -> None:
    """Raise FormatVersionError unless `path` is a targets file of FORMAT_VERSION."""
    with open_hdf5(path, REMEDY) as handle:
        _check_version(path, handle)


def read_targets(path: str | Path, group: str, keys: Collection[str] | None = None) -> TargetsGroup:
    """The arrays of `group` (e.g. "mc_maze_20"); keys: which (TARGETS_KEYS; None: all present)."""
    unknown = sorted(set(keys or ()) - set(TARGETS_KEYS))
    if unknown:
        raise ValueError(f"read_targets: unknown keys {unknown}; the keys are {list(TARGETS_KEYS)}")
    with open_hdf5(path, REMEDY) as handle:
        _check_version(path, handle)
        if group not in handle:
            raise ValueError(
                f"{path}: no group {group!r} (groups: {sorted(handle)}); pass the group of the "
                "dataset's layout and bin width"
            )
        found = handle[group]
        return TargetsGroup(
            **{
                key: found[key][()]
                for key in TARGETS_KEYS
                if key in found and (keys is None or key in keys)
            }
        )


def _check_version(path: str | Path, handle: h5py.File) -> None:
    check_format_version(path, plain(handle.attrs.get(FORMAT_VERSION_KEY)), FORMAT_VERSION, REMEDY)
