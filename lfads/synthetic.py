"""The built-in synthetic dataset: Lorenz-driven Poisson spikes in the exact NLB MC_Maze layout.

A 3-D Lorenz system, started at one initial state per condition
(trial_type x trial_version) plus a little per-trial noise, drives every
unit's log firing rate through a fixed linear readout. Between trials the
latent rests at zero, so rates sit at their baseline. Spikes are Poisson draws
per millisecond. Hand velocity is a linear readout of the latent `behavior_lag_ms`
earlier, so (as NLB assumes) neural activity predicts behaviour at +lag.

Files and the ground-truth format are documented in lfads/README.md. The
generator is deterministic given `seed`, and scales to MC_Maze size (182
units, ~2,900 trials) in bounded memory by drawing spikes in chunks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from lfads.io import atomic_path

log = logging.getLogger(__name__)

SUBJECT, SESSION = "Synth", "lorenz"
ASSET_PATHS = {
    "train": f"sub-{SUBJECT}/sub-{SUBJECT}_ses-{SESSION}_desc-train_behavior+ecephys.nwb",
    "test": f"sub-{SUBJECT}/sub-{SUBJECT}_ses-{SESSION}_desc-test_ecephys.nwb",
}
TRUTH_PATHS = {
    "train": f"sub-{SUBJECT}/sub-{SUBJECT}_ses-{SESSION}_desc-train_truth.h5",
    "test": f"sub-{SUBJECT}/sub-{SUBJECT}_ses-{SESSION}_desc-test_truth.h5",
}
# Lorenz attractor's classic parameters, and its approximate mean and std per axis
# (used to normalise the latent to unit scale).
LORENZ_SIGMA, LORENZ_RHO, LORENZ_BETA = 10.0, 28.0, 8.0 / 3.0
LORENZ_MEAN = np.array([0.0, 0.0, 23.5])
LORENZ_STD = np.array([7.9, 9.0, 8.6])
CHUNK_MS = 100_000  # spikes are drawn this many ms at a time


@dataclass(frozen=True)
class SyntheticSettings:
    """Sizes and dynamics of the synthetic dataset (times in ms, rates in Hz)."""

    seed: int = 0
    n_heldin: int = 40
    n_heldout: int = 10
    n_train_trials: int = 300
    n_val_trials: int = 100
    n_test_trials: int = 100
    n_trial_types: int = 6
    n_trial_versions: int = 2
    trial_length_ms: int = 1100  # start to stop; must hold move onset -250..+650 ms
    move_onset_ms: int = 350  # after trial start
    gap_ms: int = 200  # between trials, latent at rest
    base_rate_hz: float = 12.0  # firing rate at rest
    rate_modulation: float = 0.8  # std of the log-rate modulation
    lorenz_speed: float = 0.0015  # Lorenz time units per ms (~2 loops per trial)
    initial_state_noise: float = 0.1  # per-trial noise on the condition's initial state (latent std units)
    behavior_lag_ms: int = 100  # hand velocity follows the latent by this lag
    behavior_noise: float = 0.2  # noise on hand velocity, relative to its std

    def __post_init__(self) -> None:
        positive = ("n_heldin", "n_heldout", "n_train_trials", "n_val_trials", "n_test_trials",
                    "n_trial_types", "n_trial_versions", "trial_length_ms", "base_rate_hz", "lorenz_speed")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"synthetic setting {name}={getattr(self, name)!r} must be > 0")
        for name in ("seed", "gap_ms", "behavior_lag_ms", "rate_modulation", "initial_state_noise",
                     "behavior_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"synthetic setting {name}={getattr(self, name)!r} must be >= 0")
        # nlb_tools' mc_maze window is move onset -250..+450 ms, plus 200 ms of forward prediction.
        if self.move_onset_ms < 250 or self.move_onset_ms + 650 > self.trial_length_ms:
            raise ValueError(
                f"synthetic settings move_onset_ms={self.move_onset_ms}, trial_length_ms={self.trial_length_ms}: "
                "trials must hold move onset -250..+650 ms (NLB window plus forward prediction)")
        if self.behavior_lag_ms >= self.gap_ms + self.move_onset_ms:
            raise ValueError("synthetic setting behavior_lag_ms must be shorter than gap_ms + move_onset_ms")

    @classmethod
    def from_dict(cls, values: dict | None) -> SyntheticSettings:
        """Settings from a plain mapping; unknown keys and wrong types are errors naming the key."""
        values = dict(values or {})
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown synthetic setting(s) {unknown}; allowed: {sorted(fields)}")
        for name, value in values.items():
            expected = int if fields[name].type == "int" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    expected is int and not float(value).is_integer()):
                raise ValueError(f"synthetic setting {name}={value!r} must be {expected.__name__}")
            values[name] = expected(value)
        return cls(**values)

    @property
    def n_units(self) -> int:
        return self.n_heldin + self.n_heldout

    @property
    def n_conditions(self) -> int:
        return self.n_trial_types * self.n_trial_versions


def _lorenz_step(state: np.ndarray, dt: float) -> np.ndarray:
    """One fourth-order Runge-Kutta step of the Lorenz system; state (..., 3)."""

    def derivative(s):
        x, y, z = s[..., 0], s[..., 1], s[..., 2]
        return np.stack([LORENZ_SIGMA * (y - x), x * (LORENZ_RHO - z) - y, x * y - LORENZ_BETA * z], axis=-1)

    k1 = derivative(state)
    k2 = derivative(state + dt / 2 * k1)
    k3 = derivative(state + dt / 2 * k2)
    k4 = derivative(state + dt * k3)
    return state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def trial_latents(initial_states: np.ndarray, n_ms: int, dt: float) -> np.ndarray:
    """Normalised Lorenz latents (n_trials, n_ms, 3) from raw initial states (n_trials, 3)."""
    out = np.empty((initial_states.shape[0], n_ms, 3))
    state = initial_states.astype(np.float64)
    for step in range(n_ms):
        out[:, step] = state
        state = _lorenz_step(state, dt)
    return (out - LORENZ_MEAN) / LORENZ_STD


@dataclass
class _Recording:
    """One NWB file's worth of generated data, on its own 1 ms timeline."""

    starts_ms: np.ndarray  # (n_trials,) trial start
    conditions: np.ndarray  # (n_trials, 2) trial_type, trial_version
    splits: np.ndarray  # (n_trials,) str
    latents: np.ndarray  # (n_ms, 3) float32, zero between trials
    rt_ms: np.ndarray  # (n_trials,) reaction time
    n_ms: int


def _layout_recording(settings: SyntheticSettings, rng: np.random.Generator, condition_states: np.ndarray,
                      splits: np.ndarray) -> _Recording:
    n_trials = len(splits)
    period = settings.trial_length_ms + settings.gap_ms
    starts = settings.gap_ms + period * np.arange(n_trials)
    n_ms = int(starts[-1] + period)
    condition_index = rng.integers(settings.n_conditions, size=n_trials)
    conditions = np.stack([condition_index // settings.n_trial_versions + 1,
                           condition_index % settings.n_trial_versions], axis=1)
    noise = rng.normal(size=(n_trials, 3)) * settings.initial_state_noise * LORENZ_STD
    latents_by_trial = trial_latents(condition_states[condition_index] + noise, settings.trial_length_ms,
                                     settings.lorenz_speed)
    latents = np.zeros((n_ms, 3), dtype=np.float32)
    for start, trial in zip(starts, latents_by_trial):
        latents[start:start + settings.trial_length_ms] = trial
    rt = rng.integers(200, 320, size=n_trials)
    return _Recording(starts, conditions, splits, latents, rt, n_ms)


def _draw_spikes(latents: np.ndarray, weight: np.ndarray, bias: np.ndarray, rng: np.random.Generator,
                 observed: np.ndarray | None = None) -> list[np.ndarray]:
    """Poisson spike times (seconds) per unit, drawn per ms in chunks of CHUNK_MS.

    A spike drawn in ms k is placed at (k + 0.5) / 1000 s, which nlb_tools bins back into ms k.
    observed: optional (n_ms,) bool; no spikes are drawn outside it.
    """
    n_ms, n_units = latents.shape[0], weight.shape[1]
    times_ms, units = [], []
    for start in range(0, n_ms, CHUNK_MS):
        chunk = latents[start:start + CHUNK_MS].astype(np.float64)
        counts = rng.poisson(np.exp(chunk @ weight + bias))
        if observed is not None:
            counts[~observed[start:start + CHUNK_MS]] = 0
        ms, unit = np.nonzero(counts)
        repeats = counts[ms, unit]
        times_ms.append(np.repeat(ms + start, repeats))
        units.append(np.repeat(unit, repeats))
    times_ms, units = np.concatenate(times_ms), np.concatenate(units)
    order = np.lexsort((times_ms, units))
    times = (times_ms[order] + 0.5) / 1000.0
    bounds = np.searchsorted(units[order], np.arange(n_units + 1))
    return [times[bounds[i]:bounds[i + 1]] for i in range(n_units)]


def _behavior(settings: SyntheticSettings, latents: np.ndarray, readout: np.ndarray,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """hand_vel (n_ms, 2) = readout of the latent `behavior_lag_ms` earlier, plus position series."""
    lag = settings.behavior_lag_ms
    lagged = np.zeros_like(latents, dtype=np.float64)
    lagged[lag:] = latents[:latents.shape[0] - lag]
    velocity = lagged @ readout
    velocity += rng.normal(size=velocity.shape) * settings.behavior_noise * velocity.std()
    position = np.cumsum(velocity, axis=0) / 1000.0
    return {"hand_vel": velocity, "hand_pos": position, "cursor_pos": position.copy(),
            "eye_pos": 0.5 * position + 0.1 * lagged[:, 1:3]}


def _nwb_file(settings: SyntheticSettings, role: str):
    from pynwb import NWBFile

    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    return NWBFile(
        session_description=f"Synthetic Lorenz-driven Poisson population in the NLB MC_Maze layout ({role})",
        identifier=f"lfads-synthetic-{SESSION}-seed{settings.seed}-{role}",
        session_start_time=start, file_create_date=start, session_id=SESSION,
    )


def _add_units(nwbfile, spike_times: list[np.ndarray], unit_ids: np.ndarray, heldout: np.ndarray,
               obs_intervals: np.ndarray) -> None:
    nwbfile.add_unit_column(name="heldout", description="held-out unit (its spikes are predicted, not seen)")
    for uid, times, is_heldout in zip(unit_ids, spike_times, heldout):
        nwbfile.add_unit(id=int(uid), spike_times=times, obs_intervals=obs_intervals, heldout=bool(is_heldout))


def _add_trials(nwbfile, recording: _Recording, settings: SyntheticSettings, with_conditions: bool) -> None:
    columns = {
        "split": "NLB data split",
        "target_on_time": "time the targets appeared",
        "go_cue_time": "time of the go cue",
        "move_onset_time": "time of movement onset",
        "rt": "reaction time (s)",
        "delay": "target-on to go-cue delay (s)",
    }
    if with_conditions:
        columns.update({"trial_type": "maze condition", "trial_version": "maze version",
                        "maze_id": "maze identifier", "success": "trial succeeded",
                        "num_targets": "number of targets", "active_target": "index of the reached target"})
    for name, description in columns.items():
        nwbfile.add_trial_column(name=name, description=description)
    for i, start_ms in enumerate(recording.starts_ms):
        start = start_ms / 1000.0
        move_onset = start + settings.move_onset_ms / 1000.0
        go_cue = move_onset - recording.rt_ms[i] / 1000.0
        target_on = start + 0.02
        row = dict(start_time=start, stop_time=start + settings.trial_length_ms / 1000.0,
                   split=str(recording.splits[i]), target_on_time=target_on, go_cue_time=go_cue,
                   move_onset_time=move_onset, rt=recording.rt_ms[i] / 1000.0, delay=go_cue - target_on)
        if with_conditions:
            trial_type, version = (int(v) for v in recording.conditions[i])
            row.update(trial_type=trial_type, trial_version=version,
                       maze_id=trial_type * 10 + version, success=True, num_targets=1, active_target=0)
        nwbfile.add_trial(**row)


def _add_behavior(nwbfile, series: dict[str, np.ndarray]) -> None:
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import TimeSeries

    module = nwbfile.create_processing_module("behavior", "hand, cursor and eye kinematics at 1 ms")
    units = {"hand_vel": "mm/s", "hand_pos": "mm", "cursor_pos": "mm", "eye_pos": "mm"}
    for name, data in series.items():
        module.add(TimeSeries(name=name, data=H5DataIO(data, compression="gzip", shuffle=True), unit=units[name], rate=1000.0, starting_time=0.0,
                              comments="columns=[x,y]", description=f"synthetic {name}"))


def _write_nwb(nwbfile, path: Path) -> None:
    from pynwb import NWBHDF5IO

    with atomic_path(path) as tmp, NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwbfile)


def _write_truth(path: Path, recording: _Recording, weight, bias, unit_ids, heldout, settings) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.create_dataset("latents", data=recording.latents, compression="gzip", shuffle=True)
        handle["readout_weight"] = weight.astype(np.float32)
        handle["readout_bias"] = bias.astype(np.float32)
        handle["unit_ids"] = unit_ids.astype(np.int64)
        handle["heldout"] = heldout
        handle["trial_start_ms"] = recording.starts_ms.astype(np.int64)
        handle["conditions"] = recording.conditions.astype(np.int64)
        handle.attrs["seed"] = settings.seed
        handle.attrs["settings"] = json.dumps(dataclasses.asdict(settings))


def write_synthetic_dataset(out_dir: str | Path, settings: SyntheticSettings | None = None) -> dict[str, Path]:
    """Write the train/test NWB files and their truth files under `out_dir`; return their paths.

    Keys of the result: "train", "test" (NWB) and "train_truth", "test_truth".
    """
    settings = settings or SyntheticSettings()
    out_dir = Path(out_dir)
    rng = np.random.default_rng(settings.seed)
    started = time.perf_counter()

    # Condition initial states: points on the attractor, after a burn-in.
    burn_in = trial_latents(np.array([[1.0, 1.0, 1.0]]), 20_000, 0.005)[0] * LORENZ_STD + LORENZ_MEAN
    condition_states = burn_in[rng.choice(np.arange(5_000, 20_000), settings.n_conditions, replace=False)]
    weight = rng.normal(size=(3, settings.n_units)) * settings.rate_modulation / np.sqrt(3)
    bias = np.log(settings.base_rate_hz / 1000.0) + 0.1 * rng.normal(size=settings.n_units)
    velocity_readout = rng.normal(size=(3, 2)) * 100.0
    unit_ids = np.arange(settings.n_units)
    heldout = unit_ids >= settings.n_heldin

    n_train_file = settings.n_train_trials + settings.n_val_trials
    splits = np.array(["train"] * settings.n_train_trials + ["val"] * settings.n_val_trials)
    train = _layout_recording(settings, rng, condition_states, rng.permutation(splits))
    test = _layout_recording(settings, rng, condition_states, np.array(["test"] * settings.n_test_trials))
    log.info("latents: %d + %d trials (%.1f s)", n_train_file, settings.n_test_trials,
             time.perf_counter() - started)

    paths = {role: out_dir / path for role, path in ASSET_PATHS.items()}
    paths.update({f"{role}_truth": out_dir / path for role, path in TRUTH_PATHS.items()})

    # Train file: every unit, observed throughout.
    spikes = _draw_spikes(train.latents, weight, bias, rng)
    nwbfile = _nwb_file(settings, "train")
    _add_units(nwbfile, spikes, unit_ids, heldout, np.array([[0.0, train.n_ms / 1000.0]]))
    _add_trials(nwbfile, train, settings, with_conditions=True)
    _add_behavior(nwbfile, _behavior(settings, train.latents, velocity_readout, rng))
    _write_nwb(nwbfile, paths["train"])
    _write_truth(paths["train_truth"], train, weight, bias, unit_ids, heldout, settings)
    log.info("wrote %s (%.1f s)", paths["train"], time.perf_counter() - started)

    # Test file: held-in units only, observed during the test trials only.
    observed = np.zeros(test.n_ms, dtype=bool)
    intervals = []
    for start in test.starts_ms:
        observed[start:start + settings.trial_length_ms] = True
        intervals.append([start / 1000.0, (start + settings.trial_length_ms) / 1000.0])
    spikes = _draw_spikes(test.latents, weight[:, ~heldout], bias[~heldout], rng, observed)
    nwbfile = _nwb_file(settings, "test")
    _add_units(nwbfile, spikes, unit_ids[~heldout], heldout[~heldout], np.array(intervals))
    _add_trials(nwbfile, test, settings, with_conditions=False)
    _write_nwb(nwbfile, paths["test"])
    _write_truth(paths["test_truth"], test, weight, bias, unit_ids, heldout, settings)
    log.info("wrote %s (%.1f s)", paths["test"], time.perf_counter() - started)
    return paths


def true_log_rates(handle: h5py.File, start_ms: int, stop_ms: int) -> np.ndarray:
    """log(spikes per ms) of every unit over ms [start_ms, stop_ms) of a truth file; (n_ms, n_units)."""
    latents = handle["latents"][start_ms:stop_ms].astype(np.float64)
    return latents @ handle["readout_weight"][()].astype(np.float64) + handle["readout_bias"][()]


def bin_true_rates(truth_path: str | Path, bin_width_ms: int) -> np.ndarray:
    """True rates in spikes per bin, (n_bins, n_units), binned like nlb_tools' NWBDataset.resample.

    Bin k sums ms [k * w, (k + 1) * w); a trailing partial bin is summed over the
    ms it has, as nlb_tools does for spikes.
    """
    with h5py.File(truth_path, "r") as handle:
        n_ms = handle["latents"].shape[0]
        n_bins = -(-n_ms // bin_width_ms)
        out = np.empty((n_bins, handle["readout_bias"].shape[0]), dtype=np.float32)
        chunk = (CHUNK_MS // bin_width_ms) * bin_width_ms
        for start in range(0, n_ms, chunk):
            rates = np.exp(true_log_rates(handle, start, min(start + chunk, n_ms)))
            pad = -rates.shape[0] % bin_width_ms
            rates = np.vstack([rates, np.zeros((pad, rates.shape[1]))])
            first = start // bin_width_ms
            out[first:first + rates.shape[0] // bin_width_ms] = rates.reshape(
                -1, bin_width_ms, rates.shape[1]).sum(axis=1)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write sub-Synth/... into")
    parser.add_argument("--seed", type=int, help="overrides the settings' seed")
    parser.add_argument("--config", type=Path, help="YAML mapping of SyntheticSettings fields")


def run(args: argparse.Namespace) -> int:
    import yaml

    from lfads.logs import configure

    configure()
    values = yaml.safe_load(args.config.read_text()) if args.config else {}
    if args.seed is not None:
        values["seed"] = args.seed
    paths = write_synthetic_dataset(args.out, SyntheticSettings.from_dict(values))
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0
