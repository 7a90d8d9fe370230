"""The report's result, as one HTML fragment (summary.html, rule `aggregate`): the best run's NLB
metrics beside the references (lfads.evaluation.references), then every run of the search.

The report's landing page includes the fragment inline (workflow/report/workflow.rst), so it uses
plain tags with inline styles and no script.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from lfads.evaluation.references import SMOOTHING, TRUE_RATES
from lfads.formats.summary import (
    BEST_EPOCH,
    DIVERGED,
    HP_PREFIX,
    SCORE_LABELS,
    SELECTION,
    SHOWN_SCORES,
    read_summary,
    searched_columns,
)
from lfads.infra.io import atomic_path

CELL = "padding:2px 8px;border-bottom:1px solid #ccc;text-align:right"
BEST_ROW = "background:#fff3c4;font-weight:bold"
REFERENCE_NAMES = {
    SMOOTHING: "smoothing baseline (Gaussian {kernel_sd_ms:g} ms + Poisson GLM)",
    TRUE_RATES: "true rates (synthetic ground truth)",
}


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[tuple[list, str]], table_id: str) -> str:
    """An HTML table; rows: (cells, extra style of the row)."""
    head = "".join(f'<th style="{CELL}">{html.escape(name)}</th>' for name in header)
    body = "".join(
        f'<tr style="{style}">'
        + "".join(f'<td style="{CELL}">{_number(cell)}</td>' for cell in cells)
        + "</tr>"
        for cells, style in rows
    )
    return (
        f'<table id="{table_id}" style="border-collapse:collapse;font-size:13px">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def summary_html(table: pd.DataFrame, references: dict[str, dict]) -> str:
    """The fragment: a sentence naming the best run and its co-bps, the table of the best run and
    the references (the metrics any of them has), and the table of every run (best first,
    highlighted; diverged runs last)."""
    metrics = [
        m
        for m in SHOWN_SCORES
        if m in table or any(SCORE_LABELS[m] in scores for scores in references.values())
    ]
    labels = [SCORE_LABELS[m] for m in metrics]
    searched = searched_columns(table)
    parts = ['<div id="lfads-summary" style="overflow-x:auto">']
    if table.best.any():
        best = table[table.best].iloc[0]
        parts.append(
            f'<p id="best-run">Best run: <b>{html.escape(str(best.run))}</b>, the lowest smoothed '
            f"validation reconstruction loss ({_number(float(best[SELECTION]))} nats per bin and "
            f"neuron at epoch {int(best[BEST_EPOCH])}); on the eval trials co-bps "
            f"<b>{_number(best.get('nlb_co_bps'))}</b>.</p>"
        )
        rows = [([f"best run: {best.run}"] + [best.get(m) for m in metrics], BEST_ROW)]
        for name, scores in references.items():
            label = REFERENCE_NAMES.get(name, name).format(**scores)
            rows.append(([label] + [scores.get(m) for m in labels], ""))
        parts.append(_table(["model"] + labels, rows, "result-table"))
    else:
        parts.append('<p id="best-run">Every run diverged: there is no best run.</p>')
    run_rows = []
    for _, row in table.iterrows():
        status = "best" if row.best else ("diverged" if row[DIVERGED] else "")
        cells = [row.run, status] + [row.get(c) for c in searched]
        cells += [row.get(BEST_EPOCH), row.get(SELECTION)] + [row.get(m) for m in metrics]
        run_rows.append((cells, BEST_ROW if row.best else ""))
    header = ["run", ""] + [c.removeprefix(HP_PREFIX) for c in searched]
    header += ["best epoch", "valid recon (smoothed)"] + labels
    parts.append("<p>Every run of the search, by validation loss:</p>")
    parts.append(_table(header, run_rows, "runs-table"))
    parts.append("</div>")
    return "\n".join(parts) + "\n"


def write_summary_html(
    summary_tsv: str | Path, references_json: str | Path | None, out_path: str | Path
) -> Path:
    """Write `summary_html` of a summary table and (where there is one) a references.json."""
    references = json.loads(Path(references_json).read_text()) if references_json else {}
    text = summary_html(read_summary(summary_tsv), references)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(text)
    return Path(out_path)
