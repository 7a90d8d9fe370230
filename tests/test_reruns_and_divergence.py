"""Trustworthy reruns: a checkpoint belongs to one run, the best epoch is sampled, and a run
that diverges ends clearly without blocking a search (issue 11, the training side)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_HPARAMS, run_files_under

from lfads.data.toydata import write_lorenz_prepared
from lfads.formats.checkpoints import read_model
from lfads.formats.metrics import read_metrics_csv
from lfads.model.hparams import HParams
from lfads.model.recons import Poisson
from lfads.model.registry import register_reconstruction
from lfads.training.train import train_model


@register_reconstruction("poisson_worse_valid_after")
class PoissonWorseValidAfter(Poisson):
    """Poisson whose validation cost rises by 1 from the `good`+1-th validation batch on.

    A constant changes no gradient, so training is the plain Poisson one; only the smoothed
    validation loss, and so the best epoch, moves (one validation batch per epoch here).
    """

    def __init__(self, *, n_neurons: int, n_members: int = 1, good: int = 2):
        super().__init__(n_neurons=n_neurons, n_members=n_members)
        self.validations_left = good

    def compute_loss(self, data, params):
        loss = super().compute_loss(data, params)
        if self.training:
            return loss
        self.validations_left -= 1
        return loss + 1.0 if self.validations_left < 0 else loss


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reruns")
    return {
        "a": write_lorenz_prepared(folder / "a.h5"),
        "b": write_lorenz_prepared(folder / "b.h5", seed=1),
    }


HP = HParams.from_dict({**TINY_HPARAMS, "dropout": 0.1})


def metric_rows(run: Path) -> list[dict[str, float]]:
    """metrics.csv without the wall-clock column, for exact comparisons."""
    table = read_metrics_csv(run / "metrics.csv").drop(columns="epoch_seconds")
    return table.to_dict("records")


def superseded(checkpoint_dir: Path) -> list[Path]:
    return sorted(checkpoint_dir.parent.glob(f"{checkpoint_dir.name}.superseded-*"))


def delete_outputs(run: Path) -> None:
    """What Snakemake does before it reruns a job (--forcerun, or a changed input or param)."""
    for name in ("model.ckpt", "metrics.csv", "hparams.yaml"):
        (run / name).unlink()


# -- 1. a checkpoint identifies its run ------------------------------------------------------------
@pytest.mark.slow  # several trainings: about 10-20 s
def test_changed_data_trains_afresh_and_keeps_the_old_state_aside(data_files, tmp_path, caplog):
    caplog.set_level("INFO", logger="lfads.training")
    run = tmp_path / "run"
    train_model([data_files["a"]], HP, run, max_epochs=1, device="cpu")
    trained_on_a = metric_rows(run)
    delete_outputs(run)
    train_model([data_files["b"]], HP, run, max_epochs=1, device="cpu")
    train_model([data_files["b"]], HP, tmp_path / "fresh", max_epochs=1, device="cpu")
    assert metric_rows(run) == metric_rows(tmp_path / "fresh") != trained_on_a
    (aside,) = superseded(run / "checkpoints")
    assert (aside / "last.ckpt").exists()  # kept, not deleted
    assert "trained with another prepared file for session 0" in caplog.text
    assert "a.h5, sha256" in caplog.text and "now " + str(data_files["b"]) in caplog.text
    assert f"set aside as {aside}" in caplog.text and "continuing at epoch 2" not in caplog.text
    assert read_model(run / "model.ckpt").data[0]["file"] == str(data_files["b"])


@pytest.mark.slow  # several trainings: about 10-20 s
def test_changed_hyperparameter_trains_afresh(data_files, tmp_path, caplog):
    caplog.set_level("INFO", logger="lfads.training")
    run = tmp_path / "run"
    train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    delete_outputs(run)
    train_model([data_files["a"]], HP.replace(lr=0.002), run, max_epochs=2, device="cpu")
    train_model(
        [data_files["a"]], HP.replace(lr=0.002), tmp_path / "fresh", device="cpu", max_epochs=2
    )
    assert metric_rows(run) == metric_rows(tmp_path / "fresh")
    assert "hyperparameters ['lr']" in caplog.text and len(superseded(run / "checkpoints")) == 1


def test_a_rerun_of_a_delivered_run_writes_its_outputs_without_training(
    data_files, tmp_path, caplog
):
    """--forcerun train, a touched input: Snakemake deletes the outputs; the run's identity is
    unchanged, so its finished state is written out again in seconds, not trained again."""
    caplog.set_level("INFO", logger="lfads.training")
    run = tmp_path / "run"
    train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    first = read_metrics_csv(run / "metrics.csv")
    delete_outputs(run)
    caplog.clear()
    train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    again = read_metrics_csv(run / "metrics.csv")
    assert "writing its outputs without training again" in caplog.text
    assert "epoch 1/2" not in caplog.text and "training afresh" not in caplog.text
    assert again.equals(first)  # the same rows, epoch seconds included: nothing was trained
    assert superseded(run / "checkpoints") == []


@pytest.mark.slow  # several trainings: about 10-20 s
def test_fewer_epochs_train_afresh_and_more_continue(data_files, tmp_path, caplog):
    caplog.set_level("INFO", logger="lfads.training")
    run = tmp_path / "run"
    train_model([data_files["a"]], HP, run, max_epochs=3, device="cpu")
    train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    train_model([data_files["a"]], HP, tmp_path / "two", max_epochs=2, device="cpu")
    assert metric_rows(run) == metric_rows(tmp_path / "two")
    assert "training afresh" in caplog.text and len(superseded(run / "checkpoints")) == 1
    caplog.clear()  # raising max_epochs continues a finished run (documented)
    train_model([data_files["a"]], HP, run, max_epochs=3, device="cpu")
    assert "resumed from epoch 2" in caplog.text and "continuing at epoch 3 of 3" in caplog.text
    train_model([data_files["a"]], HP, tmp_path / "three", max_epochs=3, device="cpu")
    assert metric_rows(run) == metric_rows(tmp_path / "three")


def test_a_truncated_last_checkpoint_is_set_aside_with_a_warning(data_files, tmp_path, caplog):
    run = tmp_path / "run"
    train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    caplog.set_level("INFO", logger="lfads.training")
    train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "last.ckpt is unreadable" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage() and "training afresh" in warnings[0].getMessage()
    (aside,) = superseded(run / "checkpoints")
    assert (aside / "last.ckpt").stat().st_size == 1000
    assert len(metric_rows(run)) == 2


def test_a_run_killed_after_its_last_epoch_only_writes_its_outputs(
    data_files, tmp_path, caplog, monkeypatch
):
    from lfads.training import train

    run = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the job were killed after the last epoch's checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(train, "write_model", killed)
        with pytest.raises(KeyboardInterrupt):
            train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    assert not (run / "model.ckpt").exists()
    caplog.set_level("INFO", logger="lfads.training")
    train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    assert "has finished" in caplog.text and "epoch 1/2" not in caplog.text
    train_model([data_files["a"]], HP, tmp_path / "whole", max_epochs=2, device="cpu")
    assert metric_rows(run) == metric_rows(tmp_path / "whole")
    a, b = read_model(run / "model.ckpt"), read_model(tmp_path / "whole" / "model.ckpt")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert superseded(run / "checkpoints") == []


# -- 2. the best epoch is what gets sampled ------------------------------------------------------
@pytest.mark.slow  # several trainings: about 10-20 s
def test_the_model_holds_the_best_epoch_by_smoothed_validation_loss(data_files, tmp_path):
    from lfads.evaluation.infer import posterior_sample

    hp = HP.replace(reconstruction={"name": "poisson_worse_valid_after", "good": 2})
    run = train_model([data_files["a"]], hp, tmp_path / "run", max_epochs=5, device="cpu")
    smoothed = read_metrics_csv(tmp_path / "run" / "metrics.csv")["valid_recon_smoothed"]
    assert smoothed.idxmin() == 1 and len(smoothed) == 5  # epoch 2 of 5 is the best
    saved = read_model(run)
    assert (saved.epochs, saved.best_epoch) == (5, 2)
    assert saved.best_valid_recon_smoothed == pytest.approx(smoothed[1], rel=1e-12)
    # its weights are those after epoch 2: a 2-epoch run of the same seed ends there
    two = read_model(
        train_model([data_files["a"]], hp, tmp_path / "two", max_epochs=2, device="cpu")
    )
    for key, value in two.state_dict.items():
        assert torch.equal(saved.state_dict[key], value), key
    out = tmp_path / "inferred.h5"
    posterior_sample(run, [data_files["a"]], [out], n_samples=2, device="cpu")
    with h5py.File(out) as inferred:
        assert inferred.attrs["model_epochs"] == 2


# -- 3. non-finite values end clearly, and a diverged run does not block a search --------------
def test_lr_1000_names_the_posterior_parameter_and_writes_a_diverged_run(data_files, tmp_path):
    from lfads.evaluation.evaluate import evaluate_run
    from lfads.evaluation.infer import posterior_sample

    model = train_model(
        [data_files["a"]], HP.replace(lr=1000.0), tmp_path / "run", max_epochs=3, device="cpu"
    )
    saved = read_model(model)
    assert saved.diverged is not None and saved.diverged.epoch == 1
    assert "posterior" in saved.diverged.reason and "at epoch 1" in saved.diverged.reason
    assert (
        "Try a lower lr" in saved.diverged.reason
        and "Expected parameter" not in saved.diverged.reason
    )
    assert saved.best_epoch == 0 and saved.state_dict == {}  # no epoch finished
    inferred = tmp_path / "run" / "inferred.h5"
    posterior_sample(model, [data_files["a"]], [inferred], n_samples=2, device="cpu")
    with h5py.File(inferred) as handle:
        assert list(handle) == [] and "posterior" in handle.attrs["diverged"]
        assert handle.attrs["diverged_epoch"] == 1
    metrics = evaluate_run(data_files["a"], inferred, None, tmp_path / "run" / "metrics.json")
    assert (
        metrics["diverged"] is True and metrics["diverged_epoch"] == 1 and "co-bps" not in metrics
    )
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


def test_a_diverged_run_keeps_its_best_epoch_and_a_rerun_does_not_resume_into_the_nan(
    data_files, tmp_path, caplog, poisson_nan_after
):
    # 4 train batches + 1 valid batch per epoch: the 13th loss evaluation is in epoch 3
    hp = HP.replace(reconstruction={"name": poisson_nan_after, "calls": 12})
    model = train_model([data_files["a"]], hp, tmp_path / "run", max_epochs=5, device="cpu")
    saved = read_model(model)
    assert saved.diverged.epoch == 3 and saved.epochs == 2 and saved.best_epoch in (1, 2)
    assert "train loss term 'recon'" in saved.diverged.reason
    assert "at epoch 3" in saved.diverged.reason
    assert len(read_metrics_csv(tmp_path / "run" / "metrics.csv")) == 2
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # the last good epoch
    caplog.set_level("INFO", logger="lfads.training")
    delete_outputs(tmp_path / "run")
    train_model([data_files["a"]], hp, tmp_path / "run", max_epochs=5, device="cpu")
    assert "diverged" in caplog.text and "epoch 3/5" not in caplog.text
    again = read_model(tmp_path / "run" / "model.ckpt")
    assert again.diverged == saved.diverged and again.best_epoch == saved.best_epoch
    assert superseded(tmp_path / "run" / "checkpoints") == []


def test_a_nan_in_the_prepared_input_is_refused_naming_file_split_and_trial(tmp_path):
    path = write_lorenz_prepared(tmp_path / "prepared.h5", n_trials=60)
    with h5py.File(path, "a") as file:
        encod = file["valid/encod_data"][()]
        encod[7, 3, 2] = np.nan
        file["valid/encod_data"][...] = encod
    with pytest.raises(ValueError, match=r"prepared\.h5: valid/encod_data has 1 NaN.*trial 7"):
        train_model([path], HP, tmp_path / "run", max_epochs=1, device="cpu")


def test_a_diverged_run_is_marked_and_never_selected(tmp_path):
    from lfads.evaluation.aggregate import write_summary
    from lfads.formats.metrics import write_metrics_csv
    from lfads.formats.summary import best_run

    runs = {"lr~0.01": {"lr": 0.01}, "lr~1000": {"lr": 1000.0}}
    write_metrics_csv(
        tmp_path / "lr~0.01" / "metrics.csv",
        [{"epoch": 0, "valid_loss": 2.0, "valid_recon_smoothed": 2.0}],
    )
    (tmp_path / "lr~0.01" / "metrics.json").write_text(json.dumps({"co-bps": 0.2}))
    write_metrics_csv(tmp_path / "lr~1000" / "metrics.csv", [])  # diverged in epoch 1
    diverged = {"diverged": True, "diverged_epoch": 1, "diverged_reason": "train ... at epoch 1"}
    (tmp_path / "lr~1000" / "metrics.json").write_text(json.dumps(diverged))
    table = write_summary(runs, run_files_under(tmp_path, runs), tmp_path / "summary.tsv")
    assert list(table.run) == ["lr~0.01", "lr~1000"]
    assert list(table.best) == [True, False] and list(table.diverged) == [False, True]
    assert math.isnan(table.nlb_co_bps[1]) and best_run(tmp_path / "summary.tsv") == "lr~0.01"


def test_a_last_checkpoint_without_an_identity_is_set_aside(data_files, tmp_path, caplog):
    """A last.ckpt written before states carried their run's identity is never resumed."""
    run = tmp_path / "run"
    train_model([data_files["a"]], HP, run, max_epochs=1, device="cpu")
    last, record = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "run.json"
    assert json.loads(record.read_text())["delivered"] is True
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["lfads"]["identity"]
    torch.save(checkpoint, last)
    record.unlink()  # as the code before run records left the folder
    caplog.set_level("INFO", logger="lfads.training")
    train_model([data_files["a"]], HP, run, max_epochs=2, device="cpu")
    assert "no recorded run identity" in caplog.text and "resumed from" not in caplog.text
    assert len(superseded(run / "checkpoints")) == 1 and len(metric_rows(run)) == 2
