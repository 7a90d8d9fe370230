"""PBT through the workflow (workflow/rules/pbt.smk): the whole population as one pack in one
job on the tiny dataset, the replacement of a worker that cannot learn, determinism, a killed
search, the stop rule, and the configfile's checks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    WORKFLOW_HPARAMS,
    script_processes,
    snakemake_command,
    snakemake_with_config,
    write_tiny_config,
)
from conftest import environment as shared_environment

from lfads.config import ConfigError, check_config, validate_config
from lfads.formats.summary import read_summary
from lfads.search.pbt import read_history, read_plan, read_results

RESULTS = Path("results") / "tiny" / "val"
MODEL = {
    "bin_width": 20,
    "n_samples": 10,
    "hparams": {**WORKFLOW_HPARAMS, "kl_increase_epoch": 2, "l2_increase_epoch": 2},
}
RESOURCES = {"train": {"threads": 1, "mem_mb": 1000}, "infer": {"threads": 1, "mem_mb": 1000}}
# Seed 34 draws worker00's learning rate at 1.04e-6 (it cannot learn in 3 epochs) and
# worker01's at 5.6e-3: a population whose half cannot learn.
BAD_LR_MAX, GOOD_LR_MIN = 3e-6, 5e-3
REPLACED = {
    "population": 2,
    "burn_in_epochs": 3,
    "generation_epochs": 8,
    "max_epochs": 11,
    "seed": 34,
    "hyperparameters": {"lr": {"range": [1.0e-6, 2.0e-2], "scale": "log"}},
}


def pbt_workdir(folder: Path, pbt: dict, **keys) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_config(folder, model=MODEL, search={"pbt": pbt}, resources=RESOURCES, **keys)
    return folder


def plans(workdir: Path) -> dict[str, str]:
    return {
        path.name: path.read_text()
        for path in sorted((workdir / RESULTS / "pbt").glob("plan_gen*.json"))
    }


def run_metrics(workdir: Path) -> dict[str, dict]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted((workdir / RESULTS / "runs").glob("*/metrics.json"))
    }


@pytest.fixture(scope="module")
def replaced(tmp_path_factory) -> Path:
    """The whole workflow of the half-bad population, uninterrupted."""
    workdir = pbt_workdir(tmp_path_factory.mktemp("replaced"), REPLACED, ensemble={"top_k": 2})
    result = snakemake_with_config(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


@pytest.mark.slow
def test_workers_that_cannot_learn_are_replaced_by_copies_of_good_ones(replaced):
    history = read_history(replaced / RESULTS / "pbt_history.tsv")
    first = {row["worker"]: row for row in history if row["generation"] == 0}
    assert first["worker00"]["lr"] < BAD_LR_MAX and first["worker01"]["lr"] > GOOD_LR_MIN
    bad_loss, good_loss = (first[w]["valid_recon_smoothed"] for w in ("worker00", "worker01"))
    assert bad_loss > good_loss

    last = {row["worker"]: row for row in history if row["generation"] == 1}
    assert last["worker00"]["exploited"] and last["worker00"]["parent"] == "worker01"
    assert not last["worker01"]["exploited"] and last["worker01"]["parent"] == "worker01"
    # explore perturbs the copied lr by 1 +- at most 0.3
    ratio = last["worker00"]["lr"] / first["worker01"]["lr"]
    assert 0.7 <= ratio <= 1.3 and ratio != 1
    assert all(row["lr"] > GOOD_LR_MIN * 0.7 for row in last.values())  # no bad worker left
    assert [row["epochs"] for row in history] == [3, 3, 11, 11]
    # the final population is as good as the good half: both improve on the good worker's
    # generation-0 loss, and lie far closer to each other than the bad worker was to it
    final = [row["valid_recon_smoothed"] for row in last.values()]
    assert max(final) < good_loss
    assert max(final) - min(final) < 0.5 * (bad_loss - good_loss)

    # the plan that ends the search trains nothing: there is no generation 2
    stop = read_plan(replaced / RESULTS / "pbt" / "plan_gen0002.json")
    assert stop.stop and stop.workers == () and "max_epochs" in stop.stop_reason
    assert not (replaced / RESULTS / "pbt" / "results_gen0002.json").exists()
    assert [r.name for r in read_results(replaced / RESULTS / "pbt" / "results_gen0001.json")] == [
        "worker00",
        "worker01",
    ]

    # the final population went through infer, evaluate and aggregate like any run
    summary = read_summary(replaced / RESULTS / "summary.tsv")
    assert sorted(summary.run) == ["ensemble-top2", "pbt-worker00", "pbt-worker01"]
    # each final worker's row shows the value it trained the last generation with
    for worker in ("worker00", "worker01"):
        (lr,) = summary.hp_lr[summary.run == f"pbt-{worker}"]
        assert lr == pytest.approx(last[worker]["lr"], rel=1e-5)
    for worker in ("worker00", "worker01"):
        copied = replaced / RESULTS / "runs" / f"pbt-{worker}" / "metrics.csv"
        assert len(copied.read_text().splitlines()) == 1 + 11  # the lineage's epochs
    assert (replaced / RESULTS / "figures" / "pbt.png").stat().st_size > 10_000
    # the copy's lineage holds its parent's 3 epochs, then its own 8 at the plan's lr
    curve = (replaced / RESULTS / "runs" / "pbt-worker00" / "metrics.csv").read_text()
    header, *lines = curve.splitlines()
    lr = [float(line.split(",")[header.split(",").index("lr")]) for line in lines]
    assert lr[:3] == pytest.approx([first["worker01"]["lr"]] * 3)
    assert lr[3:] == pytest.approx([last["worker00"]["lr"]] * 8)
    # each final worker's model is its own best epoch since its copy: distinct ensemble members
    members = (replaced / RESULTS / "runs" / "ensemble-top2" / "members.tsv").read_text()
    assert "pbt-worker00" in members and "pbt-worker01" in members
    # the whole search was one job
    assert len(list((replaced / RESULTS / "logs").glob("pbt*.log"))) == 2  # pbt, pbt_figure


def epochs_in(checkpoint_dir: Path, worker: str) -> int:
    metrics = checkpoint_dir / f"{worker}.metrics.csv"
    try:
        return max(len(metrics.read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_a_killed_search_resumes_and_replays_the_same_decisions(replaced, tmp_path):
    """SIGKILL of the search's job mid-generation, then a rerun: the generation completes, the
    plans equal the uninterrupted run's and so do the final metrics (to 1e-6). (The runs up to
    their metrics and the summary: the figures and NWB files do not take part.)"""
    workdir = pbt_workdir(tmp_path, REPLACED, ensemble={"top_k": 2})
    checkpoint = workdir / RESULTS / "checkpoints" / "pbt"
    summary = str(RESULTS / "summary.tsv")
    first = subprocess.Popen(
        snakemake_command(workdir, "--cores", "2", summary),
        env=shared_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_after = None
    deadline = time.monotonic() + 600
    while killed_after is None and first.poll() is None and time.monotonic() < deadline:
        done = epochs_in(checkpoint, "worker00")
        if done >= REPLACED["burn_in_epochs"] + 2:  # two epochs into generation 1
            for pid in script_processes(workdir, "pbt.py"):
                os.kill(pid, signal.SIGKILL)
                killed_after = done
        time.sleep(0.05)
    first.wait(timeout=600)
    assert killed_after is not None, "the search finished before it could be killed"
    assert first.returncode != 0
    assert not (workdir / RESULTS / "pbt_history.tsv").exists()

    again = snakemake_with_config(workdir, "--cores", "2", summary)
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-5000:]
    # The rerun resumed the pack two or more epochs into the generation, with the same plans.
    log = (workdir / RESULTS / "logs" / "pbt.log").read_text()
    resumed = re.findall(r"resumed from epoch (\d+)", log)
    assert REPLACED["burn_in_epochs"] + 2 <= int(resumed[-1]) <= killed_after + 1
    assert "resuming the search: 1 generation(s) done, the state trains generation 1" in log

    assert plans(workdir) == plans(replaced)
    a, b = run_metrics(workdir), run_metrics(replaced)
    assert a.keys() == b.keys() == {"ensemble-top2", "pbt-worker00", "pbt-worker01"}
    for run in a:
        assert a[run] == pytest.approx(b[run], abs=1e-6), run

    # A deleted plan or results file is named at the start, with the command that writes the
    # search's files again from its state, without training.
    search = workdir / RESULTS / "pbt"
    for name in ("plan_gen0001.json", "results_gen0000.json"):
        (search / name).unlink()
    history = str(RESULTS / "pbt_history.tsv")
    dry = snakemake_with_config(workdir, "-n", summary)
    for name in ("plan_gen0001.json", "results_gen0000.json"):
        assert f"{RESULTS / 'pbt' / name} is missing; `snakemake --forcerun pbt {history}`" in (
            dry.stderr
        ), dry.stderr[-3000:]
    rewritten = snakemake_with_config(workdir, "--cores", "2", "--forcerun", "pbt", history)
    assert rewritten.returncode == 0, rewritten.stderr[-3000:]
    assert plans(workdir) == plans(replaced) and (search / "results_gen0000.json").exists()
    assert "epoch 1/" not in (workdir / RESULTS / "logs" / "pbt.log").read_text()


@pytest.mark.slow
def test_a_population_that_stops_improving_stops_early_and_runs_no_later_generation(tmp_path):
    plateau = {
        "population": 2,
        "burn_in_epochs": 2,
        "generation_epochs": 1,
        "max_epochs": 50,
        "patience_generations": 1,
        "min_improvement": 10.0,  # no generation improves the loss by 10 nats
        "seed": 1,
        "hyperparameters": {"dropout": {"range": [0.0, 0.5], "scale": "linear"}},
    }
    workdir = pbt_workdir(tmp_path, plateau)
    target = str(RESULTS / "pbt_history.tsv")  # (relative to the working directory)
    history = workdir / target
    result = snakemake_with_config(workdir, "--cores", "2", target)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    output = result.stdout + result.stderr
    # one job; generations 0 and 1 trained; the plan of generation 2 stops the search
    assert len(re.findall(r"^(?:local)?rule pbt:$", output, re.M)) == 1
    stop = read_plan(workdir / RESULTS / "pbt" / "plan_gen0002.json")
    assert stop.stop and "plateau" in stop.stop_reason and stop.workers == ()
    assert sorted(p.name for p in (workdir / RESULTS / "pbt").iterdir()) == [
        "curves.tsv",
        "plan_gen0000.json",
        "plan_gen0001.json",
        "plan_gen0002.json",
        "results_gen0000.json",
        "results_gen0001.json",
    ]
    assert [row["generation"] for row in read_history(history)] == [0, 0, 1, 1]
    # and nothing is left to do
    dry = snakemake_with_config(workdir, "-n", target)
    assert dry.returncode == 0 and "rule pbt:" not in dry.stdout


# Four workers in two packs of two: seed 3 makes generation 1 copy worker02 (pack 1) into
# worker01 (pack 0), a copy across packs (asserted below).
SPLIT = {
    "population": 4,
    "burn_in_epochs": 2,
    "generation_epochs": 2,
    "max_epochs": 6,
    "seed": 3,
    "hyperparameters": {"lr": {"range": [1.0e-4, 2.0e-2], "scale": "log"}},
}


@pytest.mark.slow
def test_a_population_larger_than_a_pack_makes_the_same_decisions_as_one_pack(tmp_path):
    """search.pack_size 2 < population 4: one pbt_pack job per pack and generation, exploiting
    across packs, with the plans and history of the same search in one pack (losses to 1e-4)."""
    target = [str(RESULTS / "pbt_history.tsv"), str(RESULTS / "runs/pbt-worker03/model.ckpt")]
    histories, plan_files = {}, {}
    for pack_size in (4, 2):
        workdir = pbt_workdir(tmp_path / f"pack{pack_size}", SPLIT)
        config = yaml.safe_load((workdir / "config.yaml").read_text())
        config["search"]["pack_size"] = pack_size
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        result = snakemake_with_config(workdir, "--cores", "2", *target)
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
        output = result.stdout + result.stderr
        jobs = len(re.findall(r"^(?:local)?rule pbt_pack:$", output, re.M))
        assert (jobs, "rule pbt:" in output) == ((0, True) if pack_size == 4 else (6, False))
        histories[pack_size] = read_history(workdir / RESULTS / "pbt_history.tsv")
        plan_files[pack_size] = [
            read_plan(path) for path in sorted((workdir / RESULTS / "pbt").glob("plan_gen*.json"))
        ]
        assert (workdir / RESULTS / "runs/pbt-worker03/model.ckpt").stat().st_size > 0
    one, split = plan_files[4], plan_files[2]
    assert len(one) == len(split) == 4 and split[-1].stop
    copies = [(w.name, w.parent) for w in split[1].workers if w.exploited]
    assert copies and any(PBT_PACKS_OF[a] != PBT_PACKS_OF[b] for a, b in copies), copies
    for a, b in zip(one, split):
        assert a.workers == b.workers  # the same copies and values
        assert a.best_losses == pytest.approx(b.best_losses, rel=1e-4)
    assert [(r["generation"], r["worker"]) for r in histories[2]] == [
        (r["generation"], r["worker"]) for r in histories[4]
    ]
    for a, b in zip(histories[4], histories[2]):
        assert b["valid_recon_smoothed"] == pytest.approx(a["valid_recon_smoothed"], rel=1e-4)


PBT_PACKS_OF = {"worker00": 0, "worker01": 0, "worker02": 1, "worker03": 1}


PBT_CONFIGFILE = REPO / "config" / "synthetic_pbt.yaml"


def config_with(search: dict | None = None, **hparams) -> dict:
    """The shipped PBT configfile, validated, with another search and more base hparams."""
    config = yaml.safe_load(PBT_CONFIGFILE.read_text())
    config["search"] = search or config["search"]
    config["model"]["hparams"].update(hparams)
    return validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")


def test_the_pbt_configfile_names_its_final_workers_as_runs():
    search = check_config(config_with())
    assert search.runs == {"pbt-worker00": {}, "pbt-worker01": {}, "pbt-worker02": {}}
    assert search.packs == {}  # the population is rule pbt's one pack, not rule train's


@pytest.mark.parametrize(
    "search, hparams, message",
    [
        (
            {"pbt": {"population": 2}, "grid": {"dropout": [0.1]}},
            {},
            r"search.pbt: a PBT search runs on its own, but search also has \['grid'\]",
        ),
        ({"pbt": {"population": 1}}, {}, r"search.pbt.population: a tournament needs at least 2"),
        ({"pbt": {"workers": 2}}, {}, r"search.pbt: unknown key\(s\) \['workers'\]"),
        (
            {"pbt": {"hyperparameters": {"lr": {"range": [0.0, 0.1], "scale": "log"}}}},
            {},
            r"search.pbt.hyperparameters.lr.range: a log scale needs low > 0",
        ),
        ({"pbt": {}}, {"lr_scheduler": True}, r"model.hparams.lr_scheduler: PBT controls"),
        (
            {"pbt": {"hyperparameters": {"gen_dim": {"range": [8, 64], "scale": "log"}}}},
            {},
            r"search.pbt.hyperparameters.gen_dim: 'gen_dim' cannot be searched",
        ),
        (
            {"pbt": {"hyperparameters": {"dropout": {"range": [0.0, 0.5], "scale": "linear"}}}},
            {"gen_dim": -1},
            r"worker worker00, generation 0",
        ),
    ],
)
def test_bad_pbt_settings_stop_the_workflow_naming_the_key(search, hparams, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config_with(search, **hparams))
