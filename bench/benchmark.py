"""Speed benchmark: the fast recurrent path beside the plain reference path (`make bench`).

The reference config: Lorenz data of 1,000 trials x 50 bins (40 observed + 10
forward) x 50 neurons (40 held in), 800 train / 200 valid, the mc_maze model
sizes, batch 256, 50 epochs. For each path (`rnn_impl`) it measures, each part
in its own process so that peak memory is each part's own:
- seconds per training epoch (train + validation), median after the first epoch;
- trials per second (training trials per epoch second);
- posterior sampling of 50 samples for all 1,000 trials (the second of two passes: the first
  warms up), and its peak RSS;
- co-bps, fp-bps and rate R2 against the true rates on the valid trials;
and then the seconds of one training step at the NLB sequence lengths (35,
140, 300 observed bins, and the reference's 40) for two batch sizes, beside the
time the step's matmuls alone would take at this machine's matmul rate. It prints a table and writes
`results/bench/bench.json`. Not run in CI: it trains the reference config for 50 epochs on each
path, samples it, and times 6 steps per sequence length and batch size; `--epochs`, `--impls` and
`--skip-scaling` make it shorter.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.harness import (
    emit,
    format_figure_table,
    format_pack_table,
    pack_member_hparams,
    peak_rss_gib,
    run_part,
    time_pack,
    time_sampling,
    time_training,
)

log = logging.getLogger("bench.benchmark")

REFERENCE_DATA = dict(
    n_trials=1000, n_obs_bins=40, n_fwd_bins=10, n_heldin=40, n_heldout=10, n_eval=0, seed=0
)
REFERENCE_HPARAMS = dict(
    batch_size=256, max_epochs=50, seed=0
)  # the rest: HParams defaults (mc_maze sizes)
N_SAMPLES = 50
SAMPLING_ROWS = 600  # rows of one posterior-sampling pass at the default activation budget
SCALING_BINS = (35, 40, 140, 300)  # observed bins: NLB's 35, 140, 300 and the reference config's 40


def forward_bins(n_bins: int) -> int:
    return max(1, n_bins // 4)  # the reference config's 10 forward bins for 40


SCALING_BATCHES = (64, 256)
SCALING_STEPS = 5


def forward_flops(n_bins: int, n_fwd_bins: int) -> tuple[float, float]:
    """Matmul floating-point operations of one trial's forward pass of the reference model:
    (encoders, decoder and readout), from the model (LFADS.forward_flops)."""
    from lfads.model.hparams import HParams
    from lfads.model.lfads import LFADS, SessionDims

    dims = SessionDims(REFERENCE_DATA["n_heldin"], REFERENCE_DATA["n_heldout"], n_bins, n_fwd_bins)
    return LFADS(HParams.from_dict(REFERENCE_HPARAMS), [dims]).forward_flops()


def training_flops(n_bins: int, n_fwd_bins: int, batch_size: int) -> float:
    """Matmul FLOPs of one training step, forward and backward: 3x the forward (each matmul's
    backward computes two products of its size)."""
    return 3.0 * batch_size * sum(forward_flops(n_bins, n_fwd_bins))


def sampling_flops(n_trials: int, n_samples: int) -> float:
    """Matmul FLOPs of posterior sampling of the reference data: the decoder runs once per sample,
    the encoders once per trial."""
    encoders, decoder = forward_flops(REFERENCE_DATA["n_obs_bins"], REFERENCE_DATA["n_fwd_bins"])
    return n_trials * (n_samples * decoder + encoders)


def matmul_rate(batch_size: int) -> float:
    """FLOP/s of this machine's matmul at the generator's shape (B x G) @ (G x 3G); median of 20."""
    import torch

    from lfads.model.hparams import HParams

    gen = HParams.from_dict(REFERENCE_HPARAMS).gen_dim
    a, b = torch.randn(batch_size, gen), torch.randn(gen, 3 * gen)
    seconds = []
    for _ in range(22):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * batch_size * gen * 3 * gen / statistics.median(seconds[2:])


# -- workers (each runs in its own process) ------------------------------------------------
def sample_worker(data: Path, run_dir: Path, impl: str, device: str) -> dict:
    """Posterior sampling of every trial (bench.harness.time_sampling), and the valid
    trials' co-bps, fp-bps and rate R2 against the truth."""
    import numpy as np
    import torch

    from lfads.formats.prepared import read_prepared
    from lfads.model.metrics import BitsPerSpike, RateR2

    figures, results = time_sampling(data, run_dir / "model.ckpt", impl, N_SAMPLES, device)
    valid = read_prepared(data, keys=("recon_data", "truth")).splits["valid"]
    spikes, truth = valid.recon_data, valid.truth
    rates = results["valid"].rates
    heldin, obs = REFERENCE_DATA["n_heldin"], REFERENCE_DATA["n_obs_bins"]

    def bits_per_spike(rate: np.ndarray, spike: np.ndarray) -> float:
        metric = BitsPerSpike()
        metric.update(torch.as_tensor(rate)[None], torch.as_tensor(spike)[None])  # a pack of one
        return metric.compute(1)[0]

    r2 = RateR2()
    r2.update(torch.as_tensor(rates)[None], torch.as_tensor(truth)[None])
    return {
        **figures,
        "valid_co_bps": bits_per_spike(rates[:, :obs, heldin:], spikes[:, :obs, heldin:]),
        "valid_fp_bps": bits_per_spike(rates[:, obs:], spikes[:, obs:]),
        "valid_rate_r2": r2.compute(1)[0],
        "truth_co_bps": bits_per_spike(truth[:, :obs, heldin:], spikes[:, :obs, heldin:]),
        "truth_fp_bps": bits_per_spike(truth[:, obs:], spikes[:, obs:]),
    }


def scaling_worker(impl: str, n_bins: int, batch_size: int, device: str) -> dict:
    """Seconds of one training step (forward, loss, backward, AdamW) on random counts: the median
    of 5 after 1."""
    import torch

    from lfads.model.batch import SessionBatch
    from lfads.model.hparams import HParams
    from lfads.model.lfads import LFADS, SessionDims
    from lfads.training.optimizer import MemberAdamW
    from lfads.training.step import run_step

    generator = torch.Generator().manual_seed(0)
    dims = SessionDims(
        REFERENCE_DATA["n_heldin"], REFERENCE_DATA["n_heldout"], n_bins, forward_bins(n_bins)
    )
    model = LFADS(HParams.from_dict(REFERENCE_HPARAMS), [dims], rnn_impl=impl).to(device).train()
    optimizer = MemberAdamW(model.parameters(), lr=[1e-3])
    shape = (batch_size, dims.n_recon_bins, dims.n_neurons)
    counts = torch.poisson(torch.full(shape, 0.3), generator=generator)
    batch = {
        0: SessionBatch(
            encod_data=counts[:, :n_bins, : dims.n_heldin].contiguous(),
            recon_data=counts,
            ext_input=counts.new_zeros(batch_size, dims.n_recon_bins, 0),
        )
        .expand_members(1)
        .to(device)
    }
    seconds = []
    for _ in range(SCALING_STEPS + 1):
        start = time.perf_counter()
        terms = run_step(model, batch, epoch=0).terms
        optimizer.zero_grad()
        terms.loss.sum().backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    step = statistics.median(seconds[1:])
    return {
        "impl": impl,
        "n_bins": n_bins,
        "batch_size": batch_size,
        "step_seconds": step,
        "trials_per_second": batch_size / step,
        "peak_rss_gib": peak_rss_gib(),
    }


# -- packs: several members in one process, against the same members one process after another --
# The hidden-set size: 720 train + 180 valid trials x (35 + 10) bins x (100 + 30) neurons, with the
# reference config's model (lfads-torch's nlb_mc_maze sizes).
PACK_DATA = dict(
    n_trials=900, n_obs_bins=35, n_fwd_bins=10, n_heldin=100, n_heldout=30, n_eval=0, seed=0
)


def run_pack_benchmark(args: argparse.Namespace) -> dict:
    """Packs of each size, each in its own process (timed from its start, imports included), and
    the largest pack's members trained alone, one process after another (the same epochs)."""
    import torch

    from lfads.data.toydata import write_lorenz_prepared
    from lfads.infra.io import write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_lorenz_prepared(out / "packs.h5", **PACK_DATA)
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "device": args.device,
        },
        "config": {"data": PACK_DATA, "hparams": REFERENCE_HPARAMS, "epochs": args.epochs},
        "packs": [],
        "alone": [],
    }
    for size in args.packs:
        log.info("a pack of %d: training %d epochs, then sampling", size, args.epochs)
        start = time.perf_counter()
        row = _run_worker(
            "pack", args, data=data, run_dir=out / f"pack{size}", members=size, epochs=args.epochs
        )
        row["process_seconds"] = time.perf_counter() - start
        report["packs"].append(row)
        log.info("a pack of %d: %.3f s per epoch per member", size, row["member_epoch_seconds"])
    for member in range(max(args.packs)):
        log.info("member %d alone: training %d epochs", member, args.epochs)
        start = time.perf_counter()
        row = _run_worker(
            "train",
            args,
            impl="fast",
            data=data,
            run_dir=out / f"alone{member:02d}",
            epochs=args.epochs,
            seed=member,
            members=-1,  # (pack_member_hparams of this member)
        )
        row["process_seconds"] = time.perf_counter() - start
        report["alone"].append(row)
    write_text(out / "packs.json", json.dumps(report, indent=1) + "\n")
    return report


def format_pack_report(report: dict) -> str:
    machine, alone = report["machine"], report["alone"]
    lines = [
        f"Packs: {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, torch "
        f"{machine['torch']}, device {machine['device']}; {PACK_DATA['n_trials']} trials "
        f"(720 train) x {PACK_DATA['n_obs_bins']}+{PACK_DATA['n_fwd_bins']} bins x "
        f"{PACK_DATA['n_heldin']}/{PACK_DATA['n_heldin'] + PACK_DATA['n_heldout']} neurons, "
        f"mc_maze model sizes, batch {REFERENCE_HPARAMS['batch_size']}, "
        f"{report['config']['epochs']} epochs",
        "",
        *format_pack_table({row["members"]: row for row in report["packs"]}),
        "",
        f"{'members':>8}{'pack wall s':>13}{'alone wall s':>14}{'ratio':>7}",
    ]
    for row in report["packs"]:
        members = row["members"]
        sequential = (
            sum(r["process_seconds"] for r in alone[:members])
            if len(alone) >= members
            else math.nan
        )
        lines.append(
            f"{members:>8}{row['process_seconds']:>13.1f}{sequential:>14.1f}"
            f"{row['process_seconds'] / sequential:>7.2f}"
        )
    lines += [
        "",
        "s/epoch: the pack's median epoch (train + validation) after the first; vs 1: over the "
        "pack of 1's;",
        "pack wall s: the pack's whole process (imports, training, sampling the valid trials); "
        "alone wall s: its members' training",
        "processes one after another (imports and training, no sampling); ratio: pack over alone.",
    ]
    return "\n".join(lines)


def _worker(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data, run_dir = Path(args.data or "."), Path(args.run_dir or ".")
    if args.part == "train":  # the reference config, or (members -1) a pack's member alone
        hparams = (
            pack_member_hparams(args.seed, REFERENCE_HPARAMS, args.epochs)
            if args.members == -1
            else {**REFERENCE_HPARAMS, "seed": args.seed}
        )
        result = time_training(data, run_dir, hparams, args.impl, args.epochs, args.device)
    elif args.part == "pack":
        result = time_pack(
            data, run_dir, REFERENCE_HPARAMS, args.members, args.epochs, args.device, N_SAMPLES
        )
    elif args.part == "sample":
        result = sample_worker(data, run_dir, args.impl, args.device)
    else:
        result = scaling_worker(args.impl, args.n_bins, args.batch_size, args.device)
    emit(args.part, result)
    return 0


def _run_worker(part: str, args: argparse.Namespace, **options) -> dict:
    """Run one measurement in a fresh interpreter (bench.harness.run_part)."""
    arguments = ["-m", "bench", "--worker", part, "--device", args.device]
    arguments += ["--threads", str(args.threads or 0)]
    for key, value in options.items():
        arguments += [f"--{key.replace('_', '-')}", str(value)]
    results, problem = run_part(arguments)
    if problem:
        raise RuntimeError(f"benchmark worker {' '.join(arguments)}: {problem}")
    return results[part]


# -- the driver --------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace) -> dict:
    import torch

    from lfads.data.toydata import write_lorenz_prepared
    from lfads.infra.io import write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "lorenz.h5"
    write_lorenz_prepared(data, **REFERENCE_DATA)
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": args.device,
            "platform": platform.platform(),
        },
        "config": {
            "data": REFERENCE_DATA,
            "hparams": {**REFERENCE_HPARAMS, "seed": args.seed},
            "epochs": args.epochs,
            "posterior_samples": N_SAMPLES,
        },
        "paths": {},
        "scaling": [],
    }
    for impl in args.impls:
        log.info("%s path: training %d epochs", impl, args.epochs)
        run_dir = out / f"run-{impl}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a checkpoint left there would be resumed
        trained = _run_worker(
            "train", args, impl=impl, data=data, run_dir=run_dir, epochs=args.epochs, seed=args.seed
        )
        log.info("%s path: posterior sampling, %d samples", impl, N_SAMPLES)
        sampled = _run_worker("sample", args, impl=impl, data=data, run_dir=run_dir)
        epoch = trained["epoch_seconds_median"]
        report["paths"][impl] = {
            **{
                k: trained[k]
                for k in (
                    "epoch_seconds_median",
                    "epoch_seconds_first",
                    "train_trials_per_second",
                    "train_seconds",
                    "peak_rss_train_gib",
                )
            },
            **{
                k: sampled[k]
                for k in (
                    "sampling_seconds",
                    "peak_rss_sampling_gib",
                    "valid_co_bps",
                    "valid_fp_bps",
                    "valid_rate_r2",
                    "truth_co_bps",
                    "truth_fp_bps",
                )
            },
        }
        log.info(
            "%s path: %.3f s per epoch, sampling %.1f s", impl, epoch, sampled["sampling_seconds"]
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    rates = {
        batch_size: matmul_rate(batch_size) for batch_size in (*SCALING_BATCHES, SAMPLING_ROWS)
    }
    report["matmul_gflops"] = {str(b): r / 1e9 for b, r in rates.items()}
    if not args.skip_scaling:
        for n_bins in SCALING_BINS:
            for batch_size in SCALING_BATCHES:
                floor = training_flops(n_bins, forward_bins(n_bins), batch_size) / rates[batch_size]
                report["scaling"].append(
                    {
                        "impl": "matmul floor",
                        "n_bins": n_bins,
                        "batch_size": batch_size,
                        "step_seconds": floor,
                        "trials_per_second": batch_size / floor,
                        "peak_rss_gib": float("nan"),
                    }
                )
                for impl in args.impls:
                    log.info("scaling: %s path, %d bins, batch %d", impl, n_bins, batch_size)
                    report["scaling"].append(
                        _run_worker("scale", args, impl=impl, n_bins=n_bins, batch_size=batch_size)
                    )
    paths = report["paths"]
    report["sampling_floor_seconds"] = {
        impl: sampling_flops(REFERENCE_DATA["n_trials"], N_SAMPLES) / rates[SAMPLING_ROWS]
        for impl in paths
    }
    if "reference" in paths and "fast" in paths:
        ref, fast = paths["reference"], paths["fast"]
        report["ratios"] = {
            "epoch_speedup": ref["epoch_seconds_median"] / fast["epoch_seconds_median"],
            "sampling_speedup": ref["sampling_seconds"] / fast["sampling_seconds"],
        }
    fast_peaks = [
        paths[i][k]
        for i in paths
        if i != "reference"
        for k in ("peak_rss_train_gib", "peak_rss_sampling_gib")
    ]
    report["peak_rss_fast_gib"] = max(fast_peaks, default=None)
    write_text(out / "bench.json", json.dumps(report, indent=1) + "\n")
    return report


PATH_FIGURES = [  # (key, label, format) of each path's figures in the printed report
    ("epoch_seconds_median", "s per epoch (median)", "{:.3f}"),
    ("epoch_seconds_first", "first epoch s", "{:.3f}"),
    ("train_trials_per_second", "train trials per s", "{:.0f}"),
    ("sampling_seconds", "posterior sampling s", "{:.2f}"),
    ("peak_rss_train_gib", "peak RSS training GiB", "{:.3f}"),
    ("peak_rss_sampling_gib", "peak RSS sampling GiB", "{:.3f}"),
    ("valid_co_bps", "valid co-bps", "{:.4f}"),
    ("valid_fp_bps", "valid fp-bps", "{:.4f}"),
    ("valid_rate_r2", "valid rate R2 vs truth", "{:.4f}"),
]


def format_report(report: dict) -> str:
    paths = report["paths"]
    machine = report["machine"]
    lines = [
        f"LFADS benchmark: {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, device {machine['device']}",
        f"reference config: {REFERENCE_DATA['n_trials']} trials x "
        f"{REFERENCE_DATA['n_obs_bins'] + REFERENCE_DATA['n_fwd_bins']} bins x "
        f"{REFERENCE_DATA['n_heldin'] + REFERENCE_DATA['n_heldout']} neurons, batch "
        f"{REFERENCE_HPARAMS['batch_size']}, {report['config']['epochs']} epochs, "
        f"{N_SAMPLES} posterior samples",
        "",
        *format_figure_table([list(paths)], list(paths.values()), PATH_FIGURES),
    ]
    first = next(iter(paths.values()))
    lines.append(
        f"{'true rates: co-bps, fp-bps':28}"
        f"{first['truth_co_bps']:>12.4f}{first['truth_fp_bps']:>12.4f}"
    )
    floors = report.get("sampling_floor_seconds", {})
    if floors:
        lines.append(
            f"{'sampling matmul floor s':28}" + "".join(f"{floors[i]:>12.2f}" for i in paths)
        )
    if "ratios" in report:
        ratios = report["ratios"]
        lines += [
            "",
            f"epoch speed-up (reference / fast): {ratios['epoch_speedup']:.2f}x",
            f"sampling speed-up (reference / fast): {ratios['sampling_speedup']:.2f}x",
        ]
    if report.get("peak_rss_fast_gib") is not None:
        lines.append(f"peak RSS of the fast path: {report['peak_rss_fast_gib']:.3f} GiB")
    if report["scaling"]:
        rates = ", ".join(f"batch {b}: {r:.0f}" for b, r in report["matmul_gflops"].items())
        lines += [
            "",
            "one training step (forward, loss, backward, AdamW), median of 5; the matmul floor is "
            "the",
            "step's matmul FLOPs at this machine's (B x 200) @ (200 x 600) rate "
            f"({rates} GFLOP/s):",
            f"{'bins+fwd':>9}{'batch':>7}{'path':>14}"
            f"{'s per step':>12}{'trials/s':>10}{'peak GiB':>10}",
        ]
        for row in sorted(report["scaling"], key=lambda r: (r["n_bins"], r["batch_size"])):
            bins = f"{row['n_bins']}+{forward_bins(row['n_bins'])}"
            lines.append(
                f"{bins:>9}{row['batch_size']:>7}{row['impl']:>14}{row['step_seconds']:>12.3f}"
                f"{row['trials_per_second']:>10.0f}{row['peak_rss_gib']:>10.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default="results/bench", help="folder for the data, runs and bench.json"
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        default=["reference", "fast"],
        choices=["reference", "fast", "compiled"],
        help="paths to measure (rnn_impl values)",
    )
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed (weights, dropout, batch order)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--skip-scaling", action="store_true", help="leave out the sequence-length table"
    )
    parser.add_argument(
        "--packs",
        type=lambda text: tuple(int(size) for size in text.split(",")),
        help="instead of the paths: packs of these sizes (e.g. 1,2,4,8,16) at the hidden-set "
        "size, beside their members trained one process after another; writes packs.json",
    )
    parser.add_argument(
        "--worker",
        choices=["train", "sample", "scale", "pack"],
        dest="part",
        help=argparse.SUPPRESS,
    )
    for hidden in ("--impl", "--data", "--run-dir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--n-bins", "--batch-size", "--members"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.part is None else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.part is not None:
        return _worker(args)
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first epoch is a warm-up)")
    if args.packs:
        report = run_pack_benchmark(args)
        print(format_pack_report(report))
        print(f"\nwritten: {Path(args.out) / 'packs.json'}")
        return 0
    report = run_benchmark(args)
    print(format_report(report))
    print(f"\nwritten: {Path(args.out) / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
