"""Bin NLB NWB files and write the model's tensors (rule `prepare`).

The file layout is documented in lfads/README.md ("Prepared tensors"). Every
tensor comes from nlb_tools' own calls (`make_train_input_tensors`,
`make_eval_input_tensors`), so windows, bins and trial order are exactly the
benchmark's.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfads.data.layouts import BIN_WIDTHS_MS, layout
from lfads.data.nwb_checks import check_nwb_file
from lfads.data.truth import bin_true_rates, read_units
from lfads.formats.prepared import PreparedAttributes, PreparedSplit, write_prepared

log = logging.getLogger(__name__)

TRUTH_FIELDS = {"spk_field": "truth_heldin", "hospk_field": "truth_heldout"}
# The model's train/valid split of the NLB train trials (the configfile's `prepare` keys).
DEFAULT_VALID_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0


@dataclass(frozen=True)
class NLBTensors:
    """Trials x bins x neurons arrays of one set of trials, in nlb_tools' order."""

    heldin: np.ndarray  # (N, T, n_heldin) spikes per bin
    heldout: np.ndarray  # (N, T, n_heldout)
    heldin_forward: np.ndarray  # (N, F, n_heldin)
    heldout_forward: np.ndarray  # (N, F, n_heldout)

    @property
    def recon(self) -> np.ndarray:
        """(N, T + F, n_heldin + n_heldout): [held-in | held-out] over [observed | forward]."""
        observed = np.concatenate([self.heldin, self.heldout], axis=2)
        forward = np.concatenate([self.heldin_forward, self.heldout_forward], axis=2)
        return np.concatenate([observed, forward], axis=1).astype(np.float32)


def load_dataset(nwb_path: Path, bin_width_ms: int):
    """nlb_tools NWBDataset of `nwb_path`, resampled to `bin_width_ms`."""
    from nlb_tools.nwb_interface import NWBDataset

    started = time.perf_counter()
    dataset = NWBDataset(str(nwb_path))
    dataset.resample(bin_width_ms)
    log.info(
        "loaded %s at %d ms in %.1f s", nwb_path.name, bin_width_ms, time.perf_counter() - started
    )
    return dataset


def _train_split(phase: str) -> str | list[str]:
    """nlb_tools' trial_split of the trials the model trains on: train, or train and val (test)."""
    return "train" if phase == "val" else ["train", "val"]


def trial_mask(dataset, trial_split: str | list[str]) -> np.ndarray:
    """(n_trials,) bool: the trials nlb_tools selects for `trial_split` (one split or several).

    The selection every nlb_tools tensor function makes from its trial_split
    argument; tests/test_prepare.py checks it against nlb_tools' own.
    """
    splits = [trial_split] if isinstance(trial_split, str) else trial_split
    return dataset.trial_info.split.isin(splits).to_numpy()


def _tensors(
    dataset, nlb_layout: str, trial_split, fields: dict | None = None
) -> tuple[NLBTensors, dict]:
    from nlb_tools.make_tensors import make_train_input_tensors

    out = make_train_input_tensors(
        dataset,
        nlb_layout,
        trial_split=trial_split,
        update_params=fields,
        save_file=False,
        include_forward_pred=True,
        include_behavior=fields is None and layout(nlb_layout).has_behavior_series,
    )
    tensors = NLBTensors(
        out["train_spikes_heldin"],
        out["train_spikes_heldout"],
        out["train_spikes_heldin_forward"],
        out["train_spikes_heldout_forward"],
    )
    return tensors, out


def condition_indices(dataset, nlb_layout: str, selected: np.ndarray) -> np.ndarray | None:
    """PSTH condition index of each `selected` trial (nlb_tools' sorted conditions), or None.

    selected: (n_trials,) bool mask of `dataset.trial_info`, e.g. from `trial_mask`.

    Trials whose alignment field is missing are dropped, as nlb_tools drops them
    from its tensors. -1 marks a trial without a complete condition label.
    """
    spec = layout(nlb_layout)
    if not spec.has_psth:
        return None
    fields = list(spec.psth_condition_fields)
    info = dataset.trial_info
    if not set(fields) <= set(info.columns):
        return None
    align = spec.align_field  # PSTHs are aligned like the model's window
    rows = info[np.asarray(selected) & info[align].notna().to_numpy()]
    labelled = info[info.split != "none"][fields].dropna()
    conditions = sorted(labelled.set_index(fields).index.unique().tolist())
    conditions = [c if isinstance(c, tuple) else (c,) for c in conditions]
    lookup = {condition: index for index, condition in enumerate(conditions)}
    keys = rows[fields].itertuples(index=False, name=None)
    return np.array([lookup.get(tuple(key), -1) for key in keys], dtype=np.int64)


def add_truth(dataset, truth_path: Path, bin_width_ms: int) -> None:
    """Add the synthetic ground truth, binned like the spikes, as truth_heldin/truth_heldout."""
    rates = bin_true_rates(truth_path, bin_width_ms)  # (n_bins, n_units) spikes per bin
    unit_ids, heldout = read_units(truth_path)
    n_rows = len(dataset.data)
    if rates.shape[0] < n_rows:
        raise ValueError(
            f"{truth_path}: truth covers {rates.shape[0]} bins, the NWB file {n_rows}; "
            "regenerate the synthetic dataset"
        )
    rates = rates[:n_rows]
    column_of = {int(uid): i for i, uid in enumerate(unit_ids)}
    fields = dataset.data.columns.get_level_values(0)
    for field, spike_field, mask in (
        ("truth_heldin", "spikes", ~heldout),
        ("truth_heldout", "heldout_spikes", heldout),
    ):
        # A test file has no held-out spikes; its truth still covers the held-out units.
        if spike_field in fields:
            channels = [int(c) for c in dataset.data[spike_field].columns]
        else:
            channels = [int(uid) for uid in unit_ids[mask]]
        missing = [c for c in channels if c not in column_of]
        if missing:
            raise ValueError(f"{truth_path}: no truth for units {missing[:5]} of the NWB file")
        dataset.add_continuous_data(
            rates[:, [column_of[c] for c in channels]], field, chan_names=channels
        )


def _nan_to_zero(array: np.ndarray) -> np.ndarray:
    return np.nan_to_num(array.astype(np.float32), nan=0.0)


def split_indices(n_trials: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, valid) row indices of a seeded split of `n_trials` trials."""
    order = np.random.default_rng(seed).permutation(n_trials)
    n_valid = int(round(valid_fraction * n_trials))
    if n_valid < 1 or n_valid >= n_trials:
        raise ValueError(
            f"valid_fraction {valid_fraction} leaves no train or no valid trials "
            f"out of {n_trials}; choose a value between 0 and 1 that leaves both"
        )
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def prepare(
    train_nwb: str | Path,
    test_nwb: str | Path,
    out_path: str | Path,
    nlb_layout: str,
    bin_width_ms: int,
    phase: str = "val",
    dataset_name: str = "",
    valid_fraction: float = DEFAULT_VALID_FRACTION,
    split_seed: int = DEFAULT_SPLIT_SEED,
    truth_files: dict[str, str | Path] | None = None,
) -> Path:
    """Write the prepared-tensor HDF5 file of one dataset, bin width and phase.

    truth_files: {"train": path, "test": path} of synthetic ground truth, or None.
    """
    train_nwb, test_nwb, out_path = Path(train_nwb), Path(test_nwb), Path(out_path)
    if phase not in ("val", "test"):
        raise ValueError(f"phase must be 'val' or 'test', not {phase!r}")
    check_nwb_file(train_nwb, nlb_layout, "train", phase)
    if phase == "test":
        check_nwb_file(test_nwb, nlb_layout, "test", phase)
    started = time.perf_counter()

    dataset = load_dataset(train_nwb, bin_width_ms)
    train_split = _train_split(phase)
    if truth_files:
        add_truth(dataset, Path(truth_files["train"]), bin_width_ms)
    nlb_train, raw = _tensors(dataset, nlb_layout, train_split)
    train_mask = trial_mask(dataset, train_split)
    train_conditions = condition_indices(dataset, nlb_layout, train_mask)
    behavior = raw.get("train_behavior")
    train_truth = (
        _tensors(dataset, nlb_layout, train_split, TRUTH_FIELDS)[0].recon if truth_files else None
    )

    if phase == "val":
        eval_dataset, eval_split = dataset, "val"
    else:
        eval_dataset, eval_split = load_dataset(test_nwb, bin_width_ms), "test"
        if truth_files:
            add_truth(eval_dataset, Path(truth_files["test"]), bin_width_ms)
    from nlb_tools.make_tensors import make_eval_input_tensors

    eval_heldin = make_eval_input_tensors(
        eval_dataset, nlb_layout, trial_split=eval_split, save_file=False
    )["eval_spikes_heldin"]
    eval_mask = trial_mask(eval_dataset, eval_split)
    eval_conditions = (
        condition_indices(eval_dataset, nlb_layout, eval_mask) if phase == "val" else None
    )
    eval_truth = None
    if truth_files:
        eval_truth = _tensors(eval_dataset, nlb_layout, eval_mask, TRUTH_FIELDS)[0].recon

    n_nlb_train = nlb_train.heldin.shape[0]
    for name, array in (
        ("conditions", train_conditions),
        ("trial ids", dataset.trial_info.trial_id.to_numpy()[train_mask]),
        ("behavior", behavior),
        ("truth", train_truth),
    ):
        if array is not None and array.shape[0] != n_nlb_train:
            raise RuntimeError(
                f"{train_nwb}: {array.shape[0]} trials of {name} but {n_nlb_train} of spikes"
            )
    train_rows, valid_rows = split_indices(n_nlb_train, valid_fraction, split_seed)
    train_ids = dataset.trial_info.trial_id.to_numpy()[train_mask]  # (nlb_tools' order)
    recon = nlb_train.recon
    encod = _nan_to_zero(nlb_train.heldin)
    unit_ids = {
        "heldin": np.array([int(c) for c in dataset.data["spikes"].columns]),
        "heldout": np.array([int(c) for c in dataset.data["heldout_spikes"].columns]),
    }

    attributes = PreparedAttributes(
        dataset=dataset_name,
        nlb_layout=nlb_layout,
        phase=phase,
        bin_width_ms=bin_width_ms,
        n_heldin=nlb_train.heldin.shape[2],
        n_heldout=nlb_train.heldout.shape[2],
        n_obs_bins=nlb_train.heldin.shape[1],
        n_fwd_bins=nlb_train.heldin_forward.shape[1],
        valid_fraction=valid_fraction,
        split_seed=split_seed,
        has_truth=truth_files is not None,
    )

    splits = {
        split: PreparedSplit(
            encod_data=encod[rows],
            recon_data=recon[rows],
            nlb_index=rows,
            trial_id=train_ids[rows],
            behavior=behavior[rows] if behavior is not None else None,
            condition=train_conditions[rows] if train_conditions is not None else None,
            truth=train_truth[rows] if train_truth is not None else None,
        )
        for split, rows in (("train", train_rows), ("valid", valid_rows))
    }
    splits["eval"] = PreparedSplit(
        encod_data=_nan_to_zero(eval_heldin),
        nlb_index=np.arange(eval_heldin.shape[0]),
        trial_id=eval_dataset.trial_info.trial_id.to_numpy()[eval_mask],
        condition=eval_conditions,
        truth=eval_truth,
    )
    write_prepared(out_path, attributes, splits, unit_ids)
    log.info(
        "wrote %s: %d train, %d valid, %d eval trials, %d+%d bins, %d+%d neurons in %.1f s",
        out_path,
        len(train_rows),
        len(valid_rows),
        eval_heldin.shape[0],
        recon.shape[1] - nlb_train.heldin_forward.shape[1],
        nlb_train.heldin_forward.shape[1],
        nlb_train.heldin.shape[2],
        nlb_train.heldout.shape[2],
        time.perf_counter() - started,
    )
    return out_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-nwb", type=Path, required=True, help="NLB train NWB file (train and val trials)"
    )
    parser.add_argument(
        "--test-nwb", type=Path, required=True, help="NLB test NWB file (read in the test phase)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the prepared file to write")
    parser.add_argument(
        "--nlb-layout", required=True, help="nlb_tools dataset name, e.g. mc_maze_small"
    )
    parser.add_argument(
        "--bin-width", type=int, choices=BIN_WIDTHS_MS, required=True, help="bin width (ms)"
    )
    parser.add_argument(
        "--phase",
        choices=("val", "test"),
        default="val",
        help="val: eval = the val trials; test: train on train+val, eval = the test trials",
    )
    parser.add_argument("--dataset-name", default="", help="name kept in the file's attributes")
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=DEFAULT_VALID_FRACTION,
        help="fraction of the train trials held out for the model's validation",
    )
    parser.add_argument(
        "--split-seed", type=int, default=DEFAULT_SPLIT_SEED, help="seed of the train/valid split"
    )
    parser.add_argument(
        "--truth-train", type=Path, help="true rates of the train file (synthetic data only)"
    )
    parser.add_argument(
        "--truth-test", type=Path, help="true rates of the test file (synthetic data only)"
    )


def run(args: argparse.Namespace) -> int:
    truth = {"train": args.truth_train, "test": args.truth_test} if args.truth_train else None
    prepare(
        args.train_nwb,
        args.test_nwb,
        args.out,
        args.nlb_layout,
        args.bin_width,
        args.phase,
        args.dataset_name,
        args.valid_fraction,
        args.split_seed,
        truth,
    )
    return 0
