"""EvalAI submissions in nlb_tools' format (rule `submission`), those rates for local scoring, and
the whole benchmark's file (`python -m lfads combine-submissions`, `make submission`).

The inference file holds rates for the model's train/valid split of the NLB
train trials and for the eval trials (lfads/README.md). nlb_tools wants the
NLB train trials in its own order, so rows are put back with `nlb_index`.
The submission holds the rates of the best run or, when the configfile asks for one, of the
ensemble of the best runs if its validation Poisson loss is lower (`submitted_run`).

EvalAI takes one HDF5 file of groups `<dataset>` (5 ms) or `<dataset>_20` (20 ms); the three
MC_Maze scaling datasets are scored together (nlb_tools' `evaluate` reports them as one
`mc_maze_scaling` result), so they must come in the same file, at the same bin width.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from lfads.data.layouts import LAYOUTS, group_name
from lfads.evaluation.ensemble import RATE_FLOOR
from lfads.formats.inferred import read_inferred
from lfads.formats.prepared import PreparedFile, read_prepared
from lfads.infra.io import atomic_path

log = logging.getLogger(__name__)

# The arrays of one group, (trials, bins, neurons) spikes per bin, as `nlb_submission` writes them.
SUBMISSION_KEYS = (
    "train_rates_heldin",
    "train_rates_heldout",
    "eval_rates_heldin",
    "eval_rates_heldout",
    "eval_rates_heldin_forward",
    "eval_rates_heldout_forward",
)
SCALING_DATASETS = ("mc_maze_large", "mc_maze_medium", "mc_maze_small")
NLB_DATASETS = ("mc_maze", "mc_rtt", "area2_bump", "dmfc_rsg", *SCALING_DATASETS)


class SubmissionError(ValueError):
    """A submission file that EvalAI would reject or score wrongly."""


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
    return {name: submission_group(train, evaluation, n_obs, n_heldin)}


def submission_group(
    train: np.ndarray, evaluation: np.ndarray, n_obs: int, n_heldin: int
) -> dict[str, np.ndarray]:
    """The six arrays of one submission group from (trials, bins, neurons) rates of the NLB
    train and eval trials (observed then forward bins; held-in then held-out neurons), float32
    and clipped at RATE_FLOOR."""
    train, evaluation = (
        np.maximum(array, RATE_FLOOR).astype(np.float32) for array in (train, evaluation)
    )
    return {
        "train_rates_heldin": train[:, :n_obs, :n_heldin],
        "train_rates_heldout": train[:, :n_obs, n_heldin:],
        "eval_rates_heldin": evaluation[:, :n_obs, :n_heldin],
        "eval_rates_heldout": evaluation[:, :n_obs, n_heldin:],
        "eval_rates_heldin_forward": evaluation[:, n_obs:, :n_heldin],
        "eval_rates_heldout_forward": evaluation[:, n_obs:, n_heldin:],
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


def submitted_run(summary_tsv: str | Path, members: dict[str, Path]) -> str:
    """The summary row whose rates are submitted: the best run, or an ensemble of the best runs
    whose validation Poisson loss is below the best run's (members: {ensemble row: its
    members.tsv}).

    Both losses are computed the same way from each row's own inferred.h5 (lfads/evaluation/
    ensemble.py): the ensemble's is its row's val_recon_smoothed, the best run's is in
    the ensemble's members.tsv (the best run is its first member). A tie keeps the best run.
    """
    from lfads.evaluation.ensemble import is_ensemble
    from lfads.formats.runs import read_members
    from lfads.formats.summary import SELECTION, best_run, read_summary

    chosen = best_run(summary_tsv)
    table = read_summary(summary_tsv, scored_only=True)
    for row in table[table.run.map(is_ensemble)].itertuples():
        if row.run not in members:
            raise ValueError(f"{summary_tsv}: the members.tsv of {row.run} was not given")
        members_tsv = Path(members[row.run])
        listed = read_members(members_tsv)
        if str(listed.run[0]) != chosen:
            raise ValueError(
                f"{members_tsv}: the best member is {listed.run[0]} but the summary's best run "
                f"is {chosen} ({summary_tsv}); the two are out of date: rerun the workflow"
            )
        ensemble_loss, best_loss = getattr(row, SELECTION), listed.valid_poisson_loss[0]
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


def _group_layout(group: str) -> tuple[str, int]:
    """(dataset, bin width in ms) of an nlb_tools group name such as `mc_maze_20`."""
    for dataset in NLB_DATASETS:
        for bin_width in (5, 20):
            if group == group_name(dataset, bin_width):
                return dataset, bin_width
    names = [group_name(dataset, width) for dataset in NLB_DATASETS for width in (5, 20)]
    raise SubmissionError(f"group {group!r} is not an NLB dataset; the groups are {names}")


def check_submission(
    submission: dict[str, dict[str, np.ndarray]],
    source: str = "submission",
    whole: bool = False,
    part: bool = False,
) -> None:
    """Raise SubmissionError unless `submission` ({group: {key: array}}) is what EvalAI scores.

    Checks each group's name, its SUBMISSION_KEYS (3-D, finite, non-negative), trial, bin and
    neuron counts that agree between keys, bins of the layout's window and forward prediction,
    and that the scaling datasets come together at one bin width. whole: every NLB dataset once;
    part: a file to be combined with others (the scaling datasets may come one by one).
    """
    datasets: dict[str, list[int]] = {}
    for group, arrays in submission.items():
        dataset, bin_width = _group_layout(group)
        datasets.setdefault(dataset, []).append(bin_width)
        missing = [key for key in SUBMISSION_KEYS if key not in arrays]
        if missing:
            raise SubmissionError(f"{source}: group {group!r} lacks {missing}")
        spec = LAYOUTS[dataset]
        n_obs = (spec.window_ms[1] - spec.window_ms[0]) // bin_width
        n_fwd = spec.forward_ms // bin_width
        for key in SUBMISSION_KEYS:
            values = np.asarray(arrays[key])
            where = f"{source}: {group}/{key}"
            bins = n_fwd if key.endswith("_forward") else n_obs
            if values.ndim != 3 or values.shape[1] != bins:
                raise SubmissionError(
                    f"{where} has shape {values.shape}; expected (trials, {bins}, neurons)"
                )
            if not np.isfinite(values).all() or (values < 0).any():
                raise SubmissionError(f"{where}: rates must be finite and non-negative")
        shapes = {key: np.shape(arrays[key]) for key in SUBMISSION_KEYS}
        for first, second, axis, what in (
            ("train_rates_heldin", "train_rates_heldout", 0, "trials"),
            ("eval_rates_heldin", "eval_rates_heldout", 0, "trials"),
            ("eval_rates_heldin", "eval_rates_heldin_forward", 0, "trials"),
            ("eval_rates_heldout", "eval_rates_heldout_forward", 0, "trials"),
            ("train_rates_heldin", "eval_rates_heldin", 2, "held-in neurons"),
            ("train_rates_heldout", "eval_rates_heldout", 2, "held-out neurons"),
            ("eval_rates_heldin", "eval_rates_heldin_forward", 2, "held-in neurons"),
            ("eval_rates_heldout", "eval_rates_heldout_forward", 2, "held-out neurons"),
        ):
            if shapes[first][axis] != shapes[second][axis]:
                raise SubmissionError(
                    f"{source}: group {group!r}: {first} has {shapes[first][axis]} {what}, "
                    f"{second} {shapes[second][axis]}"
                )
    scaling = {dataset: datasets.get(dataset) for dataset in SCALING_DATASETS}
    present = [dataset for dataset, widths in scaling.items() if widths]
    if (
        present
        and not part
        and (len(present) < 3 or len({tuple(widths) for widths in scaling.values()}) > 1)
    ):
        raise SubmissionError(
            f"{source}: the MC_Maze scaling datasets are scored together and must all come at the "
            f"same bin width; found {scaling}. Add the missing ones (make submission)."
        )
    if whole:
        missing = [dataset for dataset in NLB_DATASETS if dataset not in datasets]
        twice = [dataset for dataset, widths in datasets.items() if len(widths) > 1]
        if missing or twice:
            raise SubmissionError(
                f"{source}: a whole-benchmark submission holds each NLB dataset once; "
                f"missing {missing}, more than one bin width {twice}"
            )


def read_submission(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """A submission file as {group: {key: array}}."""
    import h5py

    with h5py.File(path, "r") as file:
        return {group: {key: file[group][key][()] for key in file[group]} for group in file}


def combine_submissions(paths: list[str | Path], out_path: str | Path, whole: bool = False) -> Path:
    """Write one EvalAI file of the groups of several submission files (nlb_tools' `combine_h5`,
    without its writing into the first file), checked with `check_submission`.

    whole: require all seven NLB datasets (the test phase's whole benchmark). Two files with the
    same group are refused, as are files that `check_submission` rejects.
    """
    from nlb_tools.make_tensors import save_to_h5

    combined: dict[str, dict[str, np.ndarray]] = {}
    origin: dict[str, Path] = {}
    for path in map(Path, paths):
        groups = read_submission(path)
        check_submission(groups, str(path), part=True)
        for group, arrays in groups.items():
            if group in combined:
                raise SubmissionError(
                    f"{path} and {origin[group]} both hold group {group!r}; pass one of them"
                )
            combined[group], origin[group] = arrays, path
    check_submission(combined, str(out_path), whole=whole)
    with atomic_path(out_path) as tmp:
        save_to_h5(combined, str(tmp))
    log.info("wrote %s: groups %s from %d files", out_path, sorted(combined), len(paths))
    return Path(out_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "submissions", type=Path, nargs="+", help="submission files (submission_<dataset>.h5)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the combined file to write")
    parser.add_argument(
        "--whole-benchmark",
        action="store_true",
        help="require each of the seven NLB datasets once (a full test-phase submission)",
    )


def run(args: argparse.Namespace) -> int:
    combine_submissions(args.submissions, args.out, whole=args.whole_benchmark)
    return 0
