"""Trustworthy reruns, through Snakemake as users run it: no path can delete a user's file,
verified downloads are never thrown away, a lost run file is rebuilt, stale temporaries go."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    WORKFLOW_HPARAMS,
    environment,
    job_count,
    make_finished_state,
    snakemake_command,
    snakemake_with_config,
    write_tiny_config,
)

from lfads.data.synthetic import ASSET_PATHS as SYNTHETIC_ASSETS
from lfads.infra.io import host_name, remove_stale_temporaries

# Before dandi is imported anywhere: keep its digest cache out of the user's home.
os.environ.setdefault("DANDI_CACHE", "ignore")

DANDISET, VERSION = "000128", "0.220113.0400"
TRAIN, TEST = SYNTHETIC_ASSETS["train"], SYNTHETIC_ASSETS["test"]


def dandi_source(folder: Path, api_url: str, **assets) -> dict:
    pins = {
        role: {"path": path, "sha256": hashlib.sha256((folder / path).read_bytes()).hexdigest()}
        for role, path in SYNTHETIC_ASSETS.items()
    }
    return {
        "dandi": {
            "dandiset": DANDISET,
            "version": VERSION,
            "instance_url": api_url,
            "assets": {**pins, **assets},
        }
    }


def asset_requests(archive, asset_path: str) -> list:
    """Every request the loopback server had that names `asset_path` or its asset id."""
    (asset_id,) = [aid for aid, path in archive.assets.items() if path == asset_path]
    return [
        request
        for request in archive.requests
        if asset_id in request.path or asset_path in request.query or asset_path in request.path
    ]


def test_a_hostile_asset_path_is_refused_before_any_job_and_outside_files_survive(tmp_path):
    """An absolute asset path, or one with `..`, was an output of fetch: Snakemake deleted the
    user's file (and its folder) when the job started, before fetch refused the path."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = [outside / "absolute.nwb", outside / "dotdot.nwb"]
    for victim in victims:
        victim.write_text("a user's file")
    workdir = tmp_path / "project"
    workdir.mkdir()
    pins = {"sha256": "0" * 64}
    source = {
        "dandi": {
            "dandiset": DANDISET,
            "version": VERSION,
            "instance_url": "http://127.0.0.1:9/api",
            "assets": {
                "train": {"path": str(victims[0]), **pins},
                # resources/data/tiny/../../../../outside/dotdot.nwb
                "test": {"path": "../../../../outside/dotdot.nwb", **pins},
            },
        }
    }
    write_tiny_config(workdir, source=source)
    result = snakemake_with_config(workdir, "--cores", "1")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"source.dandi.assets.train.path: {str(victims[0])!r} is not valid" in output
    assert "source.dandi.assets.test.path: '../../../../outside/dotdot.nwb' is not valid" in output
    assert "a relative path inside the dandiset ending in .nwb" in output
    assert "rule fetch" not in output and "Building DAG" not in output
    assert all(victim.read_text() == "a user's file" for victim in victims)


@pytest.mark.slow
def test_a_corrupted_second_asset_keeps_the_verified_first(synthetic_dir, tmp_path):
    """When one asset failed its SHA-256, Snakemake removed the outputs of the failed job, the
    other, verified asset included; deleting fetched.json downloaded everything again."""
    from dandi_server import FakeDandiArchive

    workdir = tmp_path / "project"
    workdir.mkdir()
    data = workdir / "resources" / "data" / "tiny"
    with FakeDandiArchive(synthetic_dir, DANDISET, VERSION, corrupt={TEST: b"bad" * 1000}) as bad:
        write_tiny_config(workdir, source=dandi_source(synthetic_dir, bad.api_url))
        failed = snakemake_with_config(workdir, "--cores", "2", "--until", "fetch")
    assert failed.returncode != 0
    assert "SHA-256 mismatch" in (workdir / "results/tiny/val/logs/fetch_test.log").read_text()
    assert (data / "fetched" / "train.json").exists() and not (
        data / "fetched" / "test.json"
    ).exists()
    assert (data / TRAIN).read_bytes() == (synthetic_dir / TRAIN).read_bytes()
    assert not (data / TEST).exists() and list((data / TEST).parent.glob("*.sha256-mismatch-*"))

    with FakeDandiArchive(synthetic_dir, DANDISET, VERSION) as archive:
        write_tiny_config(workdir, source=dandi_source(synthetic_dir, archive.api_url))
        again = snakemake_with_config(workdir, "--cores", "2", "--until", "prepare")
        assert again.returncode == 0, again.stdout + again.stderr
        assert asset_requests(archive, TRAIN) == [] and archive.downloads() == 1
        assert job_count(again.stdout + again.stderr, "fetch") == 1

        # A lost marker costs a hash, not a download; the rewritten marker reruns prepare.
        (data / "fetched" / "train.json").unlink()
        requests_before = len(archive.requests)
        refetched = snakemake_with_config(workdir, "--cores", "2", "--until", "prepare")
        output = refetched.stdout + refetched.stderr
        assert refetched.returncode == 0, output
        assert len(archive.requests) == requests_before  # not even a metadata request
        assert job_count(output, "fetch") == 1 and job_count(output, "prepare") == 1
    assert (data / TEST).read_bytes() == (synthetic_dir / TEST).read_bytes()

    # A downloaded file deleted behind the marker's back: a message that says what to delete.
    (data / TEST).unlink()
    lost = snakemake_with_config(workdir, "-n", "--until", "prepare")
    assert lost.returncode != 0
    assert (
        f"{Path('resources/data/tiny') / TEST} is missing, but "
        "resources/data/tiny/fetched/test.json records it as fetched and verified; delete "
        "resources/data/tiny/fetched/test.json and run again: its fetch job then downloads the "
        "file again." in lost.stdout + lost.stderr
    )


def _ctrl_c_not_ignored() -> None:
    """In the child, before Snakemake starts: SIGINT back to its default, as in a terminal's
    foreground job. A suite started in the background (`make test &`, `nohup`) ignores SIGINT,
    and an ignored signal stays ignored in every child: Ctrl-C then did nothing, and the stalled
    download finished after dandi's read timeout."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, timeout: float, what: str, process) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"snakemake ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_a_kill_mid_download_of_the_second_asset_keeps_the_first(synthetic_dir, tmp_path, kill):
    """After Ctrl-C or SIGKILL during a download, the rerun stopped with IncompleteFilesException on
    the finished file, and --rerun-incomplete downloaded it again from byte 0."""
    from dandi_server import FakeDandiArchive

    workdir = tmp_path / "project"
    workdir.mkdir()
    data = workdir / "resources" / "data" / "tiny"
    partial = data / (TEST + ".dandidownload") / "file"
    # small client chunks, so that the bytes before the stall (whole chunks) reach the partial file
    chunk = 1 << 16
    cut = (synthetic_dir / TEST).stat().st_size // 2 // chunk * chunk
    assert cut > 0
    env = {"DANDI_MAX_CHUNK_SIZE": str(chunk), "DANDI_CACHE": "ignore"}
    with FakeDandiArchive(synthetic_dir, DANDISET, VERSION, stall_after={TEST: cut}) as archive:
        write_tiny_config(workdir, source=dandi_source(synthetic_dir, archive.api_url))
        with open(tmp_path / "killed.log", "w") as log:
            # One job at a time, train's first: the test asset's download starts, and stalls, only
            # once train's is done, so the kill follows the stall at once (dandi's fixed 30 s read
            # timeout would retry a stall and finish the file).
            train_marker = "resources/data/tiny/fetched/train.json"
            process = subprocess.Popen(
                snakemake_command(
                    workdir, "--cores", "1", "--until", "fetch", "--prioritize", train_marker
                ),
                cwd=REPO,
                env=environment(env),
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group, as a terminal's foreground job
                preexec_fn=_ctrl_c_not_ignored,
            )
            try:
                _wait_for(archive.stalled.is_set, 120, "the stalled download", process)
                # train's job done, as far as Snakemake is concerned (a kill between its marker and
                # this line leaves the marker "incomplete": --rerun-incomplete then hashes, no more)
                _wait_for(
                    lambda: re.search(
                        r"^1 of \d+ steps", (tmp_path / "killed.log").read_text(), re.M
                    ),
                    120,
                    "train's job to finish",
                    process,
                )
                _wait_for(
                    lambda: partial.exists() and partial.stat().st_size == cut,
                    30,
                    "the partial file",
                    process,
                )
                os.killpg(process.pid, kill)
                process.wait(timeout=60)
                if kill == signal.SIGINT:
                    log_text = (tmp_path / "killed.log").read_text()
                    assert "Terminating processes on user request" in log_text, log_text[-2000:]
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        archive.release()
    assert (data / TRAIN).read_bytes() == (synthetic_dir / TRAIN).read_bytes()
    assert partial.stat().st_size == cut

    with FakeDandiArchive(synthetic_dir, DANDISET, VERSION) as archive:
        write_tiny_config(workdir, source=dandi_source(synthetic_dir, archive.api_url))
        if kill == signal.SIGKILL:  # a killed Snakemake leaves its lock
            unlocked = snakemake_with_config(workdir, "--unlock")
            assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
        rerun = snakemake_with_config(workdir, "--cores", "2", "--until", "fetch")
        output = rerun.stdout + rerun.stderr
        assert rerun.returncode == 0, output
        assert "Incomplete" not in output and job_count(output, "fetch") == 1
        assert asset_requests(archive, TRAIN) == []
        assert [request.range for request in archive.download_requests()] == [f"bytes={cut}-"]
    assert (data / TEST).read_bytes() == (synthetic_dir / TEST).read_bytes()
    assert (
        json.loads((data / "fetched" / "test.json").read_text())["files"][0]["bytes"]
        == (synthetic_dir / TEST).stat().st_size
    )


@pytest.mark.slow
def test_a_run_file_lost_to_a_killed_forced_rerun_is_rebuilt(tmp_path):
    """A killed `--forcerun infer` leaves no inferred.h5 (Snakemake deletes it at the start): then
    `snakemake -n` said "Nothing to be done", since the files after it still existed."""
    write_tiny_config(tmp_path, search={"grid": {"dropout": [0.1, 0.2]}})
    make_finished_state(tmp_path)
    assert "Nothing to be done" in snakemake_with_config(tmp_path, "-n").stdout
    for name in ("inferred.h5", "model.ckpt", "metrics.json"):
        lost = tmp_path / "results" / "tiny" / "val" / "runs" / "dropout~0.2" / name
        kept, mtime = lost.read_text(), lost.stat().st_mtime
        lost.unlink()
        dry = snakemake_with_config(tmp_path, "-n")
        output = dry.stdout + dry.stderr
        assert dry.returncode == 0, output
        assert f"Missing output files: {lost.relative_to(tmp_path)}" in output
        # (a lost model.ckpt is copied again from its pack's folder)
        rule = {"inferred.h5": "infer", "model.ckpt": "run_files", "metrics.json": "evaluate"}[name]
        assert job_count(output, rule) == 1 and job_count(output, "aggregate") == 1, output
        lost.write_text(kept)
        os.utime(lost, (mtime, mtime))


@pytest.mark.slow
def test_stale_temporary_files_are_removed_when_the_workflow_starts(tmp_path):
    """Hidden .*.tmp.* files of killed jobs were never cleaned (one from a disk-full crash kept
    the disk full); a live writer's file must survive."""
    write_tiny_config(tmp_path)
    here = host_name()
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = tmp_path / "results" / "tiny" / "val" / f".inferred.tmp.{here}@{dead.pid}.a1b2c3d4.h5"
    live = tmp_path / "resources" / "data" / f".model.tmp.{here}@{os.getpid()}.a1b2c3d5.ckpt"
    for path in (killed, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    dry = snakemake_with_config(tmp_path, "-n", "--until", "fetch")  # a dry run removes nothing
    assert dry.returncode == 0 and killed.exists()
    result = snakemake_with_config(tmp_path, "--cores", "1", "--until", "fetch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not killed.exists() and live.read_text() == "partial"
    assert f"removed {killed.relative_to(tmp_path)}, a temporary file left by a killed job" in (
        result.stderr
    )


FAKE_SNAKEMAKE = """#!{python}
import os, sys, time
report = sys.argv[sys.argv.index("--report") + 1]
with open(report, "w") as handle:
    handle.write("<!DOCTYPE html> the first 3 MB of a 4 MB report")
    handle.flush()
    if os.environ["FAKE_REPORT"] == "fail":
        sys.exit(3)
    if os.environ["FAKE_REPORT"] == "hang":
        print("writing", flush=True)
        time.sleep(120)
    handle.write(" and the rest")
"""


@pytest.mark.parametrize("outcome", ["complete", "fail", "kill"])
def test_the_report_reaches_its_final_path_only_when_complete(tmp_path, outcome):
    """A kill during `snakemake --report` left a 3 MB report.html (of 4 MB) at the final path."""
    fake = tmp_path / "snakemake"
    fake.write_text(FAKE_SNAKEMAKE.format(python=sys.executable))
    fake.chmod(0o755)
    report = tmp_path / "results" / "report.html"
    finished = tmp_path / "results" / "synthetic" / "val"  # (make report refuses before a run)
    finished.mkdir(parents=True)
    (finished / "summary.tsv").write_text("run\n")
    report.write_text("the previous, complete report")
    command = ["make", "-C", str(REPO), "report", "STAMP=", f"SNAKEMAKE={fake}"]
    command += [f"REPORT={report}", "CONFIGFILE=config/config.yaml", f"WORKDIR={tmp_path}"]
    env = environment({"FAKE_REPORT": {"kill": "hang"}.get(outcome, outcome)})
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    if outcome == "kill":
        _wait_for(lambda: "writing" in process.stdout.readline(), 60, "the report", process)
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    left = list(report.parent.glob(".report.tmp.*"))
    if outcome == "complete":
        assert process.returncode == 0 and left == []
        assert report.read_text().endswith("4 MB report and the rest")
        return
    assert process.returncode != 0
    assert report.read_text() == "the previous, complete report"
    if outcome == "fail":
        assert left == []
    else:  # the killed shell could not clean up: the workflow's next start does
        (temporary,) = left
        assert temporary.read_text().startswith("<!DOCTYPE html> the first 3 MB")
        deadline = time.monotonic() + 10  # (until the killed shell has exited)
        while not (removed := remove_stale_temporaries([tmp_path / "results"])):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert removed == [temporary]


@pytest.mark.slow
def lfads_command(folder: Path, *args: str) -> str:
    """`python -m lfads ARGS` run in `folder`; its stdout (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-m", "lfads", *args], cwd=folder, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_an_unchanged_input_retrains_nothing_and_a_real_change_does(tmp_path):
    """A touched prepared file, `--forcerun prepare` (the same bytes again) or a copy of it
    without its times reruns `train`, which only writes its outputs again; changed data trains
    anew."""
    hparams = {**WORKFLOW_HPARAMS, "max_epochs": 3}
    model = {"bin_width": 20, "n_samples": 5, "hparams": hparams}
    write_tiny_config(tmp_path, model=model, search={"grid": {"dropout": [0.1]}})
    results = tmp_path / "results" / "tiny" / "val"
    target = "results/tiny/val/runs/dropout~0.1/model.ckpt"
    log = results / "logs" / "train" / "pack00.log"

    def run(*args: str) -> str:
        result = snakemake_with_config(tmp_path, "--cores", "2", *args, target)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    run()
    assert "epoch 3/3" in log.read_text()
    prepared = results / "prepared_20ms.h5"
    digest = hashlib.sha256(prepared.read_bytes()).hexdigest()
    for change in ("touch", "copy", "--forcerun prepare"):
        before = log.read_text()
        if change == "touch":
            os.utime(prepared)
            output = run()
        elif change == "copy":  # the same bytes copied in, without keeping the times
            prepared.write_bytes(prepared.read_bytes())
            output = run()
        else:  # prepare runs again and writes the same bytes: Snakemake reruns `train` ...
            output = run("--forcerun", "prepare")
            assert job_count(output, "prepare") == job_count(output, "train") == 1
        text = log.read_text()
        if job_count(output, "train"):  # ... which trains nothing
            assert "writing its outputs without training again" in text, change
            assert "epoch 1/3" not in text and "set aside" not in text, change
        else:  # (Snakemake 9 reruns no job for an input that only got newer)
            assert text == before, change
        assert hashlib.sha256(prepared.read_bytes()).hexdigest() == digest
    checkpoints = results / "checkpoints"
    # a real change of the data trains anew, and keeps the old state aside
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text() + "prepare: {split_seed: 5}\n")
    output = run()
    assert "epoch 3/3" in log.read_text() and "another prepared file" in log.read_text()
    (aside,) = checkpoints.glob("pack00.superseded-*")
    # the end of the run says so; `lfads checkpoints` lists it with its reason, --prune removes it
    assert "1 checkpoint folder(s) set aside below results/tiny/val/ (" in output
    size = sum(file.stat().st_size for file in aside.rglob("*") if file.is_file())
    listed = lfads_command(tmp_path, "checkpoints")
    assert (
        f"{size / 2**20:8.1f} MiB  results/tiny/val/checkpoints/{aside.name}  it was trained "
        in (listed)
        and "another prepared file" in listed
    ), listed
    pruned = lfads_command(tmp_path, "checkpoints", "--prune")
    assert "removed 1 folder(s)" in pruned and not aside.exists()
    assert (checkpoints / "pack00" / "last.ckpt").exists()  # only the folder set aside went
