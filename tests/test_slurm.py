"""`snakemake --profile slurm` on a real local SLURM cluster (tests/slurm/cluster.py), with faults.

Skipped, with the reason, where SLURM cannot be installed or started. The
commands are the ones users type; only the partition and account of the
profile are overridden for the local cluster (its CPU partition is `debug`), and
the plugin's status checks are at most 10 s apart (tests/slurm/snakemake_polling.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas
import pytest
from conftest import (
    PIPELINE_MODEL,
    PIPELINE_SEARCH,
    REPO,
    script_processes,
    snakemake_command,
    write_tiny_config,
)
from conftest import WORKFLOW_HPARAMS as MODEL
from conftest import environment as shared_environment

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from cluster import ClusterError, LocalSlurm, available

from lfads.formats.metrics import EPOCH_SECONDS, read_metrics_csv

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
# The profile's partitions and account are commented placeholders: the local cluster's here (its
# GPU partition is `gpu`; --set-resources replaces the profile's, so each rule's gpu: 1 again).
GPU_RULES = ("train", "pbt", "pbt_pack", "infer")
LOCAL_CLUSTER = [
    "--default-resources",
    "slurm_partition=debug",
    "slurm_account=lfads",
    "runtime=30",
    "mem_mb=1000",
    "--set-resources",
    *(f"{rule}:{key}" for rule in GPU_RULES for key in ("slurm_partition=gpu", "gpu=1")),
    "--slurm-init-seconds-before-status-checks",
    "5",
]
POLLING = Path(__file__).parent / "slurm" / "snakemake_polling.py"


def on_cluster(workdir: Path, *args: str) -> list[str]:
    """The user's `snakemake --profile slurm` on the local cluster, its status checks at most 10 s
    apart (tests/slurm/snakemake_polling.py)."""
    command = snakemake_command(workdir, "--profile", "slurm", *LOCAL_CLUSTER, *args)
    return [sys.executable, str(POLLING), *command[1:]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = available()
    if reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    # not under pytest's tmp folder: MariaDB runs as the mysql user, who cannot enter it
    folder = Path(tempfile.mkdtemp(prefix="lfads-slurm-"))
    folder.chmod(0o755)
    slurm = LocalSlurm(folder)
    try:
        slurm.start()
    except (ClusterError, subprocess.CalledProcessError) as error:
        slurm.stop()
        pytest.skip(f"the local SLURM cluster did not start: {str(error)[:2000]}")
    yield slurm
    slurm.stop()
    shutil.rmtree(folder, ignore_errors=True)


def workdir_with_config(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    defaults = {  # the model and search of the session's `pipeline`
        "model": PIPELINE_MODEL,
        "search": PIPELINE_SEARCH,
        "resources": {
            "train": {"threads": 1, "mem_mb": 1000, "runtime": 30},
            "infer": {"threads": 1, "mem_mb": 1000, "runtime": 30},
        },
    }
    write_tiny_config(folder, **{**defaults, **changes})
    return folder


def environment(cluster: LocalSlurm) -> dict:
    return shared_environment(cluster.env)


def guarded(command: list[str], timeout: float) -> list[str]:
    """`command` under coreutils' timeout: SIGINT, not SIGTERM, stops a hung
    `snakemake --executor slurm`."""
    return ["timeout", "-s", "INT", "-k", "30", str(int(timeout)), *command]


def run(command: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        guarded(command, timeout),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )


def sacct(cluster: LocalSlurm) -> list[dict]:
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "-n",
            "-P",
            "-a",
            "-S",
            "now-1days",
            "-o",
            "JobID,Partition,State,AllocTRES,Comment",
        ],
        capture_output=True,
        text=True,
        env=environment(cluster),
        check=True,
    ).stdout
    keys = ["job", "partition", "state", "tres", "comment"]
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]


def rule_of(job: dict) -> str:
    match = re.match(r"rule_(\w+?)_wildcards", job["comment"]) or re.match(
        r"rule_(\w+)", job["comment"]
    )
    return match.group(1) if match else ""


def metrics(workdir: Path) -> dict[str, dict]:
    runs = workdir / "results" / "tiny" / "val" / "runs"
    return {
        folder.name: json.loads((folder / "metrics.json").read_text())
        for folder in sorted(runs.iterdir())
    }


def assert_same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for run in a:
        assert a[run] == pytest.approx(b[run], abs=1e-6), run


def test_pipeline_through_the_profile_matches_a_local_run(cluster, pipeline, tmp_path):
    submitted_before = {job["job"] for job in sacct(cluster)}
    on_slurm = workdir_with_config(tmp_path / "slurm")
    result = run(on_cluster(on_slurm), environment(cluster))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    jobs = [job for job in sacct(cluster) if job["job"] not in submitted_before]
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(rule_of(job), []).append(job)
    # the grid's two runs train as one pack: one job
    assert len(by_rule["train"]) == 1 and len(by_rule["infer"]) == 2
    for job in by_rule["train"] + by_rule["infer"]:
        assert (
            job["partition"] == "gpu"
            and "gres/gpu=1" in job["tres"]
            and job["state"] == "COMPLETED"
        )
    for rule in ("prepare", "targets", "evaluate"):
        assert by_rule[rule] and all(job["partition"] == "debug" for job in by_rule[rule]), rule
    for rule in ("fetch", "run_files", "aggregate", "figures", "gallery"):
        assert rule not in by_rule, f"local rule {rule} reached SLURM"

    local, _ = pipeline  # the same configfile run with --cores 2
    assert_same_metrics(metrics(on_slurm), metrics(local))


def _checkpoint_epochs(workdir: Path, run_name: str) -> int:
    checkpoints = workdir / "results" / "tiny" / "val" / "checkpoints"
    path = checkpoints / "pack00" / f"{run_name}.metrics.csv"  # (the one run's pack)
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def _train_jobs(env: dict) -> list[str]:
    """Ids of the train jobs in the queue (pending or running), oldest first."""
    queue = subprocess.run(
        ["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, env=env, check=True
    ).stdout
    jobs = [line.split("|") for line in queue.splitlines() if "|" in line]
    return sorted((job for job, comment in jobs if comment.startswith("rule_train")), key=int)


def _wait(condition, process: subprocess.Popen, what: str, seconds: float = 900):
    """Poll `condition()` until it returns something truthy; fail if snakemake exits first."""
    deadline = time.monotonic() + seconds  # generous: CI machines may be several times slower
    while not (value := condition()):
        assert process.poll() is None, f"snakemake exited before {what}"
        assert time.monotonic() < deadline, f"{what} did not happen in {seconds} s"
        time.sleep(0.5)
    return value


def test_a_train_job_killed_at_its_time_limit_then_cancelled_resumes_each_time(cluster, tmp_path):
    """The profile's 2 retries: a train job past its 1-minute `runtime` is killed by SLURM
    (TIMEOUT), its retry is cancelled (scancel), and the last attempt continues from the
    checkpoint each time and ends where an uninterrupted run ends."""
    # Attempt 1's training process is stopped (SIGSTOP) once it has checkpointed 5 epochs: it
    # then stays past its limit on any machine, and SLURM kills it at 60-90 s. The retries'
    # limits (the configured runtime, 1 minute, again) are raised to 30 minutes, so they
    # finish however slow the machine is; attempt 2 is cancelled at epoch 20.
    run_name = "dropout~0.1"
    model = {
        "bin_width": 20,
        "n_samples": 10,
        "hparams": {**MODEL, "max_epochs": 60, "early_stopping_patience": 0},
    }
    one_run = {"grid": {"dropout": [0.1]}}
    resources = {
        "train": {"threads": 1, "mem_mb": 1000, "runtime": 1},
        "infer": {"threads": 1, "mem_mb": 1000, "runtime": 30},
    }
    workdir = workdir_with_config(
        tmp_path / "faults", model=model, search=one_run, resources=resources
    )
    env = environment(cluster)
    target = f"results/tiny/val/runs/{run_name}/metrics.csv"  # training only: what resumes
    command = on_cluster(workdir, target)
    process = subprocess.Popen(
        guarded(command, 1800),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def retry_of(job: str) -> str:
        later = _wait(
            lambda: [other for other in _train_jobs(env) if int(other) > int(job)],
            process,
            f"the resubmission of job {job}",
        )
        subprocess.run(
            ["scontrol", "update", f"JobId={later[0]}", "TimeLimit=30"], env=env, check=True
        )
        return later[0]

    try:
        _wait(lambda: _checkpoint_epochs(workdir, run_name) >= 5, process, "epoch 5")
        (first,) = _train_jobs(env)
        (training,) = script_processes(workdir, "train.py")
        os.kill(training, signal.SIGSTOP)
        stopped_after = _checkpoint_epochs(workdir, run_name)
        second = retry_of(first)
        _wait(lambda: _checkpoint_epochs(workdir, run_name) >= 20, process, "epoch 20")
        subprocess.run(["scancel", second], env=env, check=True)
        cancelled_after = _checkpoint_epochs(workdir, run_name)
        third = retry_of(second)
        output, _ = process.communicate(timeout=1900)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-5000:]
    states = {job["job"]: job["state"] for job in sacct(cluster)}
    found = [states[job].split()[0] for job in (first, second, third)]  # "CANCELLED by 0"
    assert found == ["TIMEOUT", "CANCELLED", "COMPLETED"], states
    assert output.count("Trying to restart") == 2
    log = (workdir / "results" / "tiny" / "val" / "logs" / "train" / "pack00.log").read_text()
    resumed = [int(epoch) for epoch in re.findall(r"resumed from epoch (\d+)", log)]
    # Snakemake empties a failed job's log before its retry: the log holds the last attempt's
    # resume, past the epochs that attempt 1 reached
    assert len(resumed) == 1, log[-3000:]
    assert stopped_after + 1 < resumed[0] <= cancelled_after + 1

    reference = workdir_with_config(tmp_path / "reference", model=model, search=one_run)
    result = run(snakemake_command(reference, "--cores", "2", target), env)
    assert result.returncode == 0, result.stdout[-3000:]
    resumed, uninterrupted = (
        read_metrics_csv(folder / target).drop(columns=EPOCH_SECONDS)
        for folder in (workdir, reference)
    )
    assert len(resumed) == 60
    pandas.testing.assert_frame_equal(resumed, uninterrupted, rtol=1e-6)


def test_a_pbt_search_is_one_job_and_matches_a_local_run(cluster, tmp_path):
    """A 4-worker, 3-generation PBT search is one job on the gpu partition (the population
    trains as one pack), and its history (plans and losses) equals the same search run
    locally."""
    from lfads.search.pbt import read_history

    pbt = {
        "population": 4,
        "burn_in_epochs": 2,
        "generation_epochs": 1,
        "max_epochs": 4,
        "seed": 0,
        "hyperparameters": {
            "lr": {"range": [1.0e-3, 2.0e-2], "scale": "log"},
            "dropout": {"range": [0.0, 0.5], "scale": "linear"},
        },
    }
    model = {
        "bin_width": 20,
        "n_samples": 10,
        "hparams": {**MODEL, "kl_increase_epoch": 2, "l2_increase_epoch": 2},
    }
    history = "results/tiny/val/pbt_history.tsv"
    env = environment(cluster)
    submitted_before = {job["job"] for job in sacct(cluster)}
    on_slurm = workdir_with_config(tmp_path / "slurm", model=model, search={"pbt": pbt})
    result = run(on_cluster(on_slurm, history), env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    jobs = [job for job in sacct(cluster) if job["job"] not in submitted_before]
    (search,) = [job for job in jobs if rule_of(job) == "pbt"]
    assert search["partition"] == "gpu" and "gres/gpu=1" in search["tres"], search
    assert search["state"] == "COMPLETED", search
    assert not [job for job in jobs if rule_of(job) == "train"]

    local = workdir_with_config(tmp_path / "local", model=model, search={"pbt": pbt})
    result = run(snakemake_command(local, "--cores", "2", history), env)
    assert result.returncode == 0, result.stdout[-3000:]
    rows_slurm, rows_local = read_history(on_slurm / history), read_history(local / history)
    assert [row["generation"] for row in rows_slurm] == [0] * 4 + [1] * 4 + [2] * 4
    assert len(rows_slurm) == len(rows_local)
    for there, here in zip(rows_slurm, rows_local):
        assert there == pytest.approx(here, abs=1e-6)


def test_bad_config_value_submits_nothing(cluster, tmp_path):
    submitted_before = len(sacct(cluster))
    workdir = workdir_with_config(
        tmp_path / "bad",
        search={"grid": {"dropout": [0.1]}},
        model={"bin_width": 20, "hparams": {**MODEL, "gen_dimm": 3}},
    )
    result = run(
        on_cluster(workdir),
        environment(cluster),
        timeout=120,
    )
    assert result.returncode != 0
    assert "gen_dimm" in result.stdout + result.stderr
    assert len(sacct(cluster)) == submitted_before
