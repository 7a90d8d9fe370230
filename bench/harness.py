"""What the benchmark (`make bench`, `make bench-packs`) and the GPU check (`make gpu-check`)
share: the timed parts, their tables (`format_figure_table`, `format_pack_table`), and how each
part runs in a fresh interpreter (so that its peak memory
and its compile caches are its own) and hands its results back on stdout as `RESULT <key>
<JSON>` lines (`emit`, `run_part`).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# `python -m bench...` finds bench/ from any folder: the repository root goes on its path.
REPO = Path(__file__).resolve().parents[1]
PYTHONPATH = os.environ.get("PYTHONPATH", "")
RESULT_PREFIX = "RESULT "  # a worker's answers on stdout: prefix, key, JSON
PACK_DROPOUTS = (0.1, 0.2, 0.3, 0.4)  # pack member m: seed m and the m-th of these, in turn


def emit(key: str, result) -> None:
    """Hand one result back to the driver (`run_part` reads it)."""
    print(RESULT_PREFIX + key + " " + json.dumps(result), flush=True)


def run_part(arguments: list[str], timeout: float | None = None) -> tuple[dict, str]:
    """`python <arguments>` in a fresh interpreter for at most `timeout` seconds: (its results by
    key, "" when it finished, else what happened). On time-out its whole process group is killed
    (compile workers too)."""
    command = [sys.executable, *arguments]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), PYTHONPATH)))},
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        problem = "" if process.returncode == 0 else f"failed (exit {process.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        problem = "skipped: over budget"
    results = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            key, _, value = line[len(RESULT_PREFIX) :].partition(" ")
            results[key] = json.loads(value)
    if problem.startswith("failed"):
        problem += ": " + " | ".join(stderr.strip().splitlines()[-8:])
    return results, problem


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def reset_peak_gpu_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_gpu_gib(device: str) -> float | None:
    """Peak GPU memory allocated by tensors since the last reset, GiB; None on the CPU."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def time_training(
    data: Path, run_dir: Path, hparams: dict, impl: str, epochs: int, device: str
) -> dict:
    """Train `epochs` epochs afresh into run_dir; seconds per epoch (train + validation, the
    median after the first), training trials per second, and peak GPU memory and RSS.

    An epoch's seconds are the LightningModule's own (it reads every step's loss, which waits
    for the GPU). The compile time of `compiled` is estimated as its first epoch minus its median.
    """
    from lfads.formats.metrics import EPOCH_SECONDS, read_metrics_csv
    from lfads.formats.prepared import read_prepared
    from lfads.model.hparams import HParams
    from lfads.training.train import train_model

    shutil.rmtree(run_dir, ignore_errors=True)  # a checkpoint left there would be resumed
    reset_peak_gpu_memory(device)
    synchronize(device)
    start = time.perf_counter()
    train_model(
        [data],
        HParams.from_dict({**hparams, "max_epochs": epochs}),
        run_dir,
        checkpoint_dir=run_dir / "checkpoints",
        device=device,
        rnn_impl=impl,
    )
    synchronize(device)
    total = time.perf_counter() - start
    peak_gpu, peak_rss = peak_gpu_gib(device), peak_rss_gib()
    seconds = [float(s) for s in read_metrics_csv(run_dir / "metrics.csv")[EPOCH_SECONDS]]
    median = statistics.median(seconds[1:] or seconds)
    n_train = len(read_prepared(data, keys=("encod_data",)).splits["train"].encod_data)
    return {
        "epoch_seconds": seconds,
        "epoch_seconds_median": median,
        "epoch_seconds_first": seconds[0],
        "compile_seconds_estimate": seconds[0] - median if impl == "compiled" else None,
        "train_trials": n_train,
        "train_trials_per_second": n_train / median,
        "train_seconds": total,
        "peak_gpu_train_gib": peak_gpu,
        "peak_rss_train_gib": peak_rss,
    }


def time_sampling(
    data: Path, model_path: Path, impl: str, n_samples: int, device: str
) -> tuple[dict, dict]:
    """Posterior sampling of every trial of `data` with `n_samples` samples, twice: (the seconds
    of the second pass (the first includes warm-up, and compiling for `compiled`), peak GPU
    memory and RSS; the sampled splits)."""
    from lfads.evaluation.infer import auto_batch_size, sample_splits
    from lfads.formats.checkpoints import load_model
    from lfads.training.datamodule import load_session

    model, _ = load_model(model_path, device, rnn_impl=impl)
    session = load_session(data)
    batch_size = auto_batch_size(model, n_samples, session.dims.n_recon_bins)
    reset_peak_gpu_memory(device)
    seconds = []
    for _ in range(2):
        synchronize(device)
        start = time.perf_counter()
        (results,) = sample_splits(model, session, 0, n_samples, batch_size, device)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    figures = {
        "sampling_seconds": seconds[1],
        "sampling_first_seconds": seconds[0],
        "sampled_trials": sum(session.n_trials(split) for split in results),
        "n_samples": n_samples,
        "sampling_batch_size": batch_size,
        "peak_gpu_sampling_gib": peak_gpu_gib(device),
        "peak_rss_sampling_gib": peak_rss_gib(),
    }
    return figures, results


def pack_member_hparams(member: int, base: dict, epochs: int) -> dict:
    """The hyperparameters of member `member` of a timed pack: its own seed and dropout."""
    dropout = PACK_DROPOUTS[member % len(PACK_DROPOUTS)]
    return {**base, "seed": member, "dropout": dropout, "max_epochs": epochs}


def time_pack(
    data: Path,
    folder: Path,
    base: dict,
    n_members: int,
    epochs: int,
    device: str,
    n_samples: int,
    impl: str = "fast",
) -> dict:
    """Train a pack of `n_members` for `epochs` epochs afresh, then posterior-sample its valid
    trials with every member at once: seconds per epoch (the median after the first), per member,
    sampling seconds per member, peak RSS and GPU memory. Used by the benchmark and the GPU check.
    """
    from lfads.evaluation.infer import auto_batch_size, sample_splits
    from lfads.formats.checkpoints import load_pack
    from lfads.formats.metrics import EPOCH_SECONDS, read_metrics_csv
    from lfads.model.hparams import HParams
    from lfads.training.datamodule import load_session
    from lfads.training.train import Member, train_pack

    shutil.rmtree(folder, ignore_errors=True)  # a checkpoint left there would be resumed
    members = [
        Member(
            f"m{m:02d}",
            HParams.from_dict(pack_member_hparams(m, base, epochs)),
            folder / f"m{m:02d}",
        )
        for m in range(n_members)
    ]
    reset_peak_gpu_memory(device)
    start = time.perf_counter()
    paths = train_pack(members, [data], folder / "checkpoints", device=device, rnn_impl=impl)
    train_seconds = time.perf_counter() - start
    seconds = [
        float(x) for x in read_metrics_csv(members[0].out_dir / "metrics.csv")[EPOCH_SECONDS]
    ]
    median = statistics.median(seconds[1:] or seconds)
    peak_gpu_train = peak_gpu_gib(device)
    model, _ = load_pack(paths, device, rnn_impl=impl)
    session = load_session(data)
    session.splits = {"valid": session.splits["valid"]}
    size = auto_batch_size(model, n_samples, session.dims.n_recon_bins)
    start = time.perf_counter()
    sample_splits(model, session, 0, n_samples, size, device)
    synchronize(device)
    sampling = time.perf_counter() - start
    return {
        "members": n_members,
        "epoch_seconds": seconds,
        "epoch_seconds_median": median,
        "member_epoch_seconds": median / n_members,
        "train_seconds": train_seconds,
        "sampled_trials": session.n_trials("valid"),
        "sampling_seconds": sampling,
        "sampling_seconds_per_member": sampling / n_members,
        "peak_rss_gib": peak_rss_gib(),
        "peak_gpu_gib": peak_gpu_train,
    }


def format_figure_table(
    header_rows: list[list[str]], results: list[dict], figures: Sequence[tuple[str, str, str]]
) -> list[str]:
    """The lines of a table of the benchmark and the GPU check alike: a column per result (headed
    by `header_rows`, a row of names each), a row per figure (key, label, format); a figure a
    result lacks, or holds as None, shows "-"."""
    lines = [f"{'':28}" + "".join(f"{name:>12}" for name in names) for names in header_rows]
    for key, label, fmt in figures:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for r in results]
        lines.append(f"{label:28}" + "".join(f"{cell:>12}" for cell in cells))
    return lines


def format_pack_table(packs: dict[int, dict]) -> list[str]:
    """The lines of the table of `time_pack` results {members: result}, for the benchmark and the
    GPU check alike: epoch seconds (median), per member, the pack's epoch over the pack of 1's,
    training and sampling seconds, peak RSS and GPU memory. A result without timings (its part
    failed or was skipped) shows its status."""
    one = packs.get(1, {}).get("epoch_seconds_median")
    lines = [
        f"{'members':>8}{'s/epoch':>10}{'per member':>12}{'vs 1':>7}{'train s':>9}"
        f"{'sampling s':>12}{'per member':>12}{'peak RSS GiB':>14}{'peak GPU GiB':>14}"
    ]
    for members, found in packs.items():
        if "epoch_seconds_median" not in found:
            lines.append(f"{members:>8}  {found.get('status', 'missing')}")
            continue
        gpu = found["peak_gpu_gib"]
        lines.append(
            f"{members:>8}{found['epoch_seconds_median']:>10.3f}"
            f"{found['member_epoch_seconds']:>12.4f}"
            f"{found['epoch_seconds_median'] / one if one else math.nan:>7.2f}"
            f"{found['train_seconds']:>9.1f}{found['sampling_seconds']:>12.2f}"
            f"{found['sampling_seconds_per_member']:>12.2f}{found['peak_rss_gib']:>14.2f}"
            + (f"{gpu:>14.2f}" if gpu is not None else f"{'-':>14}")  # (no GPU)
        )
    return lines
