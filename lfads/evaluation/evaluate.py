"""Score a run's rates with nlb_tools and against synthetic data's true rates (rule `evaluate`).

The inference file holds rates for the model's train/valid split of the NLB
train trials and for the eval trials (lfads/README.md). nlb_tools wants the
NLB train trials in its own order, so rows are put back with `nlb_index`.
A run that diverged (its inference file is a placeholder) is not scored: its metrics.json
holds DIVERGED_METRICS instead.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from lfads.evaluation.submission import nlb_order, nlb_submission
from lfads.formats.inferred import DIVERGED, DIVERGED_EPOCH, read_inferred
from lfads.formats.prepared import read_prepared
from lfads.formats.runs import DIVERGED_METRICS, write_scores
from lfads.formats.targets import check_targets

log = logging.getLogger(__name__)


def rate_r2(true_rates: np.ndarray, rates: np.ndarray) -> float:
    """R² of inferred vs true rates, per neuron over all trials and bins, averaged over neurons."""
    from sklearn.metrics import r2_score

    n_neurons = true_rates.shape[-1]
    return float(r2_score(true_rates.reshape(-1, n_neurons), rates.reshape(-1, n_neurons)))


def evaluate_run(
    prepared_path: str | Path,
    inferred_path: str | Path,
    targets_path: str | Path | None,
    out_path: str | Path,
) -> dict:
    """Write a JSON of nlb_tools' metrics (val phase) and, on synthetic data, rate R² vs truth;
    for a run that diverged, DIVERGED_METRICS instead."""
    from nlb_tools.evaluation import evaluate

    placeholder = read_inferred(inferred_path, keys=()).attrs
    if DIVERGED in placeholder:
        reason = str(placeholder[DIVERGED])
        metrics = dict(
            zip(DIVERGED_METRICS, (True, int(placeholder[DIVERGED_EPOCH]), reason), strict=True)
        )
        write_scores(out_path, metrics)
        log.warning("%s: the run diverged, so it is not scored: %s", inferred_path, reason)
        return metrics
    submission = nlb_submission(prepared_path, inferred_path)
    metrics: dict[str, float] = {}
    if targets_path is not None:
        check_targets(targets_path)
        (result,) = evaluate(str(targets_path), submission)
        (scores,) = result.values()
        metrics.update({key.split("] ")[-1]: float(value) for key, value in scores.items()})
    prepared = read_prepared(prepared_path, keys=("nlb_index", "truth"))
    if prepared.attributes.has_truth:
        inferred = read_inferred(inferred_path, keys=("rates",)).splits
        truth = {split: arrays.truth for split, arrays in prepared.splits.items()}
        metrics["rate R2"] = rate_r2(truth["eval"], inferred["eval"].rates)
        metrics["train rate R2"] = rate_r2(
            nlb_order(prepared, truth["train"], truth["valid"]),
            nlb_order(prepared, inferred["train"].rates, inferred["valid"].rates),
        )
    write_scores(out_path, metrics)
    log.info(
        "metrics: %s", ", ".join(f"{key} {value:.4f}" for key, value in sorted(metrics.items()))
    )
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepared", type=Path, required=True, help="the run's prepared file")
    parser.add_argument(
        "--inferred", type=Path, required=True, help="the run's inference file (inferred.h5)"
    )
    parser.add_argument(
        "--targets", type=Path, help="nlb_tools targets file (val phase; omit in the test phase)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the metrics JSON to write")


def run(args: argparse.Namespace) -> int:
    evaluate_run(args.prepared, args.inferred, args.targets, args.out)
    return 0
