"""EvalAI submissions in nlb_tools' format (rule `submission`), and those rates for local scoring.

The inference file holds rates for the model's train/valid split of the NLB
train trials and for the eval trials (lfads/README.md). nlb_tools wants the
NLB train trials in its own order, so rows are put back with `nlb_index`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lfads.data.layouts import group_name
from lfads.formats.inferred import read_inferred
from lfads.formats.prepared import PreparedFile, read_prepared
from lfads.infra.io import atomic_path


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
        np.maximum(array, 1e-9).astype(np.float32) for array in (train, evaluation)
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
