"""Inference output: the posterior averages of one session's trials (rule `infer`).

Layout (lfads/README.md, "Inference file"): root attributes (the prepared file's
SESSION_ATTRIBUTES, `InferredAttributes`, `format_version`, `units`) and groups `train`, `valid`,
`eval` of float32 arrays (`InferredSplit`: each field name is its key) plus `nlb_index`.
`write_inferred` is the one writer, `read_inferred` the one reader.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lfads.formats.prepared import SPLITS
from lfads.formats.version import FORMAT_VERSION_KEY, check_format_version, plain
from lfads.infra.io import atomic_path, open_hdf5

FORMAT_VERSION = 1
REMEDY = "Rewrite it with the rule that writes it (`infer`, or `python -m lfads infer`)."
UNITS = "rates: spikes per bin"
# Root attributes of the placeholder file of a run that diverged (no groups): the reason, and the
# epoch (from 1); written by `lfads.evaluation.infer`, read by `lfads.evaluation.evaluate`.
DIVERGED, DIVERGED_EPOCH = "diverged", "diverged_epoch"


@dataclass
class InferredSplit:
    """Posterior averages of one split's N trials; each field name is its key in the group.

    None: absent from the file, or not asked for by `read_inferred`.
    """

    rates: np.ndarray | None = None  # (N, T + F, H) expected data, spikes per bin
    factors: np.ndarray | None = None  # (N, T + F, fac_dim)
    gen_states: np.ndarray | None = None  # (N, T + F, gen_dim)
    co_mean: np.ndarray | None = None  # (N, T + F, co_dim) inferred inputs' posterior mean
    co_std: np.ndarray | None = None  # (N, T + F, co_dim)
    ic_mean: np.ndarray | None = None  # (N, ic_dim) initial condition's posterior
    ic_std: np.ndarray | None = None  # (N, ic_dim)
    nlb_index: np.ndarray | None = None  # (N,) int64, copied from the prepared file

    def arrays(self) -> dict[str, np.ndarray]:
        """key -> array of the arrays present."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


INFERRED_KEYS = tuple(f.name for f in fields(InferredSplit))
# Stored rounded to `mantissa_bits` (rates and the initial condition's statistics stay exact).
ROUNDED_KEYS = ("factors", "gen_states", "co_mean", "co_std")


@dataclass(frozen=True)
class InferredAttributes:
    """Root attributes of the sampling itself (the prepared file's SESSION_ATTRIBUTES come too)."""

    n_samples: int  # posterior samples averaged (1 for a non-variational model)
    seed: int
    session: int  # the model's session index of the data file
    model_epochs: int  # epochs the model was trained
    data_file: str  # the prepared file
    mantissa_bits: int  # explicit mantissa bits kept of the ROUNDED_KEYS (23: exact)


@dataclass
class InferredFile:
    """An inference file read by `read_inferred`."""

    path: Path
    attrs: dict[str, Any]  # every root attribute, as plain Python values
    splits: dict[str, InferredSplit]  # the splits present, in SPLITS order


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 rounded to nearest with `bits` explicit mantissa bits (23: unchanged).

    The relative error is at most 2^-(bits + 1) (1.2e-4 for 12 bits); the zeroed
    low bits make gzip + shuffle store the array in about half the space.
    """
    if not 0 <= bits <= 23:
        raise ValueError(f"mantissa_bits: must be in 0..23, got {bits}")
    if bits == 23:
        return values
    drop = 23 - bits
    raw = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (raw + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF >> drop) << drop)
    return rounded.view(np.float32)


def write_inferred(
    path: str | Path,
    session_attributes: dict[str, Any],
    attributes: InferredAttributes,
    splits: dict[str, InferredSplit],
) -> None:
    """Write an inference file atomically; the ROUNDED_KEYS are rounded to the mantissa bits.

    session_attributes: the prepared file's (`PreparedFile.session_attributes()`). Arrays are
    stored float32 (nlb_index int64), gzip level 4 + shuffle, in chunks of 64 trials.
    """
    round_mantissa(np.zeros(1, np.float32), attributes.mantissa_bits)  # checks the value
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as file:
        file.attrs.update(session_attributes)
        file.attrs.update(asdict(attributes))
        file.attrs.update(**{FORMAT_VERSION_KEY: FORMAT_VERSION}, units=UNITS)
        for split, arrays in splits.items():
            if split not in SPLITS:
                raise ValueError(f"{path}: split {split!r} is not one of {list(SPLITS)}")
            group = file.create_group(split)
            for key, value in arrays.arrays().items():
                if key == "nlb_index":
                    group[key] = value
                    continue
                if key in ROUNDED_KEYS:
                    value = round_mantissa(value, attributes.mantissa_bits)
                chunks = (min(64, value.shape[0]), *value.shape[1:]) if value.size else None
                group.create_dataset(
                    key,
                    data=value,
                    dtype=np.float32,
                    chunks=chunks,
                    compression="gzip" if value.size else None,
                    compression_opts=4 if value.size else None,
                    shuffle=bool(value.size),
                )


def read_inferred(path: str | Path, keys: Collection[str] | None = None) -> InferredFile:
    """Read an inference file, checking its version; keys: which arrays (None: all present)."""
    path = Path(path)
    unknown = sorted(set(keys or ()) - set(INFERRED_KEYS))
    if unknown:
        raise ValueError(
            f"read_inferred: unknown keys {unknown}; the keys are {list(INFERRED_KEYS)}"
        )
    with open_hdf5(path, REMEDY) as file:
        attrs = {key: plain(value) for key, value in file.attrs.items()}
        check_format_version(path, attrs.get(FORMAT_VERSION_KEY), FORMAT_VERSION, REMEDY)
        splits = {
            split: InferredSplit(
                **{
                    key: file[split][key][()]
                    for key in INFERRED_KEYS
                    if key in file[split] and (keys is None or key in keys)
                }
            )
            for split in SPLITS
            if split in file
        }
    return InferredFile(path, attrs, splits)
