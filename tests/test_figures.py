"""The report's references (smoothing baseline, true rates), its summary table and its figures,
from stand-in runs whose 'inferred' rates are the truth times noise (see test_evaluation.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_files_under

from lfads.evaluation.aggregate import write_summary
from lfads.evaluation.evaluate import evaluate_run
from lfads.evaluation.references import (
    PER_NEURON_CO_BPS,
    SMOOTHING,
    TRUE_RATES,
    bits_per_spike_per_neuron,
    write_references,
)
from lfads.formats.inferred import InferredAttributes, InferredSplit, write_inferred
from lfads.formats.metrics import write_metrics_csv
from lfads.formats.prepared import read_prepared

RUNS = {"noise~0.2": {"noise": 0.2}, "noise~0.6": {"noise": 0.6}}


@pytest.fixture(scope="module")
def prepared(prepared_files):
    files = prepared_files(20)
    return files.prepared, files.targets


def fake_run(folder, prepared_path, noise: float, valid_losses: list[float], seed: int):
    """A run folder: inferred.h5 (truth x lognormal noise, 2 inferred inputs) and metrics.csv."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    prepared = read_prepared(prepared_path)
    splits = {}
    for split, arrays in prepared.splits.items():
        truth = arrays.truth
        n_trials, n_bins = truth.shape[:2]
        splits[split] = InferredSplit(
            rates=(truth * np.exp(noise * rng.normal(size=truth.shape))).astype(np.float32),
            factors=rng.normal(size=(n_trials, n_bins, 5)).astype(np.float32),
            co_mean=rng.normal(size=(n_trials, n_bins, 2)).astype(np.float32),
            co_std=np.full((n_trials, n_bins, 2), 0.5, np.float32),
            nlb_index=arrays.nlb_index,
        )
    attributes = InferredAttributes(
        n_samples=1,
        seed=seed,
        session=0,
        model_epochs=len(valid_losses),
        data_file=str(prepared_path),
        mantissa_bits=23,
    )
    write_inferred(folder / "inferred.h5", prepared.session_attributes(), attributes, splits)
    write_metrics_csv(
        folder / "metrics.csv",
        [
            {
                "epoch": epoch,
                "train_loss": loss * 0.9e4,  # the objective: x loss_scale
                "train_recon": loss * 0.9,
                "valid_loss": loss * 1e4,
                "valid_recon": loss,
                "valid_recon_smoothed": loss,
            }
            for epoch, loss in enumerate(valid_losses)
        ],
    )


@pytest.fixture(scope="module")
def scored(prepared, tmp_path_factory):
    """Two evaluated stand-in runs, their summary.tsv and references.json: a dict of paths."""
    prepared_path, targets = prepared
    folder = tmp_path_factory.mktemp("runs")
    for (name, params), losses, seed in zip(RUNS.items(), ([3.0, 1.5], [3.0, 1.2]), (1, 2)):
        fake_run(folder / name, prepared_path, params["noise"], losses, seed)
        evaluate_run(
            prepared_path, folder / name / "inferred.h5", targets, folder / name / "metrics.json"
        )
    write_summary(RUNS, run_files_under(folder, RUNS), folder / "summary.tsv")
    write_references(prepared_path, targets, folder / "references.json")
    return {
        "runs": folder,
        "summary": folder / "summary.tsv",
        "references": folder / "references.json",
        "prepared": prepared_path,
        "targets": targets,
    }


@pytest.mark.slow
def test_references_score_the_smoothing_baseline_below_the_true_rates(scored):
    references = json.loads(scored["references"].read_text())
    smoothing, truth = references[SMOOTHING], references[TRUE_RATES]
    assert "fp-bps" not in smoothing and "fp-bps" in truth
    # Smoothing recovers part of what the truth explains, and less than the truth.
    assert 0.0 < smoothing["co-bps"] < truth["co-bps"]
    assert smoothing["vel R2"] < truth["vel R2"] and smoothing["psth R2"] < truth["psth R2"]
    per_neuron = np.array(smoothing[PER_NEURON_CO_BPS], dtype=float)
    n_heldout = read_prepared(scored["prepared"], keys=()).attributes.n_heldout
    assert per_neuron.shape == (n_heldout,)
    assert np.nanmax(per_neuron) > 0


def test_per_neuron_bits_per_spike_average_to_the_total_when_neurons_fire_alike():
    from nlb_tools.evaluation import bits_per_spike

    rng = np.random.default_rng(0)
    rates = rng.uniform(0.05, 0.5, size=(40, 30, 3))
    spikes = rng.poisson(rates).astype(float)
    per_neuron = bits_per_spike_per_neuron(rates, spikes)
    # Each neuron's bits are its own log-likelihood gain over its own mean rate, so the total is
    # the spike-weighted mean of the neurons' values.
    weights = spikes.sum((0, 1))
    assert np.sum(per_neuron * weights) / weights.sum() == pytest.approx(
        bits_per_spike(rates, spikes), rel=1e-9
    )
    silent = spikes.copy()
    silent[..., 1] = 0
    assert np.isnan(bits_per_spike_per_neuron(rates, silent)[1])


def drawn_texts(figure) -> list:
    """The text artists a drawn figure shows: visible, non-empty, and for tick labels only those
    of ticks inside the axis's view (matplotlib keeps labels of ticks outside it, undrawn)."""
    from matplotlib.text import Text

    tick_labels, shown = set(), []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                labels = (tick.label1, tick.label2)
                tick_labels.update(id(label) for label in labels)
                if low - span <= tick.get_loc() <= high + span:
                    shown += [label for label in labels if label.get_visible()]
    shown += [text for text in figure.findobj(Text) if id(text) not in tick_labels]
    return [text for text in shown if text.get_visible() and text.get_text().strip()]


def text_overlaps(figure) -> list[tuple[str, str]]:
    """Pairs of shown text artists of a drawn figure whose boxes overlap, and ("outside", text)
    for a text that reaches past the figure's edge."""
    renderer = figure.canvas.get_renderer()
    boxes = [(text.get_text(), text.get_window_extent(renderer)) for text in drawn_texts(figure)]
    page = figure.bbox.padded(1)
    outside = [
        ("outside", text)
        for text, box in boxes
        if not (page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1)
    ]
    return outside + [
        (first, second)
        for index, (first, box) in enumerate(boxes)
        for second, other in boxes[index + 1 :]
        if box.overlaps(other) and box.width > 0 and other.width > 0
    ]


def unlabelled_axes(figure) -> list[str]:
    """The drawn axes (not colour bars) of a figure without an x or y label."""
    return [
        ax.get_title() or repr(ax)
        for ax in figure.axes
        if ax.get_visible()
        and ax.axison
        and not hasattr(ax, "_colorbar")
        and not (ax.get_xlabel() and ax.get_ylabel())
    ]


@pytest.mark.slow
def test_every_figure_is_drawn_labelled_without_overlapping_text(scored, monkeypatch, tmp_path):
    """Every figure of the val phase on synthetic data, drawn by all_figures; the PNGs are kept in
    tmp_path for a look (pytest --basetemp)."""
    from lfads.evaluation import figures
    from lfads.evaluation.outputs import figures_for

    drawn = {}
    save = figures.save_figure

    def keep(figure, path):
        figure.canvas.draw()
        drawn[path.stem] = (text_overlaps(figure), unlabelled_axes(figure))
        save(figure, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    names = [figure.name for figure in figures_for("val", "mc_maze", has_truth=True)]
    outputs = {name: tmp_path / f"{name}.png" for name in names}
    files = run_files_under(scored["runs"], RUNS)
    figures.all_figures(
        scored["summary"],
        {run: files[run].inferred for run in RUNS},
        {run: files[run].curves for run in RUNS},
        scored["prepared"],
        scored["targets"],
        "mc_maze_20",
        outputs,
        scored["references"],
    )
    assert sorted(drawn) == sorted(names)
    for name, (overlaps, unlabelled) in drawn.items():
        assert overlaps == [], f"{name}: overlapping text {overlaps}"
        assert unlabelled == [], f"{name}: axes without labels {unlabelled}"
        assert outputs[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_selection_and_loss_panels_draw_the_summary_and_metrics_in_nats_per_bin(
    scored, monkeypatch, tmp_path
):
    from lfads.evaluation import figures
    from lfads.formats.metrics import read_metrics_csv
    from lfads.formats.summary import BEST_EPOCH, SELECTION, read_summary

    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: drawn.update({path: figure}))
    summary = read_summary(scored["summary"], scored_only=True)
    references = json.loads(scored["references"].read_text())
    figures.metrics_vs_hyperparameters(scored["summary"], scored["references"], "scores.png")
    panels = {ax.get_ylabel(): ax for ax in drawn["scores.png"].axes if ax.get_visible()}
    # the selection panel plots what chose the best run, in the summary's order
    selection = panels[figures.SELECTION_LABEL].collections[0].get_offsets()
    np.testing.assert_array_equal(selection[:, 1], summary[SELECTION])
    np.testing.assert_array_equal(selection[:, 0], summary["hp_noise"])
    lines = {line.get_label(): line.get_ydata()[0] for line in panels["co-bps"].lines}  # (label)
    assert lines == {
        SMOOTHING: references[SMOOTHING]["co-bps"],
        TRUE_RATES: references[TRUE_RATES]["co-bps"],
    }
    assert drawn["scores.png"].axes[0].get_gridspec().ncols <= 3

    figures.training_curves(
        {name: scored["runs"] / name / "metrics.csv" for name in RUNS}, "curves.png"
    )
    recon, kept = drawn["curves.png"].axes
    assert recon.get_ylabel() == "nats per bin and neuron"
    assert kept.get_ylabel() == figures.SELECTION_LABEL
    for index, name in enumerate(sorted(RUNS)):  # dashed train, solid valid: not x loss_scale
        metrics = read_metrics_csv(scored["runs"] / name / "metrics.csv")
        train, valid = recon.lines[2 * index : 2 * index + 2]
        np.testing.assert_array_equal(train.get_ydata(), metrics["train_recon"])
        np.testing.assert_array_equal(valid.get_ydata(), metrics["valid_recon"])
    dots = sorted(
        (float(line.get_xdata()[0]), float(line.get_ydata()[0]))
        for line in kept.lines
        if line.get_marker() == "o"
    )
    assert dots == sorted(zip(summary[BEST_EPOCH].astype(float), summary[SELECTION]))


@pytest.mark.slow
def test_the_velocity_figure_uses_the_decoder_of_vel_r2(scored):
    """The figure's decoder, scored over every eval bin, gives the summary's vel R2."""
    from lfads.evaluation.figures import nlb_velocity_decoder
    from lfads.evaluation.submission import nlb_submission
    from lfads.formats.targets import read_targets

    run = "noise~0.6"
    submission = nlb_submission(scored["prepared"], scored["runs"] / run / "inferred.h5")
    rates = {
        split: np.concatenate(
            [
                submission["mc_maze_20"][f"{split}_rates_heldin"],
                submission["mc_maze_20"][f"{split}_rates_heldout"],
            ],
            axis=2,
        )
        for split in ("train", "eval")
    }
    targets = read_targets(scored["targets"], "mc_maze_20")
    decoder = nlb_velocity_decoder(rates["train"], targets.train_behavior)
    x = rates["eval"].reshape(-1, rates["eval"].shape[2]).astype(float)
    y = targets.eval_behavior.reshape(-1, targets.eval_behavior.shape[2])
    keep = ~np.isnan(y[:, 0])
    metrics = json.loads((scored["runs"] / run / "metrics.json").read_text())
    assert decoder.score(x[keep], y[keep]) == pytest.approx(metrics["vel R2"], abs=1e-9)
    assert 0.3 < metrics["vel R2"] < 1.0


def test_summary_html_puts_the_best_run_beside_the_references(tmp_path):
    import re

    from lfads.evaluation.report_table import write_summary_html

    runs = {"lr~0.01": {"lr": 0.01}, "lr~0.001": {"lr": 0.001}, "lr~1000": {"lr": 1000.0}}
    curves = {"lr~0.01": [3.0, 1.1], "lr~0.001": [3.0, 1.4], "lr~1000": [3.0]}
    scores = {
        "lr~0.01": {"co-bps": 0.31234, "vel R2": 0.8},
        "lr~0.001": {"co-bps": 0.2},
        "lr~1000": {"diverged": True, "diverged_epoch": 1, "diverged_reason": "NaN"},
    }
    for name, losses in curves.items():
        rows = [
            {"epoch": epoch, "valid_loss": loss, "valid_recon_smoothed": loss}
            for epoch, loss in enumerate(losses)
        ]
        write_metrics_csv(tmp_path / name / "metrics.csv", rows)
        (tmp_path / name / "metrics.json").write_text(json.dumps(scores[name]))
    write_summary(runs, run_files_under(tmp_path, runs), tmp_path / "summary.tsv")
    references = {SMOOTHING: {"co-bps": 0.25, "vel R2": 0.6, "kernel_sd_ms": 50.0}}
    (tmp_path / "references.json").write_text(json.dumps(references))
    page = write_summary_html(
        tmp_path / "summary.tsv", tmp_path / "references.json", tmp_path / "summary.html"
    ).read_text()
    assert "Best run: <b>lr~0.01</b>" in page and "co-bps <b>0.3123</b>" in page
    result = page[page.index('id="T_result"') : page.index('id="T_runs"')]
    assert result.count("<tr") == 3  # header, the best run, the smoothing baseline
    assert "smoothing baseline (Gaussian 50 ms + Poisson GLM)" in result and "0.2500" in result
    runs_table = page[page.index('id="T_runs"') :]
    body_rows = runs_table.split("<tr")[2:]
    assert [row.split("</td>")[0].rsplit(">", 1)[1] for row in body_rows] == [
        "lr~0.01",
        "lr~0.001",
        "lr~1000",
    ]
    # the highlighted cells (the style rules with the best row's background): each cell of the
    # result table's best run and of the runs table's first row, nothing else
    highlighted = " ".join(
        selectors
        for selectors, rule in re.findall(r"([^{}]+)\{([^{}]*)\}", page)
        if "#fff3c4" in rule
    )
    columns = runs_table.split("</tr>")[0].count("col_heading")
    assert sorted(re.findall(r"#T_(\w+)_row(\d+)_col\d+", highlighted)) == sorted(
        [("result", "0")] * result.split("</tr>")[0].count("col_heading")
        + [("runs", "0")] * columns
    )
    assert ">diverged<" in body_rows[2] and "—" in body_rows[2]
    assert ">2<" in body_rows[0]  # the best epoch (1-based), as an integer


def test_the_gallery_shows_each_figure_as_a_thumbnail_with_its_caption(tmp_path):
    import base64
    import io
    import re

    import matplotlib.pyplot as plt
    from matplotlib import image

    from lfads.evaluation.report_table import THUMBNAIL_WIDTH, write_gallery

    pngs = []
    for name, width in (("wide", 12.0), ("small", 2.0)):  # 1200 and 200 pixels at 100 dpi
        figure = plt.figure(figsize=(width, 2), dpi=100)
        pngs.append(tmp_path / "figures" / f"{name}.png")
        pngs[-1].parent.mkdir(exist_ok=True)
        figure.savefig(pngs[-1], dpi=100)
        plt.close(figure)
    figures = [
        ("01 wide", "A wide figure,\nover two lines <with> tags.", str(pngs[0])),
        ("02 small", "A small one.", str(pngs[1])),
    ]
    page = write_gallery(figures, tmp_path / "figures.html").read_text()
    cards = page.split("<figure")[1:]
    assert len(cards) == 2
    assert "<b>01 wide</b>: A wide figure, over two lines &lt;with&gt; tags." in cards[0]
    assert f"app.showResultInfo(&#x27;{pngs[1]}&#x27;)" in cards[1]
    widths = []
    for card in cards:
        data = re.search(r'src="data:image/png;base64,([^"]+)"', card).group(1)
        widths.append(image.imread(io.BytesIO(base64.b64decode(data))).shape[1])
    assert widths == [THUMBNAIL_WIDTH, 200]  # the wide one shrunk, the small one as it is


def test_reach_directions_are_those_of_each_conditions_summed_velocity(tmp_path):
    from lfads.evaluation.figures import condition_directions
    from lfads.formats.prepared import PreparedAttributes, PreparedSplit, write_prepared

    angles = np.radians([0.0, 90.0, 225.0])  # conditions 0, 1, 2
    rng = np.random.default_rng(0)

    def split(conditions):
        n = len(conditions)
        speed = rng.uniform(0.5, 2.0, (n, 6, 1))  # a reach along its direction, at any speed
        heading = np.stack([np.cos(angles[conditions]), np.sin(angles[conditions])], axis=1)
        return PreparedSplit(
            encod_data=np.zeros((n, 6, 2)),
            recon_data=np.zeros((n, 6, 3)),
            nlb_index=np.arange(n),
            behavior=speed * heading[:, None, :],
            condition=np.asarray(conditions),
        )

    attributes = PreparedAttributes("x", "mc_maze", "val", 20, 2, 1, 6, 0, 0.2, 0, False)
    path = write_prepared(
        tmp_path / "prepared.h5",
        attributes,
        {"train": split([0, 1, 2, 2]), "valid": split([1, 0])},
        {"heldin": np.arange(2), "heldout": np.arange(1)},
    )
    directions = condition_directions(path)
    assert sorted(directions) == [0, 1, 2]
    assert [directions[c] for c in (0, 1, 2)] == pytest.approx([0.0, 90.0, 225.0], abs=1e-4)


def test_factor_components_explain_the_variance_of_a_known_plane():
    from lfads.evaluation.figures import _factor_projection

    rng = np.random.default_rng(1)
    plane = rng.normal(size=(40, 25, 2)) * [3.0, 1.0]  # variances 9 and 1 in two directions
    basis = np.linalg.qr(rng.normal(size=(5, 5)))[0][:2]  # embedded in 5 factors
    factors = plane @ basis + 0.01 * rng.normal(size=(40, 25, 5))
    projected, explained = _factor_projection(factors)
    assert projected.shape == (40, 25, 3)
    assert explained[:2] == pytest.approx([0.9, 0.1], abs=0.02)
    assert explained[2] < 1e-4
