"""The built-in synthetic dataset: Lorenz-driven Poisson spikes in the exact NLB MC_Maze layout.

A 3-D Lorenz system, started at one initial state per condition
(trial_type x trial_version) plus a little per-trial noise, drives every
unit's log firing rate through a fixed linear readout. Between trials the
latent rests at zero, so rates sit at their baseline. Spikes are Poisson draws
per millisecond. Hand velocity is a linear readout of the latent
`behavior_lag_ms` earlier, so (as NLB assumes) neural activity predicts
behaviour at +lag.

Files and the ground-truth format are documented in lfads/README.md. The
generator is deterministic given `seed` and scales to MC_Maze size (182 units,
2,869 trials) in bounded memory: it holds the (n_ms, 3) latent, never an
(n_ms, n_units) array, and draws spikes a chunk of milliseconds at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lfads.data.layouts import LAYOUTS
from lfads.data.lorenz import rk4_step
from lfads.data.truth import CHUNK_MS, GroundTruth, write_truth
from lfads.infra.io import atomic_path
from lfads.infra.settings import from_mapping, require

log = logging.getLogger(__name__)

SUBJECT, SESSION = "Synth", "lorenz"
# Paths relative to the output folder, in the DANDI naming pattern. The workflow reads them while
# it parses (through lfads.data.fetch), so this module imports pynwb and h5py only where it writes.
ASSET_PATHS = {
    "train": f"sub-{SUBJECT}/sub-{SUBJECT}_ses-{SESSION}_desc-train_behavior+ecephys.nwb",
    "test": f"sub-{SUBJECT}/sub-{SUBJECT}_ses-{SESSION}_desc-test_ecephys.nwb",
}
TRUTH_PATHS = {
    "train": f"sub-{SUBJECT}/sub-{SUBJECT}_ses-{SESSION}_desc-train_truth.h5",
    "test": f"sub-{SUBJECT}/sub-{SUBJECT}_ses-{SESSION}_desc-test_truth.h5",
}

# The layouts whose trial windows, behaviour and conditions this generator writes (MC_Maze's).
SYNTHETIC_LAYOUTS = tuple(
    name
    for name, entry in LAYOUTS.items()
    if entry.align_field == "move_onset_time"
    and entry.psth_condition_fields == ("trial_type", "trial_version")
)

MAX_LORENZ_SPEED = 0.01  # Lorenz time units per 1 ms RK4 step; larger steps lose accuracy

# The mc_maze windows around move onset: -250..+450 ms, then 200 ms of forward prediction.
NLB_WINDOW_BEFORE_MS = -LAYOUTS["mc_maze"].window_ms[0]
NLB_WINDOW_AFTER_MS = LAYOUTS["mc_maze"].window_ms[1]
NLB_FORWARD_MS = LAYOUTS["mc_maze"].forward_ms

# Std across units of the log baseline rate: baselines span about 0.5x..2x base_rate_hz.
BASE_RATE_SPREAD = 0.3
MODULATION_SPREAD = 0.5  # a unit's log-rate std is rate_modulation times U(1 - spread, 1 + spread)
VELOCITY_GAIN_MM_S = 100.0  # scale of the latent-to-velocity readout weights

# A fixed session start and creation date, and identifiers derived from the
# settings, keep the NWB files as reproducible as pynwb allows (it gives every
# object a random object_id).
SESSION_START = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SyntheticSettings:
    """Sizes and dynamics of the synthetic dataset (times in ms, rates in Hz).

    Defaults train an LFADS demo in minutes on 2 CPU cores. MC_Maze size is
    n_heldin=137, n_heldout=45, n_train_trials=1721, n_val_trials=574,
    n_test_trials=574.
    """

    seed: int = 0
    n_heldin: int = 40
    n_heldout: int = 10
    n_train_trials: int = 300
    n_val_trials: int = 100
    n_test_trials: int = 100
    n_trial_types: int = 6  # conditions are trial_type x trial_version, as in MC_Maze
    n_trial_versions: int = 2
    trial_length_ms: int = 1100  # start to stop; must hold move onset -250..+650 ms
    move_onset_ms: int = 350  # after trial start
    gap_ms: int = 200  # between trials; the latent rests, rates sit at baseline
    # Rates: about 8.6 Hz on average during trials. Higher rates make a GLM on
    # smoothed spikes nearly as good as the truth, leaving a dynamical model little to add.
    base_rate_hz: float = 5.0  # typical firing rate at rest
    rate_modulation: float = 1.0  # typical std of a unit's log rate during trials
    # About 2 loops per 1.1 s trial; faster makes rates too sharp for nlb_tools'
    # 70 ms-smoothed PSTH targets (psth R2 of the truth fell from 0.76 to 0.08 at 0.002).
    lorenz_speed: float = 0.0012  # Lorenz time units per ms
    # Per-trial noise on the condition's initial state, in latent std units. Chaos amplifies it:
    # about a fifth of the latent's variance in the NLB window is trial-to-trial.
    initial_state_noise: float = 0.05
    behavior_lag_ms: int = 100  # hand velocity follows the latent by this lag (NLB mc_maze: 100)
    behavior_noise: float = 0.2  # white noise on hand velocity, relative to its std

    def __post_init__(self) -> None:
        for name in (
            "n_heldin",
            "n_heldout",
            "n_train_trials",
            "n_val_trials",
            "n_test_trials",
            "n_trial_types",
            "n_trial_versions",
            "trial_length_ms",
        ):
            require(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        for name in ("base_rate_hz", "lorenz_speed"):
            require(getattr(self, name) > 0, name, "must be > 0", getattr(self, name))
        for name in (
            "seed",
            "move_onset_ms",
            "gap_ms",
            "rate_modulation",
            "initial_state_noise",
            "behavior_lag_ms",
            "behavior_noise",
        ):
            require(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))
        require(
            self.lorenz_speed <= MAX_LORENZ_SPEED,
            "lorenz_speed",
            f"must be <= {MAX_LORENZ_SPEED} (the Lorenz system is integrated in 1 ms steps)",
            self.lorenz_speed,
        )
        require(
            self.base_rate_hz < 200,
            "base_rate_hz",
            "must be < 200 (rates are Poisson draws per 1 ms bin)",
            self.base_rate_hz,
        )
        needed = self.move_onset_ms + NLB_WINDOW_AFTER_MS + NLB_FORWARD_MS
        if self.move_onset_ms < NLB_WINDOW_BEFORE_MS or needed > self.trial_length_ms:
            raise ValueError(
                f"move_onset_ms={self.move_onset_ms}, trial_length_ms={self.trial_length_ms}: "
                f"each trial must hold move onset -{NLB_WINDOW_BEFORE_MS}.."
                f"+{NLB_WINDOW_AFTER_MS + NLB_FORWARD_MS} ms (the NLB window plus forward "
                "prediction); use move_onset_ms >= 250 and trial_length_ms >= move_onset_ms + 650"
            )
        # nlb_tools reads behaviour over the window shifted by the lag and cuts it at the next
        # trial's start.
        behavior_end = self.move_onset_ms + NLB_WINDOW_AFTER_MS + self.behavior_lag_ms
        if behavior_end > self.trial_length_ms + self.gap_ms:
            raise ValueError(
                f"behavior_lag_ms={self.behavior_lag_ms}: the lagged behaviour window ends "
                f"{behavior_end} ms after trial start, past the next trial's start "
                f"(trial_length_ms + gap_ms = {self.trial_length_ms + self.gap_ms}); shorten "
                "the lag or lengthen gap_ms"
            )

    @classmethod
    def from_dict(cls, values: dict | None) -> SyntheticSettings:
        """Settings from a plain mapping (e.g. parsed YAML); omitted keys take the defaults.

        Raises ValueError naming any unknown key or bad value (lfads.infra.settings).
        """
        return from_mapping(cls, values, what="synthetic setting")

    @property
    def n_units(self) -> int:
        return self.n_heldin + self.n_heldout

    @property
    def n_conditions(self) -> int:
        return self.n_trial_types * self.n_trial_versions


# ---------------------------------------------------------------------------
# Latent dynamics


@dataclass(frozen=True)
class _Attractor:
    """A long Lorenz trajectory on the attractor and the map that whitens it.

    The latent is the whitened state, (state - mean) @ whitening: zero mean,
    unit variance and uncorrelated axes on the attractor (raw x and y are 0.88
    correlated), so a unit's log-rate std is the norm of its readout weights.
    """

    trajectory: np.ndarray  # (n_steps, 3) raw Lorenz units
    mean: np.ndarray  # (3,)
    whitening: np.ndarray  # (3, 3) symmetric, inverse square root of the covariance

    @classmethod
    def build(cls) -> _Attractor:
        dt, n_burn_in, n_steps = 0.01, 1_000, 7_000
        state = np.array([1.0, 1.0, 1.0])
        trajectory = np.empty((n_steps, 3))
        for step in range(n_steps):
            trajectory[step] = state
            state = rk4_step(state, dt)
        trajectory = trajectory[n_burn_in:]
        eigenvalues, eigenvectors = np.linalg.eigh(np.cov(trajectory.T))
        return cls(
            trajectory,
            trajectory.mean(axis=0),
            eigenvectors / np.sqrt(eigenvalues) @ eigenvectors.T,
        )

    def whiten(self, states: np.ndarray) -> np.ndarray:
        return (states - self.mean) @ self.whitening

    def unwhiten(self, latents: np.ndarray) -> np.ndarray:
        return latents @ np.linalg.inv(self.whitening) + self.mean

    def sample(self, rng: np.random.Generator, n_points: int) -> np.ndarray:
        """Points on the attractor (n_points, 3), raw units: one initial state per condition."""
        n_steps = len(self.trajectory)
        return self.trajectory[rng.choice(n_steps, size=n_points, replace=n_points > n_steps)]


@dataclass
class _Recording:
    """One NWB file's trials and latent, on the file's own 1 ms timeline."""

    starts_ms: np.ndarray  # (n_trials,) int64, trial start
    conditions: np.ndarray  # (n_trials,) int64, index into trial_type x trial_version
    splits: np.ndarray  # (n_trials,) str: train / val / test
    rt_ms: np.ndarray  # (n_trials,) int64, go cue to move onset
    latents: np.ndarray  # (n_ms, 3) float32, whitened Lorenz state; 0 (rest) between trials
    observed: list[tuple[int, int]]  # [start_ms, stop_ms) intervals whose spikes the file holds

    @property
    def n_ms(self) -> int:
        return self.latents.shape[0]


def _balanced_conditions(rng: np.random.Generator, n_trials: int, n_conditions: int) -> np.ndarray:
    """Condition of each trial (n_trials,), counts as equal as possible, in random order.

    When n_trials is a multiple of n_conditions every condition has the same
    count, which is what triggers nlb_tools 0.0.4's 2-D cond_idx arrays.
    """
    return rng.permutation(np.resize(rng.permutation(n_conditions), n_trials))


def _layout_recording(
    settings: SyntheticSettings,
    rng: np.random.Generator,
    attractor: _Attractor,
    condition_states: np.ndarray,
    splits: np.ndarray,
    trailing_gap: bool,
) -> _Recording:
    """Lay trials out one after another with gaps and integrate each trial's latent.

    trailing_gap: end the recording a gap after the last trial (train file,
    one obs_interval) or at the last trial's stop (test file, whose 1 ms grid
    nlb_tools ends at the last obs_interval end).
    """
    n_trials = len(splits)
    period = settings.trial_length_ms + settings.gap_ms
    starts = settings.gap_ms + period * np.arange(n_trials, dtype=np.int64)
    n_ms = int(starts[-1] + settings.trial_length_ms + (settings.gap_ms if trailing_gap else 0))

    conditions = np.empty(n_trials, dtype=np.int64)
    for split in np.unique(
        splits
    ):  # balanced within each split, as nlb_tools builds PSTHs per split
        members = np.flatnonzero(splits == split)
        conditions[members] = _balanced_conditions(rng, len(members), settings.n_conditions)
    noise = rng.normal(size=(n_trials, 3)) * settings.initial_state_noise  # latent (whitened) units
    rt = np.round(settings.move_onset_ms * rng.uniform(0.4, 0.8, size=n_trials)).astype(np.int64)

    # Integrate all trials together, writing each ms straight into the recording.
    latents = np.zeros((n_ms, 3), dtype=np.float32)
    state = attractor.unwhiten(attractor.whiten(condition_states[conditions]) + noise)
    for step in range(settings.trial_length_ms):
        latents[starts + step] = attractor.whiten(state)
        state = rk4_step(state, settings.lorenz_speed)
    observed = [(int(start), int(start) + settings.trial_length_ms) for start in starts]
    return _Recording(starts, conditions, splits, rt, latents, observed)


# ---------------------------------------------------------------------------
# Spikes and behaviour


def _draw_spike_times(
    latents: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    rng: np.random.Generator,
    observed: list[tuple[int, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson spikes per ms from rate exp(latents @ weight + bias) spikes/ms, CHUNK_MS at a time.

    latents (n_ms, 3), weight (3, n_units), bias (n_units,). observed: [start,
    stop) ms intervals outside which spikes are discarded (None: everywhere).
    Returns (spike_times, ends): all units' spike times in seconds, unit after
    unit and sorted within each unit, and each unit's end offset in that array
    (the NWB ragged-column layout).

    A spike drawn in ms k is placed at (k + 0.5) / 1000 s: nlb_tools bins a
    spike at `int(round(t * 1000, 6))` (truncation), which gives back k.
    """
    n_ms, n_units = latents.shape[0], weight.shape[1]
    keep = None
    if observed is not None:
        keep = np.zeros(n_ms, dtype=bool)
        for start, stop in observed:
            keep[start:stop] = True
    pieces: list[list[np.ndarray]] = [[] for _ in range(n_units)]
    for first in range(0, n_ms, CHUNK_MS):
        rates = np.exp(
            latents[first : first + CHUNK_MS].astype(np.float64) @ weight + bias
        )  # (chunk, n_units)
        counts = rng.poisson(rates).T  # (n_units, chunk)
        if keep is not None:
            counts[:, ~keep[first : first + CHUNK_MS]] = 0
        unit, ms = np.nonzero(counts)  # row-major: sorted by unit, then ms
        repeats = counts[unit, ms]
        ms = np.repeat(ms.astype(np.int32) + first, repeats)
        bounds = np.searchsorted(np.repeat(unit, repeats), np.arange(n_units + 1))
        for index in range(n_units):
            pieces[index].append(ms[bounds[index] : bounds[index + 1]])
    per_unit = [np.concatenate(unit_pieces) for unit_pieces in pieces]
    ends = np.cumsum([len(times) for times in per_unit], dtype=np.int64)
    spike_times = (np.concatenate(per_unit) + 0.5) / 1000.0
    return spike_times, ends


def _behavior(
    settings: SyntheticSettings,
    latents: np.ndarray,
    velocity_readout: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Behaviour series on the 1 ms grid, each (n_ms, 2) float32.

    hand_vel (mm/s) = velocity_readout applied to the latent `behavior_lag_ms`
    earlier, plus white noise; hand_pos (mm) is its running integral,
    cursor_pos follows the hand, and eye_pos looks `behavior_lag_ms` ahead
    along the hand's path.
    """
    lag, n_ms = settings.behavior_lag_ms, latents.shape[0]
    velocity = np.zeros((n_ms, 2))  # the latent rests at 0 before the recording
    velocity[lag:] = latents[: n_ms - lag] @ velocity_readout
    noise_std = settings.behavior_noise * np.linalg.norm(
        velocity_readout, axis=0
    )  # latents have unit std
    velocity += rng.normal(size=velocity.shape) * noise_std
    position = np.cumsum(velocity, axis=0) / 1000.0
    eye = np.concatenate([position[lag:], np.repeat(position[-1:], min(lag, n_ms), axis=0)])
    return {
        "hand_vel": velocity.astype(np.float32),
        "hand_pos": position.astype(np.float32),
        "cursor_pos": position.astype(np.float32),
        "eye_pos": eye.astype(np.float32),
    }


# ---------------------------------------------------------------------------
# NWB files


def _nwb_file(settings: SyntheticSettings, role: str, units, trials):
    from pynwb import NWBFile
    from pynwb.file import Subject

    digest = hashlib.sha256(
        json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()
    ).hexdigest()[:12]
    return NWBFile(
        session_description=(
            f"Synthetic Lorenz-driven Poisson population in the NLB MC_Maze layout ({role})"
        ),
        identifier=f"lfads-synthetic-{SESSION}-{role}-seed{settings.seed}-{digest}",
        session_start_time=SESSION_START,
        file_create_date=SESSION_START,
        session_id=SESSION,
        # A stand-in: species, sex and age are those a real NLB file states (its monkeys), so
        # that the files and what is exported from them read as DANDI expects; no animal.
        subject=Subject(
            subject_id=SUBJECT,
            description="synthetic: no animal; species, sex and age stand in for an NLB monkey's",
            species="Macaca mulatta",
            sex="U",
            age="P10Y",
        ),
        units=units,
        trials=trials,
    )


def _ragged_column(name: str, description: str, data: np.ndarray, ends: np.ndarray) -> list:
    """A ragged NWB column (values of all rows concatenated, plus each row's end offset)."""
    from hdmf.common import VectorData, VectorIndex

    column = VectorData(name=name, description=description, data=data)
    return [column, VectorIndex(name=f"{name}_index", data=ends, target=column)]


def _units_table(
    spike_times: np.ndarray,
    ends: np.ndarray,
    unit_ids: np.ndarray,
    heldout: np.ndarray,
    obs_intervals: np.ndarray,
):
    """Units table; every unit has the same obs_intervals (n_intervals, 2) seconds."""
    from hdmf.common import VectorData
    from pynwb.misc import Units

    n_units, n_intervals = len(unit_ids), len(obs_intervals)
    columns = [
        *_ragged_column(
            "spike_times", "the spike times for each unit in seconds", spike_times, ends
        ),
        *_ragged_column(
            "obs_intervals",
            "the observation intervals for each unit",
            np.tile(obs_intervals, (n_units, 1)),
            n_intervals * np.arange(1, n_units + 1),
        ),
        VectorData(
            name="heldout",
            description="held-out unit (its spikes are predicted, not seen)",
            data=np.asarray(heldout, dtype=bool),
        ),
    ]
    return Units(
        name="units",
        description="synthetic Poisson units",
        id=unit_ids.astype(np.int64),
        columns=columns,
    )


def _trials_table(settings: SyntheticSettings, recording: _Recording, with_conditions: bool):
    """Trials table with MC_Maze's columns; the test file's has no condition labels."""
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    start = recording.starts_ms
    move_onset = start + settings.move_onset_ms
    go_cue = move_onset - recording.rt_ms
    target_on = start + settings.move_onset_ms // 10
    # nlb_tools turns every *_time column into a Timedelta; rt and delay stay numbers (ms).
    values = {
        "start_time": ("start of trial (s)", start / 1000.0),
        "stop_time": ("end of trial (s)", (start + settings.trial_length_ms) / 1000.0),
        "split": ("NLB data split", [str(split) for split in recording.splits]),
        "target_on_time": ("time the targets appeared (s)", target_on / 1000.0),
        "go_cue_time": ("time of the go cue (s)", go_cue / 1000.0),
        "move_onset_time": ("time of movement onset (s)", move_onset / 1000.0),
        "rt": ("reaction time, go cue to movement onset (ms)", recording.rt_ms.astype(np.float64)),
        "delay": ("delay, target on to go cue (ms)", (go_cue - target_on).astype(np.float64)),
    }
    if with_conditions:
        trial_type = recording.conditions // settings.n_trial_versions + 1
        trial_version = recording.conditions % settings.n_trial_versions
        n_trials = len(start)
        values.update(
            {
                "trial_type": ("maze condition (1-based)", trial_type),
                "trial_version": ("version of the maze condition (0-based)", trial_version),
                "maze_id": ("maze identifier, one per condition", recording.conditions + 1),
                "success": ("trial succeeded", np.ones(n_trials, dtype=bool)),
                "num_targets": ("number of targets shown", np.ones(n_trials, dtype=np.int64)),
                "active_target": (
                    "index of the target reached",
                    np.zeros(n_trials, dtype=np.int64),
                ),
            }
        )
    columns = [
        VectorData(name=name, description=description, data=data)
        for name, (description, data) in values.items()
    ]
    return TimeIntervals(
        name="trials",
        description="synthetic maze trials",
        id=np.arange(len(start)),
        columns=columns,
    )


def _add_behavior(nwbfile, series: dict[str, np.ndarray], n_ms: int) -> None:
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import TimeSeries

    module = nwbfile.create_processing_module("behavior", "hand, cursor and eye kinematics at 1 ms")
    units = {"hand_vel": "mm/s", "hand_pos": "mm", "cursor_pos": "mm", "eye_pos": "mm"}
    for name, data in series.items():
        # nlb_tools silently drops a series with even one sample past the last obs_interval end.
        if data.shape != (n_ms, 2):
            raise ValueError(
                f"behaviour series {name} has shape {data.shape}, expected ({n_ms}, 2) "
                "(one sample per ms of the recording)"
            )
        module.add(
            TimeSeries(
                name=name,
                data=H5DataIO(data, compression="gzip", shuffle=True),
                unit=units[name],
                rate=1000.0,
                starting_time=0.0,
                comments="columns=[x,y]",
                description=f"synthetic {name}",
            )
        )


def _write_nwb(nwbfile, path: Path) -> None:
    from pynwb import NWBHDF5IO

    with atomic_path(path) as tmp, NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwbfile)


def _ground_truth(
    recording: _Recording,
    weight: np.ndarray,
    bias: np.ndarray,
    velocity_readout: np.ndarray,
    unit_ids: np.ndarray,
    heldout: np.ndarray,
    settings: SyntheticSettings,
) -> GroundTruth:
    """Ground truth of one NWB file, in the dtypes of its file format (lfads/README.md)."""
    return GroundTruth(
        latents=recording.latents,
        readout_weight=weight.astype(np.float32),
        readout_bias=bias.astype(np.float32),
        unit_ids=unit_ids.astype(np.int64),
        heldout=np.asarray(heldout, dtype=bool),
        trial_start_ms=recording.starts_ms.astype(np.int64),
        trial_condition=recording.conditions.astype(np.int64),
        velocity_readout=velocity_readout.astype(np.float32),
        seed=settings.seed,
        settings=json.dumps(dataclasses.asdict(settings), sort_keys=True),
    )


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def write_synthetic_dataset(
    out_dir: str | Path, settings: SyntheticSettings | None = None
) -> dict[str, Path]:
    """Write the train/test NWB files and their truth files under `out_dir`; return their paths.

    Keys of the result: "train", "test" (NWB) and "train_truth", "test_truth".
    The same settings give the same spikes, behaviour and truth; each random
    stream (parameters, each file's layout, spikes, behaviour) has its own
    seed, so e.g. changing n_test_trials leaves the train file's data unchanged.
    """
    settings = settings or SyntheticSettings()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    streams = np.random.SeedSequence(settings.seed).spawn(6)
    (
        parameters_rng,
        train_layout_rng,
        test_layout_rng,
        train_spike_rng,
        behavior_rng,
        test_spike_rng,
    ) = (np.random.default_rng(stream) for stream in streams)

    attractor = _Attractor.build()
    condition_states = attractor.sample(parameters_rng, settings.n_conditions)
    directions = parameters_rng.normal(size=(3, settings.n_units))
    depths = settings.rate_modulation * parameters_rng.uniform(
        1 - MODULATION_SPREAD, 1 + MODULATION_SPREAD, size=settings.n_units
    )
    weight = (
        directions / np.linalg.norm(directions, axis=0) * depths
    )  # (3, n_units); log-rate std = depths
    bias = np.log(settings.base_rate_hz / 1000.0) + BASE_RATE_SPREAD * parameters_rng.normal(
        size=settings.n_units
    )
    velocity_readout = parameters_rng.normal(size=(3, 2)) * VELOCITY_GAIN_MM_S
    # The stored (float32) parameters are the ones spikes are drawn from, so the truth is exact.
    weight, bias = (
        weight.astype(np.float32).astype(np.float64),
        bias.astype(np.float32).astype(np.float64),
    )
    unit_ids = np.arange(settings.n_units)
    heldout = unit_ids >= settings.n_heldin

    paths = {role: out_dir / path for role, path in ASSET_PATHS.items()}
    paths.update({f"{role}_truth": out_dir / path for role, path in TRUTH_PATHS.items()})

    # Train file: train and val trials interleaved, every unit, observed throughout.
    splits = train_layout_rng.permutation(
        np.array(["train"] * settings.n_train_trials + ["val"] * settings.n_val_trials)
    )
    train = _layout_recording(
        settings, train_layout_rng, attractor, condition_states, splits, trailing_gap=True
    )
    log.info(
        "train file: %d trials, %.1f s of latent (%.1f s)",
        len(splits),
        train.n_ms / 1000,
        time.perf_counter() - started,
    )
    spike_times, ends = _draw_spike_times(train.latents, weight, bias, train_spike_rng)
    log.info(
        "train file: %d spikes, %.1f Hz mean rate (%.1f s)",
        len(spike_times),
        len(spike_times) / settings.n_units / (train.n_ms / 1000),
        time.perf_counter() - started,
    )
    nwbfile = _nwb_file(
        settings,
        "train",
        _units_table(spike_times, ends, unit_ids, heldout, np.array([[0.0, train.n_ms / 1000]])),
        _trials_table(settings, train, with_conditions=True),
    )
    _add_behavior(
        nwbfile, _behavior(settings, train.latents, velocity_readout, behavior_rng), train.n_ms
    )
    _write_nwb(nwbfile, paths["train"])
    write_truth(
        paths["train_truth"],
        _ground_truth(train, weight, bias, velocity_readout, unit_ids, heldout, settings),
    )
    del nwbfile, spike_times, ends
    log.info(
        "wrote %s (%s) (%.1f s)",
        paths["train"],
        _size(paths["train"]),
        time.perf_counter() - started,
    )

    # Test file: its own timeline, held-in units only, observed during the test trials only.
    test = _layout_recording(
        settings,
        test_layout_rng,
        attractor,
        condition_states,
        np.array(["test"] * settings.n_test_trials),
        trailing_gap=False,
    )
    spike_times, ends = _draw_spike_times(
        test.latents, weight[:, ~heldout], bias[~heldout], test_spike_rng, test.observed
    )
    intervals = np.array(test.observed, dtype=np.float64) / 1000.0
    nwbfile = _nwb_file(
        settings,
        "test",
        _units_table(spike_times, ends, unit_ids[~heldout], heldout[~heldout], intervals),
        _trials_table(settings, test, with_conditions=False),
    )
    _write_nwb(nwbfile, paths["test"])
    # The test truth covers the held-out units too (their rates are what NLB scores).
    write_truth(
        paths["test_truth"],
        _ground_truth(test, weight, bias, velocity_readout, unit_ids, heldout, settings),
    )
    log.info(
        "wrote %s (%s) (%.1f s)", paths["test"], _size(paths["test"]), time.perf_counter() - started
    )
    return paths


# ---------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write sub-Synth/... into"
    )
    parser.add_argument("--seed", type=int, help="overrides the settings' seed")
    parser.add_argument("--config", type=Path, help="YAML mapping of SyntheticSettings fields")


def run(args: argparse.Namespace) -> int:
    import yaml

    values = yaml.safe_load(args.config.read_text()) if args.config else {}
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise SystemExit(
            f"lfads synthetic: {args.config} must hold a mapping of SyntheticSettings fields"
        )
    if args.seed is not None:
        values["seed"] = args.seed
    try:
        settings = SyntheticSettings.from_dict(values)
    except ValueError as error:
        raise SystemExit(f"lfads synthetic: {args.config or '--seed'}: {error}") from None
    paths = write_synthetic_dataset(args.out, settings)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0
