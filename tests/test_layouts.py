"""Every NLB layout through the whole pipeline, on the built-in synthetic source in that layout.

One workdir holds the val-phase configfiles of MC_RTT, Area2_Bump and DMFC_RSG (config/) and
seven tiny test-phase configfiles, one per NLB dataset, named as `make submission` wants them
(submit/). The module runs the val-phase workflow of the three (prepare and targets at 5 and 20
ms, a model at 20 ms trained for 30 epochs, then evaluate, figures, NWB export), then `make
submission` on all seven (test phase, 2 epochs: its test checks shapes and that nlb_tools scores
every group, not what the models learnt; the three share their fetched files with the val phase)
and checks each against nlb_tools' own functions.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import BIN, REPO, WORKFLOW_HPARAMS, environment, run_snakemake

from lfads.data.layouts import LAYOUTS, group_name
from lfads.evaluation.submission import NLB_DATASETS, nlb_submission, read_submission

pytestmark = pytest.mark.slow

NEW_LAYOUTS = ("mc_rtt", "area2_bump", "dmfc_rsg")
# 40 val and test trials: DMFC_RSG's tp corr needs two of each (is_eye, theta, is_short) condition.
SYNTHETIC = {
    "seed": 3,
    "n_heldin": 12,
    "n_heldout": 4,
    "n_train_trials": 40,
    "n_val_trials": 40,
    "n_test_trials": 40,
    "n_unused_trials": 3,
}
FIGURES = {
    "mc_rtt": {"best_velocity"},
    "area2_bump": {"best_velocity", "best_psth"},
    "dmfc_rsg": {"best_psth"},
}
METRICS = {  # nlb_tools' metrics of each layout (summary columns)
    "mc_rtt": {"nlb_co_bps", "nlb_fp_bps", "nlb_vel_r2"},
    "area2_bump": {"nlb_co_bps", "nlb_fp_bps", "nlb_vel_r2", "nlb_psth_r2"},
    "dmfc_rsg": {"nlb_co_bps", "nlb_fp_bps", "nlb_tp_corr", "nlb_psth_r2"},
}


def configfile(dataset: str, epochs: int) -> dict:
    return {
        "dataset": dataset,
        "nlb_layout": dataset,
        "bin_widths": [5, 20],
        "source": {"synthetic": dict(SYNTHETIC)},
        "targets": {"mem_mb": 2000},
        "model": {
            "bin_width": 20,
            "n_samples": 2,
            "hparams": {
                **WORKFLOW_HPARAMS,
                "batch_size": 8,
                "max_epochs": epochs,
                "kl_increase_epoch": max(1, epochs // 3),
                "l2_increase_epoch": max(1, epochs // 3),
            },
        },
        "search": {"grid": {"dropout": [0.1]}},
        "resources": {
            "train": {"gpu": 0, "runtime": 30, "mem_mb": 2000, "threads": 1},
            "infer": {"gpu": 0, "runtime": 10, "mem_mb": 2000, "threads": 1},
        },
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The val phase of the three new layouts; `make submission` of all seven."""
    folder = tmp_path_factory.mktemp("layouts")
    (folder / "workflow").symlink_to(REPO / "workflow")  # (make submission runs snakemake here)
    (folder / "config").mkdir()
    (folder / "submit").mkdir()
    for dataset in NLB_DATASETS:
        text = yaml.safe_dump(configfile(dataset, epochs=2))
        (folder / "submit" / f"{dataset}.yaml").write_text(text)
    for dataset in NEW_LAYOUTS:
        text = yaml.safe_dump(configfile(dataset, epochs=30))
        (folder / "config" / f"{dataset}.yaml").write_text(text)
        done = run_snakemake("--cores", "2", "--configfile", f"config/{dataset}.yaml", cwd=folder)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = " ".join(f"submit/{dataset}.yaml" for dataset in NLB_DATASETS)
    done = subprocess.run(
        [
            "make",
            "-f",
            str(REPO / "Makefile"),
            "submission",
            "STAMP=",
            f"BIN={BIN}",
            f"SNAKEMAKE={BIN}/snakemake",
            f"NLB_CONFIGFILES={files}",
        ],
        cwd=folder,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def results(workdir: Path, dataset: str, phase: str = "val") -> Path:
    return workdir / "results" / dataset / phase


def nwb(workdir: Path, role: str, dataset: str) -> Path:
    from lfads.data.synthetic import ASSET_PATHS

    return workdir / "resources" / "data" / dataset / ASSET_PATHS[role]


def nlb_dataset(path: Path, bin_width: int):
    from nlb_tools.nwb_interface import NWBDataset

    dataset = NWBDataset(str(path))
    dataset.resample(bin_width)
    return dataset


@pytest.mark.parametrize("dataset", NEW_LAYOUTS)
def test_each_layout_runs_end_to_end_with_its_own_metrics_and_figures(workdir, dataset):
    import pandas as pd
    from pynwb import NWBHDF5IO

    folder = results(workdir, dataset)
    summary = pd.read_csv(folder / "summary.tsv", sep="\t")
    assert METRICS[dataset] <= set(summary.columns)
    absent = {"nlb_vel_r2", "nlb_psth_r2", "nlb_tp_corr"} - METRICS[dataset]
    assert not absent & set(summary.columns)
    for column in METRICS[dataset]:
        assert np.isfinite(summary[column]).all(), column
    figures = {path.stem for path in (folder / "figures").glob("*.png")}
    layout_figures = {"best_velocity", "best_psth"}
    assert figures & layout_figures == FIGURES[dataset]
    assert {"best_raster", "best_factors", "best_rates_vs_truth", "training_curves"} <= figures
    with NWBHDF5IO(str(folder / "best_rates.nwb"), "r") as io:
        exported = io.read()  # the NLB train trials (the model's train and valid) and eval
        assert len(exported.trials) == SYNTHETIC["n_train_trials"] + SYNTHETIC["n_val_trials"]


@pytest.mark.parametrize("dataset", NEW_LAYOUTS)
def test_true_rates_beat_smoothing_and_the_model_learns(workdir, dataset):
    """The truth scores above the smoothing baseline on every layout, and 30 epochs already predict
    held-out spikes better than each neuron's mean rate."""
    import json

    import pandas as pd

    references = json.loads((results(workdir, dataset) / "references.json").read_text())
    assert references["true rates"]["co-bps"] > references["smoothing"]["co-bps"] > 0
    summary = pd.read_csv(results(workdir, dataset) / "summary.tsv", sep="\t")
    assert summary["nlb_co_bps"].iloc[0] > 0
    if dataset == "dmfc_rsg":  # a faster neural trajectory produces a shorter interval
        assert references["true rates"]["tp corr"] < -0.1


@pytest.mark.parametrize("dataset", NEW_LAYOUTS)
@pytest.mark.parametrize("bin_width", [5, 20])
def test_prepare_and_targets_equal_nlb_tools_on_the_same_file(workdir, dataset, bin_width):
    from nlb_tools.make_tensors import (
        make_eval_input_tensors,
        make_eval_target_tensors,
        make_train_input_tensors,
    )

    from lfads.evaluation.submission import nlb_order
    from lfads.formats.prepared import read_prepared

    folder = results(workdir, dataset)
    nlb = nlb_dataset(nwb(workdir, "train", dataset), bin_width)
    train = make_train_input_tensors(
        nlb,
        dataset,
        "train",
        save_file=False,
        include_forward_pred=True,
        include_behavior=LAYOUTS[dataset].has_behavior_series,
    )
    prepared = read_prepared(folder / f"prepared_{bin_width}ms.h5")
    splits = prepared.splits
    recon = nlb_order(prepared, splits["train"].recon_data, splits["valid"].recon_data)
    expected = np.concatenate(
        [
            np.concatenate([train["train_spikes_heldin"], train["train_spikes_heldout"]], axis=2),
            np.concatenate(
                [train["train_spikes_heldin_forward"], train["train_spikes_heldout_forward"]],
                axis=2,
            ),
        ],
        axis=1,
    )
    np.testing.assert_array_equal(recon, expected)
    if "train_behavior" in train:
        behavior = nlb_order(prepared, splits["train"].behavior, splits["valid"].behavior)
        np.testing.assert_allclose(behavior, train["train_behavior"], rtol=1e-6)
    eval_heldin = make_eval_input_tensors(nlb, dataset, "val", save_file=False)
    np.testing.assert_array_equal(
        splits["eval"].encod_data, np.nan_to_num(eval_heldin["eval_spikes_heldin"])
    )

    targets = make_eval_target_tensors(
        nlb, dataset, "train", "val", include_psth=True, save_file=False
    )[group_name(dataset, bin_width)]
    with h5py.File(folder / f"targets_{bin_width}ms.h5", "r") as file:
        ours = file[group_name(dataset, bin_width)]
        assert set(ours) == set(targets)
        for key, value in targets.items():
            if key.endswith("cond_idx"):  # (ragged: one array of trial rows per condition)
                for mine, theirs in zip(ours[key][()], value, strict=True):
                    np.testing.assert_array_equal(mine, np.ravel(theirs))
            else:  # (written as nlb_tools' save_to_h5 writes: floats as float32)
                np.testing.assert_allclose(
                    ours[key][()], np.asarray(value).astype(ours[key].dtype), err_msg=key
                )


def test_dmfc_tp_corr_is_nlb_tools_own_on_the_same_rates(workdir):
    import json

    from nlb_tools.evaluation import speed_tp_correlation

    folder = results(workdir, "dmfc_rsg")
    submission = nlb_submission(
        folder / "prepared_20ms.h5", folder / "runs/dropout~0.1/inferred.h5"
    )
    group = submission["dmfc_rsg_20"]
    with h5py.File(folder / "targets_20ms.h5", "r") as file:
        spikes = file["dmfc_rsg_20/eval_spikes_heldout"][()]
        behavior = file["dmfc_rsg_20/eval_behavior"][()]
    rates = np.concatenate([group["eval_rates_heldin"], group["eval_rates_heldout"]], axis=2)
    expected = speed_tp_correlation(spikes, rates.astype(float), behavior)
    metrics = json.loads((folder / "runs/dropout~0.1/metrics.json").read_text())
    assert metrics["tp corr"] == pytest.approx(expected, rel=1e-6)


def test_area2_bump_decodes_active_and_passive_trials_apart(workdir):
    """nlb_tools fits one velocity decoder per ctr_hold_bump; our vel R2 is their mean."""
    import json

    from nlb_tools.evaluation import velocity_decoding

    folder = results(workdir, "area2_bump")
    group = nlb_submission(folder / "prepared_20ms.h5", folder / "runs/dropout~0.1/inferred.h5")[
        "area2_bump_20"
    ]
    with h5py.File(folder / "targets_20ms.h5", "r") as file:
        targets = {key: file["area2_bump_20"][key][()] for key in file["area2_bump_20"]}
    assert targets["train_decode_mask"].shape[1] == 2  # active, passive
    train = np.concatenate([group["train_rates_heldin"], group["train_rates_heldout"]], axis=2)
    evals = np.concatenate([group["eval_rates_heldin"], group["eval_rates_heldout"]], axis=2)
    split = velocity_decoding(
        train,
        targets["train_behavior"],
        targets["train_decode_mask"],
        evals,
        targets["eval_behavior"],
        targets["eval_decode_mask"],
    )
    metrics = json.loads((folder / "runs/dropout~0.1/metrics.json").read_text())
    assert metrics["vel R2"] == pytest.approx(split, rel=1e-6)


def test_the_seven_dataset_submission_has_nlb_tools_test_phase_shapes_and_is_scored(workdir):
    """`make submission` on synthetic stand-ins of all seven datasets: one file, every group, the
    shapes of nlb_tools' test-phase tensors, and nlb_tools' evaluate scores every group against
    held-out spikes drawn from the test trials' true rates."""
    from nlb_tools.evaluation import evaluate
    from nlb_tools.make_tensors import make_eval_input_tensors, make_train_input_tensors

    combined = read_submission(workdir / "results" / "submission_test.h5")
    assert sorted(combined) == sorted(f"{dataset}_20" for dataset in NLB_DATASETS)
    targets = {}
    rng = np.random.default_rng(0)
    for dataset in NLB_DATASETS:
        group = combined[f"{dataset}_20"]
        nlb_train = nlb_dataset(nwb(workdir, "train", dataset), 20)
        train = make_train_input_tensors(
            nlb_train,
            dataset,
            ["train", "val"],
            save_file=False,
            include_forward_pred=True,
            include_behavior=LAYOUTS[dataset].has_behavior_series,
        )
        test = make_eval_input_tensors(
            nlb_dataset(nwb(workdir, "test", dataset), 20), dataset, "test", save_file=False
        )["eval_spikes_heldin"]
        n_test, n_bins, n_heldin = test.shape
        n_heldout, n_fwd = (
            train["train_spikes_heldout"].shape[2],
            train["train_spikes_heldin_forward"].shape[1],
        )
        assert group["train_rates_heldin"].shape == train["train_spikes_heldin"].shape
        assert group["train_rates_heldout"].shape == train["train_spikes_heldout"].shape
        assert group["eval_rates_heldin"].shape == (n_test, n_bins, n_heldin)
        assert group["eval_rates_heldout"].shape == (n_test, n_bins, n_heldout)
        assert group["eval_rates_heldin_forward"].shape == (n_test, n_fwd, n_heldin)
        assert group["eval_rates_heldout_forward"].shape == (n_test, n_fwd, n_heldout)
        # Held-out spikes of the test trials from their true rates (what EvalAI keeps).
        truth = read_prepared_truth(results(workdir, dataset, "test") / "prepared_20ms.h5")
        spikes = rng.poisson(truth).astype(float)
        n_behavior = 5 if dataset == "dmfc_rsg" else 2
        behaviour_shape = (n_test, n_behavior) if dataset == "dmfc_rsg" else (n_test, n_bins, 2)
        targets[f"{dataset}_20"] = {
            "eval_spikes_heldout": spikes[:, :n_bins, n_heldin:],
            "eval_spikes_heldin_forward": spikes[:, n_bins:, :n_heldin],
            "eval_spikes_heldout_forward": spikes[:, n_bins:, n_heldin:],
            "train_behavior": train_behavior(nlb_train, train),
            "eval_behavior": behaviour_of_test_trials(
                workdir, dataset, behaviour_shape, n_behavior
            ),
        }
    results_list = evaluate(targets, str(workdir / "results" / "submission_test.h5"))
    scored = {name for result in results_list for name in result}
    assert scored == {
        "mc_maze_20_split",
        "mc_rtt_20_split",
        "area2_bump_20_split",
        "dmfc_rsg_20_split",
        "mc_maze_scaling_20_split",
    }
    for result in results_list:
        for name, metrics in result.items():
            assert all(np.isfinite(value) for value in metrics.values()), name


def read_prepared_truth(path: Path) -> np.ndarray:
    from lfads.formats.prepared import read_prepared

    return read_prepared(path, keys=("truth",)).splits["eval"].truth


def train_behavior(nlb, train: dict) -> np.ndarray:
    """The NLB train and val trials' behaviour as nlb_tools makes it (test phase): `train`'s
    tensors (made with include_behavior), DMFC_RSG's trial conditions and tp from `nlb`."""
    if "train_behavior" not in train:
        info = nlb.trial_info[nlb.trial_info.split.isin(["train", "val"])]
        return info[["is_eye", "theta", "is_short", "ts", "tp"]].to_numpy(float)
    assert len(train["train_behavior"]) == len(train["train_spikes_heldin"])
    return train["train_behavior"]


def behaviour_of_test_trials(
    workdir: Path, dataset: str, shape: tuple, n_behavior: int
) -> np.ndarray:
    """Behaviour of the test trials, which their file does not hold: DMFC_RSG's conditions and tp
    from the truth and the file's set and go times; a velocity drawn at random elsewhere (the
    scores need only its shape)."""
    if dataset != "dmfc_rsg":
        return np.random.default_rng(1).normal(size=shape)
    from lfads.data.synthetic import DMFC_TS_MS, TRUTH_PATHS

    with h5py.File(workdir / "resources" / "data" / dataset / TRUTH_PATHS["test"], "r") as file:
        condition = file["trial_condition"][()]
    nlb = nlb_dataset(nwb(workdir, "test", dataset), 20)
    tp = (nlb.trial_info.go_time - nlb.trial_info.set_time).dt.total_seconds().to_numpy() * 1000
    is_short = condition // 5 % 2
    ts = np.array([DMFC_TS_MS[0], DMFC_TS_MS[1]])[is_short, condition % 5]
    return np.stack([condition // 20, 180.0 * (condition // 10 % 2), is_short, ts, tp], axis=1)
