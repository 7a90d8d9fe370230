"""The built-in synthetic dataset: Lorenz-driven Poisson spikes in the exact layout of any NLB set.

A 3-D Lorenz system drives every unit's log firing rate through a fixed
linear readout; spikes are Poisson draws per millisecond. How trials sit on
the recording, what the trial table holds and which behaviour is written
follow the configfile's `nlb_layout` (lfads.data.layouts):

- MC_Maze and its scaling sets: one initial state per condition (trial_type x
  trial_version) plus a little per-trial noise; the latent rests at zero
  between trials; hand velocity is a readout of the latent `behavior_lag_ms`
  earlier.
- Area2_Bump: the same, with conditions cond_dir x ctr_hold_bump (active and
  passive trials) and hand velocity that leads the latent (NLB's lag -20 ms).
- MC_RTT: one continuous session; the latent never rests, the trials are
  consecutive 600 ms windows, and finger velocity follows the latent by 140 ms.
- DMFC_RSG: ready, set and go times. From set the latent runs at a per-trial
  speed, faster for a short ts and faster by a random factor, and go comes
  when it has travelled a fixed distance: the produced interval tp is ts over
  that factor, so a faster neural trajectory means a shorter tp (what NLB's
  `tp corr` measures). No behaviour series.

Files and the ground-truth format are documented in lfads/README.md. The
generator is deterministic given its settings and scales to the real datasets'
sizes (the defaults of a configfile's source.synthetic) in bounded memory: it
holds the (n_ms, 3) latent, never an (n_ms, n_units) array, and draws spikes a
chunk of milliseconds at a time.
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
from lfads.data.lorenz import rk4_step, rk4_trajectory
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

MAX_LORENZ_SPEED = 0.01  # Lorenz time units per 1 ms RK4 step; larger steps lose accuracy

# Std across units of the log baseline rate: baselines span about 0.5x..2x base_rate_hz.
BASE_RATE_SPREAD = 0.3
MODULATION_SPREAD = 0.5  # a unit's log-rate std is rate_modulation times U(1 - spread, 1 + spread)
VELOCITY_GAIN_MM_S = 100.0  # scale of the latent-to-velocity readout weights

# DMFC_RSG's sample intervals (ms) of its short and long prior, five each (Sohn et al. 2019).
DMFC_TS_MS = {1: (480, 560, 640, 720, 800), 0: (800, 900, 1000, 1100, 1200)}  # is_short: ts
DMFC_READY_MS = 200  # trial start to ready, at least
DMFC_AFTER_GO_MS = 600  # go to trial stop: holds NLB's jitter (<= 300 ms) and forward window
DMFC_MAX_TP_MS = 1400  # produced intervals are clipped here (NLB pads set..go to 1500 ms)

# The real datasets' units and trials (../shared/reference/nlb.md; DMFC_RSG's trial counts are
# not in that table: about its real size). A configfile's source.synthetic omits a size: this.
SIZE_KEYS = ("n_heldin", "n_heldout", "n_train_trials", "n_val_trials", "n_test_trials")
REAL_SIZES: dict[str, dict[str, int]] = {
    nlb_layout: dict(zip(SIZE_KEYS, sizes, strict=True))
    for nlb_layout, sizes in {
        "mc_maze": (137, 45, 1721, 574, 574),
        "mc_rtt": (98, 32, 810, 270, 272),
        "area2_bump": (49, 16, 272, 92, 98),
        "dmfc_rsg": (40, 14, 750, 250, 300),
        "mc_maze_large": (122, 40, 375, 125, 100),
        "mc_maze_medium": (114, 38, 188, 62, 100),
        "mc_maze_small": (107, 35, 75, 25, 100),
    }.items()
}

# A fixed session start and creation date, and identifiers derived from the
# settings, keep the NWB files as reproducible as pynwb allows (it gives every
# object a random object_id).
SESSION_START = datetime(2020, 1, 1, tzinfo=UTC)


def family(nlb_layout: str) -> str:
    """How the generator lays trials out for a layout: maze, area2_bump, mc_rtt or dmfc_rsg."""
    return "maze" if nlb_layout.startswith("mc_maze") else nlb_layout


@dataclass(frozen=True)
class SyntheticSettings:
    """Sizes and dynamics of the synthetic dataset (times in ms, rates in Hz).

    The dataclass's own defaults are a small MC_Maze-layout set (the demo's);
    `from_dict` fills the sizes a configfile omits with the real dataset's
    (REAL_SIZES). Which keys a layout reads: trial_length_ms, move_onset_ms
    and gap_ms between trials for the maze layouts and area2_bump;
    n_trial_types x n_trial_versions conditions for the maze layouts,
    n_directions x (active, passive) for area2_bump, is_eye x theta x
    is_short x ts (40) for dmfc_rsg, none for mc_rtt, whose trials are
    consecutive 600 ms windows after a lead of gap_ms; speed_noise and
    outlier_fraction for dmfc_rsg only.
    """

    nlb_layout: str = "mc_maze"
    seed: int = 0
    n_heldin: int = 40
    n_heldout: int = 10
    n_train_trials: int = 300
    n_val_trials: int = 100
    n_test_trials: int = 100
    n_unused_trials: int = 0  # train-file trials whose split is 'none' (nlb_tools skips them)
    n_trial_types: int = 6  # maze conditions are trial_type x trial_version, as in MC_Maze
    n_trial_versions: int = 2
    n_directions: int = 8  # area2_bump: cond_dir in 360 / n_directions degree steps
    trial_length_ms: int = 1100  # start to stop; must hold the NLB window and forward prediction
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
    behavior_lag_ms: int | None = None  # None: the layout's NLB lag (mc_maze 100, mc_rtt 140, ...)
    behavior_noise: float = 0.2  # white noise on the velocity, relative to its std
    speed_noise: float = 0.1  # dmfc_rsg: std of the log of a trial's set-go speed factor
    outlier_fraction: float = 0.02  # dmfc_rsg: trials with a far-off tp, marked is_outlier

    def __post_init__(self) -> None:
        require(
            self.nlb_layout in REAL_SIZES, "nlb_layout", "is not an NLB layout", self.nlb_layout
        )
        for name in (
            "n_heldin",
            "n_heldout",
            "n_train_trials",
            "n_val_trials",
            "n_test_trials",
            "n_trial_types",
            "n_trial_versions",
            "n_directions",
            "trial_length_ms",
        ):
            require(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        for name in ("base_rate_hz", "lorenz_speed"):
            require(getattr(self, name) > 0, name, "must be > 0", getattr(self, name))
        for name in (
            "seed",
            "n_unused_trials",
            "move_onset_ms",
            "gap_ms",
            "rate_modulation",
            "initial_state_noise",
            "behavior_noise",
            "speed_noise",
            "outlier_fraction",
        ):
            require(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))
        require(self.outlier_fraction < 1, "outlier_fraction", "must be < 1", self.outlier_fraction)
        require(
            self.lorenz_speed <= MAX_LORENZ_SPEED / 3,
            "lorenz_speed",
            f"must be <= {MAX_LORENZ_SPEED / 3:g} (the Lorenz system is integrated in 1 ms steps, "
            "and dmfc_rsg runs it up to 3x faster)",
            self.lorenz_speed,
        )
        require(
            self.base_rate_hz < 200,
            "base_rate_hz",
            "must be < 200 (rates are Poisson draws per 1 ms bin)",
            self.base_rate_hz,
        )
        if family(self.nlb_layout) in ("maze", "area2_bump"):
            self._check_trial_holds_the_window()

    def _check_trial_holds_the_window(self) -> None:
        entry = LAYOUTS[self.nlb_layout]
        (before, after), forward = entry.window_ms, entry.forward_ms
        needed = self.move_onset_ms + after + forward
        if self.move_onset_ms < -before or needed > self.trial_length_ms:
            raise ValueError(
                f"move_onset_ms={self.move_onset_ms}, trial_length_ms={self.trial_length_ms}: "
                f"each trial must hold move onset {before}..+{after + forward} ms (the NLB "
                f"window plus forward prediction); use move_onset_ms >= {-before} and "
                f"trial_length_ms >= move_onset_ms + {after + forward}"
            )
        # nlb_tools reads behaviour over the window shifted by the lag and cuts it at the next
        # trial's start.
        behavior_end = self.move_onset_ms + after + self.lag_ms
        if behavior_end > self.trial_length_ms + self.gap_ms:
            raise ValueError(
                f"behavior_lag_ms={self.lag_ms}: the lagged behaviour window ends "
                f"{behavior_end} ms after trial start, past the next trial's start "
                f"(trial_length_ms + gap_ms = {self.trial_length_ms + self.gap_ms}); shorten "
                "the lag or lengthen gap_ms"
            )

    @classmethod
    def from_dict(cls, values: dict | None, nlb_layout: str = "mc_maze") -> SyntheticSettings:
        """Settings of `nlb_layout` from a plain mapping (e.g. a configfile's source.synthetic).

        Omitted sizes take the real dataset's (REAL_SIZES), other omitted keys the defaults.
        Raises ValueError naming any unknown key or bad value (lfads.infra.settings).
        """
        if isinstance(values, dict) and "nlb_layout" in values:
            raise ValueError(
                "nlb_layout: set it at the top of the configfile, not in source.synthetic"
            )
        if nlb_layout not in REAL_SIZES:
            raise ValueError(
                f"nlb_layout: {nlb_layout!r} is not an NLB layout; use one of "
                f"{', '.join(REAL_SIZES)}"
            )
        if values is not None and not isinstance(values, dict):
            return from_mapping(cls, values, what="synthetic setting")  # (its error)
        return from_mapping(
            cls,
            {"nlb_layout": nlb_layout, **REAL_SIZES[nlb_layout], **(values or {})},
            what="synthetic setting",
        )

    @property
    def n_units(self) -> int:
        return self.n_heldin + self.n_heldout

    @property
    def lag_ms(self) -> int:
        """The behaviour's lag: the setting, or the layout's NLB lag (0 without behaviour)."""
        if self.behavior_lag_ms is not None:
            return self.behavior_lag_ms
        return LAYOUTS[self.nlb_layout].behavior_lag_ms or 0

    @property
    def n_conditions(self) -> int:
        return {
            "maze": self.n_trial_types * self.n_trial_versions,
            "area2_bump": self.n_directions * 2,
            "mc_rtt": 1,
            "dmfc_rsg": 2 * 2 * 2 * len(DMFC_TS_MS[1]),
        }[family(self.nlb_layout)]


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
    stops_ms: np.ndarray  # (n_trials,) int64, trial stop
    conditions: np.ndarray  # (n_trials,) int64, condition index (0 for mc_rtt)
    splits: np.ndarray  # (n_trials,) str: train / val / test / none
    latents: np.ndarray  # (n_ms, 3) float32, whitened Lorenz state; 0 (rest) between trials
    observed: list[tuple[int, int]]  # [start_ms, stop_ms) intervals whose spikes the file holds
    # The layout's own trial columns: {name: (description, values)}; *_time values in ms.
    columns: dict[str, tuple[str, np.ndarray]]
    labels: tuple[str, ...]  # columns a test file leaves out (its conditions and behaviour)

    @property
    def n_ms(self) -> int:
        return self.latents.shape[0]


def _balanced_conditions(rng: np.random.Generator, n_trials: int, n_conditions: int) -> np.ndarray:
    """Condition of each trial (n_trials,), counts as equal as possible, in random order.

    When n_trials is a multiple of n_conditions every condition has the same
    count, which is what triggers nlb_tools 0.0.4's 2-D cond_idx arrays.
    """
    return rng.permutation(np.resize(rng.permutation(n_conditions), n_trials))


def _conditions_per_split(
    rng: np.random.Generator, splits: np.ndarray, n_conditions: int
) -> np.ndarray:
    """Balanced within each split, as nlb_tools builds PSTHs per split."""
    conditions = np.empty(len(splits), dtype=np.int64)
    for split in np.unique(splits):
        members = np.flatnonzero(splits == split)
        conditions[members] = _balanced_conditions(rng, len(members), n_conditions)
    return conditions


def _recording_length(last_stop: int, settings: SyntheticSettings, trailing_gap: bool) -> int:
    return int(last_stop + (settings.gap_ms if trailing_gap else 0))


def _aligned_recording(
    settings: SyntheticSettings,
    rng: np.random.Generator,
    attractor: _Attractor,
    condition_states: np.ndarray,
    splits: np.ndarray,
    trailing_gap: bool,
) -> _Recording:
    """Maze and area2_bump trials: one after another with gaps, aligned to move onset.

    trailing_gap: end the recording a gap after the last trial (train file,
    one obs_interval) or at the last trial's stop (test file, whose 1 ms grid
    nlb_tools ends at the last obs_interval end).
    """
    n_trials = len(splits)
    period = settings.trial_length_ms + settings.gap_ms
    starts = settings.gap_ms + period * np.arange(n_trials, dtype=np.int64)
    stops = starts + settings.trial_length_ms
    n_ms = _recording_length(stops[-1], settings, trailing_gap)
    conditions = _conditions_per_split(rng, splits, settings.n_conditions)
    noise = rng.normal(size=(n_trials, 3)) * settings.initial_state_noise  # latent (whitened) units
    rt = np.round(settings.move_onset_ms * rng.uniform(0.4, 0.8, size=n_trials)).astype(np.int64)

    # Integrate all trials together, writing each ms straight into the recording.
    latents = np.zeros((n_ms, 3), dtype=np.float32)
    state = attractor.unwhiten(attractor.whiten(condition_states[conditions]) + noise)
    for step in range(settings.trial_length_ms):
        latents[starts + step] = attractor.whiten(state)
        state = rk4_step(state, settings.lorenz_speed)
    observed = [(int(start), int(stop)) for start, stop in zip(starts, stops)]
    move_onset = starts + settings.move_onset_ms
    go_cue = move_onset - rt
    if family(settings.nlb_layout) == "maze":
        target_on = starts + settings.move_onset_ms // 10
        # nlb_tools turns every *_time column into a Timedelta; rt and delay stay numbers (ms).
        columns = {
            "target_on_time": ("time the targets appeared (s)", target_on),
            "go_cue_time": ("time of the go cue (s)", go_cue),
            "move_onset_time": ("time of movement onset (s)", move_onset),
            "rt": ("reaction time, go cue to movement onset (ms)", rt.astype(np.float64)),
            "delay": ("delay, target on to go cue (ms)", (go_cue - target_on).astype(np.float64)),
            "trial_type": (
                "maze condition (1-based)",
                conditions // settings.n_trial_versions + 1,
            ),
            "trial_version": (
                "version of the maze condition (0-based)",
                conditions % settings.n_trial_versions,
            ),
            "maze_id": ("maze identifier, one per condition", conditions + 1),
            "success": ("trial succeeded", np.ones(n_trials, dtype=bool)),
            "num_targets": ("number of targets shown", np.ones(n_trials, dtype=np.int64)),
            "active_target": ("index of the target reached", np.zeros(n_trials, dtype=np.int64)),
        }
        labels = (
            "trial_type",
            "trial_version",
            "maze_id",
            "success",
            "num_targets",
            "active_target",
        )
    else:  # area2_bump: even conditions are active reaches, odd ones passive bumps
        direction = (conditions // 2) * (360.0 / settings.n_directions)
        bump = (conditions % 2).astype(bool)
        columns = {
            "go_cue_time": ("time of the go cue, or of the bump (s)", go_cue),
            "move_onset_time": ("time of movement onset (s)", move_onset),
            "ctr_hold_bump": ("passive trial: the hand was bumped during the centre hold", bump),
            "cond_dir": ("direction of the reach or of the bump (degrees)", direction),
            "bump_dir": (
                "direction of the bump (degrees; NaN on active trials)",
                np.where(bump, direction, np.nan),
            ),
            "target_dir": (
                "direction of the target (degrees; NaN on passive trials)",
                np.where(bump, np.nan, direction),
            ),
            "result": ("trial outcome (R: reward)", np.array(["R"] * n_trials)),
        }
        labels = ("ctr_hold_bump", "cond_dir", "bump_dir", "target_dir", "result")
    return _Recording(starts, stops, conditions, splits, latents, observed, columns, labels)


def _continuous_recording(
    settings: SyntheticSettings,
    rng: np.random.Generator,
    attractor: _Attractor,
    splits: np.ndarray,
    trailing_gap: bool,
) -> _Recording:
    """MC_RTT: one continuous reaching session cut into consecutive 600 ms windows.

    The latent never rests. The recording starts gap_ms before the first
    window; a train file goes on past the last window for its forward
    prediction and lagged behaviour (then gap_ms more); a test file ends with
    the last window's forward prediction, observed during its windows only.
    """
    entry = LAYOUTS[settings.nlb_layout]
    window = entry.window_ms[1] - entry.window_ms[0]
    n_trials = len(splits)
    starts = settings.gap_ms + window * np.arange(n_trials, dtype=np.int64)
    stops = starts + window
    tail = entry.forward_ms + (max(settings.lag_ms, 0) if trailing_gap else 0)
    n_ms = _recording_length(stops[-1] + tail, settings, trailing_gap)
    # One trajectory on the attractor, from a random point, in one RK4 step per ms.
    latents = np.empty((n_ms, 3), dtype=np.float32)
    state = attractor.sample(rng, 1)[0]
    for first in range(0, n_ms, CHUNK_MS):
        states, state = rk4_trajectory(state, settings.lorenz_speed, min(CHUNK_MS, n_ms - first))
        latents[first : first + len(states)] = attractor.whiten(states)
    # A test file's last window is observed on to its forward window's end (the next window
    # holds it for the others), so that the truth of every window's forward bins exists.
    observed = [(0, n_ms)]
    if not trailing_gap:
        observed = [(int(a), int(b)) for a, b in zip(starts, stops)]
        observed[-1] = (observed[-1][0], n_ms)
    conditions = np.zeros(n_trials, dtype=np.int64)
    return _Recording(starts, stops, conditions, splits, latents, observed, {}, ())


def _dmfc_recording(
    settings: SyntheticSettings,
    rng: np.random.Generator,
    attractor: _Attractor,
    condition_states: np.ndarray,
    splits: np.ndarray,
    trailing_gap: bool,
) -> _Recording:
    """DMFC_RSG: ready-set-go trials whose produced interval follows the latent's speed.

    Condition c is (is_eye, theta, is_short, ts) = (c // 20, 180 * (c // 10 % 2),
    c // 5 % 2, DMFC_TS_MS[is_short][c % 5]). From ready the latent runs from its
    (is_eye, theta, is_short) initial state at lorenz_speed; from set at
    lorenz_speed * mean(prior's ts) / ts * f, with f a per-trial factor
    exp(N(0, speed_noise)) (an outlier's f is 0.5 or 1.8); go comes when it has
    covered lorenz_speed * mean(prior's ts) Lorenz time, so tp = ts / f.
    """
    n_trials = len(splits)
    conditions = _conditions_per_split(rng, splits, settings.n_conditions)
    is_eye, theta = conditions // 20, 180.0 * (conditions // 10 % 2)
    is_short = conditions // 5 % 2
    ts_table = np.array([DMFC_TS_MS[0], DMFC_TS_MS[1]], dtype=np.float64)  # [is_short][index]
    ts = ts_table[is_short, conditions % 5]
    ts_mean = ts_table.mean(axis=1)[is_short]
    factor = np.exp(settings.speed_noise * rng.normal(size=n_trials))
    outlier = rng.random(n_trials) < settings.outlier_fraction
    factor[outlier] = rng.choice([0.5, 1.8], size=int(outlier.sum()))
    tp = np.round(np.minimum(ts / factor, DMFC_MAX_TP_MS)).astype(np.int64)
    factor = ts / tp  # (exact for the rounded, clipped tp)
    noise = rng.normal(size=(n_trials, 3)) * settings.initial_state_noise

    # Each trial: start, ready, set = ready + ts, go = set + tp, stop = go + DMFC_AFTER_GO_MS,
    # long enough for NLB's window of 1500 ms before go.
    ts_int = ts.astype(np.int64)
    ready = np.maximum(DMFC_READY_MS, 1500 + 100 - ts_int - tp)
    lengths = ready + ts_int + tp + DMFC_AFTER_GO_MS
    starts = settings.gap_ms + np.concatenate([[0], np.cumsum(lengths + settings.gap_ms)[:-1]])
    stops = starts + lengths
    n_ms = _recording_length(stops[-1], settings, trailing_gap)
    set_rel, go_rel = ready + ts_int, ready + ts_int + tp

    latents = np.zeros((n_ms, 3), dtype=np.float32)
    state = attractor.unwhiten(
        attractor.whiten(condition_states[conditions // 5]) + noise
    )  # one state per (is_eye, theta, is_short)
    go_speed = (settings.lorenz_speed * ts_mean / ts * factor)[:, None]
    for step in range(int(lengths.max() - ready.min())):
        time_ms = ready + step  # per trial, from its ready
        active = time_ms < lengths
        if not active.any():
            break
        latents[(starts + time_ms)[active]] = attractor.whiten(state[active])
        speed = np.where((time_ms >= set_rel)[:, None], go_speed, settings.lorenz_speed)
        state = rk4_step(state, speed)
    observed = [(int(start), int(stop)) for start, stop in zip(starts, stops)]
    columns = {
        "ready_time": ("time of the ready cue (s)", starts + ready),
        "set_time": ("time of the set cue (s)", starts + set_rel),
        "go_time": ("time of the produced go response (s)", starts + go_rel),
        "is_outlier": (
            "tp far from ts (NLB leaves the trial out of tp corr)",
            outlier.astype(np.float64),
        ),
        "is_eye": ("response by saccade (1) or joystick (0)", is_eye.astype(np.float64)),
        "theta": ("direction of the response target (degrees)", theta),
        "is_short": ("short prior (1) or long prior (0)", is_short.astype(np.float64)),
        "ts": ("sample interval, ready to set (ms)", ts),
        "tp": ("produced interval, set to go (ms)", tp.astype(np.float64)),
    }
    labels = ("ready_time", "is_outlier", "is_eye", "theta", "is_short", "ts", "tp")
    return _Recording(starts, stops, conditions, splits, latents, observed, columns, labels)


def _recording(
    settings: SyntheticSettings,
    rng: np.random.Generator,
    attractor: _Attractor,
    condition_states: np.ndarray,
    splits: np.ndarray,
    trailing_gap: bool,
) -> _Recording:
    """The trials and latent of one file, laid out as the settings' layout lays them."""
    kind = family(settings.nlb_layout)
    if kind == "mc_rtt":
        return _continuous_recording(settings, rng, attractor, splits, trailing_gap)
    if kind == "dmfc_rsg":
        return _dmfc_recording(settings, rng, attractor, condition_states, splits, trailing_gap)
    return _aligned_recording(settings, rng, attractor, condition_states, splits, trailing_gap)


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
    """Behaviour series of the layout on the 1 ms grid, each (n_ms, 2) float32; {} for dmfc_rsg.

    The velocity (the layout's hand_vel or finger_vel, mm/s) = velocity_readout
    applied to the latent `lag_ms` earlier (later, for a negative lag: Area2
    senses the arm's movement), plus white noise; the position (mm) is its
    running integral; maze files add cursor_pos (the hand's) and eye_pos (which
    looks `lag_ms` ahead along the hand's path), MC_RTT's cursor_pos.
    """
    series = LAYOUTS[settings.nlb_layout].behavior_series
    if series is None:
        return {}
    lag, n_ms = settings.lag_ms, latents.shape[0]
    velocity = np.zeros((n_ms, 2))  # the latent rests at 0 outside the recording
    if lag >= 0:
        velocity[lag:] = latents[: n_ms - lag] @ velocity_readout
    else:
        velocity[: n_ms + lag] = latents[-lag:] @ velocity_readout
    noise_std = settings.behavior_noise * np.linalg.norm(
        velocity_readout, axis=0
    )  # latents have unit std
    velocity += rng.normal(size=velocity.shape) * noise_std
    position = (np.cumsum(velocity, axis=0) / 1000.0).astype(np.float32)
    prefix = series.removesuffix("_vel")
    out = {series: velocity.astype(np.float32), f"{prefix}_pos": position}
    if family(settings.nlb_layout) in ("maze", "mc_rtt"):
        out["cursor_pos"] = position
    if family(settings.nlb_layout) == "maze":
        ahead = min(abs(lag), n_ms)
        out["eye_pos"] = np.concatenate([position[ahead:], np.repeat(position[-1:], ahead, axis=0)])
    return out


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
            "Synthetic Lorenz-driven Poisson population in the NLB "
            f"{settings.nlb_layout} layout ({role})"
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


def _trials_table(recording: _Recording, with_labels: bool):
    """Trials table with the layout's columns; a test file's leaves out the labels.

    nlb_tools turns every *_time column into a Timedelta: those are written in
    seconds; other columns keep their units (ms for rt, ts and tp).
    """
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    values = {
        "start_time": ("start of trial (s)", recording.starts_ms),
        "stop_time": ("end of trial (s)", recording.stops_ms),
        "split": ("NLB data split", [str(split) for split in recording.splits]),
        **{
            name: column
            for name, column in recording.columns.items()
            if with_labels or name not in recording.labels
        },
    }
    columns = [
        VectorData(
            name=name,
            description=description,
            data=np.asarray(data) / 1000.0 if name.endswith("_time") else data,
        )
        for name, (description, data) in values.items()
    ]
    return TimeIntervals(
        name="trials",
        description="synthetic trials",
        id=np.arange(len(recording.starts_ms)),
        columns=columns,
    )


def _add_behavior(nwbfile, series: dict[str, np.ndarray], n_ms: int) -> None:
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import TimeSeries

    if not series:
        return
    module = nwbfile.create_processing_module("behavior", "kinematics at 1 ms")
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
                unit="mm/s" if name.endswith("_vel") else "mm",
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
    if not LAYOUTS[settings.nlb_layout].has_behavior_series:
        velocity_readout[:] = 0.0  # (drawn all the same: the other streams stay as they were)
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
        np.array(
            ["train"] * settings.n_train_trials
            + ["val"] * settings.n_val_trials
            + ["none"] * settings.n_unused_trials
        )
    )
    train = _recording(
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
        _trials_table(train, with_labels=True),
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
    test = _recording(
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
        _trials_table(test, with_labels=False),
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
    parser.add_argument(
        "--nlb-layout",
        default="mc_maze",
        choices=list(REAL_SIZES),
        help="the NLB layout to write (default mc_maze); omitted sizes are its real dataset's",
    )
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
        settings = SyntheticSettings.from_dict(values, args.nlb_layout)
    except ValueError as error:
        raise SystemExit(f"lfads synthetic: {args.config or '--seed'}: {error}") from None
    paths = write_synthetic_dataset(args.out, settings)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0
