"""One table of a dataset's runs: searched hyperparameters, final losses, scores (rule `aggregate`).

The best run is the one with the lowest final smoothed validation
reconstruction loss of the model itself; the NLB evaluation targets never take
part in the choice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from lfads.formats.metrics import EPOCH, VALID_RECON_SMOOTHED, read_metrics_csv
from lfads.infra.io import atomic_path

log = logging.getLogger(__name__)

# Column of metrics.csv the best run minimises: the smoothed validation reconstruction loss.
# The total loss would not do: its KL and L2 terms carry each run's own scales.
SELECTION_COLUMN = VALID_RECON_SMOOTHED


def final_epoch(metrics_csv: Path) -> dict:
    """The last row of a run's per-epoch metrics that has a validation loss."""
    table = read_metrics_csv(metrics_csv)
    if SELECTION_COLUMN not in table:
        raise ValueError(
            f"{metrics_csv}: no column {SELECTION_COLUMN!r}; columns are {list(table.columns)}"
        )
    table = table.dropna(subset=[SELECTION_COLUMN])
    if table.empty:
        raise ValueError(f"{metrics_csv}: no epoch has a validation loss; did training run?")
    return table.iloc[-1].to_dict()


def summary_table(runs: dict[str, dict], run_dir: Path) -> pd.DataFrame:
    """Rows: one per run, sorted by validation loss; `best` marks the selected run.

    runs: {run name: searched hyperparameters}; run_dir/<name>/ holds
    metrics.csv and metrics.json.
    """
    rows = []
    for name, params in runs.items():
        folder = Path(run_dir) / name
        last = final_epoch(folder / "metrics.csv")
        row = {"run": name, **params, "epochs": int(last.get(EPOCH, -1)) + 1}
        row.update({key: value for key, value in last.items() if key.startswith("valid_")})
        row.update(json.loads((folder / "metrics.json").read_text()))
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(SELECTION_COLUMN, kind="stable").reset_index(drop=True)
    table.insert(1, "best", table.index == 0)
    return table


def write_summary(runs: dict[str, dict], run_dir: str | Path, out_path: str | Path) -> pd.DataFrame:
    table = summary_table(runs, Path(run_dir))
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    log.info(
        "best of %d runs: %s (%s %.4f)",
        len(table),
        table.run[0],
        SELECTION_COLUMN,
        table[SELECTION_COLUMN][0],
    )
    return table


def best_run(summary_tsv: str | Path) -> str:
    table = pd.read_csv(summary_tsv, sep="\t")
    return str(table.loc[table.best, "run"].iloc[0])
