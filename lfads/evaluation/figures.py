"""Figures of a dataset's runs and of its best run (rule `figures`), with matplotlib's Agg backend.

Every function takes file paths and writes one PNG atomically. Rates are in
spikes per bin; figures show them as Hz. Runs that diverged are left out (`aggregate.read_summary`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lfads.evaluation.outputs import FIGURES
from lfads.formats.inferred import read_inferred
from lfads.formats.metrics import (
    EPOCH,
    TRAIN_LOSS,
    VALID_LOSS,
    VALID_RECON_SMOOTHED,
    read_metrics_csv,
)
from lfads.formats.prepared import PreparedAttributes, read_prepared
from lfads.formats.targets import read_targets
from lfads.infra.io import atomic_path

log = logging.getLogger(__name__)

METRICS = ["co-bps", "fp-bps", "vel R2", "psth R2", "tp corr", "rate R2", VALID_RECON_SMOOTHED]
N_EXAMPLE_TRIALS = 3
N_EXAMPLE_NEURONS = 4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_norm():
    from matplotlib.colors import LogNorm

    return LogNorm()


def _save(figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(figure)


def metrics_vs_hyperparameters(
    summary_tsv: str | Path, searched: list[str], out: str | Path
) -> None:
    """One panel per (metric, searched hyperparameter); the best run is marked."""
    from lfads.evaluation.aggregate import read_summary

    plt = _pyplot()
    table = read_summary(summary_tsv, scored_only=True)
    metrics = [m for m in METRICS if m in table]
    searched = searched or ["run"]
    figure, axes = plt.subplots(
        len(metrics),
        len(searched),
        squeeze=False,
        figsize=(3.2 * len(searched), 2.4 * len(metrics)),
    )
    for row, metric in enumerate(metrics):
        for column, key in enumerate(searched):
            ax = axes[row, column]
            x = table[key] if key in table else np.arange(len(table))
            ax.scatter(x, table[metric], s=18, color="0.3")
            ax.scatter(
                x[table.best],
                table[metric][table.best],
                s=60,
                facecolor="none",
                edgecolor="C3",
                label="best (valid recon)",
            )
            if (
                key in table
                and np.issubdtype(table[key].dtype, np.number)
                and (table[key] > 0).all()
                and table[key].max() / table[key].min() > 20
            ):
                ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(metric)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle("Metrics against searched hyperparameters")
    _save(figure, out)


def training_curves(run_dirs: dict[str, Path], out: str | Path) -> None:
    """Train and valid loss per epoch of every run."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for index, (name, folder) in enumerate(sorted(run_dirs.items())):
        table = read_metrics_csv(Path(folder) / "metrics.csv")
        for ax, column in zip(axes, (TRAIN_LOSS, VALID_LOSS)):
            if column in table:
                rows = table.dropna(subset=[column])
                ax.plot(rows[EPOCH], rows[column], color=f"C{index % 10}", label=name, lw=1)
    for ax, title in zip(axes, ("train loss", "valid loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
    axes[0].legend(fontsize=6)
    _save(figure, out)


def _bin_hz(attributes: PreparedAttributes) -> float:
    return 1000.0 / float(attributes.bin_width_ms)


def raster_and_rates(prepared_path: str | Path, inferred_path: str | Path, out: str | Path) -> None:
    """Observed spikes beside inferred rates of example validation trials (all neurons and bins)."""
    plt = _pyplot()
    prepared = read_prepared(prepared_path, keys=("recon_data",))
    spikes = prepared.splits["valid"].recon_data[:N_EXAMPLE_TRIALS]
    inferred = read_inferred(inferred_path, keys=("rates",)).splits
    rates = inferred["valid"].rates[:N_EXAMPLE_TRIALS] * _bin_hz(prepared.attributes)
    n_obs, n_heldin = prepared.attributes.n_obs_bins, prepared.attributes.n_heldin
    figure, axes = plt.subplots(2, len(spikes), figsize=(4 * len(spikes), 6), squeeze=False)
    for trial in range(len(spikes)):
        axes[0, trial].imshow(spikes[trial].T, aspect="auto", cmap="Greys", interpolation="nearest")
        image = axes[1, trial].imshow(
            rates[trial].T, aspect="auto", cmap="viridis", interpolation="nearest"
        )
        for ax in axes[:, trial]:
            ax.axvline(n_obs - 0.5, color="C3", lw=0.8)
            ax.axhline(n_heldin - 0.5, color="C1", lw=0.8)
        axes[0, trial].set_title(f"valid trial {trial}: spikes")
        axes[1, trial].set_title("inferred rates (Hz)")
        axes[1, trial].set_xlabel("bin (red: forward prediction starts)")
    axes[0, 0].set_ylabel("neuron (orange: held-out below)")
    figure.colorbar(image, ax=axes[1, -1])
    _save(figure, out)


def psths(
    targets_path: str | Path,
    group: str,
    inferred_path: str | Path,
    prepared_path: str | Path,
    out: str | Path,
) -> None:
    """nlb_tools' target PSTHs beside PSTHs of the inferred eval rates, per condition, of example
    neurons."""
    plt = _pyplot()
    attributes = read_prepared(prepared_path, keys=()).attributes
    targets = read_targets(targets_path, group, keys=("psth", "eval_cond_idx"))
    true = targets.psth * _bin_hz(attributes)  # (conditions, T, neurons)
    cond_idx = targets.eval_cond_idx
    n_obs = attributes.n_obs_bins
    rates = read_inferred(inferred_path, keys=("rates",)).splits["eval"].rates[:, :n_obs]
    rates = rates * _bin_hz(attributes)
    neurons = np.linspace(0, true.shape[2] - 1, N_EXAMPLE_NEURONS).astype(int)
    figure, axes = plt.subplots(1, len(neurons), figsize=(4 * len(neurons), 3.2), squeeze=False)
    for ax, neuron in zip(axes[0], neurons):
        for condition, trials in enumerate(cond_idx[:6]):
            if len(trials) == 0:
                continue
            color = f"C{condition % 10}"
            ax.plot(true[condition, :, neuron], color=color, lw=1)
            ax.plot(
                rates[np.asarray(trials, dtype=int), :, neuron].mean(0), color=color, lw=1, ls="--"
            )
        ax.set_title(f"neuron {neuron}")
        ax.set_xlabel("bin")
    axes[0, 0].set_ylabel("rate (Hz)")
    figure.suptitle("PSTHs per condition (colour): nlb_tools target (solid), inferred (dashed)")
    _save(figure, out)


def factor_trajectories(
    prepared_path: str | Path, inferred_path: str | Path, out: str | Path
) -> None:
    """Condition-averaged factors on their top principal components, coloured by condition."""
    plt = _pyplot()
    inferred = read_inferred(inferred_path, keys=("factors",)).splits
    factors = np.concatenate([inferred["train"].factors, inferred["valid"].factors])
    prepared = read_prepared(prepared_path, keys=("condition",)).splits
    if prepared["train"].condition is not None:
        conditions = np.concatenate([prepared["train"].condition, prepared["valid"].condition])
    else:
        conditions = np.zeros(len(factors), dtype=int)
    n_trials, n_bins, n_factors = factors.shape
    flat = factors.reshape(-1, n_factors)
    centred = flat - flat.mean(0)
    _, _, components = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    projected = (centred @ components[:3].T).reshape(n_trials, n_bins, -1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for index, condition in enumerate(np.unique(conditions)[:20]):
        mean = projected[conditions == condition].mean(0)
        axes[0].plot(mean[:, 0], mean[:, 1], color=f"C{index % 10}", lw=1)
        axes[0].plot(mean[0, 0], mean[0, 1], "o", color=f"C{index % 10}", ms=3)
        axes[1].plot(mean[:, 0], color=f"C{index % 10}", lw=1)
    axes[0].set_xlabel("PC 1")
    axes[0].set_ylabel("PC 2")
    axes[0].set_title("factors, mean per condition (dot: first bin)")
    axes[1].set_xlabel("bin")
    axes[1].set_ylabel("PC 1")
    _save(figure, out)


def decoded_velocity(
    targets_path: str | Path,
    group: str,
    inferred_path: str | Path,
    prepared_path: str | Path,
    out: str | Path,
) -> None:
    """Ridge decoding of behaviour from the inferred rates (fit on train trials), against the truth
    on eval trials."""
    from sklearn.linear_model import Ridge

    from lfads.evaluation.submission import nlb_submission

    plt = _pyplot()
    submission = nlb_submission(prepared_path, inferred_path)[group]
    targets = read_targets(targets_path, group, keys=("train_behavior", "eval_behavior"))
    train_behavior, eval_behavior = targets.train_behavior, targets.eval_behavior
    train_rates = np.concatenate(
        [submission["train_rates_heldin"], submission["train_rates_heldout"]], axis=2
    )
    eval_rates = np.concatenate(
        [submission["eval_rates_heldin"], submission["eval_rates_heldout"]], axis=2
    )
    x, y = (
        train_rates.reshape(-1, train_rates.shape[2]),
        train_behavior.reshape(-1, train_behavior.shape[2]),
    )
    keep = np.isfinite(y).all(1)
    decoder = Ridge(alpha=1.0).fit(x[keep], y[keep])
    predicted = decoder.predict(eval_rates.reshape(-1, eval_rates.shape[2])).reshape(
        eval_behavior.shape
    )
    figure, axes = plt.subplots(
        eval_behavior.shape[2],
        N_EXAMPLE_TRIALS,
        squeeze=False,
        figsize=(4 * N_EXAMPLE_TRIALS, 2.6 * eval_behavior.shape[2]),
    )
    for trial in range(min(N_EXAMPLE_TRIALS, len(eval_behavior))):
        for axis in range(eval_behavior.shape[2]):
            ax = axes[axis, trial]
            ax.plot(eval_behavior[trial, :, axis], color="k", lw=1, label="true")
            ax.plot(predicted[trial, :, axis], color="C0", lw=1, label="decoded")
            ax.set_title(f"eval trial {trial}, dimension {axis}")
    axes[0, 0].legend(fontsize=7)
    _save(figure, out)


def rates_vs_truth(prepared_path: str | Path, inferred_path: str | Path, out: str | Path) -> None:
    """Synthetic data: inferred against true rates, as example traces and a density of all bins."""
    plt = _pyplot()
    prepared = read_prepared(prepared_path, keys=("truth",))
    truth = prepared.splits["eval"].truth * _bin_hz(prepared.attributes)
    rates = read_inferred(inferred_path, keys=("rates",)).splits["eval"].rates
    rates = rates * _bin_hz(prepared.attributes)
    figure, axes = plt.subplots(
        1, 1 + N_EXAMPLE_NEURONS, figsize=(4 * (1 + N_EXAMPLE_NEURONS), 3.4)
    )
    limit = float(np.percentile(truth, 99.5))
    axes[0].hist2d(
        truth.ravel(),
        rates.ravel(),
        bins=60,
        range=[[0, limit], [0, limit]],
        cmap="Greys",
        norm=_log_norm(),
    )
    axes[0].plot([0, limit], [0, limit], color="C3", lw=0.8)
    axes[0].set_xlabel("true rate (Hz)")
    axes[0].set_ylabel("inferred rate (Hz)")
    for ax, neuron in zip(
        axes[1:], np.linspace(0, truth.shape[2] - 1, N_EXAMPLE_NEURONS).astype(int)
    ):
        ax.plot(truth[0, :, neuron], color="k", lw=1, label="true")
        ax.plot(rates[0, :, neuron], color="C0", lw=1, label="inferred")
        ax.set_title(f"eval trial 0, neuron {neuron}")
    axes[1].legend(fontsize=7)
    _save(figure, out)


def all_figures(
    summary_tsv: Path,
    run_dir: Path,
    runs: dict[str, dict],
    prepared_path: Path,
    targets_path: Path | None,
    group: str,
    outputs: dict[str, Path],
) -> None:
    """Write every figure named in `outputs` ({figure name: PNG path}, names from FIGURES)."""
    from lfads.evaluation.aggregate import best_run, scored_runs

    unknown = sorted(set(outputs) - {figure.name for figure in FIGURES})
    if unknown:
        raise ValueError(
            f"unknown figure(s) {', '.join(unknown)}; lfads.evaluation.outputs.FIGURES lists "
            f"{', '.join(figure.name for figure in FIGURES)}"
        )

    best = Path(run_dir) / best_run(summary_tsv)
    scored = scored_runs(summary_tsv)  # the runs that did not diverge
    searched = sorted({key for params in runs.values() for key in params})
    inferred = best / "inferred.h5"
    makers = {
        "metrics_vs_hyperparameters": lambda out: metrics_vs_hyperparameters(
            summary_tsv, searched, out
        ),
        "training_curves": lambda out: training_curves(
            {name: Path(run_dir) / name for name in runs if name in scored}, out
        ),
        "best_raster": lambda out: raster_and_rates(prepared_path, inferred, out),
        "best_factors": lambda out: factor_trajectories(prepared_path, inferred, out),
        "best_psth": lambda out: psths(targets_path, group, inferred, prepared_path, out),
        "best_velocity": lambda out: decoded_velocity(
            targets_path, group, inferred, prepared_path, out
        ),
        "best_rates_vs_truth": lambda out: rates_vs_truth(prepared_path, inferred, out),
    }
    for figure in FIGURES:
        if figure.name in outputs:
            makers[figure.name](outputs[figure.name])
            log.info("wrote %s", outputs[figure.name])
