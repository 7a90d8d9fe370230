"""What several test modules share: repository paths, the tiny models, the small synthetic dataset
and its prepared files, and ways to run Snakemake.

Plain constants and functions are imported with `from conftest import ...` (pytest puts tests/ on
sys.path); fixtures are found by name. No test module imports another.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# nlb_tools smooths spikes in a multiprocessing.Pool. Forked from this long-lived test process,
# whose other threads (earlier tests' loggers and writers) may hold a lock at that moment, a pool
# worker can wait on that lock forever: a full run hung so in tests/test_synthetic.py. Workers
# started from a fork server hold no such lock.
multiprocessing.set_start_method("forkserver", force=True)

# A full garbage collection walks every object alive, and a worker that has imported torch,
# Lightning, pandas and Snakemake holds millions of them: each took about 0.25 s (17 in a fast-suite
# worker, 4.4 s), and the one at exit 2 s. So: a full collection after every 100 younger ones
# instead of 10, and none at exit (pytest_unconfigure freezes what is left: the process ends).
gc.set_threshold(*gc.get_threshold()[:2], 100)


def pytest_unconfigure(config):
    gc.freeze()


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEFILE = str(REPO / "workflow" / "Snakefile")


# -- the tiny models ------------------------------------------------------------------------------
# The model of the model tests (parts, paths, training, learning, file formats): it learns the
# Lorenz files of lfads.data.toydata in seconds, and its sizes differ from each other (and from
# the 8 neurons of the parts tests) so that a shape check tells them apart.
TINY_HPARAMS = dict(
    ic_enc_dim=16,
    ci_enc_dim=12,
    con_dim=14,
    co_dim=2,
    ic_dim=8,
    gen_dim=32,
    fac_dim=6,
    batch_size=40,
    lr=0.01,
    kl_increase_epoch=2,
    l2_increase_epoch=2,
    dropout=0.0,
)

# The model of workflow runs end to end (tests/test_pipeline.py, tests/test_slurm.py): trains in
# seconds on the small synthetic dataset. The SLURM tests time their jobs by its epochs.
WORKFLOW_HPARAMS = {
    "ic_enc_dim": 16,
    "ci_enc_dim": 16,
    "con_dim": 16,
    "co_dim": 2,
    "ic_dim": 16,
    "gen_dim": 32,
    "fac_dim": 8,
    "batch_size": 16,
    "lr": 0.01,
    "max_epochs": 40,
    "kl_increase_epoch": 10,
    "l2_increase_epoch": 10,
}


@pytest.fixture(scope="session")
def poisson_nan_after() -> str:
    """Registers, once, the reconstruction "poisson_nan_after": Poisson whose loss turns NaN
    after `calls` evaluations (train and valid batches alike), to trip the NaN guard. Returns
    the name, for `{"reconstruction": {"name": ..., "calls": n}}`."""
    from lfads.model.recons import Poisson
    from lfads.model.registry import names, register_reconstruction

    if "poisson_nan_after" not in names("reconstruction"):

        @register_reconstruction("poisson_nan_after")
        class PoissonNanAfter(Poisson):
            def __init__(self, *, n_neurons: int, n_members: int = 1, calls: int = 0):
                super().__init__(n_neurons=n_neurons, n_members=n_members)
                self.calls_left = calls

            def compute_loss(self, data, params):
                self.calls_left -= 1
                loss = super().compute_loss(data, params)
                return loss * math.nan if self.calls_left < 0 else loss

    return "poisson_nan_after"


# Test files that run first: under `make test`'s two workers (pytest-xdist, one file at a time
# each), the SLURM tests, which mostly wait on the cluster, then start at once beside the rest
# instead of running alone at the end.
FIRST = ("test_slurm.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in FIRST)  # (stable: the rest keep their order)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Torch on one thread in the whole suite: the tiny models of the tests run fastest so, and do
    not stall when other jobs share the cores (two threads took half as long again)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(dims, n: int, seed: int = 0, members: int = 1):
    """A member-major SessionBatch of `n` trials of Poisson(1) counts and Gaussian external inputs
    for a SessionDims, the same trials for each of `members` members: encod_data
    (members, n, T, held-in), recon_data (members, n, T + F, neurons), ext_input
    (members, n, T + F, ext_input_dim)."""
    import torch

    from lfads.model.batch import SessionBatch

    g = torch.Generator().manual_seed(seed)
    return SessionBatch(
        encod_data=torch.poisson(torch.full((n, dims.n_obs_bins, dims.n_heldin), 1.0), generator=g),
        recon_data=torch.poisson(
            torch.full((n, dims.n_recon_bins, dims.n_neurons), 1.0), generator=g
        ),
        ext_input=torch.randn(n, dims.n_recon_bins, dims.ext_input_dim, generator=g),
    ).expand_members(members)


# -- the small synthetic dataset ------------------------------------------------------------------
# Small enough to prepare in seconds, large enough for nlb_tools' PSTHs and decoders.
SMALL_SYNTHETIC = {
    "seed": 3,
    "n_heldin": 20,
    "n_heldout": 6,
    "n_train_trials": 60,
    "n_val_trials": 20,
    "n_test_trials": 20,
}
# What the session's prepared files are written with (not the defaults, so that tests see them
# reach the file).
PREPARED_VALID_FRACTION, PREPARED_SPLIT_SEED = 0.25, 1


def built_once(tmp_path_factory, worker_id: str, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that `build(folder)` fills once per test session, shared by `make test`'s workers:
    the first to ask builds it under a file lock, the others wait and then use it. Without
    pytest-xdist (worker "master") the session builds its own. The folder is read-only by
    convention: a test that changes it works on a copy."""
    if worker_id == "master":
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # this session's folder, above each worker's
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # (a worker's build that failed)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory, worker_id) -> Path:
    """Folder holding the small synthetic dataset (NWB + truth files)."""
    from lfads.data.synthetic import SyntheticSettings, write_synthetic_dataset

    def build(folder: Path) -> None:
        write_synthetic_dataset(folder, SyntheticSettings.from_dict(SMALL_SYNTHETIC))

    return built_once(tmp_path_factory, worker_id, "synthetic", build)


@dataclass(frozen=True)
class PreparedFiles:
    """The val-phase files of the small synthetic dataset at one bin width (ms)."""

    bin_width: int
    prepared: Path  # prepared_<bin>ms.h5, with truth
    targets: Path  # targets_<bin>ms.h5
    nwb: dict[str, Path]  # {"train": path, "test": path}
    truth: dict[str, Path]  # {"train": path, "test": path}


@pytest.fixture(scope="session")
def prepared_files(synthetic_dir, tmp_path_factory, worker_id) -> Callable[[int], PreparedFiles]:
    """prepared_files(bin_width): prepare and targets of the small synthetic dataset (val phase,
    valid_fraction PREPARED_VALID_FRACTION, split_seed PREPARED_SPLIT_SEED), each bin width
    written once a session (`built_once`). Tests read these files; one that changes a file
    copies it first."""
    from lfads.data.prepare import prepare
    from lfads.data.synthetic import ASSET_PATHS, TRUTH_PATHS
    from lfads.data.targets import write_targets

    nwb = {role: synthetic_dir / path for role, path in ASSET_PATHS.items()}
    truth = {role: synthetic_dir / path for role, path in TRUTH_PATHS.items()}

    def files(bin_width: int) -> PreparedFiles:
        def build(folder: Path) -> None:
            prepare(
                nwb["train"],
                nwb["test"],
                folder / f"prepared_{bin_width}ms.h5",
                "mc_maze",
                bin_width,
                "val",
                "synthetic",
                valid_fraction=PREPARED_VALID_FRACTION,
                split_seed=PREPARED_SPLIT_SEED,
                truth_files=truth,
            )
            write_targets(nwb["train"], folder / f"targets_{bin_width}ms.h5", "mc_maze", bin_width)

        folder = built_once(tmp_path_factory, worker_id, f"prepared_{bin_width}ms", build)
        return PreparedFiles(
            bin_width,
            folder / f"prepared_{bin_width}ms.h5",
            folder / f"targets_{bin_width}ms.h5",
            nwb,
            truth,
        )

    return functools.cache(files)


# -- Snakemake ------------------------------------------------------------------------------------
def write_tiny_config(folder: Path, **keys) -> Path:
    """folder/config.yaml for the small synthetic dataset ("tiny", 20 ms bins); `keys` add or
    replace top-level keys. Returns the file's path."""
    import yaml

    config = {
        "dataset": "tiny",
        "nlb_layout": "mc_maze",
        "bin_widths": [20],
        "source": {"synthetic": dict(SMALL_SYNTHETIC)},
        "targets": {"mem_mb": 2000},
        **keys,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_snakemake(
    *args: str, cwd: Path = REPO, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run the `snakemake` command, as a user would, and capture its output."""
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snakemake_in(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake --snakefile workflow/Snakefile --directory workdir ...` in a subprocess."""
    return run_snakemake("--snakefile", SNAKEFILE, "--directory", str(workdir), *args)


@pytest.fixture(scope="session")
def snakemake_in_process() -> Callable[..., subprocess.CompletedProcess]:
    """snakemake_in_process(*args): the `snakemake` command line run in this process, from the
    repository root (where `--profile slurm` is found), without the 2-3 s a new process takes to
    import Snakemake. Returns a CompletedProcess whose stdout holds everything Snakemake printed.

    Snakemake's own command-line functions parse the arguments (profiles included) and call
    snakemake.api.SnakemakeApi, so the run is the command's; only this fixture knows those
    functions, whose names and keywords change between Snakemake releases.
    """
    from snakemake.cli import args_to_api, parse_args

    def run(*args: str) -> subprocess.CompletedProcess:
        output, cwd, path = io.StringIO(), os.getcwd(), list(sys.path)
        os.chdir(REPO)
        try:
            # Snakemake's log handler writes to the sys.stderr it finds when a run starts.
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                try:
                    parser, parsed = parse_args(list(args))
                    success = args_to_api(parsed, parser)
                except SystemExit as exit:  # argparse refused the arguments
                    success = exit.code == 0
                except Exception:  # what snakemake.cli.main prints, then exits with 1
                    traceback.print_exc()
                    success = False
        finally:
            os.chdir(cwd)
            sys.path[:] = path  # a run puts workflow/ and workflow/rules/ on it
        return subprocess.CompletedProcess(
            ["snakemake", *args], 0 if success else 1, output.getvalue(), ""
        )

    return run


def job_count(output: str, rule: str) -> int:
    """Jobs of `rule` in the job-stats table Snakemake prints (0 when it is not listed)."""
    match = re.search(rf"^{rule}\s+(\d+)$", output, re.M)
    return int(match.group(1)) if match else 0


def nothing_to_do(result: subprocess.CompletedProcess) -> bool:
    """Whether a (dry) run succeeded and planned no job."""
    output = result.stdout + result.stderr
    return result.returncode == 0 and bool(
        "Nothing to be done" in output or re.search(r"^total\s+0$", output, re.M)
    )


# -- a workflow state made by hand, and Snakemake runs on a folder's own config.yaml ------------
# The order in which the rules' outputs are made, for a complete workflow state made by hand.
STAGES = (
    "fetch",
    "prepare",
    "targets",
    "train",
    "run_files",
    "infer",
    "evaluate",
    "aggregate",
    "figures",
    "gallery",
    "export_nwb",
    "best_nwb",
)


def snakemake_with_config(workdir: Path, *args: str, env: dict | None = None, timeout: float = 600):
    """`snakemake --snakefile ... --directory workdir --configfile workdir/config.yaml ARGS`."""
    return subprocess.run(
        snakemake_command(workdir, *args),
        cwd=REPO,
        env=environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "--snakefile",
        SNAKEFILE,
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


def environment(extra: dict | None = None) -> dict:
    """This process's environment with the virtual environment's bin/ first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(extra or {})}


def planned_outputs(output: str) -> dict[str, list[str]]:
    """{rule: the output files of its jobs} from the job list of a dry run."""
    outputs: dict[str, list[str]] = {}
    rule = None
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif rule and (match := re.match(r"^    output: (.*)$", line)):
            outputs.setdefault(rule, []).extend(match.group(1).split(", "))
    return outputs


def make_finished_state(workdir: Path) -> dict[str, list[str]]:
    """Create every file a dry run plans, oldest first in pipeline order: a finished workflow (no
    file has real content: only what Snakemake decides from them is tested)."""
    dry = snakemake_with_config(workdir, "-n")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    outputs = planned_outputs(dry.stdout)
    assert set(outputs) == set(STAGES), outputs
    now = time.time()  # (newer than the rules' scripts, or Snakemake reruns their jobs)
    for stage, rule in enumerate(STAGES):
        for name in outputs[rule]:
            path = workdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if rule == "train":  # a pack's folder (a directory output)
                path.mkdir()
            else:
                path.write_text(json.dumps({"source": "synthetic", "files": []}))  # a valid marker
            os.utime(path, (now + stage, now + stage))
    return outputs


def script_processes(workdir: Path, script: str) -> list[int]:
    """Process ids of the Snakemake `script:` jobs of `script` (e.g. "train.py") running in
    `workdir` (Snakemake runs a copy, .snakemake/scripts/tmp<...>.train.py, from there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if re.search(rf"[./]{re.escape(script)}\b", command) and Path(cwd) == Path(workdir):
            found.append(int(entry.name))
    return found


# The whole workflow of the tiny dataset, once per session: tests/test_pipeline.py reruns and
# forces rules in it, tests/test_report_browser.py renders its report and tests/test_slurm.py
# compares the same search run through the SLURM profile with it.
PIPELINE_MODEL = {"bin_width": 20, "n_samples": 10, "hparams": dict(WORKFLOW_HPARAMS)}
PIPELINE_SEARCH = {"grid": {"dropout": [0.05, 0.3]}}


@pytest.fixture(scope="session")
def pipeline(
    tmp_path_factory, worker_id
) -> tuple[Path, Callable[..., subprocess.CompletedProcess]]:
    """(workdir, snakemake): the finished workflow and `snakemake(*args)` run in it. The workflow
    runs once a session (`built_once`); each worker gets its own copy (times kept, so nothing
    is out of date), since tests run Snakemake in it."""

    def build(folder: Path) -> None:
        configfile = _pipeline_config(folder)
        result = snakemake_in(folder, "--configfile", str(configfile), "--cores", "2")
        assert result.returncode == 0, result.stdout + result.stderr

    built = built_once(tmp_path_factory, worker_id, "pipeline", build)
    workdir = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(built, workdir, symlinks=True, dirs_exist_ok=True)
    configfile = workdir / "config.yaml"

    def snakemake(*args):
        return snakemake_in(workdir, "--configfile", str(configfile), *args)

    return workdir, snakemake


def _pipeline_config(workdir: Path) -> Path:
    return write_tiny_config(
        workdir,
        model=PIPELINE_MODEL,
        search=PIPELINE_SEARCH,
        resources={
            "train": {"threads": 1, "mem_mb": 1000},
            "infer": {"threads": 1, "mem_mb": 1000},
        },
    )


# The names the workflow gives a run's files (workflow/rules/common.smk); the package is given the
# paths (lfads.formats.runs).
RUN_FILE_NAMES = {
    "metrics": "metrics.json",
    "curves": "metrics.csv",
    "hparams": "hparams.yaml",
    "model": "model.ckpt",
    "inferred": "inferred.h5",
    "members": "members.tsv",
    "nwb": "rates.nwb",
}


def run_files_in(folders: dict, *, existing: bool = True) -> dict:
    """{run: RunFiles} of {run: its folder}: the files there, named as the workflow names them
    (existing=False: every kind, for a step that writes them)."""
    from lfads.formats.runs import RunFiles

    return {
        run: RunFiles(
            **{
                kind: Path(folder) / name
                for kind, name in RUN_FILE_NAMES.items()
                if not existing or (Path(folder) / name).exists()
            }
        )
        for run, folder in folders.items()
    }


def run_files_under(run_dir, runs) -> dict:
    """run_files_in of run_dir/<run>/ for each of `runs`."""
    return run_files_in({run: Path(run_dir) / run for run in runs})
