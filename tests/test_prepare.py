"""prepare and targets on the small synthetic dataset (keys, shapes, split, scores); layouts."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import PREPARED_SPLIT_SEED, PREPARED_VALID_FRACTION, SMALL_SYNTHETIC

from lfads.data.layouts import BASE_TRIAL_FIELDS, BIN_WIDTHS_MS, LAYOUTS, group_name
from lfads.data.prepare import prepare, split_indices, trial_mask
from lfads.data.synthetic import ASSET_PATHS as SYNTHETIC_ASSETS
from lfads.data.synthetic import TRUTH_PATHS as SYNTHETIC_TRUTH

N_HELDIN, N_HELDOUT = SMALL_SYNTHETIC["n_heldin"], SMALL_SYNTHETIC["n_heldout"]
N_TRAIN, N_VAL, N_TEST = (
    SMALL_SYNTHETIC[k] for k in ("n_train_trials", "n_val_trials", "n_test_trials")
)
BINS = {5: (140, 40), 20: (35, 10)}  # observed and forward bins of the mc_maze window


# 5 ms runs the code of 20 ms with other numbers, in twice the time: slow.
@pytest.fixture(scope="module", params=[20, pytest.param(5, marks=pytest.mark.slow)])
def prepared(request, prepared_files):
    """The session's val-phase files at 20 and 5 ms (conftest.prepared_files)."""
    return prepared_files(request.param)


def test_keys_and_shapes(prepared):
    bin_width, path = prepared.bin_width, prepared.prepared
    n_obs, n_fwd = BINS[bin_width]
    n_all = N_HELDIN + N_HELDOUT
    n_valid = round(PREPARED_VALID_FRACTION * N_TRAIN)
    with h5py.File(path) as handle:
        attrs = dict(handle.attrs)
        assert attrs["bin_width_ms"] == bin_width and attrs["phase"] == "val"
        assert (
            attrs["n_heldin"],
            attrs["n_heldout"],
            attrs["n_obs_bins"],
            attrs["n_fwd_bins"],
        ) == (N_HELDIN, N_HELDOUT, n_obs, n_fwd)
        expected = {
            "train/encod_data": (N_TRAIN - n_valid, n_obs, N_HELDIN),
            "train/recon_data": (N_TRAIN - n_valid, n_obs + n_fwd, n_all),
            "train/truth": (N_TRAIN - n_valid, n_obs + n_fwd, n_all),
            "train/behavior": (N_TRAIN - n_valid, n_obs, 2),
            "train/condition": (N_TRAIN - n_valid,),
            "valid/encod_data": (n_valid, n_obs, N_HELDIN),
            "valid/recon_data": (n_valid, n_obs + n_fwd, n_all),
            "eval/encod_data": (N_VAL, n_obs, N_HELDIN),
            "eval/truth": (N_VAL, n_obs + n_fwd, n_all),
            "eval/condition": (N_VAL,),
            "unit_ids/heldin": (N_HELDIN,),
            "unit_ids/heldout": (N_HELDOUT,),
        }
        for key, shape in expected.items():
            assert handle[key].shape == shape, key
            assert handle[key].dtype in (np.float32, np.int64), key
        train_index = handle["train/nlb_index"][()]
        valid_index = handle["valid/nlb_index"][()]
        assert sorted(np.concatenate([train_index, valid_index]).tolist()) == list(range(N_TRAIN))
        expected_train, expected_valid = split_indices(
            N_TRAIN, PREPARED_VALID_FRACTION, PREPARED_SPLIT_SEED
        )
        np.testing.assert_array_equal(valid_index, expected_valid)
        # encoder input is the held-in, observed part of the reconstruction target
        np.testing.assert_array_equal(
            handle["train/encod_data"][()], handle["train/recon_data"][:, :n_obs, :N_HELDIN]
        )
        assert np.isfinite(handle["train/recon_data"][()]).all()
        assert handle["train/condition"][()].min() >= 0


def test_each_trial_keeps_its_id_in_the_source_file(prepared, synthetic_dir):
    """trial_id of each model and eval trial: its row of the NWB trials table, in nlb_tools' order
    (train and valid: the NLB train trials through nlb_index; eval: the val trials)."""
    with h5py.File(synthetic_dir / SYNTHETIC_ASSETS["train"]) as nwb:
        ids = nwb["intervals/trials/id"][()]
        split = nwb["intervals/trials/split"].asstr()[()]
    with h5py.File(prepared.prepared) as handle:
        for name in ("train", "valid"):
            expected = ids[split == "train"][handle[f"{name}/nlb_index"][()]]
            np.testing.assert_array_equal(handle[f"{name}/trial_id"][()], expected)
        np.testing.assert_array_equal(handle["eval/trial_id"][()], ids[split == "val"])


def test_truth_matches_spike_counts(prepared):
    """Binned true rates are the Poisson means of the binned spikes: totals agree within a few %."""
    with h5py.File(prepared.prepared) as handle:
        spikes = handle["train/recon_data"][()]
        truth = handle["train/truth"][()]
    assert abs(spikes.sum() / truth.sum() - 1) < 0.03
    per_neuron = spikes.sum(axis=(0, 1)) / truth.sum(axis=(0, 1))
    assert np.all(np.abs(per_neuron - 1) < 0.25)


def test_test_phase_uses_train_and_val_trials_and_the_test_file(synthetic_dir, tmp_path):
    nwb = {role: synthetic_dir / path for role, path in SYNTHETIC_ASSETS.items()}
    truth = {role: synthetic_dir / path for role, path in SYNTHETIC_TRUTH.items()}
    out = prepare(
        nwb["train"], nwb["test"], tmp_path / "p.h5", "mc_maze", 20, "test", truth_files=truth
    )
    with h5py.File(out) as handle:
        n_model = handle["train/encod_data"].shape[0] + handle["valid/encod_data"].shape[0]
        assert n_model == N_TRAIN + N_VAL
        assert handle["eval/encod_data"].shape == (N_TEST, 35, N_HELDIN)
        assert handle["eval/truth"].shape == (N_TEST, 45, N_HELDIN + N_HELDOUT)
        assert "condition" not in handle["eval"]


def test_targets_are_read_by_nlb_evaluate_and_truth_scores_well(prepared):
    """A submission of the binned true rates gets co-bps well above 0 from nlb_tools itself."""
    from nlb_tools.evaluation import evaluate

    bin_width, targets = prepared.bin_width, prepared.targets
    n_obs, _ = BINS[bin_width]
    with h5py.File(prepared.prepared) as handle:
        rows = np.concatenate([handle["train/nlb_index"][()], handle["valid/nlb_index"][()]])
        truth = np.concatenate([handle["train/truth"][()], handle["valid/truth"][()]])[
            np.argsort(rows)
        ]
        eval_truth = handle["eval/truth"][()]
    name = group_name("mc_maze", bin_width)
    submission = {
        name: {
            "train_rates_heldin": truth[:, :n_obs, :N_HELDIN],
            "train_rates_heldout": truth[:, :n_obs, N_HELDIN:],
            "eval_rates_heldin": eval_truth[:, :n_obs, :N_HELDIN],
            "eval_rates_heldout": eval_truth[:, :n_obs, N_HELDIN:],
            "eval_rates_heldin_forward": eval_truth[:, n_obs:, :N_HELDIN],
            "eval_rates_heldout_forward": eval_truth[:, n_obs:, N_HELDIN:],
        }
    }
    (result,) = evaluate(str(targets), submission)
    scores = result[f"{name}_split"]
    # measured on this dataset: co-bps 0.46, fp-bps 0.91, vel R2 0.99, psth R2 0.43 (few trials
    # per condition make the target PSTHs noisy)
    assert scores["co-bps"] > 0.35
    assert scores["fp-bps"] > 0.6
    assert scores["vel R2"] > 0.9
    assert scores["psth R2"] > 0.3
    # each neuron's mean rate, the baseline co-bps is measured against, scores about 0
    flat = {
        key: np.broadcast_to(value.mean(axis=(0, 1), keepdims=True), value.shape)
        for key, value in submission[name].items()
    }
    (baseline,) = evaluate(str(targets), {name: flat})
    assert abs(baseline[f"{name}_split"]["co-bps"]) < 0.05
    with h5py.File(targets) as handle:
        assert handle[name]["eval_cond_idx"].dtype.kind == "O"  # ragged, whatever the balance


# -- the NLB layout table against nlb_tools --------------------------------------------------


def _fields_of(make_params: dict) -> set[str]:
    """Trial-table columns a set of nlb_tools make_params aligns or cuts trials at."""
    return {
        make_params[key]
        for key in ("align_field", "start_field", "end_field")
        if key in make_params
    }


def _fields_read_by_functions(params: dict) -> set[str]:
    """Trial-table columns that PARAMS' functions (decode_masks, behavior_mask, ...) read.

    They are lambdas of the trial table `x`; a column is read as `x.column` or `x.get("column")`.
    """
    import dis

    fields = set()
    for value in [*params.values(), *params.get("psth_params", {}).values()]:
        if not callable(value):
            continue
        argument = value.__code__.co_varnames[0]
        instructions = list(dis.get_instructions(value))
        for before, this, after in zip(instructions, instructions[1:], instructions[2:]):
            if before.opname == "LOAD_FAST" and before.argval == argument:
                if this.argval == "get" and after.opname == "LOAD_CONST":
                    fields.add(after.argval)
                elif this.opname == "LOAD_ATTR":
                    fields.add(this.argval)
    return fields


def test_layout_table_has_every_nlb_tools_layout():
    from nlb_tools.make_tensors import PARAMS

    assert sorted(LAYOUTS) == sorted(PARAMS)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_table_agrees_with_nlb_tools(name):
    """Every value of the table is what nlb_tools' make_tensors.PARAMS says for the layout."""
    from nlb_tools.make_tensors import PARAMS

    params, spec = PARAMS[name], LAYOUTS[name]
    train_params, eval_params = params["make_params"], params["eval_make_params"]
    assert spec.name == name
    assert spec.align_field == train_params["align_field"] == eval_params["align_field"]
    assert spec.window_ms == tuple(train_params["align_range"])
    if "align_range" in eval_params:  # dmfc_rsg's eval trials run set_time..go_time instead
        assert spec.window_ms == tuple(eval_params["align_range"])
    assert spec.forward_ms == params["fp_len"]
    if params["behavior_source"] == "data":
        assert spec.behavior_series == params["behavior_field"]
        assert spec.behavior_lag_ms == params["lag"]
    else:
        assert spec.behavior_series is None and spec.behavior_lag_ms is None
    psth = params.get("psth_params")
    if psth is None:
        assert spec.psth_condition_fields is None and not spec.has_psth
    else:
        assert spec.psth_condition_fields == tuple(psth["cond_fields"]) and spec.has_psth
        assert psth["make_params"]["align_field"] == spec.align_field

    test_fields = _fields_of(eval_params)
    train_fields = test_fields | _fields_of(train_params) | _fields_read_by_functions(params)
    if psth is not None:
        train_fields |= _fields_of(psth["make_params"]) | set(psth["cond_fields"])
    if params["behavior_source"] == "trial_info":
        train_fields |= set(params["behavior_field"])
    assert set(spec.test_trial_fields) == test_fields - set(BASE_TRIAL_FIELDS)
    assert set(spec.train_trial_fields) == train_fields - set(BASE_TRIAL_FIELDS)
    assert len(set(spec.train_trial_fields)) == len(spec.train_trial_fields)


def test_functions_in_params_read_the_columns_they_name():
    """The reader of PARAMS' lambdas finds what they read (else the trial-field check is empty)."""
    from nlb_tools.make_tensors import PARAMS

    assert _fields_read_by_functions(PARAMS["area2_bump"]) == {"ctr_hold_bump"}
    assert _fields_read_by_functions(PARAMS["dmfc_rsg"]) == {"is_outlier", "split", "tp"}
    assert _fields_read_by_functions(PARAMS["mc_maze"]) == set()


def test_trial_selection_is_nlb_tools_own():
    from types import SimpleNamespace

    import pandas as pd
    from nlb_tools.make_tensors import _prep_mask

    splits = ["train", "val", "none", "train", "test", "val", "train", "none"]
    dataset = SimpleNamespace(trial_info=pd.DataFrame({"split": splits}))
    for trial_split in ("train", "val", "test", ["train", "val"], ["val"]):
        ours = trial_mask(dataset, trial_split)
        assert ours.dtype == bool and ours.shape == (len(splits),)
        np.testing.assert_array_equal(ours, np.asarray(_prep_mask(dataset, trial_split)))
    assert trial_mask(dataset, ["train", "val"]).sum() == 5


def test_group_names_and_bin_widths():
    assert BIN_WIDTHS_MS == (5, 20)
    assert group_name("mc_maze", 5) == "mc_maze"
    assert group_name("mc_rtt", 20) == "mc_rtt_20"
    with pytest.raises(ValueError, match="bin width 10 ms.*5, 20"):
        group_name("mc_maze", 10)
    with pytest.raises(ValueError, match="unknown nlb_layout 'mc_mase'.*mc_maze_small"):
        group_name("mc_mase", 5)


def test_lean_smoothing_gives_nlb_tools_own_numbers(synthetic_dir):
    """The PSTH step's smoothing (`lean_smooth_spk`) against nlb_tools' `smooth_spk` on the same
    1 ms spikes, with a stretch of NaN (its ignore_nans path): equal to the last bit, columns and
    times alike (nlb_tools' column levels come out of a concatenation as objects, ours as
    integers), and nlb_tools' method is back after the block."""
    from nlb_tools.nwb_interface import NWBDataset

    from lfads.data.targets import lean_smoothing

    own = NWBDataset(str(synthetic_dir / SYNTHETIC_ASSETS["train"]), skip_fields=["hand_vel"])
    own.data = own.data.loc[:, ["spikes", "heldout_spikes"]]
    own.data.iloc[3000:3400, 2] = np.nan
    lean = NWBDataset.__new__(NWBDataset)
    lean.__dict__.update(own.__dict__, data=own.data.copy())
    method = NWBDataset.smooth_spk
    own.smooth_spk(50, overwrite=True, ignore_nans=True, parallelized=False)
    with lean_smoothing():
        assert NWBDataset.smooth_spk is not method
        lean.smooth_spk(50, overwrite=True, ignore_nans=True)
    assert NWBDataset.smooth_spk is method
    assert lean.data.isna().to_numpy().sum() == 400
    assert list(lean.data.columns) == list(own.data.columns)
    assert lean.data.index.equals(own.data.index)
    np.testing.assert_array_equal(lean.data.to_numpy(), own.data.to_numpy())
