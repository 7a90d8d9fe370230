"""Per-epoch training metrics: `metrics.csv`, one row per epoch (columns: lfads/README.md).

A plain CSV for pandas and spreadsheets, so it has no format_version: its columns are looked up
by name, and a missing column is an error that names it (`epochs_with_validation`).
`write_metrics_csv` is the one writer, `read_metrics_csv` the one reader; `best_and_final_epoch`
finds the epoch that model.ckpt keeps.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from lfads.infra.io import write_text

# The columns other modules read by name.
EPOCH = "epoch"  # from 0
EPOCH_SECONDS = "epoch_seconds"  # wall-clock seconds of the epoch (train + validation)
TRAIN_LOSS, VALID_LOSS = "train_loss", "valid_loss"  # the objective (x loss_scale)
TRAIN_RECON, VALID_RECON = "train_recon", "valid_recon"  # nats per bin and neuron
VALID_RECON_SMOOTHED = "valid_recon_smoothed"  # exponentially smoothed valid reconstruction
# Column the best epoch and the best run minimise: the smoothed validation reconstruction loss.
# The total loss would not do: its KL and L2 terms carry each run's scales.
SELECTION_COLUMN = VALID_RECON_SMOOTHED


def write_metrics_csv(path: str | Path, rows: list[dict[str, float]]) -> None:
    """Write the rows atomically: `epoch` first (as an integer), then the other columns in order
    of first appearance, values as repr() (exact), NaN and missing values as empty cells.

    No rows (a run that diverged in its first epoch) give the header `epoch` alone.
    """
    columns: list[str] = [EPOCH]
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: (
                    int(value)
                    if key == EPOCH
                    else ("" if isinstance(value, float) and math.isnan(value) else repr(value))
                )
                for key, value in row.items()
            }
        )
    write_text(path, buffer.getvalue())


def read_metrics_csv(path: str | Path):
    """The rows as a pandas DataFrame (empty cells are NaN)."""
    import pandas as pd

    return pd.read_csv(path)


def epochs_with_validation(metrics_csv: str | Path):
    """The rows of a run's per-epoch metrics that have a smoothed validation loss (maybe none)."""
    table = read_metrics_csv(metrics_csv)
    if len(table) and SELECTION_COLUMN not in table:
        raise ValueError(
            f"{metrics_csv}: no column {SELECTION_COLUMN!r}; columns are {list(table.columns)}"
        )
    return table.dropna(subset=[SELECTION_COLUMN]) if len(table) else table


def best_and_final_epoch(metrics_csv: str | Path) -> tuple[dict, dict]:
    """(best row, last row) of a run's metrics with a validation loss. The best row is the first
    with the lowest SELECTION_COLUMN: the epoch training keeps in model.ckpt."""
    table = epochs_with_validation(metrics_csv)
    if table.empty:
        raise ValueError(f"{metrics_csv}: no epoch has a validation loss; did training run?")
    return table.loc[table[SELECTION_COLUMN].idxmin()].to_dict(), table.iloc[-1].to_dict()
