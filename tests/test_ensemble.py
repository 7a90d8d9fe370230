"""The ensemble of a search's best runs (lfads/evaluation/ensemble.py): member selection, rate
averaging, its validation Poisson loss, its summary row, the submission's choice, the workflow.

The unit tests use stand-in runs whose 'inferred' rates are the truth times lognormal noise
(no model is trained); the workflow test trains two tiny runs.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import (
    REPO,
    SNAKEFILE,
    WORKFLOW_HPARAMS,
    job_count,
    run_files_in,
    run_files_under,
    snakemake_in,
    write_tiny_config,
)

from lfads.config import ConfigError, check_config, validate_config
from lfads.evaluation.aggregate import write_summary
from lfads.evaluation.ensemble import (
    average_rates,
    ensemble_name,
    is_ensemble,
    poisson_loss,
    rank_runs,
    write_ensemble,
)
from lfads.evaluation.evaluate import evaluate_run
from lfads.evaluation.submission import submitted_run
from lfads.formats.inferred import (
    DIVERGED,
    DIVERGED_EPOCH,
    InferredAttributes,
    InferredSplit,
    read_inferred,
    write_inferred,
)
from lfads.formats.metrics import read_metrics_csv, write_metrics_csv
from lfads.formats.prepared import read_prepared
from lfads.formats.runs import read_members
from lfads.formats.summary import best_run
from lfads.infra.io import write_json

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def prepared(prepared_files):
    """The session's 20 ms prepared file (conftest.prepared_files)."""
    return prepared_files(20).prepared


def ensemble_of(prepared, runs: dict, top_k: int, folder):
    """write_ensemble of {run: its folder}, into `folder`, named as the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (out,) = run_files_in({folder.name: folder}, existing=False).values()
    return write_ensemble(prepared, run_files_in(runs), top_k, out, folder.name)


def summary_of(runs: dict, run_dir, out):
    """write_summary of the runs under run_dir."""
    return write_summary(runs, run_files_under(run_dir, runs), out)


def members_under(run_dir) -> dict:
    """{ensemble: its members.tsv} of the ensembles under run_dir."""
    return {folder.name: folder / "members.tsv" for folder in run_dir.glob("ensemble-top*")}


def stand_in_run(folder, prepared_path, noise: float, smoothed: list[float], seed: int):
    """A run folder: inferred.h5 (truth x lognormal noise of `noise` per entry, seeded) and a
    metrics.csv whose valid_recon_smoothed per epoch is `smoothed`."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    data = read_prepared(prepared_path, keys=("truth", "nlb_index"))
    splits = {
        split: InferredSplit(
            rates=(arrays.truth * np.exp(noise * rng.normal(size=arrays.truth.shape))).astype(
                np.float32
            ),
            factors=rng.normal(size=(*arrays.truth.shape[:2], 4)).astype(np.float32),
            nlb_index=arrays.nlb_index,
        )
        for split, arrays in data.splits.items()
    }
    attributes = InferredAttributes(
        n_samples=10,
        seed=seed,
        session=0,
        model_epochs=len(smoothed),
        data_file=str(prepared_path),
        mantissa_bits=23,
    )
    write_inferred(folder / "inferred.h5", data.session_attributes(), attributes, splits)
    write_metrics_csv(
        folder / "metrics.csv",
        [
            {"epoch": epoch, "valid_recon": loss, "valid_recon_smoothed": loss}
            for epoch, loss in enumerate(smoothed)
        ],
    )
    return folder


def diverged_run(folder, prepared_path):
    """A run folder of a run that diverged in its second epoch: infer's placeholder inferred.h5,
    and a metrics.csv whose one epoch has the lowest loss of all."""
    folder.mkdir(parents=True)
    attributes = read_prepared(prepared_path, keys=()).session_attributes()
    attributes.update({DIVERGED: "the loss is not finite", DIVERGED_EPOCH: 2})
    placeholder = InferredAttributes(0, 0, 0, 0, str(prepared_path), 23)
    write_inferred(folder / "inferred.h5", attributes, placeholder, {})
    write_metrics_csv(folder / "metrics.csv", [{"epoch": 0, "valid_recon_smoothed": 0.01}])
    return folder


# -- averaging and the loss ------------------------------------------------------------------------
def test_averaging_identical_runs_gives_that_run_exactly(prepared, tmp_path):
    runs = {
        f"copy{index}": stand_in_run(tmp_path / f"copy{index}", prepared, 0.3, [0.5 + index], 7)
        for index in range(3)
    }
    result = ensemble_of(prepared, runs, 3, tmp_path / "ensemble-top3")
    one = read_inferred(runs["copy0"] / "inferred.h5").splits
    ensemble = read_inferred(tmp_path / "ensemble-top3" / "inferred.h5")
    assert list(ensemble.splits) == ["train", "valid", "eval"]
    for split, arrays in ensemble.splits.items():
        assert np.array_equal(arrays.rates, one[split].rates), split
        assert np.array_equal(arrays.nlb_index, one[split].nlb_index), split
        assert arrays.factors is None  # factors of different models are not averaged
    assert json.loads(ensemble.attrs["ensemble_members"]) == ["copy0", "copy1", "copy2"]
    assert ensemble.attrs["n_samples"] == 30
    assert result.loss == result.member_losses[0] == result.member_losses[2]


def test_poisson_loss_is_the_mean_negative_log_likelihood_of_observed_entries():
    from scipy.stats import poisson

    rng = np.random.default_rng(0)
    rates = rng.uniform(0.05, 3.0, size=(4, 5, 6)).astype(np.float32)
    spikes = rng.poisson(rates).astype(np.float32)
    spikes[0, 0, :3] = np.nan  # unobserved entries do not count
    observed = ~np.isnan(spikes)
    expected = -poisson.logpmf(spikes[observed], rates[observed].astype(np.float64)).mean()
    assert poisson_loss(rates, spikes) == pytest.approx(expected, rel=1e-12)


def test_ensemble_loss_is_at_most_the_members_mean(prepared, tmp_path, capsys):
    runs = {
        f"noise~{noise}": stand_in_run(tmp_path / f"noise{noise}", prepared, noise, [loss], seed)
        for seed, (noise, loss) in enumerate([(0.3, 1.0), (0.5, 1.1), (0.7, 1.2)])
    }
    result = ensemble_of(prepared, runs, 3, tmp_path / "ensemble-top3")
    members_mean = float(np.mean(result.member_losses))
    # Poisson loss is convex in the rate: the loss of the mean rate is at most the mean loss
    assert result.loss <= members_mean
    assert result.member_losses == sorted(result.member_losses)  # less noise, lower loss
    with capsys.disabled():
        print(
            f"\nstand-in runs: ensemble {result.loss:.5f}, best member "
            f"{result.member_losses[0]:.5f}, members' mean {members_mean:.5f}"
        )
    valid_spikes = read_prepared(prepared, keys=("recon_data",)).splits["valid"].recon_data
    rates = read_inferred(tmp_path / "ensemble-top3" / "inferred.h5").splits["valid"].rates
    assert poisson_loss(rates, valid_spikes) == result.loss
    curve = read_metrics_csv(tmp_path / "ensemble-top3" / "metrics.csv")
    assert curve.to_dict("records") == [
        {"epoch": 0, "valid_recon": result.loss, "valid_recon_smoothed": result.loss}
    ]


# -- which runs are members ------------------------------------------------------------------------
def test_members_are_the_best_at_their_best_epoch_and_never_diverged(prepared, tmp_path, caplog):
    runs = {
        # the lowest best epoch (0.4 at epoch 2) though its last epoch is the worst
        "late-worse": stand_in_run(tmp_path / "a", prepared, 0.3, [0.9, 0.4, 2.0], 0),
        "steady": stand_in_run(tmp_path / "b", prepared, 0.3, [0.9, 0.6, 0.5], 1),
        "diverged": diverged_run(tmp_path / "c", prepared),
        "worst": stand_in_run(tmp_path / "d", prepared, 0.3, [0.8, 0.7], 2),
    }
    ranked = rank_runs(run_files_in(runs))
    assert [(m.name, m.best_valid_recon_smoothed) for m in ranked] == [
        ("late-worse", 0.4),
        ("steady", 0.5),
        ("worst", 0.7),
    ]
    ensemble_of(prepared, runs, 2, tmp_path / "ensemble-top2")
    members = read_members(tmp_path / "ensemble-top2" / "members.tsv")
    assert list(members.run) == ["late-worse", "steady"] and list(members["rank"]) == [1, 2]
    assert list(members.best_valid_recon_smoothed) == [0.4, 0.5]
    # more members asked for than runs that did not diverge: those left, and the log says so
    with caplog.at_level(logging.WARNING):
        result = ensemble_of(prepared, runs, 4, tmp_path / "ensemble-top4")
    assert [member.name for member in result.members] == ["late-worse", "steady", "worst"]
    assert "ensemble.top_k is 4 but only 3 of the 4 runs did not diverge" in caplog.text


def with_weights(folder, seed: int):
    """Add a model.ckpt of random weights (seeded) to a stand-in run folder."""
    import torch

    from lfads.formats.checkpoints import SavedModel, write_model
    from lfads.model.hparams import HParams

    generator = torch.Generator().manual_seed(seed)
    weights = {"readin.weight": torch.randn(3, 2, generator=generator)}
    write_model(folder / "model.ckpt", SavedModel(weights, HParams(), [], [], 3, ""))
    return folder


def test_runs_holding_the_same_weights_are_one_member(prepared, tmp_path, caplog):
    """PBT workers that copied the same state keep its best epoch: one member, not several."""
    runs = {
        "original": with_weights(stand_in_run(tmp_path / "a", prepared, 0.3, [0.5], 0), 7),
        "copy": with_weights(stand_in_run(tmp_path / "b", prepared, 0.3, [0.5], 0), 7),
        "other": with_weights(stand_in_run(tmp_path / "c", prepared, 0.3, [0.6], 1), 8),
    }
    with caplog.at_level(logging.INFO):
        result = ensemble_of(prepared, runs, 2, tmp_path / "ensemble-top2")
    assert [member.name for member in result.members] == ["original", "other"]
    assert "copy holds the same weights as original" in caplog.text


def test_an_ensemble_of_diverged_runs_is_listed_as_diverged(prepared, tmp_path):
    runs = {name: diverged_run(tmp_path / name, prepared) for name in ("lr~10", "lr~100")}
    result = ensemble_of(prepared, runs, 2, tmp_path / "runs" / "ensemble-top2")
    assert result.members == [] and np.isnan(result.loss)
    metrics = evaluate_run(
        prepared, tmp_path / "runs" / "ensemble-top2" / "inferred.h5", None, tmp_path / "m.json"
    )
    assert metrics["diverged"] is True
    assert "every one of the 2 runs diverged" in metrics["diverged_reason"]


# -- the summary row and the submission ------------------------------------------------------------
def scored_search(tmp_path, prepared, noises):
    """runs/ of a search of stand-in runs (noise, best loss) with metrics.json written by hand,
    plus its ensemble of all of them; returns (run_dir, {run: searched values})."""
    run_dir = tmp_path / "runs"
    runs = {}
    for seed, (noise, loss) in enumerate(noises):
        name = f"dropout~{seed / 10}"
        folder = stand_in_run(run_dir / name, prepared, noise, [loss + 1, loss], seed)
        write_json(folder / "metrics.json", {"co-bps": 0.3 - loss / 10, "vel R2": 0.5})
        runs[name] = {"dropout": seed / 10}
    diverged = diverged_run(run_dir / "dropout~0.9", prepared)
    write_json(diverged / "metrics.json", {"diverged": True, "diverged_epoch": 2})
    runs["dropout~0.9"] = {"dropout": 0.9}
    name = ensemble_name(len(noises))
    ensemble_of(prepared, {run: run_dir / run for run in runs}, len(noises), run_dir / name)
    write_json(run_dir / name / "metrics.json", {"co-bps": 0.31, "vel R2": 0.52})
    return run_dir, runs


def test_the_ensemble_row_is_added_and_the_run_rows_stay_the_same(prepared, tmp_path):
    run_dir, runs = scored_search(tmp_path, prepared, [(0.5, 1.2), (0.5, 1.0), (0.5, 1.1)])
    summary_of(runs, run_dir, tmp_path / "without.tsv")
    table = summary_of({**runs, "ensemble-top3": {}}, run_dir, tmp_path / "with.tsv")
    without = (tmp_path / "without.tsv").read_text().splitlines()
    with_ensemble = (tmp_path / "with.tsv").read_text().splitlines()
    # one row more, after the scored runs and before the diverged one; the others byte for byte
    assert with_ensemble == [*without[:4], with_ensemble[4], without[4]]
    assert list(table.run) == ["dropout~0.1", "dropout~0.2", "dropout~0.0", "ensemble-top3"] + [
        "dropout~0.9"
    ]
    assert list(table.best) == [True, False, False, False, False]
    ensemble = table.iloc[3]
    assert not ensemble.diverged and np.isnan(ensemble.hp_dropout)
    assert ensemble.epochs == 1 and ensemble.best_epoch == 1 and ensemble.nlb_co_bps == 0.31
    curve = read_metrics_csv(run_dir / "ensemble-top3" / "metrics.csv")
    assert ensemble.val_recon_smoothed == pytest.approx(curve.valid_recon_smoothed[0], 1e-5)
    assert is_ensemble("ensemble-top3") and not is_ensemble("dropout~0.1")


def test_the_submission_takes_the_ensemble_only_when_its_loss_is_lower(prepared, tmp_path):
    # Independent noise of one size: the average is nearer the truth than any member
    run_dir, runs = scored_search(tmp_path / "a", prepared, [(0.5, 1.2), (0.5, 1.0), (0.5, 1.1)])
    summary = summary_of({**runs, "ensemble-top3": {}}, run_dir, tmp_path / "a.tsv")
    members = read_members(run_dir / "ensemble-top3" / "members.tsv")
    assert summary.val_recon_smoothed[3] < members.valid_poisson_loss[0]
    assert submitted_run(tmp_path / "a.tsv", members_under(run_dir)) == "ensemble-top3"
    # Two members, one far noisier than the best: the average is worse than the best run
    run_dir, runs = scored_search(tmp_path / "b", prepared, [(0.05, 1.0), (1.5, 1.1)])
    summary = summary_of({**runs, "ensemble-top2": {}}, run_dir, tmp_path / "b.tsv")
    members = read_members(run_dir / "ensemble-top2" / "members.tsv")
    assert summary.val_recon_smoothed[2] > members.valid_poisson_loss[0]
    assert submitted_run(tmp_path / "b.tsv", members_under(run_dir)) == best_run(tmp_path / "b.tsv")
    assert best_run(tmp_path / "b.tsv") == "dropout~0.0"
    # without an ensemble the best run, as before
    summary_of(runs, run_dir, tmp_path / "c.tsv")
    assert submitted_run(tmp_path / "c.tsv", members_under(run_dir)) == "dropout~0.0"


# -- the configfile --------------------------------------------------------------------------------
@pytest.fixture
def search_of_three():
    return {
        "dataset": "tiny",
        "nlb_layout": "mc_maze",
        "source": {"synthetic": {}},
        "search": {"grid": {"dropout": [0.1, 0.2, 0.3]}},
    }


def test_top_k_is_checked_against_the_runs_of_the_search(search_of_three):
    config = validate_config({**search_of_three, "ensemble": {"top_k": 3}}, SCHEMA)
    assert len(check_config(config).runs) == 3
    with pytest.raises(ConfigError, match=r"ensemble.top_k: 4 is more than the 3 run\(s\)"):
        check_config(validate_config({**search_of_three, "ensemble": {"top_k": 4}}, SCHEMA))
    with pytest.raises(ConfigError, match=r"ensemble.top_k: 1 is not valid"):
        validate_config({**search_of_three, "ensemble": {"top_k": 1}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"unknown key ensemble.k"):
        validate_config({**search_of_three, "ensemble": {"top_k": 2, "k": 2}}, SCHEMA)
    off = validate_config(copy.deepcopy(search_of_three), SCHEMA)
    assert "ensemble" not in off  # off when absent


# -- the workflow ----------------------------------------------------------------------------------
def tiny_search(folder, phase: str = "val"):
    return write_tiny_config(
        folder,
        phase=phase,
        model={
            "bin_width": 20,
            "n_samples": 5,
            "hparams": WORKFLOW_HPARAMS,
        },
        search={"grid": {"dropout": [0.05, 0.3]}},
        ensemble={"top_k": 2},
        resources={
            "train": {"threads": 1, "mem_mb": 1000},
            "infer": {"threads": 1, "mem_mb": 1000},
        },
    )


@pytest.mark.parametrize("phase", ["val", "test"])
def test_a_dry_run_plans_the_ensemble_and_scores_it(tmp_path, phase, snakemake_in_process):
    configfile = tiny_search(tmp_path, phase)
    result = snakemake_in_process(
        "--snakefile",
        SNAKEFILE,
        "--directory",
        str(tmp_path),
        "-n",
        "--configfile",
        str(configfile),
    )
    output = result.stdout
    assert result.returncode == 0, output
    # the two runs train as one pack
    assert job_count(output, "ensemble") == 1 and job_count(output, "train") == 1
    assert job_count(output, "run_files") == 2
    assert job_count(output, "evaluate") == 3  # the two runs and the ensemble
    assert job_count(output, "submission") == (phase == "test")
    assert "runs/ensemble-top2/members.tsv" in output


@pytest.mark.slow
def test_an_ensemble_added_to_a_finished_search_trains_nothing_and_writes_its_row(
    pipeline, tmp_path
):
    """The session's tiny search (two runs), finished; then `ensemble: {top_k: 2}` is added to its
    configfile, as a user would after a search: only the ensemble's jobs and what reads them run."""
    built, _ = pipeline
    shutil.copytree(built, tmp_path, symlinks=True, dirs_exist_ok=True)  # (times kept)
    configfile = tmp_path / "config.yaml"
    config = yaml.safe_load(configfile.read_text())
    configfile.write_text(yaml.safe_dump({**config, "ensemble": {"top_k": 2}}))
    result = snakemake_in(tmp_path, "--configfile", str(configfile), "--cores", "2")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert job_count(output, "ensemble") == 1 and job_count(output, "evaluate") == 1
    for rule in ("fetch", "prepare", "targets", "train", "infer", "export_nwb"):
        assert job_count(output, rule) == 0, (rule, output)
    results = tmp_path / "results" / "tiny" / "val"
    table = pd.read_csv(results / "summary.tsv", sep="\t")
    assert list(table.run[:2]) != ["ensemble-top2"] and table.run[2] == "ensemble-top2"
    assert table.best.tolist() == [True, False, False]
    members = read_members(results / "runs" / "ensemble-top2" / "members.tsv")
    assert list(members.run) == list(table.run[:2])
    ensemble = table.iloc[2]
    # trained runs: the loss of the averaged rates is at most the mean of the members' losses
    assert ensemble.val_recon_smoothed <= members.valid_poisson_loss.mean()
    columns = ["nlb_co_bps", "nlb_fp_bps", "nlb_vel_r2", "nlb_psth_r2", "truth_rate_r2"]
    scores = ensemble[columns].astype(float)
    assert np.isfinite(scores).all(), scores  # scored like a run
    rates = [
        read_inferred(results / "runs" / run / "inferred.h5", keys=("rates",)).splits["eval"].rates
        for run in [*members.run, "ensemble-top2"]
    ]
    assert np.array_equal(rates[2], average_rates(rates[:2]))
    log = (results / "logs" / "ensemble.log").read_text()
    assert "2 members (" in log and "members' mean" in log
    metrics = json.loads((results / "runs" / "ensemble-top2" / "metrics.json").read_text())
    assert set(metrics) == set(
        json.loads((results / "runs" / table.run[0] / "metrics.json").read_text())
    )
