"""The table of a dataset's runs, `summary.tsv` (rule `aggregate`), and its column dictionary.

One row per run, then the ensemble of the best runs, diverged runs last. Every column name is
snake_case, grouped by prefix: `hp_<name>` the searched hyperparameters (a PBT run's final
values), `val_` the model's own validation split at the best epoch (the epoch model.ckpt keeps),
`nlb_` nlb_tools' scores on the eval trials, `truth_` scores against the synthetic true rates.
`COLUMNS` says what each means, with its units; `write_columns` writes it beside the table as
`summary_columns.tsv`. `write_summary_tsv` is the one writer, `read_summary` the one reader.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lfads.infra.io import atomic_path, write_text

HP_PREFIX = "hp_"  # + a searched hyperparameter's name
RUN, BEST, DIVERGED = "run", "best", "diverged"
EPOCHS, BEST_EPOCH = "epochs", "best_epoch"
SELECTION = "val_recon_smoothed"  # what chooses the best epoch and the best run (lowest)
BITS = "bits/spike"
NATS = "nats/bin/neuron"

# metrics.csv's validation columns, at the best epoch -> the table's
VALIDATION = {
    "valid_recon_smoothed": SELECTION,
    "valid_recon": "val_recon",
    "valid_kl_ic": "val_kl_ic",
    "valid_kl_co": "val_kl_co",
    "valid_co_bps": "val_co_bps",
    "valid_fp_bps": "val_fp_bps",
    "valid_rate_r2": "val_rate_r2",
}
# metrics.json's keys (lfads.evaluation.evaluate) -> the table's
SCORES = {
    "co-bps": "nlb_co_bps",
    "fp-bps": "nlb_fp_bps",
    "vel R2": "nlb_vel_r2",
    "psth R2": "nlb_psth_r2",
    "tp corr": "nlb_tp_corr",
    "rate R2": "truth_rate_r2",
    "train rate R2": "truth_train_rate_r2",
    "diverged_epoch": "diverged_epoch",
    "diverged_reason": "diverged_reason",
}
# The column dictionary, in table order: (units, meaning).
COLUMNS = {
    RUN: ("", "run name (runs/<run>/); ensemble-top<k>: the average of the best k runs' rates"),
    BEST: ("", "true for the run with the lowest val_recon_smoothed: the selected run"),
    DIVERGED: ("", "true when training met a NaN or infinite value; such a run is not scored"),
    f"{HP_PREFIX}<name>": ("", "a searched hyperparameter's value (PBT: the final value)"),
    EPOCHS: ("epochs", "epochs trained"),
    BEST_EPOCH: ("epoch, from 1", "the epoch whose weights model.ckpt keeps and inference uses"),
    SELECTION: (NATS, "smoothed validation reconstruction loss at best_epoch: the selection"),
    "val_recon": (NATS, "validation reconstruction loss (Poisson NLL) at best_epoch"),
    "val_kl_ic": ("nats", "initial-condition KL at best_epoch, before kl_ic_scale and its ramp"),
    "val_kl_co": ("nats", "controller-output KL at best_epoch, before kl_co_scale and its ramp"),
    "val_co_bps": (BITS, "co-smoothing on the model's own validation trials at best_epoch"),
    "val_fp_bps": (BITS, "forward prediction on the model's validation trials at best_epoch"),
    "val_rate_r2": ("R²", "rates against the true rates on the validation trials (synthetic)"),
    "nlb_co_bps": (BITS, "nlb_tools co-smoothing of the held-out neurons on the eval trials"),
    "nlb_fp_bps": (BITS, "nlb_tools forward prediction on the eval trials"),
    "nlb_vel_r2": ("R²", "nlb_tools behaviour decoded from the rates (ridge) on the eval trials"),
    "nlb_psth_r2": ("R²", "nlb_tools PSTHs of the rates against the data's, on the eval trials"),
    "nlb_tp_corr": ("r", "nlb_tools correlation of rates with produced intervals (DMFC_RSG)"),
    "truth_rate_r2": ("R²", "rates against the true rates on the eval trials (synthetic data)"),
    "truth_train_rate_r2": ("R²", "rates against the true rates on the train trials"),
    "diverged_epoch": ("epoch, from 1", "the epoch in which a diverged run met the value"),
    "diverged_reason": ("", "what diverged and what to try"),
}
# How figures and the report name the scores (the NLB's own names).
SCORE_LABELS = {column: key for key, column in SCORES.items() if not key.startswith("diverged")}
# The scores that figures and the report show, in the NLB's order, then rate R² against the truth.
SHOWN_SCORES = (
    "nlb_co_bps",
    "nlb_vel_r2",
    "nlb_psth_r2",
    "nlb_fp_bps",
    "nlb_tp_corr",
    "truth_rate_r2",
)


def write_summary_tsv(path: str | Path, table: pd.DataFrame) -> None:
    """Write the table, atomically, with floats to 6 significant digits."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def read_summary(summary_tsv: str | Path, scored_only: bool = False) -> pd.DataFrame:
    """The summary table; scored_only: without the runs that diverged. The epoch columns are
    integers, missing where a run has none (a diverged run's best epoch)."""
    table = pd.read_csv(summary_tsv, sep="\t", dtype={EPOCHS: "Int64", BEST_EPOCH: "Int64"})
    return table[~table[DIVERGED]].reset_index(drop=True) if scored_only else table


def searched_columns(table: pd.DataFrame) -> list[str]:
    """The table's hp_ columns, in table order."""
    return [column for column in table if str(column).startswith(HP_PREFIX)]


def write_columns(path: str | Path, table: pd.DataFrame) -> None:
    """The column dictionary of `table` (column, units, meaning) as a TSV, atomically."""
    lines = ["column\tunits\tmeaning"]
    for column in table:
        if str(column).startswith(HP_PREFIX):
            name = column[len(HP_PREFIX) :]
            units, meaning = "", f"searched hyperparameter {name} (PBT: the final value)"
        else:
            units, meaning = COLUMNS[column]
        lines.append(f"{column}\t{units}\t{meaning}")
    write_text(path, "\n".join(lines) + "\n")


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
