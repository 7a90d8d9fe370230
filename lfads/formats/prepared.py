"""Prepared tensors: one dataset, phase and bin width as the model's HDF5 input (rule `prepare`).

Layout (lfads/README.md, "Prepared tensors"): root attributes (`PreparedAttributes`, plus
`format_version`), groups `train`, `valid` and `eval` of arrays (`PreparedSplit`: each field name
is its key) and a group `unit_ids` (`heldin`, `heldout`). `write_prepared` is the one writer
(`lfads.data.prepare`, `lfads.data.toydata`), `read_prepared` the one reader.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lfads.formats.version import FORMAT_VERSION_KEY, check_format_version, plain
from lfads.infra.io import atomic_path, open_hdf5

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "eval")
MODEL_SPLITS = ("train", "valid")  # the splits training needs, both with encod_data and recon_data
UNIT_IDS = "unit_ids"  # group of the NWB unit ids: `heldin`, `heldout`
REMEDY = (
    "Rewrite it with the rule that writes it, `prepare` (delete the file and rerun the workflow, "
    "or `snakemake --forcerun prepare`), or with `python -m lfads prepare`."
)


@dataclass(frozen=True)
class PreparedAttributes:
    """The root attributes (besides format_version)."""

    dataset: str
    nlb_layout: str
    phase: str  # "val" or "test"
    bin_width_ms: int
    n_heldin: int
    n_heldout: int
    n_obs_bins: int  # T
    n_fwd_bins: int  # F
    valid_fraction: float
    split_seed: int
    has_truth: bool


# Attributes that describe a session's data: model checkpoints and inference files copy them.
SESSION_ATTRIBUTES = (
    "dataset",
    "nlb_layout",
    "phase",
    "bin_width_ms",
    "n_heldin",
    "n_heldout",
    "n_obs_bins",
    "n_fwd_bins",
    "has_truth",
)


@dataclass
class PreparedSplit:
    """The arrays of one split (N trials); H = n_heldin + n_heldout.

    Each field name is the array's key in the split's group. None: absent from the file (or not
    asked for by `read_prepared`). The writer stores floats as float32 and integers as int64.
    """

    encod_data: np.ndarray | None = None  # (N, T, n_heldin) held-in spikes per bin, NaN as 0
    recon_data: np.ndarray | None = None  # (N, T + F, H) targets, NaN where unobserved; not eval
    nlb_index: np.ndarray | None = None  # (N,) row of each trial in nlb_tools' order
    trial_id: np.ndarray | None = None  # (N,) the trial's id in the source NWB file's trials table
    ext_input: np.ndarray | None = None  # (N, T or T + F, E) external inputs (optional)
    behavior: np.ndarray | None = None  # (N, T, n_behavior) behaviour at the layout's lag
    condition: np.ndarray | None = None  # (N,) PSTH condition index, -1 none
    truth: np.ndarray | None = None  # (N, T + F, H) true rates in spikes per bin

    def arrays(self) -> dict[str, np.ndarray]:
        """key -> array of the arrays present."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


SPLIT_KEYS = tuple(f.name for f in fields(PreparedSplit))
_INTEGER_KEYS = ("nlb_index", "trial_id", "condition")


@dataclass
class PreparedFile:
    """A prepared file read by `read_prepared`: its attributes, splits present and unit ids."""

    path: Path
    attributes: PreparedAttributes
    splits: dict[str, PreparedSplit]  # the splits present, in SPLITS order
    unit_ids: dict[str, np.ndarray]  # "heldin", "heldout" -> NWB unit ids (int64)
    ext_input_dim: int  # E, the width of the splits' external inputs (0 without any)

    def session_attributes(self) -> dict[str, Any]:
        """The SESSION_ATTRIBUTES as plain Python values (safe in a weights_only checkpoint)."""
        return {name: getattr(self.attributes, name) for name in SESSION_ATTRIBUTES}


def write_prepared(
    path: str | Path,
    attributes: PreparedAttributes,
    splits: dict[str, PreparedSplit],
    unit_ids: dict[str, np.ndarray],
) -> Path:
    """Write a prepared file atomically: arrays of 2 or more dimensions gzip (level 1) + shuffle.

    splits: "train" and "valid" (with encod_data, recon_data, nlb_index) and optionally "eval"
    (encod_data, nlb_index); unit_ids: "heldin", "heldout" -> NWB unit ids.
    """
    path = Path(path)
    for split, arrays in splits.items():
        if split not in SPLITS:
            raise ValueError(f"{path}: split {split!r} is not one of {list(SPLITS)}")
        required = ("encod_data", "nlb_index", *(("recon_data",) if split in MODEL_SPLITS else ()))
        for key in required:
            if getattr(arrays, key) is None:
                raise ValueError(f"{path}: split {split!r} needs {key}")
    for split in MODEL_SPLITS:
        if split not in splits:
            raise ValueError(f"{path}: a prepared file needs the split {split!r}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs.update(**asdict(attributes), **{FORMAT_VERSION_KEY: FORMAT_VERSION})
        for split, arrays in splits.items():
            group = handle.create_group(split)
            for key, value in arrays.arrays().items():
                _write(group, key, value.astype(np.int64 if key in _INTEGER_KEYS else np.float32))
        for name, ids in unit_ids.items():
            _write(handle.require_group(UNIT_IDS), name, np.asarray(ids, dtype=np.int64))
    return path


def _write(group: h5py.Group, name: str, data: np.ndarray) -> None:
    options = dict(compression="gzip", compression_opts=1, shuffle=True) if data.ndim >= 2 else {}
    group.create_dataset(name, data=data, **options)


def read_prepared(
    path: str | Path, keys: Collection[str] | None = None, unit_ids: bool = False
) -> PreparedFile:
    """Read a prepared file, checking its version, attributes and the shapes of its arrays.

    keys: the split arrays to read (SPLIT_KEYS; None: all of them); unit_ids: read those too.
    encod_data, recon_data and truth come as float32, nlb_index and condition as int64.
    Errors name the file and the key.
    """
    path = Path(path)
    unknown = sorted(set(keys or ()) - set(SPLIT_KEYS))
    if unknown:
        raise ValueError(f"read_prepared: unknown keys {unknown}; the keys are {list(SPLIT_KEYS)}")
    with open_hdf5(path, REMEDY) as file:
        check_format_version(
            path, plain(file.attrs.get(FORMAT_VERSION_KEY)), FORMAT_VERSION, REMEDY
        )
        attributes = _read_attributes(path, file.attrs)
        splits = {}
        for split in SPLITS:
            if split not in file or "encod_data" not in file[split]:
                continue
            group = file[split]
            _check_shapes(path, split, group, attributes)
            splits[split] = PreparedSplit(
                **{
                    key: _read(group, key)
                    for key in SPLIT_KEYS
                    if key in group and (keys is None or key in keys)
                }
            )
        widths = {file[s]["ext_input"].shape[2] for s in splits if "ext_input" in file[s]}
        if len(widths) > 1:
            raise ValueError(f"{path}: ext_input widths differ between splits: {sorted(widths)}")
        ids = {}
        if unit_ids and UNIT_IDS in file:
            ids = {name: file[UNIT_IDS][name][()] for name in file[UNIT_IDS]}
    for split in MODEL_SPLITS:
        if split not in splits:
            raise ValueError(f"{path}: group {split!r} with encod_data and recon_data is missing")
    return PreparedFile(path, attributes, splits, ids, widths.pop() if widths else 0)


def _read(group: h5py.Group, key: str) -> np.ndarray:
    if key in ("encod_data", "recon_data", "truth"):
        return np.asarray(group[key][()], dtype=np.float32)
    if key in _INTEGER_KEYS:
        return np.asarray(group[key][()], dtype=np.int64)
    return np.asarray(group[key][()])


def _read_attributes(path: Path, attrs: h5py.AttributeManager) -> PreparedAttributes:
    values = {}
    for f in fields(PreparedAttributes):
        if f.name not in attrs:
            raise ValueError(
                f"{path}: root attribute {f.name!r} is missing; is this a prepared file "
                "(lfads/README.md)? " + REMEDY
            )
        values[f.name] = plain(attrs[f.name])
    return PreparedAttributes(**values)


def _check_shapes(path: Path, split: str, group: h5py.Group, attributes: PreparedAttributes):
    n_obs, n_fwd = attributes.n_obs_bins, attributes.n_fwd_bins
    n_heldin, n_neurons = attributes.n_heldin, attributes.n_heldin + attributes.n_heldout
    shape = group["encod_data"].shape
    if shape[1:] != (n_obs, n_heldin):
        raise ValueError(
            f"{path}: {split}/encod_data has shape {shape}; "
            f"expected (N, {n_obs}, {n_heldin}) from the file's attributes"
        )
    n = shape[0]
    if "recon_data" in group and group["recon_data"].shape != (n, n_obs + n_fwd, n_neurons):
        raise ValueError(
            f"{path}: {split}/recon_data has shape {group['recon_data'].shape}; "
            f"expected ({n}, {n_obs + n_fwd}, {n_neurons})"
        )
    if split in MODEL_SPLITS and "recon_data" not in group:
        raise ValueError(f"{path}: {split}/recon_data is missing; " + REMEDY)
