"""The Snakemake workflow as users run it: lint, dry runs of every configfile, and the data stages end to end."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import yaml
from conftest import REPO, SMALL_SYNTHETIC, run_snakemake, write_tiny_config

from lfads.data.synthetic import ASSET_PATHS as SYNTHETIC_ASSETS

SNAKEFILE = str(REPO / "workflow" / "Snakefile")
CONFIGS = sorted((REPO / "config").glob("*.yaml"))


def nothing_to_do(result) -> bool:
    output = result.stdout + result.stderr
    return result.returncode == 0 and (
        "Nothing to be done" in output or re.search(r"^total\s+0$", output, re.M)
    )


def job_count(output: str, rule: str) -> int:
    """Jobs of `rule` in the job-stats table Snakemake prints."""
    match = re.search(rf"^{rule}\s+(\d+)$", output, re.M)
    return int(match.group(1)) if match else 0


def snakemake_in(workdir, *args):
    return run_snakemake("--snakefile", SNAKEFILE, "--directory", str(workdir), *args)


def test_lint_is_clean():
    result = run_snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_of_every_configfile(path, tmp_path):
    result = snakemake_in(tmp_path, "-n", "--configfile", str(path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    config = yaml.safe_load(path.read_text())
    n_bins = len(config["bin_widths"])
    n_runs = config.get("search", {}).get("random", {}).get("n", 1) * max(
        1, np.prod([len(v) for v in config.get("search", {}).get("grid", {}).values()])
    )
    assert job_count(output, "fetch") == 1
    assert job_count(output, "prepare") == job_count(output, "targets") == n_bins
    assert (
        job_count(output, "train")
        == job_count(output, "infer")
        == job_count(output, "evaluate")
        == n_runs
    )
    assert job_count(output, "aggregate") == job_count(output, "figures") == 1


def _write_config(folder, **overrides) -> str:
    return str(write_tiny_config(folder, **overrides))


@pytest.mark.slow
def test_data_stages_end_to_end_then_nothing_to_do(tmp_path):
    configfile = _write_config(tmp_path)
    result = snakemake_in(
        tmp_path, "--cores", "2", "--configfile", configfile, "--until", "prepare", "targets"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = tmp_path / "results" / "tiny" / "val"
    with h5py.File(results / "prepared_20ms.h5") as handle:
        assert handle["train/encod_data"].shape[1:] == (35, SMALL_SYNTHETIC["n_heldin"])
    with h5py.File(results / "targets_20ms.h5") as handle:
        assert "psth" in handle["mc_maze_20"]
    marker = json.loads((tmp_path / "resources" / "data" / "tiny" / "fetched.json").read_text())
    assert marker["source"] == "synthetic" and len(marker["files"]) == 4
    for rule in ("fetch", "prepare_20ms", "targets_20ms"):
        assert (results / "logs" / f"{rule}.log").exists()
        assert (results / "benchmarks" / f"{rule}.tsv").exists()

    again = snakemake_in(
        tmp_path, "-n", "--configfile", configfile, "--until", "prepare", "targets"
    )
    assert nothing_to_do(again)


@pytest.mark.slow
def test_local_source_skips_the_download(synthetic_dir, tmp_path):
    """A `local` source reads <folder>/<dandiset>/<asset path> in place and only verifies it."""
    folder = tmp_path / "nlb"
    folder.mkdir()
    (folder / "000128").symlink_to(synthetic_dir, target_is_directory=True)
    source = {
        "local": {
            "folder": str(folder),
            "dandiset": "000128",
            "assets": {role: {"path": path} for role, path in SYNTHETIC_ASSETS.items()},
        }
    }
    configfile = _write_config(tmp_path, source=source)
    result = snakemake_in(
        tmp_path, "--cores", "2", "--configfile", configfile, "--until", "prepare"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "results" / "tiny" / "val" / "prepared_20ms.h5").exists()
    assert not (tmp_path / "resources" / "data" / "tiny" / "sub-Synth").exists()
    again = snakemake_in(tmp_path, "-n", "--configfile", configfile, "--until", "prepare")
    assert nothing_to_do(again)


@pytest.mark.slow
def test_dandi_source_through_the_real_client(synthetic_dir, tmp_path):
    """The fetch rule downloads the synthetic files from a loopback DANDI API, verifies them, and is idempotent."""
    import hashlib

    from dandi_server import FakeDandiArchive

    assets = {
        role: {
            "path": path,
            "sha256": hashlib.sha256((synthetic_dir / path).read_bytes()).hexdigest(),
        }
        for role, path in SYNTHETIC_ASSETS.items()
    }
    with FakeDandiArchive(synthetic_dir, "000128", "0.220113.0400") as archive:
        source = {
            "dandi": {
                "dandiset": "000128",
                "version": "0.220113.0400",
                "instance_url": archive.api_url,
                "assets": assets,
            }
        }
        configfile = _write_config(tmp_path, source=source)
        result = snakemake_in(
            tmp_path, "--cores", "2", "--configfile", configfile, "--until", "prepare"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert archive.downloads() == 2
        again = snakemake_in(tmp_path, "-n", "--configfile", configfile, "--until", "prepare")
        assert nothing_to_do(again)
        assert archive.downloads() == 2
    downloaded = tmp_path / "resources" / "data" / "tiny" / SYNTHETIC_ASSETS["train"]
    assert downloaded.read_bytes() == (synthetic_dir / SYNTHETIC_ASSETS["train"]).read_bytes()


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem != "config"], ids=lambda p: p.stem)
def test_slurm_profile_dry_run_asks_for_a_gpu_per_training_job(path, tmp_path):
    """`snakemake --profile slurm` (the command users type) plans GPU jobs in the gpu partition."""
    result = snakemake_in(tmp_path, "--profile", "slurm", "-n", "--configfile", str(path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    config = yaml.safe_load(path.read_text())
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\[|\Z)", output, re.M | re.S)
    train = [body for rule, body in blocks if rule == "train"]
    assert len(train) == config["search"]["random"]["n"]
    for body in train:
        resources = re.search(r"resources: (.*)", body).group(1)
        assert "slurm_partition=gpu" in resources and "gpu=1" in resources
        assert f"mem_mb={config['resources']['train']['mem_mb']}" in resources
        assert f"runtime={config['resources']['train']['runtime']}" in resources
    for rule, body in blocks:
        if rule in ("prepare", "targets", "evaluate"):
            assert "slurm_partition=cpu" in re.search(r"resources: (.*)", body).group(1)
