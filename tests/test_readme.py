"""Every command in a ```bash block of README.md is exercised here, on a dry-run variant where a
real run would take long: a README command that no test covers fails the suite."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import (
    BIN,
    REPO,
    SNAKEFILE,
    STAGES,
    environment,
    job_count,
    make_finished_state,
)

from lfads.config import DEFAULT_PACK_SIZE


def readme_commands() -> list[str]:
    """The command lines of README.md's ```bash blocks, without their trailing comments."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def snakemake_variant(command: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """The README's snakemake command with the project's folder swapped for `workdir` (the
    Snakefile and configfiles stay the repository's) and `extra` options (e.g. -n) in front."""
    words = shlex.split(command)
    assert words[0] in ("snakemake", ".venv/bin/snakemake"), command
    rest = [str(REPO / word) if word.startswith("config/") else word for word in words[1:]]
    if "--configfile" not in rest:  # the Snakefile's default, config/config.yaml of the project
        rest += ["--configfile", str(REPO / "config" / "config.yaml")]
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", SNAKEFILE, "--directory", str(workdir)]
        + [*extra, *rest],
        cwd=REPO,  # where the `slurm` profile is found
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def make_dry_run(command: str) -> str:
    """`make -n` of the README's make command: the recipe it would run (nothing is run)."""
    words = shlex.split(command)
    assert words[0] == "make", command
    done = subprocess.run(
        ["make", "-n", "-C", str(REPO), *words[1:]], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def counts(result: subprocess.CompletedProcess) -> dict[str, int]:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return {rule: job_count(output, rule) for rule in STAGES}


def finished_copy_of(configfile: str, workdir: Path) -> Path:
    """workdir holding a finished workflow of the repository's `configfile`."""
    (workdir / "config.yaml").write_text((REPO / configfile).read_text())
    make_finished_state(workdir)
    return workdir


def n_runs(configfile: str) -> int:
    search = yaml.safe_load((REPO / configfile).read_text())["search"]
    return search["random"]["n"] if "random" in search else len(search["grid"]["dropout"])


def check_make_demo(command, tmp_path):
    recipe = make_dry_run(command)
    demo_run = ".venv/bin/snakemake --cores 2 --configfile config/config.yaml"
    assert demo_run in recipe and "--report" in recipe and 'mv -f "$tmp"' in recipe
    planned = counts(snakemake_variant(demo_run, tmp_path, "-n"))
    # the demo's grid is one pack: one train job, then each run's files
    assert planned["train"] == 1 and planned["run_files"] == n_runs("config/config.yaml")


def check_make_recipe(expected: str):
    def check(command, tmp_path):
        assert expected in make_dry_run(command)

    return check


def check_full_dry_run(command, tmp_path):
    configfile = shlex.split(command)[shlex.split(command).index("--configfile") + 1]
    planned = counts(snakemake_variant(command, tmp_path, "-n"))
    config = yaml.safe_load((REPO / configfile).read_text())
    assert planned["fetch"] == 2 and planned["prepare"] == len(config["bin_widths"])
    runs = n_runs(configfile)
    assert planned["run_files"] == planned["evaluate"] == runs
    assert planned["train"] == -(-runs // DEFAULT_PACK_SIZE)  # packs of search.pack_size


def check_forced_rule(command, tmp_path):
    finished_copy_of("config/config.yaml", tmp_path)
    planned = counts(snakemake_variant(command, tmp_path, "-n"))
    expected = {"evaluate": 3, "aggregate": 1, "figures": 1, "gallery": 1, "best_nwb": 1}
    assert planned == {**dict.fromkeys(STAGES, 0), **expected}


def check_one_run_rerun(command, tmp_path):
    """Only the forced run is redone (`--forcerun train <its model>` redid every run): its files
    from its pack, then its inference and scores; its pack is not trained again."""
    finished_copy_of("config/config.yaml", tmp_path)
    result = snakemake_variant(command, tmp_path, "-n")
    expected = {"run_files": 1, "infer": 1, "evaluate": 1, "aggregate": 1, "figures": 1}
    expected |= {"gallery": 1}
    expected |= {"export_nwb": 1, "best_nwb": 1}
    assert counts(result) == {**dict.fromkeys(STAGES, 0), **expected}
    (model,) = re.findall(r"output: (\S+/model\.ckpt)", result.stdout)
    assert model == shlex.split(command)[-1]
    if "--profile" in command:
        (infer,) = re.findall(r"^rule infer:\n(.*?)(?=^\[|\Z)", result.stdout, re.M | re.S)
        resources = re.search(r"resources: (.*)", infer).group(1)
        assert "gpu=1" in resources and "slurm_partition" not in resources  # (a placeholder)


def check_unlock(command, tmp_path):
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    (tmp_path / ".snakemake" / "locks" / "0.input.lock").write_text("left by a killed run\n")
    result = snakemake_variant(command, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(tmp_path.glob(".snakemake/locks/*"))


def check_report(command, tmp_path):
    """The real `make report`, on a finished workflow of the README's configfile."""
    (configfile,) = [w[11:] for w in shlex.split(command) if w.startswith("CONFIGFILE=")]
    finished_copy_of(configfile, tmp_path)
    config = yaml.safe_load((REPO / configfile).read_text())
    report = tmp_path / "results" / config["dataset"] / config.get("phase", "val") / "report.html"
    done = make_report(tmp_path, *shlex.split(command)[2:])  # (after `make report`)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report.read_text().lstrip().lower().startswith("<!doctype html")  # beside its results
    assert f"wrote {report}" in done.stdout
    assert not list(report.parent.glob(".report.tmp.*"))
    # a configfile whose workflow has not run: one line, and no report
    unrun = tmp_path / "unrun.yaml"
    unrun.write_text(yaml.safe_dump({**config, "dataset": "never_run"}))
    refused = make_report(tmp_path, f"CONFIGFILE={unrun}")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[0] == (
        f"make report: {unrun}: no results to report yet "
        f"({tmp_path / 'results/never_run/val'}/summary.tsv is missing); run its workflow first: "
        f".venv/bin/snakemake --cores 2 --configfile {unrun}"
    )
    assert not (tmp_path / "results" / "never_run").exists()


def make_report(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`make report ARGS` of the workflow in `workdir` (WORKDIR), without installing."""
    return subprocess.run(
        ["make", "-s", "-C", str(REPO), "report", *args, "STAMP=", f"WORKDIR={workdir}"]
        + [f"SNAKEMAKE={BIN / 'snakemake'} --snakefile {SNAKEFILE}"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_profile_dry_run(command, tmp_path):
    result = snakemake_variant(command, tmp_path, "-n")
    runs = n_runs("config/mc_maze.yaml")
    assert counts(result)["run_files"] == runs
    assert counts(result)["train"] == -(-runs // DEFAULT_PACK_SIZE)  # one job per pack
    (train,) = re.findall(r"^rule train:\n(.*?)(?=^\[|\Z)", result.stdout, re.M | re.S)[:1]
    assert "gpu=1" in re.search(r"resources: (.*)", train).group(1)


def check_pbt_dry_run(command, tmp_path):
    """The PBT configfile plans the whole search as one job, and no train job (its runs are
    trained end to end in tests/test_pbt_workflow.py)."""
    result = snakemake_variant(command, tmp_path, "-n")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    config = yaml.safe_load((REPO / "config/synthetic_pbt.yaml").read_text())
    assert job_count(output, "pbt") == 1 and job_count(output, "train") == 0
    assert job_count(output, "infer") == config["search"]["pbt"]["population"]


def check_seeds_dry_run(command, tmp_path):
    """The seeds configfile: 8 replicas in one pack, one train job, and their ensemble."""
    result = snakemake_variant(command, tmp_path, "-n")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert job_count(output, "train") == 1 and job_count(output, "run_files") == 8
    assert job_count(output, "ensemble") == 1 and job_count(output, "evaluate") == 9
    assert "runs/seed~7/model.ckpt" in output


# README command -> how this file exercises it.
EXERCISED = {
    "make demo": check_make_demo,
    "make test": check_make_recipe("python -m pytest"),
    ".venv/bin/snakemake --cores 2 --configfile config/mc_maze_small.yaml": check_full_dry_run,
    ".venv/bin/snakemake --cores 2 --configfile config/synthetic_pbt.yaml": check_pbt_dry_run,
    ".venv/bin/snakemake --cores 2 --configfile config/synthetic_seeds.yaml": check_seeds_dry_run,
    "make bench-packs": check_make_recipe("python -m bench --packs 1,2,4,8,16"),
    ".venv/bin/snakemake --cores 2 --forcerun evaluate": check_forced_rule,
    ".venv/bin/snakemake --cores 2 --forcerun results/synthetic/val/runs/dropout~0.2/model.ckpt": (
        check_one_run_rerun
    ),
    ".venv/bin/snakemake --unlock": check_unlock,
    "make report CONFIGFILE=config/mc_maze.yaml": check_report,
    "snakemake --profile slurm --configfile config/mc_maze.yaml": check_profile_dry_run,
    "snakemake --profile slurm --configfile config/config.yaml --forcerun "
    "results/synthetic/val/runs/dropout~0.2/model.ckpt": check_one_run_rerun,
    "make bench": check_make_recipe("python -m bench"),
    "make install TORCH_SPEC=torch": check_make_recipe('pip install --quiet "torch"'),
    "make gpu-check": check_make_recipe("python -m bench.gpu_check"),
    "make full-size": check_make_recipe("python -m bench.full_size --cores 2"),
    "make install TORCH_INDEX=https://download.pytorch.org/whl/cpu": check_make_recipe(
        '"torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu'
    ),
    "make submission": check_make_recipe("combine-submissions --whole-benchmark"),
    "make submission PHASE=val": check_make_recipe("--config phase=val"),
}


def test_every_readme_command_is_exercised():
    """A command added to (or changed in) the README needs an entry in EXERCISED."""
    assert sorted(readme_commands()) == sorted(EXERCISED)


QUICK = {
    "make test",
    "make bench",
    "make bench-packs",
    "make install TORCH_SPEC=torch",
    "make gpu-check",
    "make full-size",
    "make install TORCH_INDEX=https://download.pytorch.org/whl/cpu",
    "make submission",
    "make submission PHASE=val",
}


@pytest.mark.parametrize(
    "command",
    [
        command if command in QUICK else pytest.param(command, marks=pytest.mark.slow)
        for command in EXERCISED
    ],
)
def test_readme_command(command, tmp_path):
    EXERCISED[command](command, tmp_path)
