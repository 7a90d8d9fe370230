"""The report in a real browser: the workflow on the tiny synthetic dataset (the session's
`pipeline`), `snakemake --report`, then headless Chromium renders report.html (a single-page
app) and the test reads the rendered DOM: the result table's rows, the best run's co-bps and
the figure captions must be on the landing page. Debian's `chromium` package provides the
browser (.ci/run installs it)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import pandas as pd
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(page, out_png=None) -> str:
    """The DOM of a local HTML file after its scripts ran, from headless Chromium."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=8000",
    ]
    if out_png is not None:  # a picture of the page, kept for a look
        subprocess.run(
            command + [f"--screenshot={out_png}", "--window-size=1400,2000", page.as_uri()],
            capture_output=True,
            timeout=120,
            check=False,
        )
    result = subprocess.run(
        command + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian package `chromium`)")
def test_the_report_shows_the_table_and_the_best_runs_co_bps(pipeline, tmp_path):
    workdir, snakemake = pipeline
    report = tmp_path / "report.html"
    made = snakemake("--report", str(report))
    assert made.returncode == 0, made.stdout + made.stderr

    dom = rendered_dom(report, tmp_path / "report.png")
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    text = re.sub(r"\s+", " ", text)
    table = pd.read_csv(workdir / "results" / "tiny" / "val" / "summary.tsv", sep="\t")
    best = table[table.best].iloc[0]
    assert 'id="runs-table"' in dom and 'id="result-table"' in dom
    for name in table.run:  # every run is a row of the rendered table
        assert re.search(rf"<tr[^>]*>\s*<td[^>]*>{re.escape(name)}</td>", dom), name
    assert f"Best run: {best.run}" in text
    assert f"co-bps {best.nlb_co_bps:.4f}" in text
    assert "smoothing baseline" in text and "true rates" in text
    # figures are listed in reading order, each with its caption
    order = [text.find(label) for label in ("01 neuron co bps", "02 raster", "09 metrics vs")]
    assert -1 not in order and order == sorted(order), order
    assert "nlb_tools' own vel R2 decoder" in text
    assert "built-in synthetic population" in text and "DANDI" not in text
    # the method text is the search's that ran: a grid of two runs in one pack
    assert "One LFADS model was trained per point of the search, the models sharing an " in text
    assert "population-based training" not in text
