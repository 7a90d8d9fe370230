"""The Snakemake workflow as users run it: lint, light parse, dry runs, data stages end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap

import h5py
import numpy as np
import pytest
import yaml
from conftest import (
    BIN,
    REPO,
    SMALL_SYNTHETIC,
    SNAKEFILE,
    job_count,
    nothing_to_do,
    snakemake_in,
    write_tiny_config,
)

from lfads.config import DEFAULT_PACK_SIZE
from lfads.data.synthetic import ASSET_PATHS as SYNTHETIC_ASSETS
from lfads.evaluation.outputs import FIGURES, figures_for

CONFIGS = sorted((REPO / "config").glob("*.yaml"))


def runs_of(search: dict) -> int:
    """Runs of a configfile's grid or random search: points times seeds."""
    points = search.get("random", {}).get("n", 1) * max(
        1, np.prod([len(v) for v in search.get("grid", {}).values()])
    )
    return int(points) * search.get("seeds", 1)


def test_lint_is_clean(snakemake_in_process):
    result = snakemake_in_process("--lint")
    assert result.returncode == 0, result.stdout
    assert "Congratulations" in result.stdout


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_of_every_configfile(path, tmp_path, snakemake_in_process):
    """`snakemake -n` plans each configfile's jobs. Every configfile but the CPU demo's
    (config/config.yaml) is dry-run under the slurm profile, as on a cluster, where each
    training job must ask for a GPU (`assert_slurm_plan`); the demo's plans every figure."""
    profile = ("--profile", "slurm") if path.stem != "config" else ()
    result = snakemake_in_process(
        *("--snakefile", SNAKEFILE, "--directory", str(tmp_path), *profile, "-n"),
        *("--configfile", str(path)),
    )
    output = result.stdout
    assert result.returncode == 0, output
    config = yaml.safe_load(path.read_text())
    n_bins = len(config["bin_widths"])
    search = config.get("search", {})
    n_runs = runs_of(search)
    if "pbt" in search:  # the whole population: one job
        n_runs = search["pbt"]["population"]
        assert job_count(output, "train") == 0
        assert job_count(output, "pbt") == 1
    else:  # one job per pack of search.pack_size runs (default 8)
        pack_size = search.get("pack_size", DEFAULT_PACK_SIZE)
        assert job_count(output, "train") == -(-n_runs // pack_size)
        assert job_count(output, "run_files") == n_runs
    # one fetch job per asset (train, test); the generator writes all its files in one
    assert job_count(output, "fetch") == (1 if "synthetic" in config["source"] else 2)
    assert job_count(output, "prepare") == job_count(output, "targets") == n_bins
    assert job_count(output, "infer") == n_runs
    assert job_count(output, "evaluate") == n_runs + ("ensemble" in config)
    assert job_count(output, "aggregate") == job_count(output, "figures") == 1
    if profile:
        assert_slurm_plan(path, result)
    else:  # the figures rule writes exactly the listed figures (all of them, for the synthetic set)
        planned = set(re.findall(r"results/synthetic/val/figures/(\w+)\.png", output))
        assert planned == {figure.name for figure in figures_for("val", "mc_maze", has_truth=True)}
        assert planned == {figure.name for figure in FIGURES}


# Installed by a sitecustomize module into the Snakemake process: records each import statement
# of a watched package executed while a file of the repository's lfads/ or workflow/ is on the
# stack (an `import` statement runs even when the package is already loaded, as pandas is by
# Snakemake itself), with that stack's repository files.
IMPORT_RECORDER = """
import atexit, builtins, json, os, sys

_roots = (os.path.join(os.environ["REPO"], "lfads"), os.path.join(os.environ["REPO"], "workflow"))
_watched = set(os.environ["WATCHED"].split(","))
_records = []
_import = builtins.__import__


def _recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.partition(".")[0] in _watched:
        frame, stack = sys._getframe(1), []
        while frame is not None:
            if frame.f_code.co_filename.startswith(_roots):
                stack.append(frame.f_code.co_filename + ":" + frame.f_code.co_name)
            frame = frame.f_back
        if stack:
            _records.append({"module": name, "stack": stack})
    return _import(name, globals, locals, fromlist, level)


def _write():
    with open(os.environ["IMPORTS_OUT"], "w") as handle:
        json.dump({"imports": _records, "DANDI_NO_ET": "DANDI_NO_ET" in os.environ}, handle)


builtins.__import__ = _recording_import
atexit.register(_write)
"""
HEAVY = ("torch", "lightning", "pandas", "h5py", "dandi", "nlb_tools", "pynwb", "matplotlib")
# A user plugin that records being imported: parsing the workflow must not run its code.
PLUGIN_PROBE = """
import os
open(os.environ["PLUGIN_IMPORTED"], "w").write("imported")
"""


def test_a_users_dry_run_imports_no_heavy_package_and_asks_a_gpu_per_training_job(tmp_path):
    """`snakemake --profile slurm -n` as a user types it, in its own process, for an NLB
    configfile plus a user plugin: no import of torch, pandas, h5py, dandi, ..., the plugin's code
    does not run, and each training job asks for a GPU (`assert_slurm_plan`)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(IMPORT_RECORDER))
    (site / "parse_probe_plugin.py").write_text(PLUGIN_PROBE)
    plugin_imported = tmp_path / "plugin_imported"
    out = tmp_path / "imports.json"
    env = {key: value for key, value in os.environ.items() if key != "DANDI_NO_ET"}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
        REPO=str(REPO),
        WATCHED=",".join(HEAVY + ("numpy",)),
        IMPORTS_OUT=str(out),
        PLUGIN_IMPORTED=str(plugin_imported),
    )
    config = yaml.safe_load((REPO / "config" / "mc_maze.yaml").read_text())
    config["model"]["hparams"].update(
        plugins=["parse_probe_plugin"], ic_prior={"name": "probe_prior", "scale": 0.5}
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", SNAKEFILE, "--directory", str(tmp_path)]
        + ["--profile", "slurm", "-n", "--configfile", str(config_path)],
        cwd=REPO,  # where `--profile slurm` is found
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = json.loads(out.read_text())
    imports = recorded["imports"]
    assert not plugin_imported.exists(), "parsing the workflow imported a user plugin"
    # the recorder works: the search space's numpy import is seen from common.smk
    assert any(
        record["module"] == "numpy" and any("common.smk" in path for path in record["stack"])
        for record in imports
    ), recorded
    heavy = [record for record in imports if record["module"].partition(".")[0] in HEAVY]
    assert heavy == [], "\n".join(f"{r['module']} imported from {r['stack']}" for r in heavy)
    assert not recorded["DANDI_NO_ET"], "parsing the workflow set DANDI_NO_ET"
    assert_slurm_plan(config_path, result)


def test_every_figure_has_a_maker_and_a_caption_and_every_maker_a_figure(monkeypatch, tmp_path):
    """FIGURES, the makers in lfads.evaluation.figures and workflow/report/ name the same ones."""
    import inspect

    from lfads.evaluation import figures

    # pbt_progress is drawn by the pbt_history rule of a PBT search (tests/test_pbt_workflow.py)
    makers = {
        name
        for name, function in inspect.getmembers(figures, inspect.isfunction)
        if function.__module__ == figures.__name__
        and "out" in inspect.signature(function).parameters
    } - {"pbt_progress"}
    drawn: dict[str, list] = {name: [] for name in makers}
    for name in makers:
        monkeypatch.setattr(figures, name, lambda *args, name=name: drawn[name].append(args[-1]))
    monkeypatch.setattr(figures, "best_run", lambda summary: "base")
    monkeypatch.setattr(figures, "scored_runs", lambda summary: ["base"])
    outputs = {figure.name: tmp_path / f"{figure.name}.png" for figure in FIGURES}
    runs = {"base": tmp_path / "inferred.h5"}
    figures.all_figures(tmp_path / "summary.tsv", runs, runs, tmp_path, tmp_path, "g", outputs)
    assert sorted(path for paths in drawn.values() for path in paths) == sorted(outputs.values())
    assert all(len(paths) >= 1 for paths in drawn.values()), drawn
    with pytest.raises(ValueError, match="unknown figure.*best_raster"):
        figures.all_figures(tmp_path, {}, {}, tmp_path, None, "g", {"raster": tmp_path})

    report = REPO / "workflow" / "report"
    tables = {"workflow.rst", "summary.rst", "summary_html.rst", "summary_columns.rst"}
    tables |= {"pbt_history.rst"}  # (no figure's)
    captions = {path.name for path in report.glob("*.rst")} - tables - {"pbt.rst"}
    assert captions == {figure.caption for figure in FIGURES}
    assert len({figure.name for figure in FIGURES}) == len(FIGURES)


@pytest.mark.parametrize(
    "phase, layout, has_truth, missing",
    [
        ("val", "mc_maze", True, set()),
        ("val", "mc_maze", False, {"best_rates_vs_truth"}),
        ("test", "mc_maze", True, {"best_psth", "best_velocity", "best_neuron_co_bps"}),
        ("val", "mc_rtt", False, {"best_psth", "best_rates_vs_truth"}),
        ("val", "dmfc_rsg", False, {"best_velocity", "best_rates_vs_truth"}),
    ],
)
def test_which_figures_a_dataset_gets(phase, layout, has_truth, missing):
    names = {figure.name for figure in figures_for(phase, layout, has_truth)}
    assert names == {figure.name for figure in FIGURES} - missing


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
    marker_path = tmp_path / "resources" / "data" / "tiny" / "fetched" / "synthetic.json"
    marker = json.loads(marker_path.read_text())
    assert marker["source"] == "synthetic" and len(marker["files"]) == 4
    for rule in ("fetch_synthetic", "prepare_20ms", "targets_20ms"):
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
    """The fetch rule downloads the files from a loopback DANDI API, verifies them, only once."""
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


def assert_slurm_plan(path, result) -> None:
    """The dry run of configfile `path` under the slurm profile asks one GPU for each train job,
    with the configfile's memory and runtime, and none for CPU jobs; no partition (the profile's
    are commented placeholders, so no made-up name reaches sbatch)."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    config = yaml.safe_load(path.read_text())
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\[|\Z)", output, re.M | re.S)
    search = config["search"]
    if "pbt" in search:  # the whole population: one job
        train = [body for rule, body in blocks if rule == "pbt"]
        assert len(train) == 1
    else:  # one job per pack (one array job: the profile's slurm-array-jobs)
        train = [body for rule, body in blocks if rule == "train"]
        assert len(train) == -(-runs_of(search) // DEFAULT_PACK_SIZE)
    for body in train:
        resources = re.search(r"resources: (.*)", body).group(1)
        assert "gpu=1" in resources and "slurm_partition" not in resources
        assert f"mem_mb={config['resources']['train']['mem_mb']}" in resources
        assert f"runtime={config['resources']['train']['runtime']}" in resources
    for rule, body in blocks:
        if rule in ("prepare", "targets", "evaluate"):
            resources = re.search(r"resources: (.*)", body).group(1)
            assert "gpu=" not in resources and "slurm_partition" not in resources
