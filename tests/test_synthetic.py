"""The synthetic generator writes files nlb_tools reads as an MC_Maze dataset, deterministically."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from conftest import REPO, SMALL_SYNTHETIC
from lfads.config import load_yaml
from lfads.synthetic import ASSET_PATHS, TRUTH_PATHS, SyntheticSettings, bin_true_rates, write_synthetic_dataset
from lfads.targets import ragged_index_arrays


@pytest.fixture(scope="module")
def train_dataset(synthetic_dir):
    from nlb_tools.nwb_interface import NWBDataset

    return NWBDataset(str(synthetic_dir / ASSET_PATHS["train"]))


def test_nlb_tools_reads_the_train_file(train_dataset):
    fields = set(train_dataset.data.columns.get_level_values(0))
    assert {"spikes", "heldout_spikes", "hand_vel", "hand_pos", "cursor_pos", "eye_pos"} <= fields
    assert train_dataset.data["spikes"].shape[1] == SMALL_SYNTHETIC["n_heldin"]
    assert train_dataset.data["heldout_spikes"].shape[1] == SMALL_SYNTHETIC["n_heldout"]
    splits = train_dataset.trial_info.split.value_counts().to_dict()
    assert splits == {"train": SMALL_SYNTHETIC["n_train_trials"], "val": SMALL_SYNTHETIC["n_val_trials"]}
    conditions = train_dataset.trial_info[["trial_type", "trial_version"]].drop_duplicates()
    assert len(conditions) > 1


def test_nlb_tools_reads_the_test_file(synthetic_dir):
    from nlb_tools.make_tensors import make_eval_input_tensors
    from nlb_tools.nwb_interface import NWBDataset

    dataset = NWBDataset(str(synthetic_dir / ASSET_PATHS["test"]))
    assert "heldout_spikes" not in dataset.data.columns.get_level_values(0)
    assert "hand_vel" not in dataset.data.columns.get_level_values(0)
    assert set(dataset.trial_info.split) == {"test"}
    dataset.resample(5)
    tensors = make_eval_input_tensors(dataset, "mc_maze", "test", save_file=False)
    assert tensors["eval_spikes_heldin"].shape == (SMALL_SYNTHETIC["n_test_trials"], 140, SMALL_SYNTHETIC["n_heldin"])
    assert np.isfinite(tensors["eval_spikes_heldin"]).all()


def test_binned_truth_matches_the_spike_counts(synthetic_dir, train_dataset):
    """Spike counts per 1 ms are Poisson draws of the truth: totals per neuron agree within sampling noise."""
    rates = bin_true_rates(synthetic_dir / TRUTH_PATHS["train"], 1)  # spikes per ms
    spikes = np.concatenate([train_dataset.data["spikes"].to_numpy(), train_dataset.data["heldout_spikes"].to_numpy()],
                            axis=1).astype(np.float64)
    assert rates.shape == spikes.shape
    expected, observed = rates.sum(axis=0), spikes.sum(axis=0)
    z_scores = (observed - expected) / np.sqrt(expected)
    assert np.abs(z_scores).max() < 5
    # 20 ms bins are sums of 1 ms bins; a trailing partial bin is summed over what it has
    binned = bin_true_rates(synthetic_dir / TRUTH_PATHS["train"], 20)
    n_full = rates.shape[0] // 20
    np.testing.assert_allclose(binned[:n_full], rates[:n_full * 20].reshape(n_full, 20, -1).sum(1), rtol=1e-4)
    assert binned.shape[0] == -(-rates.shape[0] // 20)


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    settings = SyntheticSettings.from_dict({**SMALL_SYNTHETIC, "n_train_trials": 10, "n_val_trials": 4,
                                            "n_test_trials": 4})
    first = write_synthetic_dataset(tmp_path / "a", settings)
    second = write_synthetic_dataset(tmp_path / "b", settings)
    third = write_synthetic_dataset(tmp_path / "c", dataclasses.replace(settings, seed=settings.seed + 1))

    def content(paths):
        with h5py.File(paths["train"]) as nwb, h5py.File(paths["train_truth"]) as truth:
            return nwb["units/spike_times"][()], truth["latents"][()]

    for a, b in zip(content(first), content(second)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(content(first)[1], content(third)[1])


def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match="n_helding"):
        SyntheticSettings.from_dict({"n_helding": 3})
    with pytest.raises(ValueError, match="n_heldin=2.5"):
        SyntheticSettings.from_dict({"n_heldin": 2.5})
    with pytest.raises(ValueError, match="move_onset_ms"):
        SyntheticSettings.from_dict({"move_onset_ms": 900})


def test_config_schema_lists_exactly_the_settings():
    schema = load_yaml(REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert set(schema["$defs"]["synthetic"]["properties"]) == {f.name for f in dataclasses.fields(SyntheticSettings)}


def test_balanced_conditions_are_saved_ragged(tmp_path):
    """nlb_tools 0.0.4 makes a 2-D object array when every condition has as many trials; it must still save."""
    from nlb_tools.make_tensors import h5_to_dict, save_to_h5

    balanced = np.array([np.array([0, 3]), np.array([1, 2])], dtype=object)
    assert balanced.ndim == 2
    with pytest.raises(TypeError):
        save_to_h5({"x": {"eval_cond_idx": balanced}}, str(tmp_path / "raw.h5"))
    save_to_h5({"x": {"eval_cond_idx": ragged_index_arrays(balanced)}}, str(tmp_path / "fixed.h5"))
    with h5py.File(tmp_path / "fixed.h5") as handle:
        loaded = h5_to_dict(handle)["x"]["eval_cond_idx"]
    assert [row.tolist() for row in loaded] == [[0, 3], [1, 2]]
