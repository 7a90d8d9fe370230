"""Shared fixtures: repository paths and a small synthetic NLB dataset written once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough to prepare in seconds, large enough for nlb_tools' PSTHs and decoders.
SMALL_SYNTHETIC = {
    "seed": 3,
    "n_heldin": 20,
    "n_heldout": 6,
    "n_train_trials": 60,
    "n_val_trials": 20,
    "n_test_trials": 20,
}


# A model that trains in seconds, for workflow runs end to end.
TINY_MODEL = {
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


def write_tiny_config(folder: Path, **keys) -> Path:
    """folder/config.yaml for the small synthetic dataset ("tiny", 20 ms bins); `keys` add or replace
    top-level keys. Returns the file's path."""
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
    """Run the workflow's own command line, as a user would, and capture its output."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Folder holding the small synthetic dataset (NWB + truth files)."""
    from lfads.data.synthetic import SyntheticSettings, write_synthetic_dataset

    folder = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(folder, SyntheticSettings.from_dict(SMALL_SYNTHETIC))
    return folder
