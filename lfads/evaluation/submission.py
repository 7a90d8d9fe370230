"""EvalAI submissions in nlb_tools' format (rule `submission`), and those rates for local scoring.

The inference file holds rates for the model's train/valid split of the NLB
train trials and for the eval trials (lfads/README.md). nlb_tools wants the
NLB train trials in its own order, so rows are put back with `nlb_index`.
The submission holds the rates of the best run or, when the configfile asks for one, of the
ensemble of the best runs if its validation Poisson loss is lower (`submitted_run`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lfads.data.layouts import group_name
from lfads.evaluation.ensemble import RATE_FLOOR
from lfads.formats.inferred import read_inferred
from lfads.formats.prepared import PreparedFile, read_prepared
from lfads.infra.io import atomic_path

log = logging.getLogger(__name__)


def nlb_order(prepared: PreparedFile, train: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rows for every NLB train trial in nlb_tools' order, from the rows of the model's train and
    valid splits (`prepared` read with its nlb_index)."""
    rows = np.concatenate([prepared.splits["train"].nlb_index, prepared.splits["valid"].nlb_index])
    return np.concatenate([train, valid])[np.argsort(rows)]


def nlb_submission(prepared_path: str | Path, inferred_path: str | Path) -> dict:
    """nlb_tools submission dict {group: {train_rates_heldin, ..., eval_rates_heldout_forward}}.

    Rates are spikes per bin, float32, clipped at a tiny positive floor
    because nlb_tools refuses zeros in its Poisson likelihood.
    """
    prepared = read_prepared(prepared_path, keys=("nlb_index",))
    inferred = read_inferred(inferred_path, keys=("rates",)).splits
    attributes = prepared.attributes
    n_heldin, n_obs = attributes.n_heldin, attributes.n_obs_bins
    name = group_name(attributes.nlb_layout, attributes.bin_width_ms)
    train = nlb_order(prepared, inferred["train"].rates, inferred["valid"].rates)
    evaluation = inferred["eval"].rates
    train, evaluation = (
        np.maximum(array, RATE_FLOOR).astype(np.float32) for array in (train, evaluation)
    )
    return {
        name: {
            "train_rates_heldin": train[:, :n_obs, :n_heldin],
            "train_rates_heldout": train[:, :n_obs, n_heldin:],
            "eval_rates_heldin": evaluation[:, :n_obs, :n_heldin],
            "eval_rates_heldout": evaluation[:, :n_obs, n_heldin:],
            "eval_rates_heldin_forward": evaluation[:, n_obs:, :n_heldin],
            "eval_rates_heldout_forward": evaluation[:, n_obs:, n_heldin:],
        }
    }


def write_submission(
    prepared_path: str | Path, inferred_path: str | Path, out_path: str | Path
) -> Path:
    """EvalAI-ready HDF5 in nlb_tools' submission format."""
    from nlb_tools.make_tensors import save_to_h5

    submission = nlb_submission(prepared_path, inferred_path)
    with atomic_path(out_path) as tmp:
        save_to_h5(submission, str(tmp))
    return Path(out_path)


def submitted_run(summary_tsv: str | Path, run_dir: str | Path) -> str:
    """The summary row whose rates are submitted: the best run, or an ensemble of the best runs
    whose validation Poisson loss is below the best run's.

    Both losses are computed the same way from each row's own inferred.h5 (lfads/evaluation/
    ensemble.py): the ensemble's is its row's best_valid_recon_smoothed, the best run's is in
    the ensemble's members.tsv (the best run is its first member). A tie keeps the best run.
    """
    from lfads.evaluation.aggregate import BEST_SELECTION, best_run, read_summary
    from lfads.evaluation.ensemble import MEMBERS_TSV, is_ensemble, read_members

    chosen = best_run(summary_tsv)
    table = read_summary(summary_tsv, scored_only=True)
    for row in table[table.run.map(is_ensemble)].itertuples():
        members_tsv = Path(run_dir) / row.run / MEMBERS_TSV
        members = read_members(members_tsv)
        if str(members.run[0]) != chosen:
            raise ValueError(
                f"{members_tsv}: the best member is {members.run[0]} but the summary's best run "
                f"is {chosen} ({summary_tsv}); the two are out of date: rerun the workflow"
            )
        ensemble_loss, best_loss = getattr(row, BEST_SELECTION), members.valid_poisson_loss[0]
        better = ensemble_loss < best_loss
        log.info(
            "%s: validation Poisson loss %.6f, the best run %s's %.6f: submitting %s",
            row.run,
            ensemble_loss,
            chosen,
            best_loss,
            row.run if better else chosen,
        )
        if better:
            chosen = str(row.run)
    return chosen
