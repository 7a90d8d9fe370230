"""The synthetic dataset's ground-truth files: one HDF5 file beside each NWB file.

The synthetic generator writes them (`write_truth`); `prepare` reads them
(`read_units`, `bin_true_rates`). The format is documented in lfads/README.md
("Ground truth"); its keys are the fields of `GroundTruth`. h5py is imported
by the functions that need it: the workflow imports this module (through
lfads.data.synthetic's file names) while it parses, and stays light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfads.infra.io import atomic_path

CHUNK_MS = 10_000  # latents are stored, and true rates computed, this many ms at a time
ATTRIBUTES = ("seed", "settings")  # GroundTruth fields stored as file attributes


@dataclass(frozen=True)
class GroundTruth:
    """Everything needed to compute the true rate of every unit at every ms of one NWB file.

    True rate in spikes per ms: exp(latents @ readout_weight + readout_bias).
    """

    latents: np.ndarray  # (n_ms, 3) float32, latent state on the NWB file's 1 ms grid
    readout_weight: np.ndarray  # (3, n_units) float32, log-linear readout
    readout_bias: np.ndarray  # (n_units,) float32, log(spikes per ms) offset
    unit_ids: np.ndarray  # (n_units,) int64, NWB unit ids in the column order above
    heldout: np.ndarray  # (n_units,) bool, held-out units
    trial_start_ms: np.ndarray  # (n_trials,) int64, start of each trial, in the file's order
    trial_condition: np.ndarray  # (n_trials,) int64, condition index of each trial
    velocity_readout: np.ndarray  # (3, 2) float32, hand velocity (mm/s) from the lagged latent
    seed: int  # the generator's seed
    settings: str  # the generator's settings, as JSON


def write_truth(path: str | Path, truth: GroundTruth) -> None:
    """Write `truth` to `path` atomically: arrays as datasets, `ATTRIBUTES` as attributes."""
    import h5py

    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as handle:
        for field in dataclasses.fields(truth):
            value = getattr(truth, field.name)
            if field.name in ATTRIBUTES:
                handle.attrs[field.name] = value
            elif field.name == "latents":  # the one large array: compressed, in CHUNK_MS chunks
                handle.create_dataset(
                    field.name,
                    data=value,
                    compression="gzip",
                    shuffle=True,
                    chunks=(min(CHUNK_MS, value.shape[0]), value.shape[1]),
                )
            else:
                handle[field.name] = value


def read_units(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(unit_ids int64, heldout bool), each (n_units,): the columns of `bin_true_rates`."""
    import h5py

    with h5py.File(path, "r") as handle:
        return handle["unit_ids"][()], handle["heldout"][()].astype(bool)


def bin_true_rates(truth_path: str | Path, bin_width_ms: int) -> np.ndarray:
    """True rates, (n_bins, n_units) float32 spikes per bin, binned as NWBDataset.resample bins.

    Bin k sums ms [k * w, (k + 1) * w) of the truth file's 1 ms grid; a
    trailing partial bin is summed over the ms it has, as nlb_tools does for
    spikes, so n_bins = ceil(n_ms / w). Columns follow the file's `unit_ids`
    (held-in, then held-out). Unlike nlb_tools' spikes, bins outside the
    observed intervals are not NaN.
    """
    import h5py

    if int(bin_width_ms) != bin_width_ms or bin_width_ms < 1:
        raise ValueError(f"bin_width_ms={bin_width_ms!r} must be a positive whole number of ms")
    bin_width_ms = int(bin_width_ms)
    with h5py.File(truth_path, "r") as handle:
        latents = handle["latents"]
        weight = handle["readout_weight"][()].astype(np.float64)
        bias = handle["readout_bias"][()].astype(np.float64)
        n_ms = latents.shape[0]
        out = np.empty((-(-n_ms // bin_width_ms), weight.shape[1]), dtype=np.float32)
        chunk = max(1, CHUNK_MS // bin_width_ms) * bin_width_ms  # whole bins per chunk
        for first in range(0, n_ms, chunk):
            # (chunk, n_units) spikes per ms
            rates = np.exp(latents[first : first + chunk].astype(np.float64) @ weight + bias)
            n_full = rates.shape[0] // bin_width_ms
            row = first // bin_width_ms
            out[row : row + n_full] = (
                rates[: n_full * bin_width_ms].reshape(n_full, bin_width_ms, -1).sum(axis=1)
            )
            if rates.shape[0] % bin_width_ms:  # only the recording's last chunk
                out[row + n_full] = rates[n_full * bin_width_ms :].sum(axis=0)
    return out
