"""Bad NWB input gives an error naming the file and the field, before nlb_tools sees it."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from lfads.data.nwb_checks import NWBLayoutError, check_nwb_file
from lfads.data.prepare import prepare
from lfads.data.synthetic import ASSET_PATHS as SYNTHETIC_ASSETS


@pytest.fixture
def train_copy(synthetic_dir, tmp_path):
    path = tmp_path / "train.nwb"
    shutil.copy(synthetic_dir / SYNTHETIC_ASSETS["train"], path)
    return path


def _error(path, layout="mc_maze", role="train") -> str:
    with pytest.raises(NWBLayoutError) as caught:
        check_nwb_file(path, layout, role)
    return str(caught.value)


def test_good_files_pass(synthetic_dir):
    check_nwb_file(synthetic_dir / SYNTHETIC_ASSETS["train"], "mc_maze", "train")
    check_nwb_file(synthetic_dir / SYNTHETIC_ASSETS["test"], "mc_maze", "test")


def test_missing_trial_field(train_copy):
    with h5py.File(train_copy, "a") as handle:
        del handle["intervals/trials/move_onset_time"]
    message = _error(train_copy)
    assert str(train_copy) in message and "trials.move_onset_time" in message


def test_layout_mismatch_names_the_missing_fields(train_copy):
    assert "trials.ctr_hold_bump" in _error(train_copy, layout="area2_bump")


def test_behaviour_one_sample_past_the_grid(train_copy):
    """nlb_tools would drop this series with only a warning, then fail with KeyError: 'hand_vel'."""
    with h5py.File(train_copy, "a") as handle:
        series = handle["processing/behavior/hand_vel"]
        data = series["data"][()]
        attrs = dict(series["data"].attrs)
        del series["data"]
        series.create_dataset("data", data=np.vstack([data, data[-1:]]))
        series["data"].attrs.update(attrs)
    message = _error(train_copy)
    assert "processing.behavior.hand_vel" in message
    assert "outside the recording" in message and "1 outside" in message


def test_behaviour_off_the_1ms_grid(train_copy):
    with h5py.File(train_copy, "a") as handle:
        handle["processing/behavior/hand_vel/starting_time"][()] = 0.0005
    message = _error(train_copy)
    assert "processing.behavior.hand_vel" in message and "off the 1 ms grid" in message


def test_a_duplicated_trial_id_is_named_before_nlb_tools(train_copy):
    """nlb_tools failed with `all input arrays must have the same shape` (prepare) and
    `KeyError: np.int64(5)` (targets)."""
    with h5py.File(train_copy, "a") as handle:
        ids = handle["intervals/trials/id"]
        ids[5] = ids[4]
        expected = int(ids[4])
    message = _error(train_copy)
    assert message.startswith(f"{train_copy}: trials.id: trial id {expected} is on rows [4, 5]")


def test_nan_behaviour_is_named_before_nlb_tools(train_copy):
    """A second of NaN in hand_vel ended in nlb_tools' `all input arrays must have the same
    shape`."""
    with h5py.File(train_copy, "a") as handle:
        data = handle["processing/behavior/hand_vel/data"]
        values = data[()]
        values[650:1650] = np.nan
        data[...] = values
    message = _error(train_copy)
    assert message.startswith(f"{train_copy}: processing.behavior.hand_vel: sample 650 at "), (
        message
    )
    assert "(1000 of " in message and "interpolate the gaps" in message


def test_no_heldout_units(train_copy):
    with h5py.File(train_copy, "a") as handle:
        handle["units/heldout"][:] = False
    message = _error(train_copy)
    assert "units.heldout" in message and "no held-out units" in message


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "broken.nwb"
    path.write_bytes(b"<html>503 Service Unavailable</html>")
    message = _error(path)
    assert "not a readable NWB" in message and "a local source): replace it" in message


def test_prepare_refuses_bad_input_and_writes_nothing(train_copy, synthetic_dir, tmp_path):
    with h5py.File(train_copy, "a") as handle:
        handle["units/heldout"][:] = False
    out = tmp_path / "prepared.h5"
    with pytest.raises(NWBLayoutError):
        prepare(train_copy, synthetic_dir / SYNTHETIC_ASSETS["test"], out, "mc_maze", 20)
    assert list(tmp_path.iterdir()) == [train_copy]


def _set_spike_time(path, index, value):
    with h5py.File(path, "a") as handle:
        handle["units/spike_times"][index] = value


@pytest.mark.parametrize("value, problem", [(np.nan, "not a finite time"), (1e6, "outside")])
def test_bad_spike_time_is_named_before_nlb_tools(train_copy, value, problem):
    """A NaN spike time made nlb_tools fail with IndexError: index -9223372036854775808."""
    with h5py.File(train_copy) as handle:
        first_of_unit_1 = int(handle["units/spike_times_index"][0])
        unit_id = int(handle["units/id"][1])
    _set_spike_time(train_copy, first_of_unit_1 + 3, value)
    message = _error(train_copy)
    assert str(train_copy) in message and "units.spike_times" in message
    assert f"unit {unit_id} (row 1)" in message and problem in message
    assert "(1 of the file's" in message and "remove those spike times" in message


def test_prepare_refuses_a_nan_spike_time_and_writes_nothing(train_copy, synthetic_dir, tmp_path):
    _set_spike_time(train_copy, 0, np.nan)
    out = tmp_path / "prepared.h5"
    with pytest.raises(NWBLayoutError, match="units.spike_times"):
        prepare(train_copy, synthetic_dir / SYNTHETIC_ASSETS["test"], out, "mc_maze", 20)
    assert not out.exists()


def test_no_val_trials_fails_in_the_val_phase_only(train_copy):
    """In the val phase nlb_tools failed with AttributeError: 'NoneType' ... 'groupby'."""
    with h5py.File(train_copy, "a") as handle:
        split = handle["intervals/trials/split"]
        split[...] = np.array([b"train" if s == b"val" else s for s in split[()]], dtype=object)
    message = _error(train_copy)
    assert "trials.split" in message and "no trial has split 'val'" in message
    assert "val phase" in message and "phase: test" in message
    check_nwb_file(train_copy, "mc_maze", "train", phase="test")  # test phase: train trials do
