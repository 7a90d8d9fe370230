"""One table of a dataset's runs: searched hyperparameters, epochs, the model's own validation at
its best epoch, scores (rule `aggregate`; columns: lfads/formats/summary.py).

The best run is the one with the lowest best-epoch smoothed validation reconstruction loss of the
model itself (the epoch that model.ckpt holds and inference samples); the NLB evaluation targets
never take part in the choice. A run that diverged is listed (column `diverged`), unscored, last,
and never chosen. The ensemble of the best runs (`ensemble.top_k`) is one more row, after the
runs (lfads/evaluation/ensemble.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lfads.evaluation.ensemble import is_ensemble
from lfads.formats.metrics import EPOCH, best_and_final_epoch, epochs_with_validation
from lfads.formats.runs import RunFiles, read_scores
from lfads.formats.summary import (
    BEST,
    BEST_EPOCH,
    DIVERGED,
    EPOCHS,
    HP_PREFIX,
    RUN,
    SCORES,
    SELECTION,
    VALIDATION,
    write_columns,
    write_summary_tsv,
)

log = logging.getLogger(__name__)


def summary_row(name: str, params: dict, files: RunFiles, searched: list[str]) -> dict:
    """One run's row (lfads.formats.summary): its searched values (`searched`: from `params`,
    else its hparams.yaml, e.g. a PBT run's final values), epochs, the best epoch with the model's
    own validation there, and the scores of metrics.json (a diverged run: `diverged` true, no
    scores)."""
    scores = read_scores(files.need("metrics", name))
    row = {RUN: name, DIVERGED: bool(scores.get(DIVERGED, False))}
    trained = _hparams(files.hparams) if set(searched) - set(params) else {}
    for key in searched:
        row[f"{HP_PREFIX}{key}"] = params.get(key, trained.get(key))
    curves = files.need("curves", name)
    if row[DIVERGED]:
        row[EPOCHS] = len(epochs_with_validation(curves))
        log.warning("%s diverged: %s", name, scores.get("diverged_reason", "(no reason)"))
    else:
        best, last = best_and_final_epoch(curves)
        row[EPOCHS] = int(last.get(EPOCH, -1)) + 1
        row[BEST_EPOCH] = int(best[EPOCH]) + 1
        row.update({column: best[key] for key, column in VALIDATION.items() if key in best})
    row.update({column: scores[key] for key, column in SCORES.items() if key in scores})
    return row


def _hparams(path: Path | None) -> dict:
    import yaml

    return (yaml.safe_load(Path(path).read_text()) or {}) if path is not None else {}


def summary_table(
    runs: dict[str, dict], files: dict[str, RunFiles], searched: list[str] | None = None
) -> pd.DataFrame:
    """Rows: one per run, by best-epoch validation loss, then the ensemble of the best runs (if
    any: lfads.evaluation.ensemble), diverged rows last; `best` marks the selected run (none when
    every run diverged), never the ensemble.

    runs: {run name: searched hyperparameters} (an ensemble's: {}); files: {run name: its
    metrics.json and metrics.csv, and hparams.yaml where given}; searched: the searched
    hyperparameters (default: the runs' keys; a PBT search names its own, whose values come from
    each run's hparams.yaml). The
    ensemble row's epochs and best_epoch are 1 and its val_recon_smoothed is its validation
    Poisson loss, which is not on the runs' footing: lfads.evaluation.submission.submitted_run
    compares it with the best run's.
    """
    searched = searched or sorted({key for params in runs.values() for key in params})
    rows = [summary_row(name, params, files[name], searched) for name, params in runs.items()]
    table = pd.DataFrame(rows)
    if SELECTION not in table:  # every run diverged
        table[BEST_EPOCH], table[SELECTION] = pd.NA, float("nan")
    table = (
        table.assign(_ensemble=table.run.map(is_ensemble))
        .sort_values([DIVERGED, "_ensemble", SELECTION], kind="stable")
        .drop(columns="_ensemble")
        .reset_index(drop=True)
    )
    table.insert(1, BEST, (table.index == 0) & ~table[DIVERGED] & ~table.run.map(is_ensemble))
    return table


def write_summary(
    runs: dict[str, dict],
    files: dict[str, RunFiles],
    out_path: str | Path,
    searched: list[str] | None = None,
    columns_path: str | Path | None = None,
) -> pd.DataFrame:
    """summary.tsv of `summary_table`, and its column dictionary at columns_path (if given)."""
    table = summary_table(runs, files, searched)
    write_summary_tsv(out_path, table)
    if columns_path is not None:
        write_columns(columns_path, table)
    if table.best.any():
        log.info(
            "best of %d runs: %s (epoch %d, %s %.4f)%s",
            len(table),
            table.run[0],
            table[BEST_EPOCH][0],
            SELECTION,
            table[SELECTION][0],
            f"; {int(table[DIVERGED].sum())} diverged" if table[DIVERGED].any() else "",
        )
    else:
        log.error("all %d runs diverged: there is no best run", len(table))
    return table
