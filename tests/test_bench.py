"""The benchmark's own arithmetic and one of its workers (the benchmark itself is not run here)."""

from __future__ import annotations

import math

from bench import benchmark as bench


def test_scaling_worker_times_a_training_step_of_both_paths():
    for impl in ("reference", "fast"):
        row = bench.scaling_worker(impl, n_bins=6, batch_size=4, device="cpu")
        assert row["impl"] == impl and row["step_seconds"] > 0 and row["peak_rss_gib"] > 0.1
        assert math.isclose(row["trials_per_second"], 4 / row["step_seconds"])


def test_pack_report_sets_each_pack_beside_its_members_alone():
    def pack(members: int, epoch: float, wall: float) -> dict:
        return {  # the keys of harness.time_pack, and the process's seconds
            "members": members,
            "epoch_seconds_median": epoch,
            "member_epoch_seconds": epoch / members,
            "train_seconds": 10.0 * epoch,
            "sampling_seconds": 2.0 * members,
            "sampling_seconds_per_member": 2.0,
            "peak_rss_gib": 1.0,
            "peak_gpu_gib": None,
            "process_seconds": wall,
        }

    report = {
        "machine": {"cpus": 2, "torch_threads": 2, "torch": "x", "device": "cpu"},
        "config": {"epochs": 5},
        "packs": [pack(1, 2.0, 20.0), pack(4, 4.0, 30.0)],
        "alone": [{"process_seconds": 15.0}] * 4,
    }
    lines = bench.format_pack_report(report).splitlines()
    # a pack of 4: 1.0 s per member per epoch, its epoch 2.00 times the pack of 1's 2.0 s; its
    # 30 s process against its members' 4 x 15 s one after another
    timed, walls = [line.split() for line in lines if line.split()[:1] == ["4"]]
    assert timed == ["4", "4.000", "1.0000", "2.00", "40.0", "8.00", "2.00", "1.00", "-"]
    assert walls == ["4", "30.0", "60.0", "0.50"]


def test_report_states_ratios_and_peak_memory():
    path = {
        "epoch_seconds_median": 1.0,
        "epoch_seconds_first": 1.2,
        "train_trials_per_second": 800.0,
        "sampling_seconds": 6.0,
        "peak_rss_train_gib": 0.7,
        "peak_rss_sampling_gib": 0.5,
        "valid_co_bps": 0.5,
        "valid_fp_bps": 0.4,
        "valid_rate_r2": 0.8,
        "truth_co_bps": 0.6,
        "truth_fp_bps": 0.5,
    }
    report = {
        "machine": {"cpus": 2, "torch_threads": 2, "torch": "x", "device": "cpu"},
        "config": {"epochs": 50},
        "paths": {
            "reference": {**path, "epoch_seconds_median": 2.5, "sampling_seconds": 12.0},
            "fast": path,
        },
        "ratios": {"epoch_speedup": 2.5, "sampling_speedup": 2.0},
        "peak_rss_fast_gib": 0.7,
        "scaling": [],
    }
    text = bench.format_report(report)
    assert "epoch speed-up (reference / fast): 2.50x\n" in text
    assert "sampling speed-up (reference / fast): 2.00x\n" in text
    assert "peak RSS of the fast path: 0.700 GiB" in text
    assert "target" not in text  # the targets of an earlier issue are gone
