"""EvalAI submissions in nlb_tools' format (rule `submission`), and the same rates for local scoring.

The inference file holds rates for the model's train/valid split of the NLB
train trials and for the eval trials (lfads/README.md). nlb_tools wants the
NLB train trials in its own order, so rows are put back with `nlb_index`.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from lfads.data.layouts import group_name
from lfads.infra.io import atomic_path


def nlb_order(handle: h5py.File, key: str, prepared: h5py.File) -> np.ndarray:
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
        train = nlb_order(inferred, "rates", prepared)
        evaluation = inferred["eval/rates"][()]
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
