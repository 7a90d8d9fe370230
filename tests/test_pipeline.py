"""The whole workflow on a tiny synthetic dataset, on CPU: fetch to report, reruns, forced runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import WORKFLOW_HPARAMS, job_count, snakemake_in, write_tiny_config

RUNS = ["dropout~0.05", "dropout~0.3"]


@pytest.mark.slow
def test_every_output_and_metrics(pipeline):
    workdir, _ = pipeline
    results = workdir / "results" / "tiny" / "val"
    for run in RUNS:
        folder = results / "runs" / run
        names = ("model.ckpt", "metrics.csv", "hparams.yaml", "inferred.h5", "metrics.json")
        for name in (*names, "rates.nwb"):
            assert (folder / name).stat().st_size > 0, folder / name
        assert yaml.safe_load((folder / "hparams.yaml").read_text())["dropout"] == float(
            run.split("~")[1]
        )
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["co-bps"] > 0.1  # the binned true rates score about 0.46 on this dataset
        assert metrics["rate R2"] > 0.3
        assert (results / "logs" / "run_files" / f"{run}.log").exists()
    # the two runs trained as one pack: one job, its log and benchmark
    assert "training 2 member(s)" in (results / "logs" / "train" / "pack00.log").read_text()
    assert (results / "benchmarks" / "train" / "pack00.tsv").exists()
    table = pd.read_csv(results / "summary.tsv", sep="\t")
    assert sorted(table.run) == RUNS and table.best.sum() == 1
    best = table.run[table.best].iloc[0]
    best_nwb = (results / "best_rates.nwb").read_bytes()
    assert best_nwb == (results / "runs" / best / "rates.nwb").read_bytes()
    assert table.val_recon_smoothed.is_monotonic_increasing and not table.diverged.any()
    assert (table.best_epoch >= 1).all() and (table.best_epoch <= table.epochs).all()
    for figure in (
        "metrics_vs_hyperparameters",
        "training_curves",
        "best_raster",
        "best_factors",
        "best_psth",
        "best_velocity",
        "best_rates_vs_truth",
    ):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_second_run_has_nothing_to_do(pipeline):
    _, snakemake = pipeline
    result = snakemake("-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_forcerun_evaluate_retrains_nothing(pipeline):
    _, snakemake = pipeline
    result = snakemake("--cores", "2", "--forcerun", "evaluate")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert job_count(output, "evaluate") == len(RUNS)
    for rule in ("fetch", "prepare", "targets", "train", "infer"):
        assert job_count(output, rule) == 0, rule
    # the table and figures read the new metrics, so they follow
    assert job_count(output, "aggregate") == 1


@pytest.mark.slow
def test_report_holds_the_table_and_figures(pipeline):
    workdir, snakemake = pipeline
    result = snakemake("--report", "report.html")
    assert result.returncode == 0, result.stdout + result.stderr
    html = (workdir / "report.html").read_text(errors="replace")
    assert "summary.tsv" in html
    for figure in ("best_raster", "best_factors", "training_curves"):
        assert f"{figure}.png" in html


# -- a search with a diverging run, and reruns that must not reuse a checkpoint -------------------
DIVERGING_RUNS = ["lr~0.01", "lr~1000"]


@pytest.fixture(scope="module")
def diverging_search(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("diverging")

    def snakemake(*args, split_seed=0):
        configfile = write_tiny_config(
            workdir,
            prepare={"valid_fraction": 0.2, "split_seed": split_seed},
            model={
                "bin_width": 20,
                "n_samples": 5,
                "hparams": {**WORKFLOW_HPARAMS, "max_epochs": 3},
            },
            search={"grid": {"lr": [0.01, 1000.0]}},
            resources={
                "train": {"threads": 1, "mem_mb": 1000},
                "infer": {"threads": 1, "mem_mb": 1000},
            },
        )
        return snakemake_in(workdir, "--configfile", str(configfile), "--cores", "2", *args)

    result = snakemake()
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir / "results" / "tiny" / "val", snakemake


def train_log(results) -> str:
    """The log of the search's one pack (both runs train in it)."""
    return (results / "logs" / "train" / "pack00.log").read_text()


@pytest.mark.slow
def test_a_diverged_run_is_marked_and_the_search_still_gives_table_and_figures(diverging_search):
    results, snakemake = diverging_search
    table = pd.read_csv(results / "summary.tsv", sep="\t")
    assert list(table.run) == DIVERGING_RUNS
    assert list(table.diverged) == [False, True] and list(table.best) == [True, False]
    assert table.nlb_co_bps.notna().tolist() == [True, False]
    log = train_log(results)
    (error,) = [line for line in log.splitlines() if " ERROR " in line]
    assert "lr~1000: " in error and "posterior" in error and "is not finite" in error
    assert "at epoch 1;" in error and "Try a lower lr" in error and "Expected parameter" not in log
    # the other member of the pack went on to its last epoch
    assert "epoch 3/3 lr~0.01" in log and "epoch 2/3 lr~1000" not in log
    metrics = json.loads((results / "runs" / "lr~1000" / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["diverged_epoch"] == 1
    for figure in ("metrics_vs_hyperparameters", "training_curves", "best_raster", "best_psth"):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake("-n"))
    report = results.parents[2] / "report.html"
    result = snakemake("--report", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    html = report.read_text(errors="replace")
    assert "summary.tsv" in html and "training_curves.png" in html


@pytest.mark.slow
def test_forcerun_train_writes_the_outputs_again_and_a_diverged_run_stays_final(
    diverging_search,
):
    """A forced `train` of a finished pack trains nothing: its identity is unchanged."""
    results, snakemake = diverging_search
    checkpoints = results / "checkpoints"
    before = (results / "runs" / "lr~0.01" / "metrics.csv").read_text()
    result = snakemake("--forcerun", "train")
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_count(result.stdout + result.stderr, "train") == 1
    log = train_log(results)  # (Snakemake replaces a job's log: this is the forced job's own)
    assert "writing its outputs without training again" in log and "epoch 1/3" not in log
    assert "training afresh" not in log and list(checkpoints.glob("*.superseded-*")) == []
    assert (results / "runs" / "lr~0.01" / "metrics.csv").read_text() == before
    assert json.loads((results / "runs" / "lr~1000" / "metrics.json").read_text())["diverged"]


@pytest.mark.slow
def test_a_changed_split_seed_retrains_every_run_from_scratch(diverging_search):
    results, snakemake = diverging_search
    result = snakemake(split_seed=1)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert job_count(output, "prepare") == 1 and job_count(output, "train") == 1
    log = train_log(results)
    assert "another prepared file for session 0" in log and "training afresh" in log
    assert "continuing at epoch" not in log and "epoch 3/3 lr~0.01" in log
    table = pd.read_csv(results / "summary.tsv", sep="\t")
    assert list(table.diverged) == [False, True] and list(table.best) == [True, False]
