"""Score a run's inferred rates with nlb_tools, and write EvalAI submissions (rules `evaluate`, `submission`).

The inference file holds rates for the model's train/valid split of the NLB
train trials and for the eval trials (lfads/README.md). nlb_tools wants the
NLB train trials in its own order, so rows are put back with `nlb_index`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np

from lfads.io import atomic_path, write_json
from lfads.targets import group_name

log = logging.getLogger(__name__)


def _nlb_order(handle: h5py.File, key: str, prepared: h5py.File) -> np.ndarray:
    """Rows of `key` for every NLB train trial, in nlb_tools' order (from the train and valid groups)."""
    rows = np.concatenate([prepared["train/nlb_index"][()], prepared["valid/nlb_index"][()]])
    values = np.concatenate([handle[f"train/{key}"][()], handle[f"valid/{key}"][()]])
    return values[np.argsort(rows)]


def nlb_submission(prepared_path: str | Path, inferred_path: str | Path) -> dict:
    """nlb_tools submission dict {group: {train_rates_heldin, ..., eval_rates_heldout_forward}}.

    Rates are spikes per bin, float32, clipped at a tiny positive floor
    because nlb_tools refuses zeros in its Poisson likelihood.
    """
    with h5py.File(prepared_path, "r") as prepared, h5py.File(inferred_path, "r") as inferred:
        n_heldin, n_obs = int(prepared.attrs["n_heldin"]), int(prepared.attrs["n_obs_bins"])
        name = group_name(str(prepared.attrs["nlb_layout"]), int(prepared.attrs["bin_width_ms"]))
        train = _nlb_order(inferred, "rates", prepared)
        evaluation = inferred["eval/rates"][()]
    train, evaluation = (np.maximum(array, 1e-9).astype(np.float32) for array in (train, evaluation))
    return {name: {
        "train_rates_heldin": train[:, :n_obs, :n_heldin],
        "train_rates_heldout": train[:, :n_obs, n_heldin:],
        "eval_rates_heldin": evaluation[:, :n_obs, :n_heldin],
        "eval_rates_heldout": evaluation[:, :n_obs, n_heldin:],
        "eval_rates_heldin_forward": evaluation[:, n_obs:, :n_heldin],
        "eval_rates_heldout_forward": evaluation[:, n_obs:, n_heldin:],
    }}


def rate_r2(true_rates: np.ndarray, rates: np.ndarray) -> float:
    """R² of inferred vs true rates, per neuron over all trials and bins, averaged over neurons."""
    from sklearn.metrics import r2_score

    n_neurons = true_rates.shape[-1]
    return float(r2_score(true_rates.reshape(-1, n_neurons), rates.reshape(-1, n_neurons)))


def evaluate_run(prepared_path: str | Path, inferred_path: str | Path, targets_path: str | Path | None,
                 out_path: str | Path) -> dict:
    """Write a JSON of nlb_tools' metrics (val phase) and, on synthetic data, rate R² vs truth."""
    from nlb_tools.evaluation import evaluate

    submission = nlb_submission(prepared_path, inferred_path)
    metrics: dict[str, float] = {}
    if targets_path is not None:
        (result,) = evaluate(str(targets_path), submission)
        (scores,) = result.values()
        metrics.update({key.split("] ")[-1]: float(value) for key, value in scores.items()})
    with h5py.File(prepared_path, "r") as prepared, h5py.File(inferred_path, "r") as inferred:
        if prepared.attrs.get("has_truth", False):
            metrics["rate R2"] = rate_r2(prepared["eval/truth"][()], inferred["eval/rates"][()])
            metrics["train rate R2"] = rate_r2(_nlb_order(prepared, "truth", prepared),
                                               _nlb_order(inferred, "rates", prepared))
    write_json(out_path, metrics)
    log.info("metrics: %s", ", ".join(f"{key} {value:.4f}" for key, value in sorted(metrics.items())))
    return metrics


def write_submission(prepared_path: str | Path, inferred_path: str | Path, out_path: str | Path) -> Path:
    """EvalAI-ready HDF5 in nlb_tools' submission format."""
    from nlb_tools.make_tensors import save_to_h5

    submission = nlb_submission(prepared_path, inferred_path)
    with atomic_path(out_path) as tmp:
        save_to_h5(submission, str(tmp))
    return Path(out_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--inferred", type=Path, required=True)
    parser.add_argument("--targets", type=Path)
    parser.add_argument("--out", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    from lfads.logs import configure

    configure()
    evaluate_run(args.prepared, args.inferred, args.targets, args.out)
    return 0
