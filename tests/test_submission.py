"""The whole benchmark's EvalAI file: combining per-dataset submissions, checked against nlb_tools'
format and scored by nlb_tools' own `evaluate` (the MC_Maze scaling datasets as one result)."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO, environment

from lfads.data.layouts import LAYOUTS, group_name
from lfads.evaluation.submission import (
    NLB_DATASETS,
    SUBMISSION_KEYS,
    SubmissionError,
    check_submission,
    combine_submissions,
    read_submission,
)

BIN_WIDTH = 20
N_TRAIN, N_EVAL, N_HELDIN, N_HELDOUT = 8, 6, 5, 3


def bins(dataset: str) -> tuple[int, int]:
    spec = LAYOUTS[dataset]
    return (spec.window_ms[1] - spec.window_ms[0]) // BIN_WIDTH, spec.forward_ms // BIN_WIDTH


def fake_group(dataset: str, seed: int) -> dict[str, np.ndarray]:
    """Seeded positive rates (spikes per bin) of the right shapes for `dataset` at BIN_WIDTH."""
    rng = np.random.default_rng(seed)
    n_obs, n_fwd = bins(dataset)
    shapes = {
        "train_rates_heldin": (N_TRAIN, n_obs, N_HELDIN),
        "train_rates_heldout": (N_TRAIN, n_obs, N_HELDOUT),
        "eval_rates_heldin": (N_EVAL, n_obs, N_HELDIN),
        "eval_rates_heldout": (N_EVAL, n_obs, N_HELDOUT),
        "eval_rates_heldin_forward": (N_EVAL, n_fwd, N_HELDIN),
        "eval_rates_heldout_forward": (N_EVAL, n_fwd, N_HELDOUT),
    }
    return {key: rng.uniform(0.05, 1.0, shapes[key]).astype(np.float32) for key in SUBMISSION_KEYS}


def write_fake_submission(path, dataset: str, seed: int):
    from nlb_tools.make_tensors import save_to_h5

    group = {group_name(dataset, BIN_WIDTH): fake_group(dataset, seed)}
    save_to_h5(group, str(path))
    return group


def fake_targets(submission: dict, datasets, seed: int = 9) -> dict:
    """nlb_tools evaluation targets for `datasets`: Poisson spikes of the submitted rates."""
    rng = np.random.default_rng(seed)
    targets = {}
    for dataset in datasets:
        arrays = submission[group_name(dataset, BIN_WIDTH)]
        targets[group_name(dataset, BIN_WIDTH)] = {
            "eval_spikes_heldout": rng.poisson(arrays["eval_rates_heldout"]).astype(float),
            "eval_spikes_heldin_forward": rng.poisson(arrays["eval_rates_heldin_forward"]),
            "eval_spikes_heldout_forward": rng.poisson(arrays["eval_rates_heldout_forward"]),
            "train_behavior": rng.normal(size=(N_TRAIN, bins(dataset)[0], 2)),
            "eval_behavior": rng.normal(size=(N_EVAL, bins(dataset)[0], 2)),
        }
    return targets


@pytest.mark.slow
def test_the_seven_files_combine_into_one_that_nlb_tools_scores(tmp_path):
    from nlb_tools.evaluation import evaluate

    paths, expected = [], {}
    for seed, dataset in enumerate(NLB_DATASETS):
        path = tmp_path / f"submission_{dataset}.h5"
        expected |= write_fake_submission(path, dataset, seed)
        paths.append(path)
    out = combine_submissions(paths, tmp_path / "submission_test.h5", whole=True)
    combined = read_submission(out)
    assert sorted(combined) == sorted(f"{dataset}_20" for dataset in NLB_DATASETS)
    for group, arrays in expected.items():
        for key in SUBMISSION_KEYS:
            np.testing.assert_array_equal(combined[group][key], arrays[key])
    with h5py.File(out, "r") as file:  # nlb_tools' save_to_h5 layout: float32 datasets in groups
        assert file["mc_rtt_20"]["eval_rates_heldout"].dtype == np.float32

    scored = ["mc_maze", *NLB_DATASETS[4:]]
    results = evaluate(fake_targets(combined, scored), str(out))
    by_split = {name: metrics for result in results for name, metrics in result.items()}
    assert sorted(by_split) == ["mc_maze_20_split", "mc_maze_scaling_20_split"]
    scaling = by_split["mc_maze_scaling_20_split"]
    for count in ("[500]", "[250]", "[100]"):  # large, medium, small
        # Spikes drawn from the submitted rates: a positive co-bps (the true rates score best).
        assert scaling[f"{count} co-bps"] > 0.0
        assert f"{count} fp-bps" in scaling and f"{count} vel R2" in scaling


def test_a_scaling_dataset_alone_is_refused(tmp_path):
    paths = []
    for seed, dataset in enumerate(("mc_maze", "mc_maze_large", "mc_maze_medium")):
        paths.append(tmp_path / f"{dataset}.h5")
        write_fake_submission(paths[-1], dataset, seed)
    with pytest.raises(SubmissionError, match="scaling datasets.*mc_maze_small': None"):
        combine_submissions(paths, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_the_whole_benchmark_needs_every_dataset_and_a_group_once(tmp_path):
    paths = []
    for seed, dataset in enumerate(NLB_DATASETS[1:]):
        paths.append(tmp_path / f"{dataset}.h5")
        write_fake_submission(paths[-1], dataset, seed)
    with pytest.raises(SubmissionError, match=r"missing \['mc_maze'\]"):
        combine_submissions(paths, tmp_path / "out.h5", whole=True)
    combine_submissions(paths, tmp_path / "six.h5")  # without whole: six datasets are fine
    with pytest.raises(SubmissionError, match="both hold group 'mc_rtt_20'"):
        combine_submissions([paths[0], paths[0]], tmp_path / "out.h5")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda group: group.pop("eval_rates_heldout"), r"lacks \['eval_rates_heldout'\]"),
        (
            lambda group: group.update(eval_rates_heldin=group["eval_rates_heldin"][:, :-1]),
            r"eval_rates_heldin has shape \(6, 34, 5\); expected \(trials, 35, neurons\)",
        ),
        (
            lambda group: group["train_rates_heldout"].__setitem__((0, 0, 0), np.nan),
            "finite and non-negative",
        ),
        (
            lambda group: group.update(eval_rates_heldout=group["eval_rates_heldout"][:5]),
            "eval_rates_heldin has 6 trials, eval_rates_heldout 5",
        ),
    ],
)
def test_check_names_what_is_wrong(change, message):
    group = fake_group("mc_maze", 0)
    change(group)
    with pytest.raises(SubmissionError, match=message):
        check_submission({"mc_maze_20": group})
    with pytest.raises(SubmissionError, match="'mc_maze_10' is not an NLB dataset"):
        check_submission({"mc_maze_10": fake_group("mc_maze", 0)})


@pytest.mark.slow
def test_command_line_writes_the_combined_file(tmp_path):
    paths = []
    for seed, dataset in enumerate(NLB_DATASETS[4:]):
        paths.append(tmp_path / f"{dataset}.h5")
        write_fake_submission(paths[-1], dataset, seed)
    command = [sys.executable, "-m", "lfads", "combine-submissions", "--out", "scaling.h5"]
    done = subprocess.run(
        [*command, *map(str, paths)],
        cwd=tmp_path,
        env=environment({"PYTHONPATH": str(REPO)}),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(read_submission(tmp_path / "scaling.h5")) == [
        "mc_maze_large_20",
        "mc_maze_medium_20",
        "mc_maze_small_20",
    ]


def test_the_test_phase_submission_of_a_configfile_is_a_workflow_target(
    tmp_path, snakemake_in_process
):
    """What `make submission` asks Snakemake for, dry-run on one NLB configfile."""
    from conftest import SNAKEFILE, job_count

    target = "results/mc_maze_small/test/submission_mc_maze_small.h5"
    result = snakemake_in_process(
        "--snakefile",
        SNAKEFILE,
        "--directory",
        str(tmp_path),
        "-n",
        "--configfile",
        str(REPO / "config" / "mc_maze_small.yaml"),
        "--config",
        "phase=test",
        "--",
        target,
    )
    assert result.returncode == 0, result.stdout
    assert job_count(result.stdout, "submission") == 1
    # the configfile's random search: 20 runs in packs of 8
    assert job_count(result.stdout, "run_files") == 20 and job_count(result.stdout, "train") == 3
    assert job_count(result.stdout, "targets") == 0  # the test phase has no local targets
