"""`--sdm conda`, as far as it can be tested without conda's channels: the env file's pip step run
from where Snakemake creates environments, and a dry run from an environment without lfads or its
heavy dependencies (a stand-in `conda` answers Snakemake's checks). Not tested: conda solving
and creating the environment, and the post-deploy script (docs/internals.md, "Conda")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import BIN, REPO, SNAKEFILE, job_count

ENV_FILE = REPO / "envs" / "lfads.yaml"
# What an environment holding only Snakemake (and numpy, for the random search's draws) lacks.
# pandas is left importable: the SLURM executor plugin installed beside Snakemake here imports it
# when Snakemake collects its plugins (tests/test_workflow.py checks that parsing imports none).
HEAVY = (
    "torch",
    "lightning",
    "h5py",
    "scipy",
    "sklearn",
    "matplotlib",
    "dandi",
    "pynwb",
    "hdmf",
    "nlb_tools",
    "tensorboard",
    "pynapple",
)

STAND_IN_CONDA = """#!/bin/sh
# Answers the checks Snakemake makes before a dry run with --sdm conda; refuses anything else.
case "$*" in
  "info --json") echo '{"conda_prefix": "/opt/conda", "platform": "linux-64"}' ;;
  "--version") echo "conda 24.7.1" ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "stand-in conda: $*" >&2; exit 1 ;;
esac
"""

# sitecustomize of an interpreter without the installed lfads (its editable finder is removed)
# and without the HEAVY packages.
WITHOUT_LFADS_AND_HEAVY = """
import importlib.abc
import sys

HEAVY = set({heavy!r})
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if p != {main!r}]


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Absent())
"""


def pip_lines() -> list[str]:
    env = yaml.safe_load(ENV_FILE.read_text())
    return next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))


def test_the_env_installs_this_checkout_and_not_snakemake():
    lines = pip_lines()
    assert "--editable ${LFADS_REPO}" in lines
    assert not [line for line in lines if line.startswith("snakemake")]
    assert (REPO / "envs" / "lfads.post-deploy.sh").read_text().count("nlb-tools==0.0.4") == 1


def test_the_pip_step_resolves_the_checkout_from_snakemakes_env_folder(
    tmp_path, snakemake_in_process, monkeypatch
):
    """conda runs pip in the folder of the env file's copy, .snakemake/conda/ (a relative path
    resolved from there); ${LFADS_REPO}, set by the Snakefile, points at this checkout."""
    monkeypatch.delenv("LFADS_REPO", raising=False)
    parsed = snakemake_in_process(
        "--snakefile",
        SNAKEFILE,
        "--directory",
        str(tmp_path),
        "-n",
        "--configfile",
        str(REPO / "config" / "config.yaml"),
    )
    assert parsed.returncode == 0, parsed.stdout
    repo = os.environ["LFADS_REPO"]
    assert repo == str(REPO)
    env_folder = tmp_path / ".snakemake" / "conda"
    env_folder.mkdir(parents=True, exist_ok=True)  # (Snakemake made it)
    requirements = env_folder / "condaenv.requirements.txt"  # as conda writes the pip list
    requirements.write_text("".join(f"{line}\n" for line in pip_lines() if line.startswith("-")))
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index"]
        + ["--no-build-isolation", "--quiet", "--report", str(report), "-r", requirements.name],
        cwd=env_folder,
        env={**os.environ, "LFADS_REPO": repo},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (install,) = json.loads(report.read_text())["install"]
    assert install["metadata"]["name"] == "lfads"
    assert install["download_info"] == {"url": REPO.as_uri(), "dir_info": {"editable": True}}


@pytest.mark.slow
def test_conda_dry_run_parses_without_lfads_installed_or_its_heavy_dependencies(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    main_checkout = str(REPO.parent / "main")  # where an installed lfads might point
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(WITHOUT_LFADS_AND_HEAVY.format(heavy=HEAVY, main=main_checkout))
    )
    stand_in = tmp_path / "bin" / "conda"
    stand_in.parent.mkdir()
    stand_in.write_text(STAND_IN_CONDA)
    stand_in.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "LFADS_REPO"}
    env.update(PATH=f"{stand_in.parent}{os.pathsep}{BIN}{os.pathsep}/usr/bin:/bin")
    env["PYTHONPATH"] = str(site)  # not the checkout: the Snakefile must find it itself
    probe = subprocess.run(
        [sys.executable, "-c", "import lfads"], cwd=tmp_path, env=env, capture_output=True
    )
    assert b"No module named 'lfads'" in probe.stderr  # the stand-in environment is one
    workdir = tmp_path / "work"
    result = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", SNAKEFILE, "--directory", str(workdir)]
        + [
            "-n",
            "--sdm",
            "conda",
            "--cores",
            "2",
            "--configfile",
            str(REPO / "config" / "mc_rtt.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (
        f"Conda environment {REPO}/workflow/rules/../../envs/lfads.yaml will be created" in output
    )
    # mc_rtt's random search (numpy's draws at parse time): 20 runs, in 3 packs of at most 8
    assert job_count(output, "run_files") == 20 and job_count(output, "train") == 3
