"""Figures of a dataset's runs and of its best run (rule `figures`), with matplotlib's Agg backend.

Every function takes file paths and writes one PNG atomically (`save_figure`). Rates are stored in
spikes per bin and drawn in Hz; time runs in ms from the layout's alignment event (dmfc_rsg: from
the start of the window). Every figure uses matplotlib's constrained layout, so titles, labels and
colour bars do not overlap (tests/test_figures.py checks the drawn text). Runs that diverged are
left out (`lfads.formats.summary.read_summary`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from lfads.data.layouts import layout
from lfads.evaluation.outputs import FIGURES
from lfads.formats.inferred import read_inferred
from lfads.formats.metrics import (
    EPOCH,
    TRAIN_RECON,
    VALID_RECON,
    VALID_RECON_SMOOTHED,
    best_and_final_epoch,
    read_metrics_csv,
)
from lfads.formats.prepared import PreparedAttributes, read_prepared
from lfads.formats.summary import (
    HP_PREFIX,
    SCORE_LABELS,
    SELECTION,
    SHOWN_SCORES,
    best_run,
    read_summary,
    scored_runs,
    searched_columns,
)
from lfads.formats.targets import read_targets
from lfads.infra.io import atomic_path

log = logging.getLogger(__name__)

SELECTION_LABEL = "smoothed valid recon (nats/bin/neuron)"
N_EXAMPLE_TRIALS = 3
N_EXAMPLE_NEURONS = 4
MAX_CONDITIONS = 20  # conditions drawn with their own colour (tab20); more are subsampled
PSTH_CONDITIONS = 8  # conditions of the PSTH figure, spread over reach direction where there is one
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(n_rows: int, n_columns: int, width: float, height: float, **keywords):
    """(figure, axes array of shape (n_rows, n_columns)) with the constrained layout engine."""
    return _pyplot().subplots(
        n_rows, n_columns, squeeze=False, figsize=(width, height), layout="constrained", **keywords
    )


def save_figure(figure, path: str | Path) -> None:
    """Write `figure` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    _pyplot().close(figure)


def _bin_hz(attributes: PreparedAttributes) -> float:
    return 1000.0 / float(attributes.bin_width_ms)


def time_axis_ms(attributes: PreparedAttributes, n_bins: int) -> tuple[np.ndarray, str]:
    """(centre of each bin in ms, axis label): ms from the layout's alignment event."""
    spec = layout(attributes.nlb_layout)
    width = float(attributes.bin_width_ms)
    if spec.name == "dmfc_rsg":  # its eval windows are front-padded, not aligned to one event
        return (np.arange(n_bins) + 0.5) * width, "time from window start (ms)"
    start = spec.window_ms[0]
    return start + (np.arange(n_bins) + 0.5) * width, f"time from {spec.align_field} (ms)"


def condition_colours(n_conditions: int) -> list:
    """One distinct colour per condition (tab10 up to 10 conditions, else tab20)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n_conditions <= 10 else "tab20")
    return [cmap(index % cmap.N) for index in range(n_conditions)]


def _drawn_conditions(n_conditions: int, limit: int) -> np.ndarray:
    """Indices of every condition, or `limit` of them evenly spaced when there are more."""
    if n_conditions <= limit:
        return np.arange(n_conditions)
    return np.unique(np.linspace(0, n_conditions - 1, limit).astype(int))


def _condition_legend(figure, colours, labels: list[str], title: str) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour, lw=2) for colour in colours]
    figure.legend(
        handles,
        labels,
        title=title,
        loc="outside right upper",
        fontsize=7,
        title_fontsize=8,
        ncols=1 if len(labels) <= 12 else 2,
    )


def metrics_vs_hyperparameters(
    summary_tsv: str | Path, references_json: str | Path | None, out: str | Path
) -> None:
    """One panel per (searched hyperparameter, metric), at most 3 panels a row: each score, then
    the selection metric that chose the best run (its smoothed valid recon at its best epoch,
    summary.tsv's val_recon_smoothed); the best run is circled, and the smoothing baseline and
    the true rates (references_json, the aggregate rule's references.json) are drawn as lines."""
    from lfads.evaluation.references import SMOOTHING, TRUE_RATES

    table = read_summary(summary_tsv, scored_only=True)
    metrics = [m for m in (*SHOWN_SCORES, SELECTION) if m in table and table[m].notna().any()]
    references = json.loads(Path(references_json).read_text()) if references_json else {}
    searched = searched_columns(table) or ["run"]
    panels = [(key, metric) for key in searched for metric in metrics]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = new_figure(rows, columns, 3.4 * columns, 2.8 * rows)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (key, metric) in zip(axes.flat, panels):
        x = table[key] if key in table else np.arange(len(table))
        ax.scatter(x, table[metric], s=18, color="0.3", label="run")
        ax.scatter(
            x[table.best],
            table[metric][table.best],
            s=70,
            facecolor="none",
            edgecolor="C3",
            label="best (lowest selection metric)",
        )
        label = SCORE_LABELS.get(metric)
        for name, style in ((SMOOTHING, "--"), (TRUE_RATES, ":")):
            if label in references.get(name, {}):
                ax.axhline(references[name][label], color="0.5", ls=style, lw=1, label=name)
        if (
            key in table
            and np.issubdtype(table[key].dtype, np.number)
            and (table[key] > 0).all()
            and table[key].max() / table[key].min() > 20
        ):
            ax.set_xscale("log")
        ax.set_xlabel(key.removeprefix(HP_PREFIX))
        ax.set_ylabel(SELECTION_LABEL if metric == SELECTION else SCORE_LABELS[metric])
        _at_least_span(
            ax, 0.01 * float(table[metric].abs().mean()) if metric == SELECTION else 0.05
        )
    handles = {}
    for ax in axes.flat[: len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=4, fontsize=8)
    figure.suptitle("Scores of each run against its searched hyperparameters")
    save_figure(figure, out)


def _at_least_span(ax, span: float) -> None:
    """Widen the y range about its centre to at least `span`, so that differences far below what
    matters (0.05 in a score, 1% of a loss) do not fill the panel."""
    low, high = ax.get_ylim()
    if high - low < span:
        centre = (low + high) / 2
        ax.set_ylim(centre - span / 2, centre + span / 2)


def training_curves(curves: dict[str, Path], out: str | Path) -> None:
    """Per epoch (from 1) of every run, in nats per bin and neuron (not the training objective,
    which adds the KL and L2 terms and is multiplied by loss_scale): the reconstruction loss on
    the train and valid trials, and the selection metric (smoothed valid recon) with the epoch
    that model.ckpt keeps marked."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = new_figure(1, 2, 10, 3.8)
    recon, selection = axes[0]
    for index, (name, path) in enumerate(sorted(curves.items())):
        colour = f"C{index % 10}"
        table = read_metrics_csv(path)
        for column, style in ((TRAIN_RECON, "--"), (VALID_RECON, "-")):
            if column in table:
                rows = table.dropna(subset=[column])
                recon.plot(rows[EPOCH] + 1, rows[column], color=colour, ls=style, lw=1)
        rows = table.dropna(subset=[VALID_RECON_SMOOTHED])
        selection.plot(rows[EPOCH] + 1, rows[VALID_RECON_SMOOTHED], color=colour, lw=1, label=name)
        best, _ = best_and_final_epoch(path)
        selection.plot(best[EPOCH] + 1, best[VALID_RECON_SMOOTHED], "o", color=colour, ms=5)
    recon.set_title("reconstruction loss (dashed: train, solid: valid)")
    selection.set_title("selection metric; dot: the epoch kept")
    for ax in (recon, selection):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("nats per bin and neuron")
    selection.set_ylabel(SELECTION_LABEL)
    selection.legend(fontsize=6, title="run", title_fontsize=7)
    save_figure(figure, out)


def pbt_progress(
    history: list[dict], curves: dict[tuple[int, str], tuple[list[int], list[float]]], out
) -> None:
    """A PBT search over epochs: each searched hyperparameter of every worker (a step per
    generation; a dot where the worker copied another), and each worker's smoothed valid recon.

    history: `lfads.search.pbt.read_history` rows; curves: `lfads.search.pbt.read_curves`,
    {(generation, worker): (epochs from 1, smoothed valid recon)} of each generation's epochs.
    """
    from lfads.search.pbt import HISTORY_COLUMNS

    searched = [column for column in history[0] if column not in HISTORY_COLUMNS]
    workers = sorted({row["worker"] for row in history})
    n_panels = len(searched) + 1
    n_columns = min(n_panels, 4)
    n_rows = -(-n_panels // n_columns)
    figure, axes = new_figure(n_rows, n_columns, 3.2 * n_columns, 2.6 * n_rows, sharex=True)
    colour = {worker: f"C{index % 10}" for index, worker in enumerate(workers)}
    start = {row["generation"] + 1: row["epochs"] for row in history}  # generation -> first epoch
    for panel, name in enumerate(searched):
        ax = axes.flat[panel]
        for worker in workers:
            rows = [row for row in history if row["worker"] == worker]
            begins = [start.get(row["generation"], 0) for row in rows]
            ends = [row["epochs"] for row in rows]
            values = [row[name] for row in rows]
            ax.step(
                [*begins, ends[-1]], [*values, values[-1]], where="post", color=colour[worker], lw=1
            )
            copied = [(b, v) for b, v, row in zip(begins, values, rows) if row["exploited"]]
            if copied:
                ax.scatter(*zip(*copied), s=10, color=colour[worker], zorder=3)
        ax.set_title(name)
        low, high = min(row[name] for row in history), max(row[name] for row in history)
        if low > 0 and high / low > 100:
            ax.set_yscale("log")
    ax = axes.flat[len(searched)]
    after_burn_in = []  # the losses of generations 1, ...: the y range shows their jumps
    for (generation, worker), (epochs, losses) in sorted(curves.items()):
        ax.plot(epochs, losses, color=colour[worker], lw=1)
        if generation > 0:
            after_burn_in += [loss for loss in losses if math.isfinite(loss)]
    if after_burn_in and max(after_burn_in) > min(after_burn_in):
        margin = max(after_burn_in) - min(after_burn_in)
        ax.set_ylim(min(after_burn_in) - margin, max(after_burn_in) + 2 * margin)
    ax.set_title("smoothed valid recon")
    for worker in workers:
        ax.plot([], [], color=colour[worker], label=worker)
    ax.legend(fontsize=6, ncol=2)
    for ax in axes.flat[n_panels:]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    figure.suptitle(
        "Population-based training: each worker's values and loss (dot: copied a better worker)"
    )
    save_figure(figure, out)


def trial_names(prepared_path: str | Path, split: str, n_trials: int) -> list[str]:
    """Names of the first `n_trials` trials of a split: their ids in the source NWB file ("trial
    412"), or their place in the split in a prepared file written before it kept the ids."""
    ids = read_prepared(prepared_path, keys=("trial_id",)).splits[split].trial_id
    if ids is None:
        return [f"{split} trial {index}" for index in range(n_trials)]
    return [f"{split} trial {int(trial_id)}" for trial_id in ids[:n_trials]]


def _label_neuron_bands(ax, n_heldin: int, n_neurons: int) -> None:
    """Mark where the held-in neurons end and label the two bands on the neuron axis."""
    ax.axhline(n_heldin - 0.5, color="C1", lw=1)
    ax.set_yticks(
        [(n_heldin - 1) / 2, (n_heldin + n_neurons - 1) / 2],
        [f"held-in\n({n_heldin})", f"held-out\n({n_neurons - n_heldin})"],
    )


def raster_and_rates(prepared_path: str | Path, inferred_path: str | Path, out: str | Path) -> None:
    """Example validation trials: the inferred rates of every neuron and bin, with the observed
    spikes as ticks over them; one colour scale."""
    from matplotlib.colors import Normalize

    prepared = read_prepared(prepared_path, keys=("recon_data",))
    attributes = prepared.attributes
    spikes = prepared.splits["valid"].recon_data[:N_EXAMPLE_TRIALS]
    rates = read_inferred(inferred_path, keys=("rates",)).splits["valid"].rates[:N_EXAMPLE_TRIALS]
    rates = rates * _bin_hz(attributes)
    n_obs, n_heldin = attributes.n_obs_bins, attributes.n_heldin
    times, time_label = time_axis_ms(attributes, spikes.shape[1])
    width = float(attributes.bin_width_ms)
    extent = (times[0] - width / 2, times[-1] + width / 2, spikes.shape[2] - 0.5, -0.5)
    forward_starts = times[0] - width / 2 + n_obs * width
    n_columns = min(len(spikes), 3)
    n_rows = -(-len(spikes) // n_columns)
    figure, axes = new_figure(n_rows, n_columns, 4.4 * n_columns, 4.2 * n_rows, sharey=True)
    rate_norm = Normalize(0, float(np.percentile(rates, 99.5)))
    names = trial_names(prepared_path, "valid", len(spikes))
    for trial, ax in enumerate(axes.flat[: len(spikes)]):
        rate_image = ax.imshow(
            rates[trial].T,
            aspect="auto",
            cmap="viridis",
            norm=rate_norm,
            interpolation="nearest",
            extent=extent,
        )
        bins, neurons = np.nonzero(np.nan_to_num(spikes[trial]) > 0)
        ax.scatter(times[bins], neurons, marker="|", s=6, lw=0.6, color="white")
        ax.axvline(forward_starts, color="C3", lw=1)
        _label_neuron_bands(ax, n_heldin, spikes.shape[2])
        ax.set_xlabel(time_label)
        ax.set_ylabel("neuron")
        ax.set_title(names[trial])
    for ax in axes.flat[len(spikes) :]:
        ax.set_axis_off()
    figure.colorbar(rate_image, ax=axes, label="inferred rate (Hz)", shrink=0.9)
    figure.suptitle(
        "Best run: inferred rates with the observed spikes as ticks (red line: forward prediction)"
    )
    save_figure(figure, out)


def condition_directions(prepared_path: str | Path) -> dict[int, float] | None:
    """Each condition's reach direction (degrees): the direction of the summed 2-D behaviour
    (hand velocity) over the train and valid trials of the condition. None where the layout has no
    2-D behaviour series or no conditions."""
    splits = read_prepared(prepared_path, keys=("behavior", "condition")).splits
    parts = [splits[name] for name in ("train", "valid") if name in splits]
    if any(part.behavior is None or part.condition is None for part in parts):
        return None
    behavior = np.concatenate([part.behavior for part in parts])
    conditions = np.concatenate([part.condition for part in parts])
    if behavior.shape[-1] != 2 or not (conditions >= 0).any():
        return None
    directions = {}
    for condition in np.unique(conditions[conditions >= 0]):
        x, y = np.nansum(behavior[conditions == condition], axis=(0, 1))
        directions[int(condition)] = float(np.degrees(np.arctan2(y, x)) % 360)
    return directions


def _conditions_and_colours(
    conditions: np.ndarray, directions: dict[int, float] | None, limit: int
) -> tuple[np.ndarray, list, list[str]]:
    """At most `limit` of `conditions` with their colours and legend labels: with reach
    directions, conditions evenly spread over direction, coloured on a circular colour map; else
    evenly spaced conditions in distinct colours."""
    if directions is None:
        drawn = conditions[_drawn_conditions(len(conditions), limit)]
        return drawn, condition_colours(len(drawn)), [str(c) for c in drawn]
    by_direction = sorted(conditions, key=lambda c: directions[int(c)])
    drawn = np.array(by_direction)[_drawn_conditions(len(conditions), limit)]
    cmap = _pyplot().get_cmap("hsv")
    angles = [directions[int(c)] for c in drawn]
    return (
        drawn,
        [cmap(a / 360) for a in angles],
        [f"{c} ({a:.0f}°)" for c, a in zip(drawn, angles)],
    )


def psths(
    targets_path: str | Path,
    group: str,
    inferred_path: str | Path,
    prepared_path: str | Path,
    out: str | Path,
) -> None:
    """nlb_tools' target PSTHs (solid) beside PSTHs of the inferred eval rates (dashed) of a few
    conditions (coloured by reach direction where the layout has one), for example neurons."""
    attributes = read_prepared(prepared_path, keys=()).attributes
    targets = read_targets(targets_path, group, keys=("psth", "eval_cond_idx"))
    true = targets.psth * _bin_hz(attributes)  # (conditions, T, neurons)
    n_obs = attributes.n_obs_bins
    rates = read_inferred(inferred_path, keys=("rates",)).splits["eval"].rates[:, :n_obs]
    rates = rates * _bin_hz(attributes)
    times, time_label = time_axis_ms(attributes, n_obs)
    directions = condition_directions(prepared_path)
    conditions, colours, labels = _conditions_and_colours(
        np.arange(len(true)), directions, PSTH_CONDITIONS
    )
    neurons = np.linspace(0, true.shape[2] - 1, N_EXAMPLE_NEURONS).astype(int)
    figure, axes = new_figure(2, 2, 9.6, 6.4, sharex=True)
    for ax, neuron in zip(axes.flat, neurons):
        for colour, condition in zip(colours, conditions):
            trials = np.asarray(targets.eval_cond_idx[condition], dtype=int)
            ax.plot(times, true[condition, :, neuron], color=colour, lw=1)
            if len(trials):
                ax.plot(times, rates[trials, :, neuron].mean(0), color=colour, lw=1, ls="--")
        band = "held-out" if neuron >= attributes.n_heldin else "held-in"
        ax.set_title(f"neuron {neuron} ({band})")
        ax.set_xlabel(time_label)
        ax.set_ylabel("rate (Hz)")
    drawn = "all" if len(conditions) == len(true) else f"{len(conditions)} of"
    figure.suptitle(
        f"PSTHs of {drawn} {len(true)} conditions: nlb_tools target (solid), inferred (dashed)"
    )
    title = "condition (reach direction)" if directions else "condition"
    _condition_legend(figure, colours, labels, title)
    save_figure(figure, out)


def _factor_projection(factors: np.ndarray, n_components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """factors (N, T, F) projected on their top principal components, (N, T, n_components), and
    the fraction of the factors' variance each component explains, (n_components,)."""
    n_trials, n_bins, n_factors = factors.shape
    flat = factors.reshape(-1, n_factors)
    centred = flat - flat.mean(0)
    sample = centred[:: max(1, len(centred) // 20000)]
    _, singular, components = np.linalg.svd(sample, full_matrices=False)
    explained = singular**2 / np.sum(singular**2)
    projected = (centred @ components[:n_components].T).reshape(n_trials, n_bins, -1)
    return projected, explained[:n_components]


def _train_valid_conditions(prepared_path: str | Path, n_trials: int) -> np.ndarray:
    prepared = read_prepared(prepared_path, keys=("condition",)).splits
    if prepared["train"].condition is None:
        return np.zeros(n_trials, dtype=int)
    return np.concatenate([prepared["train"].condition, prepared["valid"].condition])


def factor_trajectories(
    prepared_path: str | Path, inferred_path: str | Path, out: str | Path
) -> None:
    """Condition-averaged factors of the train and valid trials on their top principal
    components (with the variance each explains), one colour per condition (by reach direction
    where the layout has one)."""
    inferred = read_inferred(inferred_path, keys=("factors",)).splits
    factors = np.concatenate([inferred["train"].factors, inferred["valid"].factors])
    conditions = _train_valid_conditions(prepared_path, len(factors))
    attributes = read_prepared(prepared_path, keys=()).attributes
    projected, explained = _factor_projection(factors)
    times, time_label = time_axis_ms(attributes, factors.shape[1])
    present = np.unique(conditions[conditions >= 0])
    directions = condition_directions(prepared_path)
    drawn, colours, labels = _conditions_and_colours(present, directions, MAX_CONDITIONS)
    pc = [
        f"factor PC {k + 1} ({100 * fraction:.0f}% of variance)"
        for k, fraction in enumerate(explained)
    ]
    figure, axes = new_figure(1, 2, 10.5, 4)
    for colour, condition in zip(colours, drawn):
        mean = projected[conditions == condition].mean(0)
        axes[0, 0].plot(mean[:, 0], mean[:, 1], color=colour, lw=1)
        axes[0, 0].plot(mean[0, 0], mean[0, 1], "o", color=colour, ms=3)
        axes[0, 1].plot(times, mean[:, 0], color=colour, lw=1)
    axes[0, 0].set_xlabel(pc[0])
    axes[0, 0].set_ylabel(pc[1])
    axes[0, 0].set_title("trajectories (dot: first bin)")
    axes[0, 1].set_xlabel(time_label)
    axes[0, 1].set_ylabel(pc[0])
    axes[0, 1].set_title("PC 1 over time")
    shown = "every" if len(drawn) == len(present) else f"{len(drawn)} of {len(present)}"
    figure.suptitle(f"Best run: factors averaged per condition ({shown} condition)")
    title = "condition (reach direction)" if directions else "condition"
    _condition_legend(figure, colours, labels, title)
    save_figure(figure, out)


def inferred_inputs(prepared_path: str | Path, inferred_path: str | Path, out: str | Path) -> None:
    """The controller's inferred inputs (posterior means) averaged per condition, one panel per
    input, with the across-trial standard deviation of one example condition shaded."""
    inferred = read_inferred(inferred_path, keys=("co_mean",)).splits
    attributes = read_prepared(prepared_path, keys=()).attributes
    if inferred["train"].co_mean is None or inferred["train"].co_mean.shape[-1] == 0:
        figure, axes = new_figure(1, 1, 6, 2)
        axes[0, 0].text(0.5, 0.5, "This model has no inferred inputs (co_dim 0).", ha="center")
        axes[0, 0].set_axis_off()
        save_figure(figure, out)
        return
    inputs = np.concatenate([inferred["train"].co_mean, inferred["valid"].co_mean])
    conditions = _train_valid_conditions(prepared_path, len(inputs))
    times, time_label = time_axis_ms(attributes, inputs.shape[1])
    present = np.unique(conditions[conditions >= 0])
    directions = condition_directions(prepared_path)
    drawn, colours, labels = _conditions_and_colours(present, directions, MAX_CONDITIONS)
    n_inputs = inputs.shape[2]
    figure, axes = new_figure(1, n_inputs, 3.8 * n_inputs + 2.0, 3.4, sharex=True)
    for index in range(n_inputs):
        ax = axes[0, index]
        for colour, condition in zip(colours, drawn):
            ax.plot(times, inputs[conditions == condition, :, index].mean(0), color=colour, lw=1)
        example = inputs[conditions == drawn[0], :, index]
        ax.fill_between(
            times,
            example.mean(0) - example.std(0),
            example.mean(0) + example.std(0),
            color=colours[0],
            alpha=0.2,
            lw=0,
        )
        forward_starts = times[0] + (attributes.n_obs_bins - 0.5) * attributes.bin_width_ms
        ax.axvline(forward_starts, color="C3", lw=0.8)
        ax.set_title(f"inferred input {index + 1}")
        ax.set_xlabel(time_label)
        ax.set_ylabel("posterior mean (a.u.)")
    figure.suptitle(
        f"Best run: inferred inputs per condition (shade: ±1 s.d., condition {drawn[0]})"
    )
    title = "condition (reach direction)" if directions else "condition"
    _condition_legend(figure, colours, labels, title)
    save_figure(figure, out)


def nlb_velocity_decoder(train_rates: np.ndarray, train_behavior: np.ndarray):
    """nlb_tools' vel R2 decoder: GridSearchCV over Ridge's alpha in logspace(-4, 0, 9), fit on
    every bin of the NLB train trials (bins without behaviour left out), as its
    `fit_and_eval_decoder`. train_rates (N, T, neurons), train_behavior (N, T, dims)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    x = train_rates.reshape(-1, train_rates.shape[2]).astype(np.float64)
    y = train_behavior.reshape(-1, train_behavior.shape[2])
    keep = ~np.isnan(y[:, 0])
    return GridSearchCV(Ridge(), {"alpha": np.logspace(-4, 0, 9)}).fit(x[keep], y[keep])


def decoded_velocity(
    targets_path: str | Path,
    group: str,
    inferred_path: str | Path,
    prepared_path: str | Path,
    out: str | Path,
) -> None:
    """Behaviour decoded from the inferred rates by nlb_tools' vel R2 decoders (fit on the NLB train
    trials; one per decode mask, e.g. area2_bump's active and passive trials), against the recorded
    behaviour of example eval trials; the mean over decoders of the R² of every eval bin is the
    vel R2 of the summary."""
    from lfads.evaluation.submission import nlb_submission

    attributes = read_prepared(prepared_path, keys=()).attributes
    submission = nlb_submission(prepared_path, inferred_path)[group]
    targets = read_targets(
        targets_path,
        group,
        keys=("train_behavior", "eval_behavior", "train_decode_mask", "eval_decode_mask"),
    )
    train_behavior, eval_behavior = targets.train_behavior, targets.eval_behavior
    train_rates = np.concatenate(
        [submission["train_rates_heldin"], submission["train_rates_heldout"]], axis=2
    )
    eval_rates = np.concatenate(
        [submission["eval_rates_heldin"], submission["eval_rates_heldout"]], axis=2
    )
    train_masks, eval_masks = targets.train_decode_mask, targets.eval_decode_mask
    if train_masks is None:
        train_masks = np.ones((len(train_rates), 1), dtype=bool)
        eval_masks = np.ones((len(eval_rates), 1), dtype=bool)
    predicted = np.full(eval_behavior.shape, np.nan)
    r2s, alphas = [], []
    for decoder_index in range(train_masks.shape[1]):
        train_rows, eval_rows = train_masks[:, decoder_index], eval_masks[:, decoder_index]
        decoder = nlb_velocity_decoder(train_rates[train_rows], train_behavior[train_rows])
        rows = eval_rates[eval_rows]
        flat_eval = rows.reshape(-1, rows.shape[2]).astype(np.float64)
        predicted[eval_rows] = decoder.predict(flat_eval).reshape(eval_behavior[eval_rows].shape)
        flat_behavior = eval_behavior[eval_rows].reshape(-1, eval_behavior.shape[2])
        keep = ~np.isnan(flat_behavior[:, 0])
        r2s.append(decoder.score(flat_eval[keep], flat_behavior[keep]))
        alphas.append(f"{decoder.best_params_['alpha']:.0e}")
    spec = layout(attributes.nlb_layout)
    quantity = (spec.behavior_series or "behaviour").replace("_vel", " velocity")
    times, time_label = time_axis_ms(attributes, eval_behavior.shape[1])
    n_dims = eval_behavior.shape[2]
    n_trials = min(N_EXAMPLE_TRIALS, len(eval_behavior))
    figure, axes = new_figure(n_dims, n_trials, 3.8 * n_trials, 2.5 * n_dims, sharex=True)
    names = trial_names(prepared_path, "eval", n_trials)
    for trial in range(n_trials):
        for dim in range(n_dims):
            ax = axes[dim, trial]
            ax.plot(times, eval_behavior[trial, :, dim], color="k", lw=1, label="recorded")
            ax.plot(times, predicted[trial, :, dim], color="C0", lw=1, label="decoded")
            ax.set_title(f"{names[trial]}, {'xyz'[dim] if n_dims <= 3 else dim}", fontsize=9)
            ax.set_xlabel(time_label)
            ax.set_ylabel(f"{quantity} (mm/s)")
    axes[0, 0].legend(fontsize=7)
    decoders = (
        f"nlb_tools' ridge decoder (alpha {alphas[0]}); R² over all eval bins {r2s[0]:.3f}"
        if len(r2s) == 1
        else f"{len(r2s)} nlb_tools ridge decoders, one per trial group (alpha "
        f"{', '.join(alphas)}); mean R² over their eval bins {np.mean(r2s):.3f}"
    )
    figure.suptitle(f"Best run: {quantity} decoded by {decoders}")
    save_figure(figure, out)


def rates_vs_truth(prepared_path: str | Path, inferred_path: str | Path, out: str | Path) -> None:
    """Synthetic data: inferred against true rates of every eval bin and neuron (a 2-D histogram
    with its R², as the summary's rate R2), and example traces."""
    from matplotlib.colors import LogNorm

    from lfads.evaluation.evaluate import rate_r2

    prepared = read_prepared(prepared_path, keys=("truth",))
    attributes = prepared.attributes
    truth = prepared.splits["eval"].truth * _bin_hz(attributes)
    rates = read_inferred(inferred_path, keys=("rates",)).splits["eval"].rates
    rates = rates * _bin_hz(attributes)
    r2 = rate_r2(truth, rates)
    times, time_label = time_axis_ms(attributes, truth.shape[1])
    figure, axes = new_figure(1, 1 + N_EXAMPLE_NEURONS, 3.4 * (1 + N_EXAMPLE_NEURONS) + 1, 3.4)
    limit = float(np.percentile(truth, 99.5))
    *_, image = axes[0, 0].hist2d(
        truth.ravel(),
        rates.ravel(),
        bins=60,
        range=[[0, limit], [0, limit]],
        cmap="Greys",
        norm=LogNorm(),
    )
    axes[0, 0].plot([0, limit], [0, limit], color="C3", lw=0.8)
    axes[0, 0].set_xlabel("true rate (Hz)")
    axes[0, 0].set_ylabel("inferred rate (Hz)")
    axes[0, 0].set_title(f"every eval bin; R² {r2:.3f}")
    figure.colorbar(image, ax=axes[0, 0], label="bins (neuron x time)", location="left")
    neurons = np.linspace(0, truth.shape[2] - 1, N_EXAMPLE_NEURONS).astype(int)
    (name,) = trial_names(prepared_path, "eval", 1)
    for ax, neuron in zip(axes[0, 1:], neurons):
        ax.plot(times, truth[0, :, neuron], color="k", lw=1, label="true")
        ax.plot(times, rates[0, :, neuron], color="C0", lw=1, label="inferred")
        band = "held-out" if neuron >= attributes.n_heldin else "held-in"
        ax.set_title(f"{name}, neuron {neuron} ({band})", fontsize=9)
        ax.set_xlabel(time_label)
        ax.set_ylabel("rate (Hz)")
    axes[0, 1].legend(fontsize=7)
    figure.suptitle("Synthetic data, best run: inferred against true rates")
    save_figure(figure, out)


def neuron_co_bps(
    targets_path: str | Path,
    group: str,
    inferred_path: str | Path,
    prepared_path: str | Path,
    references_json: str | Path,
    out: str | Path,
) -> None:
    """Each held-out neuron's co-bps on the eval trials: best run against the smoothing baseline
    (references_json, the aggregate rule's references.json; None: fit here), and both against the
    neuron's firing rate."""
    from lfads.evaluation.references import PER_NEURON_CO_BPS, SMOOTHING, bits_per_spike_per_neuron

    attributes = read_prepared(prepared_path, keys=()).attributes
    spikes = read_targets(targets_path, group, keys=("eval_spikes_heldout",)).eval_spikes_heldout
    n_obs, n_heldin = attributes.n_obs_bins, attributes.n_heldin
    rates = read_inferred(inferred_path, keys=("rates",)).splits["eval"].rates[:, :n_obs, n_heldin:]
    model = bits_per_spike_per_neuron(rates, spikes)
    if references_json is not None:
        found = json.loads(Path(references_json).read_text())
    else:  # outside the workflow: fit the baseline here (seconds)
        from lfads.evaluation.references import references

        found = references(prepared_path, targets_path)
    smoothing = np.array(found[SMOOTHING][PER_NEURON_CO_BPS], dtype=float)
    mean_rate = np.nanmean(spikes, axis=(0, 1)) * _bin_hz(attributes)
    figure, axes = new_figure(1, 2, 10, 4.2)
    ax = axes[0, 0]
    both = np.isfinite(model) & np.isfinite(smoothing)
    low = min(float(np.min(model[both])), float(np.min(smoothing[both])), 0.0)
    high = max(float(np.max(model[both])), float(np.max(smoothing[both])))
    ax.plot([low, high], [low, high], color="C3", lw=0.8, label="equal")
    ax.scatter(smoothing[both], model[both], s=14, color="C0", label="held-out neuron")
    better = int(np.sum(model[both] > smoothing[both]))
    ax.set_title(f"best run above the line for {better} of {int(both.sum())} neurons")
    ax.set_xlabel("smoothing baseline co-bps (bits/spike)")
    ax.set_ylabel("best run co-bps (bits/spike)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.scatter(mean_rate, model, s=14, color="C0", label="best run")
    ax.scatter(mean_rate, smoothing, s=14, color="0.5", marker="x", label="smoothing")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("mean firing rate on eval trials (Hz)")
    ax.set_ylabel("co-bps (bits/spike)")
    ax.set_title("per neuron, against firing rate")
    ax.legend(fontsize=7)
    figure.suptitle("Held-out neurons' co-bps on the eval trials: best run and smoothing baseline")
    save_figure(figure, out)


def all_figures(
    summary_tsv: Path,
    inferred: dict[str, Path],
    curves: dict[str, Path],
    prepared_path: Path,
    targets_path: Path | None,
    group: str,
    outputs: dict[str, Path],
    references_json: Path | None = None,
) -> None:
    """Write every figure named in `outputs` ({figure name: PNG path}, names from FIGURES) from
    the runs' inferred.h5 and metrics.csv ({run name: path}); references_json: the aggregate
    rule's references.json (for the per-neuron co-bps figure; None: the smoothing baseline is fit
    again)."""

    unknown = sorted(set(outputs) - {figure.name for figure in FIGURES})
    if unknown:
        raise ValueError(
            f"unknown figure(s) {', '.join(unknown)}; lfads.evaluation.outputs.FIGURES lists "
            f"{', '.join(figure.name for figure in FIGURES)}"
        )

    scored = scored_runs(summary_tsv)  # the runs that did not diverge
    best = best_run(summary_tsv)
    if best not in inferred:
        raise ValueError(f"{summary_tsv}: its best run {best} is not among the runs given")
    best_inferred = Path(inferred[best])
    makers = {
        "best_neuron_co_bps": lambda out: neuron_co_bps(
            targets_path, group, best_inferred, prepared_path, references_json, out
        ),
        "best_raster": lambda out: raster_and_rates(prepared_path, best_inferred, out),
        "best_psth": lambda out: psths(targets_path, group, best_inferred, prepared_path, out),
        "best_velocity": lambda out: decoded_velocity(
            targets_path, group, best_inferred, prepared_path, out
        ),
        "best_rates_vs_truth": lambda out: rates_vs_truth(prepared_path, best_inferred, out),
        "best_factors": lambda out: factor_trajectories(prepared_path, best_inferred, out),
        "best_inputs": lambda out: inferred_inputs(prepared_path, best_inferred, out),
        "training_curves": lambda out: training_curves(
            {name: Path(path) for name, path in curves.items() if name in scored}, out
        ),
        "metrics_vs_hyperparameters": lambda out: metrics_vs_hyperparameters(
            summary_tsv, references_json, out
        ),
    }
    for figure in FIGURES:
        if figure.name in outputs:
            makers[figure.name](outputs[figure.name])
            log.info("wrote %s", outputs[figure.name])
