"""Check an NWB file for what nlb_tools needs, before nlb_tools sees it.

nlb_tools fails late and vaguely on malformed files: a behaviour series that is
one sample off the 1 ms grid is dropped with only a warning and surfaces later
as `KeyError: 'hand_vel'`; a file without held-out units breaks tensor making;
a NaN spike time ends in `IndexError: index -9223372036854775808`; a train file
without `val` trials in the val phase in `AttributeError: 'NoneType' object has
no attribute 'groupby'`. These checks read the file with h5py (no pynwb, so
they are quick) and raise an `NWBLayoutError` that names the file and the
field, and says what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from lfads.data.layouts import BASE_TRIAL_FIELDS, layout

# The trial splits a file must hold: {(role, phase): splits}. The val phase scores on the train
# file's `val` trials; the test phase trains on train (and val, if any) and scores on the test file.
SPLITS = {
    ("train", "val"): ("train", "val"),
    ("train", "test"): ("train",),
    ("test", "val"): ("test",),
    ("test", "test"): ("test",),
}


class NWBLayoutError(ValueError):
    """An NWB file lacks something the NLB layout needs."""


def _fail(path: Path, field: str, problem: str, advice: str) -> NWBLayoutError:
    return NWBLayoutError(f"{path}: {field}: {problem}. {advice}")


def _ragged_last_ends(group: h5py.Group, name: str) -> np.ndarray:
    """Last interval end of each unit's ragged `obs_intervals` column (seconds)."""
    intervals = group[name][()]
    if f"{name}_index" not in group:
        return intervals[..., -1].reshape(-1)
    index = group[f"{name}_index"][()]
    return np.array([intervals[stop - 1, 1] for stop in index if stop > 0])


def _timeseries(group: h5py.Group, prefix: str = "") -> Iterator[tuple[str, h5py.Group]]:
    """Yield (nlb_tools name, group) of every TimeSeries below `group`.

    nlb_tools names a series by itself inside a processing module, and
    `<container>_<series>` inside a multi-series container.
    """
    for name, child in group.items():
        if not isinstance(child, h5py.Group):
            continue
        if "data" in child and ("timestamps" in child or "starting_time" in child):
            yield (f"{prefix}_{name}" if prefix else name), child
        else:
            nested_prefix = name if group.name.count("/") >= 2 else ""
            yield from _timeseries(child, nested_prefix)


def _sample_times(series: h5py.Group) -> np.ndarray:
    if "timestamps" in series:
        return series["timestamps"][()]
    rate = float(series["starting_time"].attrs["rate"])
    start = float(series["starting_time"][()])
    return start + np.arange(series["data"].shape[0]) / rate


def _check_spike_times(path: Path, units: h5py.Group, end_ms: int) -> None:
    """Every spike time must be a finite time on nlb_tools' 1 ms grid [0, end_ms) (seconds)."""
    times = units["spike_times"][()]
    # nlb_tools' bin of each spike: int(round(t * 1000, 6)), an index into the grid
    with np.errstate(invalid="ignore"):
        bins = np.trunc(np.round(times * 1000, 6))
        bad = ~np.isfinite(times) | (bins < 0) | (bins >= end_ms)
    if not bad.any():
        return
    first = int(np.argmax(bad))
    ends = units["spike_times_index"][()] if "spike_times_index" in units else np.array([bad.size])
    row = int(np.searchsorted(ends, first, side="right"))
    unit_id = int(units["id"][row]) if "id" in units and row < len(units["id"]) else row
    raise _fail(
        path,
        "units.spike_times",
        f"unit {unit_id} (row {row}) has a spike at {float(times[first])!r} s, "
        + (
            "not a finite time"
            if not np.isfinite(times[first])
            else f"outside the recording [0, {end_ms / 1000:.3f}) s"
        )
        + f" ({int(bad.sum())} of the file's {bad.size} spike times are bad)",
        "nlb_tools cannot bin them: remove those spike times (or fix obs_intervals) and run again.",
    )


def _check_finite_behaviour(path: Path, series: h5py.Group) -> None:
    """The decoded behaviour must be finite: a stretch of NaN inside a trial ends in nlb_tools'
    `ValueError: all input arrays must have the same shape` (mc_rtt, whose behaviour nlb_tools
    masks itself, is not checked)."""
    data = np.asarray(series["data"][()], dtype=float)
    bad = ~np.isfinite(data.reshape(len(data), -1)).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise _fail(
            path,
            series.name.lstrip("/").replace("/", "."),
            f"sample {first} at {float(_sample_times(series)[first]):.3f} s is not finite "
            f"({int(bad.sum())} of {bad.size} samples are NaN or infinite)",
            "nlb_tools cannot cut trials over missing behaviour: interpolate the gaps (or drop "
            "the trials that hold them) and run again.",
        )


def check_nwb_file(path: str | Path, nlb_layout: str, role: str, phase: str = "val") -> None:
    """Raise NWBLayoutError if `path` lacks what nlb_tools needs for `nlb_layout`.

    role: "train" (held-in and held-out units, train and val trials in the val phase,
    behaviour) or "test" (held-in units and test trials only).
    phase: "val" or "test", as the configfile's `phase` (which trial splits are needed).
    """
    path = Path(path)
    spec = layout(nlb_layout)
    if (role, phase) not in SPLITS:
        raise ValueError(
            f"role must be 'train' or 'test' and phase 'val' or 'test', not {role!r}, {phase!r}"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file. Run the fetch rule, or fix the source's asset paths."
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise _fail(
            path,
            "(file)",
            f"not a readable NWB (HDF5) file ({error})",
            "A downloaded file (a dandi source): delete it and run the workflow again to fetch "
            "it; a file of your own (a local source): replace it with a good copy.",
        ) from error
    with handle:
        units = handle.get("units")
        if units is None:
            raise _fail(
                path, "units", "the file has no units table", "NLB files hold spikes in /units."
            )
        for column in ("spike_times", "obs_intervals", "heldout"):
            if column not in units:
                raise _fail(
                    path,
                    f"units.{column}",
                    "column missing",
                    "nlb_tools needs spike_times, obs_intervals and heldout on every unit.",
                )
        heldout = units["heldout"][()].astype(bool)
        if role == "train" and not heldout.any():
            raise _fail(
                path,
                "units.heldout",
                f"no held-out units (all {heldout.size} units are held-in)",
                "The train file must mark the held-out neurons with heldout=True.",
            )
        if role == "test" and heldout.any():
            raise _fail(
                path,
                "units.heldout",
                f"{int(heldout.sum())} held-out units in a test file",
                "The test file holds held-in units only.",
            )

        trials = handle.get("intervals/trials")
        if trials is None:
            raise _fail(
                path, "intervals.trials", "the file has no trials table", "NLB files define trials."
            )
        required = BASE_TRIAL_FIELDS + (
            spec.train_trial_fields if role == "train" else spec.test_trial_fields
        )
        for column in required:
            if column not in trials:
                raise _fail(
                    path,
                    f"trials.{column}",
                    f"column missing (layout {nlb_layout} needs it)",
                    "Add it, or choose the nlb_layout that matches this file.",
                )
        ids = trials["id"][()] if "id" in trials else np.arange(len(trials["start_time"]))
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            repeated = unique[counts > 1]
            rows = np.flatnonzero(ids == repeated[0]).tolist()
            raise _fail(
                path,
                "trials.id",
                f"trial id {int(repeated[0])} is on rows {rows}"
                + (f" ({len(repeated)} ids repeat)" if len(repeated) > 1 else ""),
                "nlb_tools indexes trials by id: give every trial its own id.",
            )
        splits = {
            value.decode() if isinstance(value, bytes) else str(value)
            for value in trials["split"][()]
        }
        for split in SPLITS[role, phase]:
            if split not in splits:
                raise _fail(
                    path,
                    "trials.split",
                    f"no trial has split {split!r} (found {sorted(splits)})",
                    f"A {role} file needs {split!r} trials in the {phase} phase"
                    + (" (they are scored there); or use phase: test" if split == "val" else "")
                    + ".",
                )

        # The 1 ms grid that nlb_tools builds: [0, end) with end the last obs_interval end
        # (or the last trial end, if later).
        end_ms = round(float(np.max(_ragged_last_ends(units, "obs_intervals"))) * 1000)
        end_ms = max(end_ms, round(float(trials["stop_time"][-1]) * 1000))
        _check_spike_times(path, units, end_ms)
        found = {}
        for top in ("acquisition", "processing"):
            if top not in handle:
                continue
            for name, series in _timeseries(handle[top]):
                found[name] = series
                times_ms = np.round(_sample_times(series), 6) * 1000
                ms = np.round(times_ms)
                off_grid = np.abs(times_ms - ms) > 1e-3
                outside = (ms < 0) | (ms >= end_ms)
                if off_grid.any() or outside.any():
                    bad = int(np.argmax(off_grid | outside))
                    raise _fail(
                        path,
                        series.name.lstrip("/").replace("/", "."),
                        f"sample {bad} at {times_ms[bad] / 1000:.6f} s is "
                        + (
                            "off the 1 ms grid"
                            if off_grid[bad]
                            else f"outside the recording [0, {end_ms / 1000:.3f}) s "
                            "set by units.obs_intervals"
                        )
                        + f" ({int(off_grid.sum())} off-grid, {int(outside.sum())} outside "
                        f"of {ms.size} samples)",
                        "nlb_tools would silently drop this series. "
                        "Resample it to 1 ms and trim it to the recording.",
                    )
        behavior = spec.behavior_series
        if role == "train" and behavior is not None and behavior not in found:
            raise _fail(
                path,
                f"processing.behavior.{behavior}",
                "behaviour series missing",
                f"Layout {nlb_layout} decodes {behavior}; add it as a TimeSeries on the 1 ms grid.",
            )
        if role == "train" and behavior is not None and nlb_layout != "mc_rtt":
            _check_finite_behaviour(path, found[behavior])
