"""A run's files as the rules declare them, and the formats of two of them.

The workflow alone names a run's files (workflow/rules/common.smk: `runs/<run>/<file>`); each
rule declares those it reads and its script passes them on as `RunFiles` through `run_files`.
The package takes the paths as given and never rebuilds one from a folder and a file name.

- `metrics.json` (rule evaluate): nlb_tools' scores, {name: value}, or a diverged run's
  DIVERGED_METRICS; `write_scores`, `read_scores`.
- `members.tsv` (rule ensemble): an ensemble's members, best first (MEMBER_COLUMNS);
  `write_members`, `read_members`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lfads.formats.metrics import VALID_RECON_SMOOTHED
from lfads.infra.io import write_json, write_text

# The keys of a diverged run's metrics.json: true, the epoch (from 1) and the reason.
DIVERGED_METRICS = ("diverged", "diverged_epoch", "diverged_reason")
# members.tsv's columns: the member's rank (1 = best), its name, its best-epoch smoothed
# validation reconstruction loss (the selection) and its validation Poisson loss.
MEMBER_COLUMNS = ("rank", "run", f"best_{VALID_RECON_SMOOTHED}", "valid_poisson_loss")


@dataclass(frozen=True)
class RunFiles:
    """One run's files; a step is given those it reads, the others are None."""

    metrics: Path | None = None  # metrics.json: nlb_tools' scores (rule evaluate)
    curves: Path | None = None  # metrics.csv: the per-epoch log (rule train)
    hparams: Path | None = None  # hparams.yaml: the hyperparameters it trained with (train)
    model: Path | None = None  # model.ckpt: the weights of its best epoch (train)
    inferred: Path | None = None  # inferred.h5: its posterior averages (infer)
    members: Path | None = None  # members.tsv: an ensemble's members (ensemble)
    nwb: Path | None = None  # rates.nwb (export_nwb)

    def need(self, name: str, run: str) -> Path:
        """The file `name`, or a ValueError that names the run and the missing kind."""
        path = getattr(self, name)
        if path is None:
            raise ValueError(f"run {run}: its {name} file was not given to this step")
        return Path(path)


def run_files(runs, **files) -> dict[str, RunFiles]:
    """{run: RunFiles} from a rule's inputs. files[kind]: a list of paths, the i-th of `runs[i]`,
    or {run: path} for some of the runs (kinds: RunFiles' fields)."""
    runs = list(runs)
    by_run = {}
    for kind, paths in files.items():
        if not isinstance(paths, dict):
            if len(paths) != len(runs):
                raise ValueError(f"{len(paths)} {kind} files for {len(runs)} runs: {runs}")
            paths = dict(zip(runs, paths))
        by_run[kind] = paths
    return {
        run: RunFiles(**{kind: Path(paths[run]) for kind, paths in by_run.items() if run in paths})
        for run in runs
    }


def write_scores(path: str | Path, scores: dict) -> None:
    write_json(path, scores)


def read_scores(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def write_members(path: str | Path, rows: list[tuple[str, float, float]]) -> None:
    """rows: (run, best-epoch smoothed validation loss, validation Poisson loss), best first."""
    lines = ["\t".join(MEMBER_COLUMNS)]
    for rank, (run, selection, loss) in enumerate(rows, start=1):
        lines.append(f"{rank}\t{run}\t{selection!r}\t{loss!r}")
    write_text(path, "\n".join(lines) + "\n")


def read_members(path: str | Path):
    """members.tsv as a pandas DataFrame (MEMBER_COLUMNS), best member first."""
    import pandas as pd

    return pd.read_csv(path, sep="\t")
