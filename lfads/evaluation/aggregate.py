"""One table of a dataset's runs: searched hyperparameters, best and final epochs, scores (rule
`aggregate`).

The best run is the one with the lowest best-epoch smoothed validation reconstruction loss of the
model itself (the epoch that model.ckpt holds and inference samples); the NLB evaluation targets
never take part in the choice. A run that diverged is listed (column `diverged`), unscored, last,
and never chosen. The ensemble of the best runs (`ensemble.top_k`) is one more row, after the
runs (lfads/evaluation/ensemble.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from lfads.evaluation.ensemble import is_ensemble
from lfads.evaluation.evaluate import DIVERGED_METRICS
from lfads.formats.metrics import EPOCH, VALID_RECON_SMOOTHED, read_metrics_csv
from lfads.infra.io import atomic_path

log = logging.getLogger(__name__)

# Column of metrics.csv the best epoch and the best run minimise: the smoothed validation
# reconstruction loss. The total loss would not do: its KL and L2 terms carry each run's scales.
SELECTION_COLUMN = VALID_RECON_SMOOTHED
# The summary's columns of the best epoch: from 1, as the log counts, and its SELECTION_COLUMN.
BEST_EPOCH, BEST_SELECTION = "best_epoch", f"best_{SELECTION_COLUMN}"
DIVERGED = DIVERGED_METRICS[0]


def epochs_with_validation(metrics_csv: Path) -> pd.DataFrame:
    """The rows of a run's per-epoch metrics that have a smoothed validation loss (maybe none)."""
    table = read_metrics_csv(metrics_csv)
    if len(table) and SELECTION_COLUMN not in table:
        raise ValueError(
            f"{metrics_csv}: no column {SELECTION_COLUMN!r}; columns are {list(table.columns)}"
        )
    return table.dropna(subset=[SELECTION_COLUMN]) if len(table) else table


def best_and_final_epoch(metrics_csv: Path) -> tuple[dict, dict]:
    """(best row, last row) of a run's metrics with a validation loss. The best row is the first
    with the lowest SELECTION_COLUMN: the epoch training keeps in model.ckpt."""
    table = epochs_with_validation(metrics_csv)
    if table.empty:
        raise ValueError(f"{metrics_csv}: no epoch has a validation loss; did training run?")
    return table.loc[table[SELECTION_COLUMN].idxmin()].to_dict(), table.iloc[-1].to_dict()


def summary_row(name: str, params: dict, folder: Path) -> dict:
    """One run's row: searched values, epochs, the best epoch, the final epoch's valid_ columns
    and the scores of metrics.json (for a diverged run: `diverged` true, no scores)."""
    scores = json.loads((folder / "metrics.json").read_text())
    row = {"run": name, DIVERGED: bool(scores.get(DIVERGED, False)), **params}
    if row[DIVERGED]:
        finished = epochs_with_validation(folder / "metrics.csv")
        row["epochs"] = len(finished)
        log.warning("%s diverged: %s", name, scores.get(DIVERGED_METRICS[2], "(no reason)"))
        return row
    best, last = best_and_final_epoch(folder / "metrics.csv")
    row["epochs"] = int(last.get(EPOCH, -1)) + 1
    row[BEST_EPOCH] = int(best[EPOCH]) + 1
    row[BEST_SELECTION] = best[SELECTION_COLUMN]
    row.update({key: value for key, value in last.items() if key.startswith("valid_")})
    row.update(scores)
    return row


def summary_table(runs: dict[str, dict], run_dir: Path) -> pd.DataFrame:
    """Rows: one per run, by best-epoch validation loss, then the ensemble of the best runs (if
    any: lfads.evaluation.ensemble), diverged rows last; `best` marks the selected run (none when
    every run diverged), never the ensemble.

    runs: {run name: searched hyperparameters} (an ensemble's: {}); run_dir/<name>/ holds
    metrics.csv and metrics.json. The ensemble row's epochs and best_epoch are 1 and its
    best_valid_recon_smoothed is its validation Poisson loss, which is not on the runs' footing:
    lfads.evaluation.submission.submitted_run compares it with the best run's.
    """
    rows = [summary_row(name, params, Path(run_dir) / name) for name, params in runs.items()]
    table = pd.DataFrame(rows)
    if BEST_SELECTION not in table:  # every run diverged
        table[BEST_EPOCH], table[BEST_SELECTION] = pd.NA, float("nan")
    table = (
        table.assign(_ensemble=table.run.map(is_ensemble))
        .sort_values([DIVERGED, "_ensemble", BEST_SELECTION], kind="stable")
        .drop(columns="_ensemble")
        .reset_index(drop=True)
    )
    table.insert(1, "best", (table.index == 0) & ~table[DIVERGED] & ~table.run.map(is_ensemble))
    return table


def write_summary(runs: dict[str, dict], run_dir: str | Path, out_path: str | Path) -> pd.DataFrame:
    table = summary_table(runs, Path(run_dir))
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    if table.best.any():
        log.info(
            "best of %d runs: %s (epoch %d, %s %.4f)%s",
            len(table),
            table.run[0],
            table[BEST_EPOCH][0],
            SELECTION_COLUMN,
            table[BEST_SELECTION][0],
            f"; {int(table[DIVERGED].sum())} diverged" if table[DIVERGED].any() else "",
        )
    else:
        log.error("all %d runs diverged: there is no best run", len(table))
    return table


def read_summary(summary_tsv: str | Path, scored_only: bool = False) -> pd.DataFrame:
    """The summary table; scored_only: without the runs that diverged."""
    table = pd.read_csv(summary_tsv, sep="\t")
    return table[~table[DIVERGED]].reset_index(drop=True) if scored_only else table


def scored_runs(summary_tsv: str | Path) -> list[str]:
    """The names of the runs that did not diverge, best first."""
    return [str(name) for name in read_summary(summary_tsv, scored_only=True).run]


def best_run(summary_tsv: str | Path) -> str:
    """The name of the selected run; a ValueError when every run diverged."""
    table = read_summary(summary_tsv)
    if not table.best.any():
        raise ValueError(
            f"{summary_tsv}: every run diverged (column {DIVERGED}), so there is no best run to "
            "draw or submit; their train logs name the cause. Try a lower lr, a smaller cell_clip "
            "or a stronger gradient_clip."
        )
    return str(table.loc[table.best, "run"].iloc[0])
