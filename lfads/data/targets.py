"""Write nlb_tools' evaluation targets, PSTHs included (rule `targets`).

Kept apart from `prepare` because nlb_tools' PSTH step re-reads and smooths
the whole file at 1 ms: it took 5.4 GB and 27.5 s on an MC_Maze_Large-sized
file, so the rule gets its own memory resource. Its smoothing runs here as
`lean_smooth_spk`, the same numbers in less memory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lfads.data.layouts import BIN_WIDTHS_MS, layout
from lfads.data.nwb_checks import check_nwb_file
from lfads.formats.targets import write_targets_file

log = logging.getLogger(__name__)


def ragged_index_arrays(indices: np.ndarray) -> np.ndarray:
    """A 1-D object array of int64 arrays, whatever shape nlb_tools produced.

    nlb_tools 0.0.4 builds `train_cond_idx`/`eval_cond_idx` with
    `np.array(list_of_arrays, dtype=object)`; when every condition has the same
    number of trials that array is 2-D and its own `save_to_h5` fails with
    "Object dtype dtype('O') has no native HDF5 equivalent".
    """
    out = np.empty(len(indices), dtype=object)
    for position, row in enumerate(indices):
        out[position] = np.asarray(row, dtype=np.int64).reshape(-1)
    return out


def check_tp_corr_conditions(eval_behavior: np.ndarray, train_nwb: Path) -> None:
    """ValueError unless every (is_eye, theta, is_short) condition of the eval trials has 2 trials.

    nlb_tools' `tp corr` correlates neural speed with tp within each of those conditions
    (outliers left out: their rows are NaN) and fails on a condition of one trial, after
    training, with "`x` and `y` must have length at least 2". eval_behavior: (n_trials, 5)
    is_eye, theta, is_short, ts, tp.
    """
    rows = eval_behavior[~np.isnan(eval_behavior[:, :3]).all(axis=1), :3]
    conditions, counts = np.unique(rows, axis=0, return_counts=True)
    lonely = [tuple(int(v) for v in c) for c, n in zip(conditions, counts) if n < 2]
    if lonely:
        raise ValueError(
            f"{train_nwb}: the val trials of (is_eye, theta, is_short) condition(s) "
            f"{', '.join(map(str, lonely))} number fewer than 2 (outliers left out), and "
            "nlb_tools' tp corr correlates speed with tp within each; give the file more val "
            "trials (source.synthetic.n_val_trials)"
        )


def lean_smooth_spk(
    self,
    nlb_smooth_spk,
    gauss_width,
    signal_type=None,
    name=None,
    overwrite=False,
    ignore_nans=False,
    parallelized=True,
    dtype="float64",
):
    """nlb_tools' `NWBDataset.smooth_spk` for its PSTH step's call, which smooths every column of
    a frame of spikes in place: the same `smooth_column` on each whole column, so the same numbers,
    but into one copy of the frame, not nlb_tools' six (its process pool's copies, the smoothed
    columns, their stack, a concatenated frame and a sorted one). On a real-size MC_Maze stand-in
    at 5 ms the targets step peaked at 9.3 GB instead of 23 GB. Any other call goes to nlb_tools'
    own method, `nlb_smooth_spk`."""
    import pandas as pd
    from nlb_tools.nwb_interface import smooth_column
    from scipy import signal

    if signal_type is None:
        signal_type = [f for f in ("spikes", "heldout_spikes") if f in self.data.columns]
    if isinstance(signal_type, str):
        signal_type = [signal_type]
    if not overwrite or not self.data.columns.get_level_values(0).isin(signal_type).all():
        return nlb_smooth_spk(
            self, gauss_width, signal_type, name, overwrite, ignore_nans, parallelized, dtype
        )
    bin_std = gauss_width / self.bin_width  # nlb_tools' kernel: 3 s.d. each side, sums to 1
    window = signal.windows.gaussian(int(6 * bin_std), bin_std, sym=True)
    window /= np.sum(window)
    values = self.data.to_numpy(dtype=dtype, copy=True)
    index = self.data.index
    columns = pd.MultiIndex.from_tuples(self.data.columns.tolist())  # (unnamed, as nlb_tools')
    self.data = None  # (the frame's memory goes before the smoothing)
    for column in range(values.shape[1]):
        values[:, column] = smooth_column((values[:, column], window, ignore_nans, dtype))
    self.data = pd.DataFrame(values, index=index, columns=columns, copy=False)
    if not columns.is_monotonic_increasing:  # (nlb_tools sorts the columns)
        self.data.sort_index(axis=1, inplace=True)


@contextlib.contextmanager
def lean_smoothing() -> Iterator[None]:
    """nlb_tools' NWBDataset smooths with `lean_smooth_spk` inside the block."""
    from nlb_tools.nwb_interface import NWBDataset

    own = NWBDataset.smooth_spk
    NWBDataset.smooth_spk = functools.partialmethod(lean_smooth_spk, own)
    try:
        yield
    finally:
        NWBDataset.smooth_spk = own


def make_targets(train_nwb: Path, nlb_layout: str, bin_width_ms: int) -> dict:
    """nlb_tools' target dict {group: {...}} of the val split, with PSTHs if the layout has them."""
    from nlb_tools.make_tensors import make_eval_target_tensors

    from lfads.data.prepare import load_dataset

    dataset = load_dataset(train_nwb, bin_width_ms)
    include_psth = layout(nlb_layout).has_psth
    started = time.perf_counter()
    with lean_smoothing():
        targets = make_eval_target_tensors(
            dataset,
            nlb_layout,
            train_trial_split="train",
            eval_trial_split="val",
            include_psth=include_psth,
            save_file=False,
        )
    log.info(
        "made targets%s in %.1f s",
        " with PSTHs" if include_psth else "",
        time.perf_counter() - started,
    )
    for group in targets.values():
        if nlb_layout == "dmfc_rsg":
            check_tp_corr_conditions(group["eval_behavior"], train_nwb)
        for key in ("train_cond_idx", "eval_cond_idx"):
            if key in group:
                group[key] = ragged_index_arrays(group[key])
    return targets


def write_targets(
    train_nwb: str | Path, out_path: str | Path, nlb_layout: str, bin_width_ms: int
) -> Path:
    """Write the evaluation targets of the val split (`lfads.formats.targets`), readable by
    nlb_tools.evaluation.evaluate."""
    train_nwb, out_path = Path(train_nwb), Path(out_path)
    check_nwb_file(train_nwb, nlb_layout, "train")
    targets = make_targets(train_nwb, nlb_layout, bin_width_ms)
    write_targets_file(out_path, targets)
    log.info("wrote %s", out_path)
    return out_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-nwb", type=Path, required=True, help="NLB train NWB file (train and val trials)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the targets file to write")
    parser.add_argument(
        "--nlb-layout", required=True, help="nlb_tools dataset name, e.g. mc_maze_small"
    )
    parser.add_argument(
        "--bin-width", type=int, choices=BIN_WIDTHS_MS, required=True, help="bin width (ms)"
    )


def run(args: argparse.Namespace) -> int:
    write_targets(args.train_nwb, args.out, args.nlb_layout, args.bin_width)
    return 0
