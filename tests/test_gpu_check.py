"""The GPU check's CPU side: its exit without CUDA, and each piece run on the CPU against itself."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch

from bench import gpu_check
from lfads.model.priors import AutoregressiveNormalPrior

ENVIRONMENT_KEYS = {"device_name", "driver", "torch", "cuda", "gpu_count", "cpu_threads"}
EQUIVALENCE_RESULT = {  # what `compare` returns
    "loss": 1.0,
    "loss_error": 0.0,
    "loss_tolerance_used": 0.0,
    "gradient_tolerance_used": 0.1,
    "worst_gradient": "decoder.generator.weight_hh",
    "gradients_compared": 3,
    "mismatched_gradient_names": [],
    "passed": True,
}
PORTABILITY_RESULT = {  # what `checkpoint_portability` yields
    "first_device": "cpu",
    "second_device": "cpu",
    "epochs": [0, 1, 2],
    "largest_relative_difference": 0.0,
    "allowed_relative_difference": 1e-3,
    "problems": [],
    "passed": True,
}


def tiny_args(tmp_path, **changes) -> argparse.Namespace:
    settings = dict(
        out=str(tmp_path / "gpu_check.json"),
        device="cpu",
        tiny=True,
        epochs=2,
        samples=2,
        skip_compiled=True,
        threads=1,
        budget_seconds=480.0,
        part_seconds=150.0,
        packs=(1, 4),
    )
    return argparse.Namespace(**{**settings, **changes})


def test_without_cuda_it_says_so_in_one_line_and_exits_3(tmp_path):
    out = tmp_path / "gpu_check.json"
    process = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=gpu_check.harness.REPO,  # (bench/ is outside the package: python -m finds it from here)
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # no GPU, even on a machine with one
    )
    assert process.returncode == gpu_check.EXIT_NO_CUDA == 3
    assert process.stdout == ""
    lines = process.stderr.splitlines()
    assert len(lines) == 1
    assert "no CUDA device visible" in lines[0] and f"torch {torch.__version__}" in lines[0]
    assert ("built with CUDA" in lines[0]) == (torch.version.cuda is not None)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv", [["--epochs", "1"], ["--samples", "0"], ["--device", "tpu"], ["--part-seconds", "0"]]
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(["--device", "cpu", *argv])
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_paths_agree_within_the_float32_tolerances():
    results = dict(gpu_check.equivalence_results("cpu", ["fast", "reference"], ["small"]))
    assert sorted(results) == [
        f"equivalence/{impl}/small/{mode}"
        for impl in ("fast", "reference")
        for mode in ("means", "sampled")
    ]
    model, _ = gpu_check.equivalence_model("small")
    n_parameters = sum(p.requires_grad for p in model.parameters())
    for key, found in results.items():
        assert found["passed"], key
        assert (
            found["gradients_compared"] == n_parameters and not found["mismatched_gradient_names"]
        )
    for mode in ("means", "sampled"):  # the fast path against itself: bit-equal
        fast = results[f"equivalence/fast/small/{mode}"]
        assert fast["loss_error"] == 0 and fast["gradient_tolerance_used"] == 0
        # the reference path rounds differently: seen, and well inside the tolerance
        reference = results[f"equivalence/reference/small/{mode}"]
        assert 0 < reference["gradient_tolerance_used"] < 0.5
        assert reference["worst_gradient"] in dict(model.named_parameters())
    # the sampled comparison does sample: its loss is not the posterior means' loss
    means, sampled = (results[f"equivalence/fast/small/{m}"]["loss"] for m in ("means", "sampled"))
    assert abs(sampled - means) > 0.01 * abs(means)


def test_the_comparison_catches_a_real_difference():
    model, batch = gpu_check.equivalence_model("small", seed=0)
    reference = gpu_check.loss_and_gradients(model, batch, None)
    other, _ = gpu_check.equivalence_model("small", seed=1)  # other weights
    found = gpu_check.compare(reference, gpu_check.loss_and_gradients(other, batch, None))
    assert not found["passed"] and found["loss_tolerance_used"] > 1
    # a recurrent matrix 0.1 % larger: the gradients are off by many tolerances
    slightly = gpu_check.on_device(model, "fast", "cpu")
    with torch.no_grad():
        slightly.decoder.generator.weight_hh.mul_(1.001)
    found = gpu_check.compare(reference, gpu_check.loss_and_gradients(slightly, batch, None))
    assert not found["passed"] and found["gradient_tolerance_used"] > 10
    # a NaN gradient, or a gradient missing on one side, fails too
    broken = gpu_check.LossAndGradients(reference.loss, dict(reference.gradients))
    name = next(iter(broken.gradients))
    broken.gradients[name] = torch.full_like(broken.gradients[name], math.nan)
    found = gpu_check.compare(reference, broken)
    assert not found["passed"] and found["worst_gradient"] == name
    del broken.gradients[name]
    found = gpu_check.compare(reference, broken)
    assert not found["passed"] and found["mismatched_gradient_names"] == [name]
    assert gpu_check.compare(reference, reference)["passed"]


def test_posterior_noise_drawn_on_the_cpu_repeats_with_its_seed():
    model, batch = gpu_check.equivalence_model("small")
    first, again, other = (
        gpu_check.loss_and_gradients(model, batch, seed).loss for seed in (5, 5, 6)
    )
    assert first == again and first != other
    assert isinstance(model.ic_prior, type(model.co_prior))  # the priors are put back
    assert not isinstance(model.ic_prior, gpu_check.NoiseFromCPU)
    model.co_prior = AutoregressiveNormalPrior(dim=model.hparams.co_dim)
    with pytest.raises(ValueError, match="AutoregressiveNormalPrior: the sampled comparison"):
        gpu_check.loss_and_gradients(model, batch, 5)


def test_the_report_has_every_key_and_writes_valid_json(tmp_path):
    args = tiny_args(tmp_path)
    data = {config: tmp_path / f"{config}.h5" for config in gpu_check.TINY_CONFIGS}
    parts = gpu_check.plan_parts(args, tmp_path, data)
    keys = [key for part in parts for key in part.keys]
    figures = {name: 1.5 for name, _, _ in gpu_check.TIMING_FIGURES}
    results = {
        key: EQUIVALENCE_RESULT if key.startswith("equivalence") else PORTABILITY_RESULT
        for key in keys
        if not key.startswith(("timing", "packs")) and "compiled" not in key
    }
    results["packs/1"] = {
        "members": 1,
        "epoch_seconds_median": 2.0,
        "member_epoch_seconds": 2.0,
        "train_seconds": 10.0,
        "sampling_seconds": 1.5,
        "sampling_seconds_per_member": 1.5,
        "peak_rss_gib": 0.75,
        "peak_gpu_gib": None,
    }
    results["equivalence/fast/small/means"] = {
        **EQUIVALENCE_RESULT,
        "passed": False,
        "loss_tolerance_used": math.nan,
        "gradient_tolerance_used": math.inf,
    }
    results["timing/reference/fast/train"] = figures
    results["timing/reference/fast/sample"] = figures
    results["timing/mc_maze/fast/train"] = figures  # its sampling ran out of time
    problems = {"timing/mc_maze/fast/sample": "skipped: over budget"}
    report = gpu_check.build_report(args, keys, results, problems, ["a failure"], 12.0)
    path = tmp_path / "out" / "gpu_check.json"
    gpu_check.write_report(path, report)
    written = json.loads(path.read_text())
    assert set(written) == {
        "passed",
        "failures",
        "environment",
        "settings",
        "configs",
        "equivalence",
        "portability",
        "timings",
        "packs",
        "wall_seconds",
    }
    assert written["packs"]["1"]["member_epoch_seconds"] == 2.0
    assert written["packs"]["4"] == {"status": "missing"}
    assert written["passed"] is False and written["failures"] == ["a failure"]
    assert ENVIRONMENT_KEYS <= set(written["environment"])
    assert written["environment"]["torch"] == torch.__version__
    assert set(written["equivalence"]["paths"]) == set(gpu_check.IMPLS)
    assert written["equivalence"]["paths"]["fast"]["small/means"]["loss_tolerance_used"] == "nan"
    assert set(written["portability"]) == {"device_to_cpu", "cpu_to_device"}
    assert set(written["timings"]) == {"reference", "mc_maze"}
    for config, paths in written["timings"].items():
        assert set(paths) == set(gpu_check.IMPLS)
        for impl, found in paths.items():
            assert set(figures) <= set(found), (config, impl)
    assert written["timings"]["reference"]["fast"]["status"] == "measured"
    assert written["timings"]["mc_maze"]["fast"]["status"] == "skipped: over budget"
    assert written["timings"]["mc_maze"]["fast"]["epoch_seconds_median"] == 1.5
    assert written["timings"]["mc_maze"]["reference"]["status"] == "missing"
    assert written["timings"]["mc_maze"]["reference"]["sampling_seconds"] is None
    assert written["equivalence"]["paths"]["compiled"]["small/means"]["status"] == "missing"
    printed = gpu_check.format_report(report)
    assert "FAILED:\n  a failure" in printed and "skipped: over budget" in printed
    (pack,) = [line.split() for line in printed.splitlines() if line.split()[:1] == ["1"]]
    assert pack == ["1", "2.000", "2.0000", "1.00", "10.0", "1.50", "1.50", "0.75", "-"]
    assert "       4  missing" in printed


def test_a_part_over_its_time_is_killed_and_an_unfinished_check_fails(tmp_path):
    args = tiny_args(tmp_path)
    parts = gpu_check.plan_parts(args, tmp_path, {"reference": "a.h5", "mc_maze": "b.h5"})
    results, problem = gpu_check.run_part(parts[0], args, timeout=0.3)  # under its imports' time
    assert results == {} and problem == "skipped: over budget"
    report = gpu_check.run_check(tiny_args(tmp_path, budget_seconds=5.0))  # too short to start
    assert not report["passed"]
    checks = [key for part in parts if part.is_check and not part.compiled for key in part.keys]
    assert len(checks) == 6
    assert sorted(report["failures"]) == sorted(
        f"{key}: skipped: over budget (not checked)" for key in checks
    )
    assert report["timings"]["reference"]["fast"]["status"] == "skipped: over budget"
    compiled = report["equivalence"]["paths"]["compiled"]["small/means"]
    assert compiled["status"] == "skipped: --skip-compiled"


@pytest.mark.slow
def test_timings_have_every_figure(tmp_path):
    from lfads.data.toydata import write_lorenz_prepared

    data_settings, hparams = gpu_check.TINY_CONFIGS["reference"]
    data = write_lorenz_prepared(tmp_path / "data.h5", **data_settings)
    results = dict(
        gpu_check.timing_results(
            {
                "config": "reference",
                "impl": "fast",
                "data": str(data),
                "run_dir": str(tmp_path / "run"),
                "hparams": hparams,
                "epochs": 3,
                "n_samples": 2,
            },
            "cpu",
        )
    )
    found = {**results["timing/reference/fast/train"], **results["timing/reference/fast/sample"]}
    for name, _, _ in gpu_check.TIMING_FIGURES:
        assert name in found, name
        if "gpu" in name or name == "compile_seconds_estimate":  # no GPU; not compiled
            assert found[name] is None, name
        else:
            assert found[name] > 0, name
    assert len(found["epoch_seconds"]) == 3
    assert found["epoch_seconds_median"] == statistics.median(found["epoch_seconds"][1:])
    assert math.isclose(
        found["train_trials_per_second"], found["train_trials"] / found["epoch_seconds_median"]
    )
    assert found["train_trials"] == 32 and found["sampled_trials"] == 40


@pytest.mark.slow
def test_a_checkpoint_resumes_on_the_other_device(tmp_path, monkeypatch):
    results = dict(gpu_check.checkpoint_portability("cpu", tmp_path / "resumed"))
    assert set(results) == {"portability/device_to_cpu", "portability/cpu_to_device"}
    for found in results.values():
        assert found["passed"], found["problems"]
        assert found["epochs"] == [0, 1, 2] and found["problems"] == []
        assert found["largest_relative_difference"] == 0  # the same device: bit-equal
    # a run that starts afresh instead of resuming has the same losses here, and is caught
    from lfads.training import train

    def train_afresh(data_files, hparams, out_dir, checkpoint_dir, max_epochs, **options):
        if max_epochs == 3 and "then" in str(out_dir):
            (checkpoint_dir / "last.ckpt").unlink()
        return original(
            data_files, hparams, out_dir, checkpoint_dir, max_epochs=max_epochs, **options
        )

    original = train.train_model
    monkeypatch.setattr(train, "train_model", train_afresh)
    results = dict(gpu_check.checkpoint_portability("cpu", tmp_path / "afresh"))
    for found in results.values():
        assert found["problems"] == [
            "the first 2 epochs are not the checkpoint's: it started afresh"
        ]


@pytest.mark.slow
def test_the_whole_check_on_the_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "gpu_check.json"
    process = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--tiny"]
        + ["--skip-compiled", "--threads", "1", "--packs", "1,3", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=gpu_check.harness.REPO,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    report = json.loads(out.read_text())
    assert report["passed"] and report["failures"] == []
    for impl in ("fast", "reference"):
        assert all(found["passed"] for found in report["equivalence"]["paths"][impl].values())
        for config in ("reference", "mc_maze"):
            assert report["timings"][config][impl]["status"] == "measured"
            assert report["timings"][config][impl]["sampling_seconds"] > 0
    assert all(found["passed"] for found in report["portability"].values())
    packs = report["packs"]  # the pack sizes asked for, each member its own
    assert set(packs) == {"1", "3"} and packs["3"]["members"] == 3
    assert packs["3"]["member_epoch_seconds"] == pytest.approx(
        packs["3"]["epoch_seconds_median"] / 3
    )
    assert "packs of the mc_maze config" in process.stdout
    assert "PASSED: every check" in process.stdout
