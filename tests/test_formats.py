"""File formats: each writer's file reads back the same, and a file of another format version
(or none) is refused by its reader with a message naming the file, both versions and the fix."""

from __future__ import annotations

import math
import re

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_HPARAMS

from lfads.data.toydata import write_lorenz_prepared
from lfads.formats.checkpoints import (
    TRAINING_STATE,
    MemberState,
    SavedModel,
    TrainingState,
    add_training_state,
    load_checkpoint_file,
    load_model,
    read_model,
    read_training_checkpoint,
    training_state,
    write_model,
)
from lfads.formats.inferred import InferredAttributes, InferredSplit, read_inferred, write_inferred
from lfads.formats.metrics import read_metrics_csv, write_metrics_csv
from lfads.formats.prepared import read_prepared
from lfads.formats.targets import check_targets, read_targets, write_targets_file
from lfads.formats.version import FormatVersionError
from lfads.model.hparams import HParams
from lfads.model.lfads import LFADS, SessionDims
from lfads.model.members import MemberRandom
from lfads.training.resume import RunIdentity, plan_run


def set_attribute(path, key, value):
    with h5py.File(path, "a") as handle:
        if value is None:
            del handle.attrs[key]
        else:
            handle.attrs[key] = value


def assert_refused(read, path, found: str, rule: str, version: int = 1):
    """`read(path)` refuses the file, naming it, what it found, the `version` this code reads and
    the rule that rewrites it."""
    with pytest.raises(FormatVersionError) as error:
        read(path)
    message = str(error.value)
    assert str(path) in message and found in message and f"version {version}" in message, message
    assert rule in message, message


def test_prepared_file_reads_back_and_other_versions_are_refused(tmp_path):
    path = write_lorenz_prepared(tmp_path / "p.h5", n_trials=30, n_eval=5, n_heldin=4, n_heldout=2)
    prepared = read_prepared(path, unit_ids=True)
    assert prepared.attributes.n_heldin == 4 and prepared.attributes.has_truth is True
    assert list(prepared.splits) == ["train", "valid", "eval"]
    with h5py.File(path) as handle:
        for split, arrays in prepared.splits.items():
            for key, value in arrays.arrays().items():
                np.testing.assert_array_equal(value, handle[split][key][()])
                assert value.dtype == (
                    np.int64 if key in ("nlb_index", "condition") else np.float32
                )
        assert handle.attrs["format_version"] == 1
    assert prepared.splits["eval"].recon_data is None
    np.testing.assert_array_equal(prepared.unit_ids["heldout"], [4, 5])
    only = read_prepared(path, keys=("nlb_index",))
    assert only.splits["train"].encod_data is None and only.splits["train"].nlb_index is not None
    assert prepared.session_attributes()["dataset"] == "lorenz_test"

    set_attribute(path, "format_version", 2)
    assert_refused(read_prepared, path, "format_version is 2", "`prepare`")
    set_attribute(path, "format_version", None)
    assert_refused(read_prepared, path, "no format_version", "`prepare`")


def test_prepared_reader_names_a_missing_attribute_and_a_wrong_shape(tmp_path):
    path = write_lorenz_prepared(tmp_path / "p.h5", n_trials=30, n_eval=5)
    set_attribute(path, "n_obs_bins", 7)
    with pytest.raises(ValueError, match=r"train/encod_data has shape \(24, 20, 20\); expected"):
        read_prepared(path)
    set_attribute(path, "split_seed", None)
    with pytest.raises(ValueError, match="root attribute 'split_seed' is missing"):
        read_prepared(path)


@pytest.mark.parametrize("kept", [0.5, 0.97])  # cut in the header's reach; in the data
def test_a_truncated_prepared_file_is_named_with_the_rule_that_rewrites_it(tmp_path, kept):
    path = write_lorenz_prepared(tmp_path / "p.h5", n_trials=30, n_eval=5)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(ValueError) as error:
        read_prepared(path)
    message = str(error.value)
    assert message.startswith(f"{path}: HDF5 cannot read it (") and "truncated" in message
    assert "`snakemake --forcerun prepare`" in message, message
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'q.h5'}: no such file"):
        read_prepared(tmp_path / "q.h5")


def test_a_truncated_pbt_pack_state_names_the_file_the_generation_and_the_remedy(tmp_path):
    from lfads.training.population import _previous_state

    folder = tmp_path / "pbt" / "gen0001" / "pack01"
    folder.mkdir(parents=True)
    path = folder / "state.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, path)
    assert torch.equal(load_checkpoint_file(path)["state_dict"]["w"], torch.arange(1000.0))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError) as error:
        _previous_state(path, 2)
    message = str(error.value)
    assert message.startswith("generation 2 starts from the end of generation 1, but ")
    assert f"{path}: torch cannot read it (RuntimeError: " in message
    assert f"Delete the folder {folder} and rerun the workflow" in message


def test_inferred_file_rounds_latents_only_and_refuses_other_versions(tmp_path):
    rng = np.random.default_rng(0)
    rates, factors = rng.random((6, 5, 3), np.float32), rng.random((6, 5, 2), np.float32)
    path = tmp_path / "inferred.h5"
    write_inferred(
        path,
        {"dataset": "x", "n_heldin": 2},
        InferredAttributes(3, 0, 0, 10, "p.h5", mantissa_bits=8),
        {"valid": InferredSplit(rates=rates, factors=factors, nlb_index=np.arange(6))},
    )
    inferred = read_inferred(path)
    valid = inferred.splits["valid"]
    np.testing.assert_array_equal(valid.rates, rates)  # exact
    error = np.abs(valid.factors - factors) / factors
    assert 0 < error.max() <= 2**-9  # 8 mantissa bits
    assert inferred.attrs["n_samples"] == 3 and inferred.attrs["dataset"] == "x"
    assert inferred.attrs["units"] == "rates: spikes per bin" and valid.ic_mean is None
    assert list(read_inferred(path, keys=("rates",)).splits["valid"].arrays()) == ["rates"]
    set_attribute(path, "format_version", 0)
    assert_refused(read_inferred, path, "format_version is 0", "`infer`")


def test_targets_file_stays_nlb_tools_layout_with_a_checked_version(tmp_path):
    from nlb_tools.make_tensors import h5_to_dict

    psth = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    cond_idx = np.empty(2, dtype=object)
    cond_idx[0], cond_idx[1] = np.array([0, 2]), np.array([1])
    targets = {"mc_maze_20": {"psth": psth, "eval_cond_idx": cond_idx}}
    path = write_targets_file(tmp_path / "targets.h5", targets)
    with h5py.File(path) as handle:
        assert set(h5_to_dict(handle)["mc_maze_20"]) == {"psth", "eval_cond_idx"}
    group = read_targets(path, "mc_maze_20")
    np.testing.assert_array_equal(group.psth, psth)
    assert [list(rows) for rows in group.eval_cond_idx] == [[0, 2], [1]]
    assert group.train_behavior is None
    with pytest.raises(ValueError, match=r"no group 'mc_maze' \(groups: \['mc_maze_20'\]\)"):
        read_targets(path, "mc_maze")
    check_targets(path)
    set_attribute(path, "format_version", None)  # a file written before targets had a version
    assert_refused(check_targets, path, "no format_version", "`targets`")
    assert_refused(lambda p: read_targets(p, "mc_maze_20"), path, "no format_version", "`targets`")


def test_model_checkpoint_round_trip_and_refusals(tmp_path):
    """A model.ckpt holds one member's weights without the member axis: member 1 of a pack of
    two loads as a model of its own (a pack of one)."""
    hparams = HParams.from_dict(TINY_HPARAMS)
    other = hparams.replace(seed=1, dropout=0.2)
    sessions = [SessionDims(4, 2, 5, 1)]
    pack = LFADS([hparams, other], sessions)
    path = tmp_path / "model.ckpt"
    saved = SavedModel(pack.member_state_dict(1), other, sessions, [{"file": "p.h5"}], 3, "")
    write_model(path, saved)
    assert torch.load(path, weights_only=True)["state_dict"]["encoder.ic_encoder.h0"].shape == (
        2,  # (direction, H): no member axis
        TINY_HPARAMS["ic_enc_dim"],
    )
    loaded, read_back = load_model(path)
    assert read_back.hparams == other and read_back.sessions == sessions and read_back.epochs == 3
    assert loaded.n_members == 1 and loaded.members == [other]
    for key, value in pack.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value[1:]), key
    assert not loaded.training
    # weights of another shape (a whole pack's) are refused, naming the file
    write_model(path, SavedModel(pack.state_dict(), hparams, sessions, [], 3, ""))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: .* does not fit this model"):
        load_model(path)
    write_model(path, saved)

    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "format_version": 2}, path)
    assert_refused(read_model, path, "format_version is 2", "`train`")
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not an LFADS model file"):
        read_model(path)


def test_training_state_round_trip_and_an_old_last_checkpoint_is_refused(tmp_path):
    """The state of a pack of two, member 1 stopped early: each member's bookkeeping and the
    members' random streams read back; the pack resumes (member 0 still trains)."""
    hparams = HParams.from_dict(TINY_HPARAMS)
    members = [hparams, hparams.replace(seed=1)]
    identity = RunIdentity(
        tuple(member.to_dict() for member in members), ({"file": "p.h5", "sha256": "0"},)
    )
    random = MemberRandom([0, 1])
    random.rand((3,), torch.zeros(0))  # streams that have drawn
    state = TrainingState(
        sessions=[SessionDims(4, 2, 5, 1).to_dict()],
        members=[
            MemberState(
                name="run_a",
                hparams=members[0].to_dict(),
                history=[{"epoch": 0, "train_loss": 1.5}],
                valid_smoothed=1.25,
            ),
            MemberState(
                name="run_b",
                hparams=members[1].to_dict(),
                history=[{"epoch": 0, "train_loss": 2.5}],
                valid_smoothed=2.25,
                stop_reason="early stopping",
            ),
        ],
        rng=random.state(),
        identity=identity.to_dict(),
    )
    checkpoint = {"epoch": 0, "state_dict": {}}
    add_training_state(checkpoint, state)
    assert checkpoint[TRAINING_STATE]["format_version"] == 2
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    read_back = read_training_checkpoint(path)
    assert read_back.members == state.members and read_back.members[0].valid_smoothed == 1.25
    assert read_back.sessions == state.sessions and read_back.identity == identity.to_dict()
    restored = MemberRandom([0, 1])
    assert restored.set_state(read_back.rng, "cpu")
    torch.testing.assert_close(
        restored.rand((3,), torch.zeros(0)), random.rand((3,), torch.zeros(0)), rtol=0, atol=0
    )
    plan = plan_run(path.parent, identity, max_epochs=9)
    assert (plan.action, plan.epochs_done) == ("resume", 1)
    assert [m.stop_reason for m in plan.state.members] == ["", "early stopping"]

    del checkpoint[TRAINING_STATE]["format_version"]  # as the code before versions wrote it
    torch.save(checkpoint, path)
    assert_refused(read_training_checkpoint, path, "no format_version", "delete it", version=2)
    assert plan_run(path.parent, identity, max_epochs=9).action == "afresh"  # set aside
    assert not path.exists() and len(list(tmp_path.glob("checkpoints.superseded-*/last.ckpt"))) == 1
    with pytest.raises(ValueError, match="no 'lfads' training state"):
        training_state({"epoch": 0}, path)


def test_metrics_csv_keeps_every_digit_and_empty_cells_for_nan(tmp_path):
    rows = [{"epoch": 0, "train_loss": 0.1 + 0.2}, {"epoch": 1, "train_loss": math.nan, "lr": 1e-3}]
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, rows)
    assert path.read_text() == "epoch,train_loss,lr\n0,0.30000000000000004,\n1,,0.001\n"
    table = read_metrics_csv(path)
    # pandas' default parser (kept: aggregate and figures read with it) may drop the last digit
    assert table["train_loss"][0] == pytest.approx(0.1 + 0.2, rel=1e-15)
    assert math.isnan(table["train_loss"][1])
    assert table["epoch"].tolist() == [0, 1]
