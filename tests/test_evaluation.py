"""evaluate, aggregate, figures and submission on stand-in runs: their 'inferred' rates are the
truth plus noise.

These check the glue between the model's output files and nlb_tools without
training a model: a run with less noise must score better, and the table must
pick the run with the lowest validation loss.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import run_files_under

from lfads.evaluation.aggregate import write_summary
from lfads.evaluation.evaluate import evaluate_run
from lfads.evaluation.figures import all_figures
from lfads.evaluation.outputs import figures_for
from lfads.evaluation.submission import nlb_submission, write_submission
from lfads.formats.inferred import InferredAttributes, InferredSplit, write_inferred
from lfads.formats.metrics import write_metrics_csv
from lfads.formats.prepared import read_prepared
from lfads.formats.summary import best_run


@pytest.fixture(scope="module")
def prepared(prepared_files):
    """The session's 20 ms prepared and targets files (conftest.prepared_files)."""
    files = prepared_files(20)
    return files.prepared, files.targets


def fake_run(folder, prepared_path, noise: float, valid_losses: list[float], seed: int):
    """A run folder with inferred.h5 (truth x lognormal noise) and metrics.csv."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    prepared = read_prepared(prepared_path)
    splits = {}
    for split, arrays in prepared.splits.items():
        truth = arrays.truth
        splits[split] = InferredSplit(
            rates=(truth * np.exp(noise * rng.normal(size=truth.shape))).astype(np.float32),
            factors=rng.normal(size=truth.shape[:2] + (5,)).astype(np.float32),
            nlb_index=arrays.nlb_index,
        )
    attributes = InferredAttributes(
        n_samples=1,
        seed=seed,
        session=0,
        model_epochs=len(valid_losses),
        data_file=str(prepared_path),
        mantissa_bits=23,
    )
    write_inferred(folder / "inferred.h5", prepared.session_attributes(), attributes, splits)
    write_metrics_csv(
        folder / "metrics.csv",
        [
            {
                "epoch": epoch,
                "train_loss": loss * 0.9,
                "valid_loss": loss,
                "valid_recon_smoothed": loss,
            }
            for epoch, loss in enumerate(valid_losses)
        ],
    )


def test_nlb_submission_restores_nlb_trial_order(prepared, tmp_path):
    prepared_path, _ = prepared
    fake_run(tmp_path / "order", prepared_path, 0.0, [1.0], seed=0)
    submission = nlb_submission(prepared_path, tmp_path / "order" / "inferred.h5")["mc_maze_20"]
    with h5py.File(prepared_path) as handle:
        n_obs, n_heldin = handle.attrs["n_obs_bins"], handle.attrs["n_heldin"]
        for split in ("train", "valid"):
            rows = handle[f"{split}/nlb_index"][()]
            np.testing.assert_allclose(
                submission["train_rates_heldin"][rows],
                np.maximum(handle[f"{split}/truth"][:, :n_obs, :n_heldin], 1e-9),
            )
        assert submission["eval_rates_heldout_forward"].shape[1] == handle.attrs["n_fwd_bins"]


RUNS = {"noise~0.1": {"noise": 0.1}, "noise~0.8": {"noise": 0.8}}


@pytest.fixture(scope="module")
def scored_runs(prepared, tmp_path_factory):
    """Two stand-in runs, evaluated: (run folder, {run: scores}). The noisier run has the lower
    validation loss, so it is selected although it scores worse."""
    prepared_path, targets = prepared
    folder = tmp_path_factory.mktemp("runs")
    fake_run(folder / "noise~0.1", prepared_path, 0.1, [3.0, 2.0, 1.5], seed=1)
    fake_run(folder / "noise~0.8", prepared_path, 0.8, [3.0, 1.8, 1.2], seed=2)
    scores = {
        name: evaluate_run(
            prepared_path, folder / name / "inferred.h5", targets, folder / name / "metrics.json"
        )
        for name in RUNS
    }
    return folder, scores


def test_runs_scored_aggregated_and_submitted(prepared, scored_runs, tmp_path):
    prepared_path, targets = prepared
    folder, scores = scored_runs
    for name in RUNS:
        assert json.loads((folder / name / "metrics.json").read_text()) == pytest.approx(
            scores[name]
        )
    assert scores["noise~0.1"]["co-bps"] > scores["noise~0.8"]["co-bps"] + 0.1
    assert scores["noise~0.1"]["rate R2"] > 0.9 > scores["noise~0.8"]["rate R2"]
    assert {"co-bps", "vel R2", "psth R2", "fp-bps", "rate R2"} <= set(scores["noise~0.1"])

    table = write_summary(RUNS, run_files_under(folder, RUNS), tmp_path / "summary.tsv")
    assert list(table.run) == ["noise~0.8", "noise~0.1"]
    assert list(table.best) == [True, False]
    assert table.best_epoch.tolist() == [3, 3] and table.val_recon_smoothed.tolist() == [1.2, 1.5]
    assert table.nlb_co_bps.tolist() == [scores[run]["co-bps"] for run in table.run]
    assert table.hp_noise.tolist() == [0.8, 0.1]  # (searched; named hp_)
    assert not table.diverged.any()
    assert best_run(tmp_path / "summary.tsv") == "noise~0.8"

    submission = write_submission(
        prepared_path, folder / "noise~0.8" / "inferred.h5", tmp_path / "sub.h5"
    )
    from nlb_tools.evaluation import evaluate

    (result,) = evaluate(str(targets), str(submission))
    assert result["mc_maze_20_split"]["co-bps"] == pytest.approx(
        scores["noise~0.8"]["co-bps"], abs=1e-6
    )


@pytest.mark.slow
def test_every_figure_of_the_runs_is_drawn(prepared, scored_runs, tmp_path):
    prepared_path, targets = prepared
    folder, _ = scored_runs
    write_summary(RUNS, run_files_under(folder, RUNS), tmp_path / "summary.tsv")
    names = [figure.name for figure in figures_for("val", "mc_maze", has_truth=True)]
    outputs = {name: tmp_path / "figures" / f"{name}.png" for name in names}
    files = run_files_under(folder, RUNS)
    all_figures(
        tmp_path / "summary.tsv",
        {run: files[run].inferred for run in RUNS},
        {run: files[run].curves for run in RUNS},
        prepared_path,
        targets,
        "mc_maze_20",
        outputs,
    )
    for name, path in outputs.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        # the stand-in runs infer no inputs: that figure is a one-line note (about 5 kB)
        assert path.stat().st_size > (2_000 if name == "best_inputs" else 10_000), name


def test_the_best_run_is_chosen_by_its_best_epoch_not_its_last(tmp_path):
    """Run "late" ends lower than "early" ends, but "early" had the lower best epoch."""
    runs = {"early": {"lr": 0.01}, "late": {"lr": 0.001}}
    curves = {"early": [3.0, 0.9, 1.4, 1.6], "late": [3.0, 1.8, 1.3, 1.2]}
    for name, losses in curves.items():
        rows = [
            {"epoch": epoch, "valid_loss": loss, "valid_recon_smoothed": loss}
            for epoch, loss in enumerate(losses)
        ]
        write_metrics_csv(tmp_path / name / "metrics.csv", rows)
        (tmp_path / name / "metrics.json").write_text(json.dumps({"co-bps": 0.3}))
    table = write_summary(runs, run_files_under(tmp_path, runs), tmp_path / "summary.tsv")
    assert list(table.run) == ["early", "late"] and list(table.best) == [True, False]
    assert table.best_epoch.tolist() == [2, 4]  # from 1, as the log counts
    assert table.val_recon_smoothed.tolist() == [0.9, 1.2]  # the best epoch's, not the last's
    assert best_run(tmp_path / "summary.tsv") == "early"
