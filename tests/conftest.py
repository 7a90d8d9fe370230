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


def run_snakemake(*args: str, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the workflow's own command line, as a user would, and capture its output."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Folder holding the small synthetic dataset (NWB + truth files)."""
    from lfads.synthetic import SyntheticSettings, write_synthetic_dataset

    folder = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(folder, SyntheticSettings.from_dict(SMALL_SYNTHETIC))
    return folder
