"""A run's posterior averages as an NWB file, aligned to the source file's trials (rule
`export_nwb`, `python -m lfads export-nwb`).

The inference file holds trials x bins x channels arrays in nlb_tools' trial order, with no trial
ids or times. This module recovers both from the source NWB files' trial tables, the way
nlb_tools makes its tensors (`make_tensors.PARAMS`): the trials of the phase's splits whose
alignment field is set, each window starting at the alignment time plus the layout's offset (and
dmfc_rsg's jitter, drawn with nlb_tools' seed 0), rounded up to the bin grid that starts at 0 s.

Layout of the written file (README.md, "NWB export"):

- `trials`: one row per model trial, sorted by start time: `start_time`/`stop_time` of the
  observed window (s), `forward_stop_time`, `source_trial_id` (the `id` in the source file's
  trial table), `source_file` ("train" or "test"), `nlb_split` (the source file's split),
  `model_split` (train, valid or eval) and `nlb_index` (row in nlb_tools' order).
- processing module `lfads`: TimeSeries `<array>_<model split>` of the observed bins and
  `<array>_<model split>_forward` of the forward-prediction bins, with arrays `rates`
  (spikes/s; columns the held-in then held-out units), `factors` and `inferred_inputs` (the
  controller output's posterior mean; absent without a controller), in arbitrary units, and the
  table `rates_units`: one row per rates column, its `source_unit_id` and `heldout`.
  Timestamps are bin starts (s); the bins of one trial are consecutive rows.
- the source file's subject, experiment description, institution, lab, experimenter, session
  id and keywords (with "LFADS" and "Neural Latents Benchmark"); `notes` names the source files
  and where they come from (the dandiset and its version).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfads.data.layouts import layout
from lfads.formats.inferred import DIVERGED, read_inferred
from lfads.formats.prepared import read_prepared
from lfads.infra.io import atomic_path

log = logging.getLogger(__name__)

MODULE_NAME = "lfads"
RATES_UNITS = "rates_units"  # the table of the rates series' columns
# Inference-file key -> (name in the NWB file, unit, what it is)
EXPORTED_ARRAYS = {
    "rates": ("rates", "spikes/s", "posterior-mean firing rates"),
    "factors": ("factors", "a.u.", "posterior-mean latent factors"),
    "co_mean": ("inferred_inputs", "a.u.", "posterior mean of the inferred inputs"),
}


@dataclass(frozen=True)
class TrialWindows:
    """The windows of one set of trials, in nlb_tools' order (N trials)."""

    trial_ids: np.ndarray  # (N,) int64, `id` in the source file's trial table
    nlb_splits: np.ndarray  # (N,) str, the source file's split of each trial
    align_times: np.ndarray  # (N,) s, the layout's alignment field (before any jitter)
    window_starts: np.ndarray  # (N,) s, start of each trial's first bin


# The source file's metadata that an exported file copies (NWBFile keywords), and its subject's.
COPIED_METADATA = ("experiment_description", "institution", "lab", "experimenter", "session_id")
SUBJECT_FIELDS = (
    "subject_id",
    "species",
    "sex",
    "age",
    "description",
    "strain",
    "genotype",
    "weight",
    "date_of_birth",
)


def read_trial_table(nwb_path: str | Path):
    """The source file's trial table as a DataFrame indexed by trial id (times in s), its
    session start time, and its metadata to copy: {COPIED_METADATA key: value, "keywords":
    list, "subject": {SUBJECT_FIELDS key: value}} (what the file has)."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(nwb_path), "r") as io:
        nwbfile = io.read()
        if nwbfile.trials is None:
            raise ValueError(f"{nwb_path}: no trials table; is this an NLB NWB file?")
        metadata = {key: getattr(nwbfile, key) for key in COPIED_METADATA}
        metadata["keywords"] = list(nwbfile.keywords[:]) if nwbfile.keywords is not None else []
        subject = nwbfile.subject
        metadata["subject"] = {
            key: getattr(subject, key) for key in SUBJECT_FIELDS if subject is not None
        }
        metadata = {
            key: value for key, value in metadata.items() if value is not None and value != {}
        }
        return nwbfile.trials.to_dataframe(), nwbfile.session_start_time, metadata


def trial_windows(
    trials, nlb_layout: str, splits: list[str], bin_width_ms: int, seed: int = 0
) -> TrialWindows:
    """Windows of the trials nlb_tools selects for `splits`, as its tensors hold them.

    trials: the source trial table (`read_trial_table`); seed: nlb_tools' jitter seed (its
    default 0, the one `prepare` uses). Mirrors `make_train_input_tensors` and
    `make_eval_input_tensors`: trials whose alignment field is NaN are dropped, and a window
    starts at the first bin at or after alignment + offset (+ jitter).
    """
    import pandas as pd
    from nlb_tools.make_tensors import PARAMS

    spec = layout(nlb_layout)
    if spec.align_field not in trials.columns:
        raise ValueError(
            f"the trial table has no column {spec.align_field!r}, which {nlb_layout} aligns to"
        )
    selected = trials[trials["split"].isin(splits).to_numpy()]
    jitter_ms = np.zeros(len(selected))
    jitter = PARAMS[nlb_layout].get("jitter")
    if jitter is not None:
        # nlb_tools' _prep_jitter, with the stream np.random.seed(seed) gives it.
        ranges = np.floor((np.asarray(jitter(selected), float) / bin_width_ms).round(4))
        draws = np.random.RandomState(seed)
        jitter_ms = np.array(
            [round(draws.random_sample() * (high - low) + low) for low, high in ranges]
        ) * float(bin_width_ms)
    align = selected[spec.align_field].to_numpy(dtype=float)
    kept = ~np.isnan(align)
    align_ns = pd.to_timedelta(align[kept], unit="s").to_numpy().astype(np.int64)
    offset_ns = np.round((spec.window_ms[0] + jitter_ms[kept]) * 1e6).astype(np.int64)
    bin_ns = bin_width_ms * 1_000_000
    starts_ns = -((-(align_ns + offset_ns)) // bin_ns) * bin_ns  # ceiling to the bin grid
    return TrialWindows(
        trial_ids=selected.index.to_numpy()[kept].astype(np.int64),
        nlb_splits=selected["split"].to_numpy()[kept].astype(str),
        align_times=align[kept],
        window_starts=starts_ns / 1e9,
    )


def _phase_splits(phase: str) -> dict[str, tuple[str, list[str]]]:
    """Model split group -> (source file role, nlb_tools splits) of one phase (as `prepare`)."""
    if phase == "val":
        return {"train": ("train", ["train"]), "eval": ("train", ["val"])}
    return {"train": ("train", ["train", "val"]), "eval": ("test", ["test"])}


def export_nwb(
    prepared_path: str | Path,
    inferred_path: str | Path,
    nwb_paths: dict[str, str | Path],
    out_path: str | Path,
    run_name: str = "",
    source: str = "",
) -> Path:
    """Write the NWB file of one run's inference file (layout in the module docstring).

    nwb_paths: {"train": path, "test": path} of the source NWB files ("test" is read in the
    test phase only); source: where they come from (`lfads.data.fetch.describe_source`), kept
    in the file's notes. A diverged run's placeholder gives a file with the trials and no series.
    """
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.common import DynamicTable
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.file import Subject

    prepared = read_prepared(prepared_path, keys=("nlb_index",), unit_ids=True)
    attributes = prepared.attributes
    inferred = read_inferred(inferred_path, keys=tuple(EXPORTED_ARRAYS))
    bin_s = attributes.bin_width_ms / 1000
    n_obs, n_fwd = attributes.n_obs_bins, attributes.n_fwd_bins

    windows, session_start, metadata = {}, None, None
    tables = {}
    for group, (role, splits) in _phase_splits(attributes.phase).items():
        if role not in tables:
            tables[role] = read_trial_table(nwb_paths[role])
        trials, start, found = tables[role]
        session_start, metadata = session_start or start, metadata or found
        windows[group] = (role, trial_windows(trials, attributes.nlb_layout, splits, bin_s * 1000))
    rows = []  # (model split, row in that split, source role, its windows, row in nlb order)
    for group_name, (role, group) in windows.items():
        members = [
            split for split in prepared.splits if (split == "eval") == (group_name == "eval")
        ]
        n_prepared = sum(len(prepared.splits[split].nlb_index) for split in members)
        if n_prepared != len(group.trial_ids):
            raise ValueError(
                f"{nwb_paths[role]}: {len(group.trial_ids)} trials of nlb_tools' {group_name} "
                f"selection in its trials table, but {prepared_path} holds {n_prepared} in "
                f"{members}; was the prepared file made from another file? Rerun `prepare`."
            )
        for split in members:
            for row, index in enumerate(prepared.splits[split].nlb_index):
                rows.append((split, row, role, group, int(index)))
    rows.sort(key=lambda item: item[3].window_starts[item[4]])

    subject = metadata.pop("subject", None)
    keywords = [*metadata.pop("keywords", []), "LFADS", "Neural Latents Benchmark"]
    files = ", ".join(f"{Path(nwb_paths[role]).name} ({role})" for role in tables)
    nwbfile = NWBFile(
        session_description=(
            f"LFADS posterior averages of {attributes.dataset} ({attributes.nlb_layout}, "
            f"{attributes.phase} phase, {attributes.bin_width_ms} ms bins), run {run_name}"
        ),
        identifier=f"lfads-{attributes.dataset}-{attributes.phase}-{run_name}",
        session_start_time=session_start,
        subject=Subject(**subject) if subject else None,
        keywords=list(dict.fromkeys(keywords)),
        notes=f"Inferred from {files}" + (f"; source: {source}" if source else ""),
        **metadata,
    )
    for name, description in (
        ("forward_stop_time", "end of the forward-prediction bins (s)"),
        ("source_trial_id", "the trial's id in the source NWB file's trials table"),
        ("source_file", "the source NWB file: train or test"),
        ("nlb_split", "the trial's split in the source file"),
        ("model_split", "the model's split: train, valid or eval"),
        ("nlb_index", "the trial's row in nlb_tools' order of its split"),
        ("align_time", f"the trial's {layout(attributes.nlb_layout).align_field} (s)"),
    ):
        nwbfile.add_trial_column(name=name, description=description)
    for split, _, role, group, index in rows:
        start = float(group.window_starts[index])
        nwbfile.add_trial(
            start_time=start,
            stop_time=start + n_obs * bin_s,
            forward_stop_time=start + (n_obs + n_fwd) * bin_s,
            source_trial_id=int(group.trial_ids[index]),
            source_file=role,
            nlb_split=str(group.nlb_splits[index]),
            model_split=split,
            nlb_index=index,
            align_time=float(group.align_times[index]),
        )

    module = nwbfile.create_processing_module(
        name=MODULE_NAME,
        description=f"LFADS posterior averages, {attributes.bin_width_ms} ms bins; see trials",
    )
    unit_ids = np.concatenate([prepared.unit_ids["heldin"], prepared.unit_ids["heldout"]])
    # one row per rates column, in column order: its source unit and whether it was held out (a
    # table of its own: NWB's units table is for spike times, which this file does not hold)
    columns = DynamicTable(
        name=RATES_UNITS,
        description="the source unit of each column of the rates series, in column order",
    )
    columns.add_column("source_unit_id", "the unit's id in the source NWB file's units table")
    columns.add_column("heldout", "held out of the model's input (the co-smoothing targets)")
    for column, unit_id in enumerate(unit_ids):
        columns.add_row(
            source_unit_id=int(unit_id), heldout=column >= len(prepared.unit_ids["heldin"])
        )
    diverged = DIVERGED in inferred.attrs
    if not diverged:  # (a diverged run's file has no series, so no columns either)
        module.add(columns)
    for split, arrays in ({} if diverged else inferred.splits).items():
        role, group = windows["eval" if split == "eval" else "train"]
        starts = group.window_starts[prepared.splits[split].nlb_index]  # (N,) s
        for part, bins in (("", np.arange(n_obs)), ("_forward", n_obs + np.arange(n_fwd))):
            if len(bins) == 0:
                continue
            timestamps = (starts[:, None] + bins[None, :] * bin_s).reshape(-1)
            shared = None
            for key, (name, unit, description) in EXPORTED_ARRAYS.items():
                values = getattr(arrays, key)
                if values is None or values.shape[-1] == 0:
                    continue
                data = values[:, bins].reshape(-1, values.shape[-1]).astype(np.float32)
                comments = "no comments"
                if key == "rates":
                    data = data / np.float32(bin_s)  # spikes per bin -> spikes per second
                    comments = f"columns: the rows of {MODULE_NAME}/{RATES_UNITS}"
                series = TimeSeries(
                    name=f"{name}_{split}{part}",
                    data=H5DataIO(data, compression="gzip"),
                    unit=unit,
                    timestamps=shared if shared is not None else timestamps,
                    description=f"{description} of the {split} trials"
                    + (" (forward prediction)" if part else "")
                    + f", {attributes.bin_width_ms} ms bins, timestamps at bin starts",
                    comments=comments,
                )
                module.add(series)
                shared = shared if shared is not None else series
    with atomic_path(out_path) as tmp, NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwbfile)
    log.info(
        "wrote %s: %d trials%s",
        out_path,
        len(rows),
        " (diverged run: no series)" if diverged else "",
    )
    return Path(out_path)


def copy_best_nwb(summary_tsv: str | Path, nwb: dict[str, Path], out_path: str | Path) -> Path:
    """Copy the best run's NWB file (nwb: {run name: its rates.nwb}) to `out_path`."""
    import shutil

    from lfads.formats.summary import best_run

    run = best_run(summary_tsv)
    if run not in nwb:
        raise ValueError(f"{summary_tsv}: the NWB file of its best run {run} was not given")
    with atomic_path(out_path) as tmp:
        shutil.copyfile(nwb[run], tmp)
    log.info("copied the NWB file of the best run, %s, to %s", run, out_path)
    return Path(out_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepared", type=Path, required=True, help="the run's prepared file")
    parser.add_argument(
        "--inferred", type=Path, required=True, help="the run's inference file (inferred.h5)"
    )
    parser.add_argument(
        "--train-nwb", type=Path, required=True, help="source NWB file of the train trials"
    )
    parser.add_argument(
        "--test-nwb", type=Path, help="source NWB file of the test trials (test phase only)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the NWB file to write")
    parser.add_argument("--run-name", default="", help="the run's name, kept in the file")


def run(args: argparse.Namespace) -> int:
    paths = {"train": args.train_nwb, **({"test": args.test_nwb} if args.test_nwb else {})}
    export_nwb(args.prepared, args.inferred, paths, args.out, args.run_name)
    return 0
