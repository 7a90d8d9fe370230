"""What a run's scores are compared with (rule `aggregate`, references.json): NLB's smoothing
baseline and, on synthetic data, the true rates, both scored with nlb_tools' `evaluate` on the
eval trials.

The smoothing baseline follows NLB's: held-in spikes smoothed with a Gaussian kernel
(SMOOTHING_KERNEL_SD_MS), then one Poisson GLM per held-out neuron from the smoothed held-in
spikes to its spikes, fit on the NLB train trials' observed bins. It predicts no forward bins, so
its fp-bps is left out. Only the val phase has the eval trials' held-out spikes, so the test phase
has no references.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lfads.data.layouts import group_name
from lfads.evaluation.ensemble import RATE_FLOOR
from lfads.evaluation.submission import nlb_order, submission_group
from lfads.formats.prepared import PreparedFile, read_prepared
from lfads.formats.targets import read_targets
from lfads.infra.io import write_json

log = logging.getLogger(__name__)

SMOOTHING_KERNEL_SD_MS = 50.0  # NLB's smoothing baseline uses a kernel of 50 ms
SMOOTHING_GLM_ALPHA = 0.01  # L2 penalty of each held-out neuron's Poisson GLM
SMOOTHING_MAX_SAMPLES = 30_000  # bins the GLMs are fit on at most (a fixed random subset)
# Keys of references.json: one entry per reference, each {metric: value, ...}.
SMOOTHING, TRUE_RATES = "smoothing", "true rates"
PER_NEURON_CO_BPS = "per-neuron co-bps"  # smoothing entry: co-bps of each held-out neuron


def smooth_spikes(spikes: np.ndarray, bin_width_ms: float, kernel_sd_ms: float) -> np.ndarray:
    """Gaussian-smoothed spike counts along time, trial by trial.

    spikes: (N, T, neurons) spikes per bin; returns the same shape, spikes per bin.
    """
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(
        np.nan_to_num(spikes.astype(np.float64)),
        kernel_sd_ms / bin_width_ms,
        axis=1,
        mode="nearest",
    )


def bits_per_spike_per_neuron(rates: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """nlb_tools' co-bps of each neuron alone: (neurons,) bits per spike, NaN for a silent neuron.

    rates, spikes: (N, T, neurons) in spikes per bin; NaN spikes are left out.
    """
    from nlb_tools.evaluation import bits_per_spike

    scores = np.full(spikes.shape[-1], np.nan)
    for neuron in range(spikes.shape[-1]):
        if np.nansum(spikes[..., neuron]) > 0:
            scores[neuron] = bits_per_spike(
                np.maximum(rates[..., neuron : neuron + 1].astype(np.float64), RATE_FLOOR),
                spikes[..., neuron : neuron + 1].astype(np.float64),
            )
    return scores


def _poisson_glms(inputs: np.ndarray, counts: np.ndarray, seed: int = 0) -> list:
    """One fitted sklearn PoissonRegressor per column of counts. inputs: (samples, features)."""
    from sklearn.linear_model import PoissonRegressor

    keep = np.isfinite(counts).all(1)
    inputs, counts = inputs[keep], counts[keep]
    if len(inputs) > SMOOTHING_MAX_SAMPLES:
        rows = np.random.default_rng(seed).choice(len(inputs), SMOOTHING_MAX_SAMPLES, replace=False)
        inputs, counts = inputs[rows], counts[rows]
    return [
        PoissonRegressor(alpha=SMOOTHING_GLM_ALPHA, max_iter=300).fit(inputs, counts[:, column])
        for column in range(counts.shape[1])
    ]


def smoothing_submission(prepared: PreparedFile) -> dict[str, np.ndarray]:
    """The smoothing baseline's rates in nlb_tools' submission keys (spikes per bin, float32).

    `prepared` read with encod_data, recon_data and nlb_index. Forward bins hold each held-out
    neuron's mean rate (the baseline predicts none).
    """
    attributes = prepared.attributes
    n_heldin, n_obs = attributes.n_heldin, attributes.n_obs_bins
    splits = prepared.splits

    def smoothed(split: str) -> np.ndarray:
        return smooth_spikes(
            splits[split].encod_data, attributes.bin_width_ms, SMOOTHING_KERNEL_SD_MS
        )

    train_heldin = nlb_order(prepared, smoothed("train"), smoothed("valid"))
    train_heldout_counts = nlb_order(
        prepared,
        splits["train"].recon_data[:, :n_obs, n_heldin:],
        splits["valid"].recon_data[:, :n_obs, n_heldin:],
    )
    eval_heldin = smoothed("eval")
    flat = train_heldin.reshape(-1, n_heldin)
    scale = flat.std(0) + 1e-6  # standardised inputs: one penalty suits every neuron
    centre = flat.mean(0)
    n_heldout = train_heldout_counts.shape[2]
    glms = _poisson_glms((flat - centre) / scale, train_heldout_counts.reshape(-1, n_heldout))

    def predict(heldin: np.ndarray) -> np.ndarray:
        inputs = (heldin.reshape(-1, n_heldin) - centre) / scale
        columns = [glm.predict(inputs) for glm in glms]
        return np.stack(columns, axis=1).reshape(heldin.shape[:2] + (len(glms),))

    forward_mean = np.nanmean(
        np.concatenate([splits[s].recon_data[:, n_obs:, :] for s in ("train", "valid")]),
        axis=(0, 1),
    )
    n_eval, n_fwd = len(eval_heldin), attributes.n_fwd_bins
    forward = np.broadcast_to(forward_mean, (n_eval, n_fwd, len(forward_mean)))
    arrays = {
        "train_rates_heldin": train_heldin,
        "train_rates_heldout": predict(train_heldin),
        "eval_rates_heldin": eval_heldin,
        "eval_rates_heldout": predict(eval_heldin),
        "eval_rates_heldin_forward": forward[..., :n_heldin],
        "eval_rates_heldout_forward": forward[..., n_heldin:],
    }
    return {key: np.maximum(value, RATE_FLOOR).astype(np.float32) for key, value in arrays.items()}


def truth_submission(prepared: PreparedFile) -> dict[str, np.ndarray]:
    """The true rates in nlb_tools' submission keys; `prepared` read with truth and nlb_index."""
    n_heldin, n_obs = prepared.attributes.n_heldin, prepared.attributes.n_obs_bins
    truth = {split: arrays.truth for split, arrays in prepared.splits.items()}
    train = nlb_order(prepared, truth["train"], truth["valid"])
    evaluation = truth["eval"]
    return submission_group(train, evaluation, n_obs, n_heldin)


def _nlb_scores(targets_path: Path, group: str, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    from nlb_tools.evaluation import evaluate

    (result,) = evaluate(str(targets_path), {group: arrays})
    (scores,) = result.values()
    return {key.split("] ")[-1]: float(value) for key, value in scores.items()}


def references(prepared_path: str | Path, targets_path: str | Path | None) -> dict[str, dict]:
    """{SMOOTHING: scores, TRUE_RATES: scores (synthetic data only)}; {} without targets."""
    if targets_path is None:
        return {}
    prepared = read_prepared(prepared_path, keys=("encod_data", "recon_data", "nlb_index", "truth"))
    attributes = prepared.attributes
    group = group_name(attributes.nlb_layout, attributes.bin_width_ms)
    smoothing = smoothing_submission(prepared)
    scores = _nlb_scores(Path(targets_path), group, smoothing)
    scores.pop("fp-bps", None)
    eval_spikes = read_targets(targets_path, group, keys=("eval_spikes_heldout",))
    found = {
        SMOOTHING: {
            **scores,
            "kernel_sd_ms": SMOOTHING_KERNEL_SD_MS,
            PER_NEURON_CO_BPS: bits_per_spike_per_neuron(
                smoothing["eval_rates_heldout"], eval_spikes.eval_spikes_heldout
            ).tolist(),
        }
    }
    if attributes.has_truth:
        found[TRUE_RATES] = _nlb_scores(Path(targets_path), group, truth_submission(prepared))
    return found


def write_references(
    prepared_path: str | Path, targets_path: str | Path | None, out_path: str | Path
) -> dict[str, dict]:
    """Write `references` as JSON (NaN for a silent neuron's co-bps is written as null)."""
    found = references(prepared_path, targets_path)
    for name, scores in found.items():
        if PER_NEURON_CO_BPS in scores:
            scores[PER_NEURON_CO_BPS] = [
                None if np.isnan(value) else value for value in scores[PER_NEURON_CO_BPS]
            ]
        log.info(
            "%s: %s",
            name,
            ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)),
        )
    write_json(out_path, found)
    return found
