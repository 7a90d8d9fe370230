"""NWB export (lfads/evaluation/nwb_export.py): trial alignment against nlb_tools' own windows, and
round trips through pynwb and pynapple."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lfads.data.layouts import layout
from lfads.evaluation.nwb_export import export_nwb, read_trial_table, trial_windows
from lfads.formats.inferred import DIVERGED, InferredAttributes, InferredSplit, write_inferred
from lfads.formats.prepared import read_prepared

BIN_WIDTH = 20
FAC_DIM, CO_DIM = 3, 2


def fake_inferred(prepared_path, out_path, diverged: bool = False):
    """An inference file of `prepared_path`'s trials with seeded positive rates (spikes per bin)."""
    prepared = read_prepared(prepared_path, keys=("nlb_index",))
    attributes = prepared.attributes
    n_bins = attributes.n_obs_bins + attributes.n_fwd_bins
    n_neurons = attributes.n_heldin + attributes.n_heldout
    rng = np.random.default_rng(5)
    splits = {}
    for split, arrays in ({} if diverged else prepared.splits).items():
        n = len(arrays.nlb_index)
        splits[split] = InferredSplit(
            rates=rng.uniform(0.01, 2.0, (n, n_bins, n_neurons)).astype(np.float32),
            factors=rng.normal(size=(n, n_bins, FAC_DIM)).astype(np.float32),
            co_mean=rng.normal(size=(n, n_bins, CO_DIM)).astype(np.float32),
            nlb_index=arrays.nlb_index,
        )
    session = prepared.session_attributes()
    if diverged:
        session[DIVERGED] = "loss is NaN"
    write_inferred(
        out_path,
        session,
        InferredAttributes(1, 0, 0, 1, str(prepared_path), mantissa_bits=23),
        splits,
    )
    return splits


@pytest.mark.slow
def test_trial_windows_match_nlb_tools_trial_data(prepared_files):
    """Window starts equal the first clock time of each trial in nlb_tools' make_trial_data."""
    from nlb_tools.nwb_interface import NWBDataset

    files = prepared_files(BIN_WIDTH)
    spec = layout("mc_maze")
    dataset = NWBDataset(str(files.nwb["train"]))
    dataset.resample(BIN_WIDTH)
    mask = dataset.trial_info.split.isin(["train", "val"]).to_numpy()
    trial_data = dataset.make_trial_data(
        align_field=spec.align_field, align_range=spec.window_ms, ignored_trials=~mask
    )
    first = trial_data.groupby("trial_id", sort=False)["clock_time"].first().dt.total_seconds()
    trials, _, _ = read_trial_table(files.nwb["train"])
    for splits in (["train"], ["val"], ["train", "val"]):
        windows = trial_windows(trials, "mc_maze", splits, BIN_WIDTH)
        in_splits = trials.loc[first.index, "split"].isin(splits).to_numpy()
        assert windows.trial_ids.tolist() == first.index[in_splits].tolist()
        np.testing.assert_allclose(windows.window_starts, first[in_splits], atol=1e-9)
        assert set(windows.nlb_splits) == set(splits)
    # Not on the grid: alignment times are arbitrary, the windows start on the next bin.
    assert np.all(windows.window_starts >= windows.align_times + spec.window_ms[0] / 1000 - 1e-9)
    assert np.all(
        np.abs(np.round(windows.window_starts / 0.02) * 0.02 - windows.window_starts) < 1e-9
    )


def test_export_round_trips_through_pynwb_and_pynapple(prepared_files, tmp_path):
    import pynapple
    from pynwb import NWBHDF5IO

    files = prepared_files(BIN_WIDTH)
    inferred = fake_inferred(files.prepared, tmp_path / "inferred.h5")
    out = export_nwb(
        files.prepared,
        tmp_path / "inferred.h5",
        files.nwb,
        tmp_path / "rates.nwb",
        "run-0",
        source="DANDI:000128 version 0.220113.0400 (downloaded)",
    )
    prepared = read_prepared(files.prepared, keys=("nlb_index",), unit_ids=True)
    n_obs, n_fwd = prepared.attributes.n_obs_bins, prepared.attributes.n_fwd_bins
    bin_s = BIN_WIDTH / 1000
    source, _, _ = read_trial_table(files.nwb["train"])
    train_windows = trial_windows(source, "mc_maze", ["train"], BIN_WIDTH)
    n_trials = sum(len(split.nlb_index) for split in prepared.splits.values())

    with NWBHDF5IO(str(out), "r") as io:
        nwbfile = io.read()
        trials = nwbfile.trials.to_dataframe()
        assert len(trials) == n_trials == 80  # 60 train + 20 val trials of the synthetic file
        assert trials.start_time.is_monotonic_increasing
        assert sorted(trials.source_trial_id) == sorted(
            source.index[source.split.isin(["train", "val"])]
        )
        np.testing.assert_allclose(trials.stop_time - trials.start_time, n_obs * bin_s)
        np.testing.assert_allclose(trials.forward_stop_time - trials.stop_time, n_fwd * bin_s)
        module = nwbfile.processing["lfads"]
        rates = module["rates_valid"]
        assert rates.unit == "spikes/s"
        valid_index = prepared.splits["valid"].nlb_index
        expected = inferred["valid"].rates[:, :n_obs] / bin_s
        np.testing.assert_allclose(
            rates.data[:].reshape(len(valid_index), n_obs, -1), expected, rtol=1e-6
        )
        starts = train_windows.window_starts[valid_index]
        np.testing.assert_allclose(rates.timestamps[::n_obs], starts, atol=1e-9)
        forward = module["inferred_inputs_valid_forward"]
        np.testing.assert_allclose(
            forward.data[:].reshape(len(valid_index), n_fwd, CO_DIM),
            inferred["valid"].co_mean[:, n_obs:],
        )
        np.testing.assert_allclose(forward.timestamps[0], starts[0] + n_obs * bin_s, atol=1e-9)
        valid_rows = trials[trials.model_split == "valid"].sort_values("nlb_index")
        assert valid_rows.nlb_index.tolist() == sorted(valid_index.tolist())
        # each rates column is a row of the units table: its source unit, held out or not
        ids = np.concatenate([prepared.unit_ids["heldin"], prepared.unit_ids["heldout"]])
        units = module["rates_units"].to_dataframe()
        assert units.source_unit_id.tolist() == ids.tolist() and rates.comments.endswith(
            "lfads/rates_units"
        )
        assert units.heldout.tolist() == [False] * len(prepared.unit_ids["heldin"]) + [True] * len(
            prepared.unit_ids["heldout"]
        )
        # the source's subject and where the data come from
        with NWBHDF5IO(str(files.nwb["train"]), "r") as source_io:
            assert nwbfile.subject.subject_id == source_io.read().subject.subject_id
        assert nwbfile.notes == (
            f"Inferred from {files.nwb['train'].name} (train); "
            "source: DANDI:000128 version 0.220113.0400 (downloaded)"
        )
        assert sorted(module.data_interfaces) == sorted(
            [
                f"{name}_{split}{part}"
                for name in ("rates", "factors", "inferred_inputs")
                for split in ("train", "valid", "eval")
                for part in ("", "_forward")
            ]
            + ["rates_units"]
        )

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. unsorted timestamps, merged epochs
        loaded = pynapple.load_file(str(out))
        factors = loaded["factors_eval"]
        epochs = loaded["trials"]
    assert isinstance(factors, pynapple.TsdFrame)
    assert factors.shape == (20 * n_obs, FAC_DIM)
    np.testing.assert_allclose(factors.values[:n_obs], inferred["eval"].factors[0, :n_obs])
    assert len(epochs) == n_trials
    # pynapple restricts a series to the trials' windows: the eval series lies in its trials.
    eval_epochs = epochs[np.asarray(epochs.model_split) == "eval"]
    assert len(factors.restrict(eval_epochs)) == 20 * n_obs


def test_nwbinspector_finds_nothing_critical_and_no_best_practice_violation(
    prepared_files, tmp_path
):
    from nwbinspector import Importance, inspect_nwbfile

    files = prepared_files(BIN_WIDTH)
    fake_inferred(files.prepared, tmp_path / "inferred.h5")
    out = export_nwb(files.prepared, tmp_path / "inferred.h5", files.nwb, tmp_path / "rates.nwb")
    found = [
        f"{message.importance.name}: {message.check_function_name}: {message.message}"
        for message in inspect_nwbfile(nwbfile_path=str(out))
        if message.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)
    ]
    assert found == [], "\n".join(found)


def test_export_of_a_diverged_run_has_trials_and_no_series(prepared_files, tmp_path):
    from pynwb import NWBHDF5IO

    files = prepared_files(BIN_WIDTH)
    fake_inferred(files.prepared, tmp_path / "inferred.h5", diverged=True)
    out = export_nwb(files.prepared, tmp_path / "inferred.h5", files.nwb, tmp_path / "rates.nwb")
    with NWBHDF5IO(str(out), "r") as io:
        nwbfile = io.read()
        assert len(nwbfile.trials) == 80
        assert len(nwbfile.processing["lfads"].data_interfaces) == 0


def test_export_refuses_a_trial_table_that_does_not_match(prepared_files, synthetic_dir, tmp_path):
    files = prepared_files(BIN_WIDTH)
    fake_inferred(files.prepared, tmp_path / "inferred.h5")
    with pytest.raises(ValueError, match="Rerun `prepare`"):
        export_nwb(
            files.prepared,
            tmp_path / "inferred.h5",
            {"train": files.nwb["test"]},  # the test file has no train trials
            tmp_path / "rates.nwb",
        )
