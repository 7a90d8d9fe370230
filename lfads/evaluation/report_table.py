"""The report's landing page, as HTML fragments: the result (summary.html, rule `aggregate`), the
best run's NLB metrics beside the references (lfads.evaluation.references), then every run of the
search; and the figures (figures.html, rule `gallery`), a thumbnail of each with its caption.

The landing page includes the fragments inline (workflow/report/workflow.rst), so they hold their
own styles and no script: the tables are pandas' Styler (ids T_result and T_runs).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from urllib.parse import quote

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


def _table(header: list[str], rows: list[list], best_rows: set[int], uuid: str) -> str:
    """An HTML table, pandas' Styler: numbers to 4 decimals, a missing value as —, the rows
    `best_rows` (their indices) highlighted. The table's id is T_<uuid>."""
    frame = pd.DataFrame(rows, columns=header, dtype=object)  # (object: ints stay ints)
    return (
        frame.style.format(_number)
        .format_index(html.escape, axis=1)
        .hide(axis="index")
        .apply(lambda row: [BEST_ROW if row.name in best_rows else ""] * len(row), axis=1)
        .set_table_styles([{"selector": cell, "props": CELL} for cell in ("th", "td")])
        .set_table_attributes('style="border-collapse:collapse;font-size:13px"')
        .to_html(table_uuid=uuid, cell_ids=False)
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
        rows = [[f"best run: {best.run}"] + [best.get(m) for m in metrics]]
        for name, scores in references.items():
            label = REFERENCE_NAMES.get(name, name).format(**scores)
            rows.append([label] + [scores.get(m) for m in labels])
        parts.append(_table(["model"] + labels, rows, {0}, "result"))
    else:
        parts.append('<p id="best-run">Every run diverged: there is no best run.</p>')
    run_rows = []
    for _, row in table.iterrows():
        status = "best" if row.best else ("diverged" if row[DIVERGED] else "")
        cells = [row.run, status] + [row.get(c) for c in searched]
        run_rows.append(
            cells + [row.get(BEST_EPOCH), row.get(SELECTION)] + [row.get(m) for m in metrics]
        )
    header = ["run", ""] + [c.removeprefix(HP_PREFIX) for c in searched]
    header += ["best epoch", "valid recon (smoothed)"] + labels
    parts.append("<p>Every run of the search, by validation loss:</p>")
    best_rows = {index for index, is_best in enumerate(table.best) if is_best}
    parts.append(_table(header, run_rows, best_rows, "runs"))
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


THUMBNAIL_WIDTH = 480  # pixels: a card of the gallery, twice its width on a 1280 px screen


def thumbnail_png(png_path: str | Path, width: int = THUMBNAIL_WIDTH) -> bytes:
    """A PNG at most `width` pixels wide of the PNG at `png_path` (smaller ones as they are)."""
    from PIL import Image

    png = Path(png_path).read_bytes()
    with Image.open(io.BytesIO(png)) as picture:
        if picture.width <= width:
            return png
        small = picture.convert("RGB")
    small.thumbnail((width, small.height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.quantize(colors=256).save(out, format="png", optimize=True)  # (a third of RGB's bytes)
    return out.getvalue()


def gallery_html(figures: list[tuple[str, str, str]]) -> str:
    """The figures as a grid of cards, as many columns as fit in 20rem each (one on a phone):
    figures: (title, caption, PNG path relative to the workdir, as the report names the file).
    A thumbnail opens the figure in the report's viewer."""
    cards = []
    for title, caption, path in figures:
        data = base64.b64encode(thumbnail_png(path)).decode("ascii")
        link = f"javascript:app.showResultInfo('{quote(str(path))}')"
        cards.append(
            '<figure style="margin:0">'
            f'<a href="{html.escape(link)}"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(title)}" style="width:100%;height:auto;border:1px solid #ddd"></a>'
            f'<figcaption style="font-size:13px"><b>{html.escape(title)}</b>: '
            f"{html.escape(' '.join(caption.split()))}</figcaption></figure>"
        )
    return (
        '<div id="lfads-figures" style="display:grid;gap:1.2em;'
        'grid-template-columns:repeat(auto-fill,minmax(min(20rem,100%),1fr))">'
        + "".join(cards)
        + "</div>\n"
    )


def write_gallery(figures: list[tuple[str, str, str]], out_path: str | Path) -> Path:
    """Write `gallery_html` of `figures`."""
    text = gallery_html(figures)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(text)
    return Path(out_path)
