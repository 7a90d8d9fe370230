"""The report in a real browser: the workflow on the tiny synthetic dataset (the session's
`pipeline`), `snakemake --report`, then headless Chromium renders report.html (a single-page
app) at a desktop's and a phone's width and the test reads the rendered DOM: the result table's
rows, the best run's co-bps and every figure's thumbnail and caption must be on the landing page,
and the layout (measured by a script added to a copy of the page) must fit the screen. Debian's
`chromium` package provides the browser (.ci/run installs it)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(pipeline, tmp_path_factory):
    """The session pipeline's report.html."""
    _, snakemake = pipeline
    report = tmp_path_factory.mktemp("report") / "report.html"
    made = snakemake("--report", str(report))
    assert made.returncode == 0, made.stdout + made.stderr
    return report


# Run in the page once the app has drawn the landing page: where the runs table, its last column
# and the text column end, whether the rule graph shows, and each figure thumbnail's width.
MEASURE = """<script>
setTimeout(function () {
  var table = document.getElementById("T_runs"), box = table.parentElement;
  var header = table.querySelector("tr").children, graph = document.getElementById("rulegraph");
  var out = {
    width: window.innerWidth,
    text_right: document.querySelector("div.prose").getBoundingClientRect().right,
    last_column_right: header[header.length - 1].getBoundingClientRect().right,
    box_right: box.getBoundingClientRect().right,
    box_scroll_width: box.scrollWidth,
    table_width: table.scrollWidth,
    box_overflow: getComputedStyle(box).overflowX,
    rule_graph: graph ? getComputedStyle(graph).display : null,
    row_backgrounds: Array.from(table.querySelectorAll("tbody tr")).map(
      function (row) { return getComputedStyle(row.cells[0]).backgroundColor; }),
    thumbnails: Array.from(document.querySelectorAll("#lfads-figures img")).map(
      function (img) { return img.getBoundingClientRect().width; }),
  };
  var pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 3000);
</script>"""


def rendered_dom(page, width: int, out_png=None) -> tuple[str, dict]:
    """The DOM of a local HTML file after its scripts ran in headless Chromium `width` pixels wide
    (at least 500: headless Chromium's narrowest window), and the layout MEASURE read there."""
    text = page.read_text()
    head, _, tail = text.rpartition("</body>")  # (the page's scripts hold "</body>" strings)
    measured = page.with_name(f"{page.stem}_{width}px.html")
    measured.write_text(head + MEASURE + "</body>" + tail)
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=8000",
        f"--window-size={width},2000",
    ]
    if out_png is not None:  # a picture of the page, kept for a look
        subprocess.run(
            command + [f"--screenshot={out_png}", page.as_uri()],
            capture_output=True,
            timeout=120,
            check=False,
        )
    result = subprocess.run(
        command + ["--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', result.stdout)
    assert found, "the measuring script did not run"
    return result.stdout, json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian package `chromium`)")
def test_the_report_shows_the_table_and_the_best_runs_co_bps(pipeline, report, tmp_path):
    workdir, _ = pipeline
    dom, layout = rendered_dom(report, 1280, tmp_path / "report.png")
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    text = re.sub(r"\s+", " ", text)
    table = pd.read_csv(workdir / "results" / "tiny" / "val" / "summary.tsv", sep="\t")
    best = table[table.best].iloc[0]
    assert 'id="T_runs"' in dom and 'id="T_result"' in dom
    # the best run's row (first, by validation loss) is highlighted, the others are not
    assert layout["row_backgrounds"][0] == "rgb(255, 243, 196)", layout  # #fff3c4
    assert "rgb(255, 243, 196)" not in layout["row_backgrounds"][1:], layout
    for name in table.run:  # every run is a row of the rendered table
        assert re.search(rf"<tr[^>]*>\s*<td[^>]*>{re.escape(name)}</td>", dom), name
    assert f"Best run: {best.run}" in text
    assert f"co-bps {best.nlb_co_bps:.4f}" in text
    assert "smoothing baseline" in text and "true rates" in text
    # figures are listed in reading order, each with its thumbnail and caption
    order = [text.find(label) for label in ("01 neuron co bps", "02 raster", "09 metrics vs")]
    assert -1 not in order and order == sorted(order), order
    figures = sorted((workdir / "results" / "tiny" / "val" / "figures").glob("*.png"))
    assert len(layout["thumbnails"]) == len(figures) == 9
    for png in figures:
        caption = (REPO / "workflow" / "report" / f"{png.stem}.rst").read_text()
        assert " ".join(caption.split()) in text, png.name
    # at 1280 px the whole runs table shows beside the rule graph, thumbnails two to a row
    assert layout["last_column_right"] <= layout["text_right"] <= layout["width"], layout
    assert layout["rule_graph"] == "block"
    assert all(300 < width < 640 for width in layout["thumbnails"]), layout
    assert "nlb_tools' own vel R2 decoder" in text
    assert "built-in synthetic population" in text and "DANDI" not in text
    # the method text is the search's that ran: a grid of two runs in one pack
    assert "One LFADS model was trained per point of the search, the models sharing an " in text
    assert "population-based training" not in text


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian package `chromium`)")
def test_the_report_fits_a_phone(report, tmp_path):
    """At a phone's width the text column fits the screen, the runs table scrolls sideways inside
    it to its last column, the rule graph is hidden and the thumbnails take the whole width."""
    _, layout = rendered_dom(report, 390, tmp_path / "report_phone.png")
    assert layout["width"] <= 500, layout
    assert layout["text_right"] <= layout["width"], layout
    assert layout["box_right"] <= layout["width"], layout
    assert layout["box_overflow"] == "auto" and layout["box_scroll_width"] >= layout["table_width"]
    assert layout["rule_graph"] == "none"
    assert all(width > 0.8 * layout["width"] for width in layout["thumbnails"]), layout
