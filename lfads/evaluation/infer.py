"""Posterior sampling of a trained model (`python -m lfads infer`, `posterior_sample`).

For every trial of every split, N posterior samples run through the decoder in
one vectorised pass per batch (samples x trials rows); the file keeps their
average. Output layout: lfads/README.md, "Model, training and inference".
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from lfads.infra.io import atomic_path

log = logging.getLogger("lfads.evaluation.infer")

# Outputs, all float32: per bin, and per trial.
SEQUENCE_KEYS = ("rates", "factors", "gen_states", "co_mean", "co_std")
TRIAL_KEYS = ("ic_mean", "ic_std")
# Latents stored rounded to `mantissa_bits` (rates and IC statistics are always exact).
ROUNDED_KEYS = ("factors", "gen_states", "co_mean", "co_std")
# Decoder activations kept in memory per (sample x trial) row and bin, in floats, for the automatic
# batch size.
_ROW_BUDGET_FLOATS = 32 * 2**20  # 128 MB of float32


def auto_batch_size(model, n_samples: int, n_bins: int) -> int:
    """Trials per pass so that the decoder's activations of (samples x trials) rows stay near 128 MB.

    The reference loops run one sample at a time, so their rows are the trials.
    """
    hp = model.hparams
    if not model.loops.samples_in_one_pass:
        n_samples = 1
    readout = max(
        recon.n_params * dims.n_neurons for recon, dims in zip(model.recons, model.sessions)
    )
    floats_per_row_bin = (
        3 * (hp.gen_dim + hp.con_dim) + hp.fac_dim + 4 * hp.co_dim + 2 * hp.ci_enc_dim + readout
    )
    return max(1, _ROW_BUDGET_FLOATS // (floats_per_row_bin * n_bins * n_samples))


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 rounded to nearest with `bits` explicit mantissa bits (23: unchanged).

    The relative error is at most 2^-(bits + 1) (1.2e-4 for 12 bits); the zeroed
    low bits make gzip + shuffle store the array in about half the space.
    """
    if not 0 <= bits <= 23:
        raise ValueError(f"mantissa_bits: must be in 0..23, got {bits}")
    if bits == 23:
        return values
    drop = 23 - bits
    raw = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (raw + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF >> drop) << drop)
    return rounded.view(np.float32)


def posterior_sample(
    model_path: Path,
    data_files: list[Path],
    out_paths: list[Path],
    n_samples: int = 50,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    mantissa_bits: int = 12,
    rnn_impl: str = "fast",
) -> None:
    """Write one HDF5 per session file: groups train, valid, eval with the posterior averages.

    data_files[i] must be laid out like the model's training session i (same
    neurons and bins). batch_size: trials per pass (default: as many as fit
    about 128 MB of decoder activations). mantissa_bits: precision kept for
    factors, gen_states, co_mean and co_std (23: exact float32); rates and IC
    statistics are always exact.
    """
    from lfads.training.datamodule import load_session
    from lfads.training.train import load_model, resolve_device

    if len(data_files) != len(out_paths):
        raise ValueError(
            f"posterior_sample: {len(data_files)} data files but {len(out_paths)} output paths"
        )
    round_mantissa(np.zeros(1, np.float32), mantissa_bits)  # checks the value before any work
    if n_samples < 1:
        raise ValueError(f"n_samples: must be at least 1, got {n_samples}")
    device = resolve_device(device)
    model, checkpoint = load_model(model_path, device, rnn_impl=rnn_impl)
    if len(data_files) > len(model.sessions):
        raise ValueError(
            f"{model_path} has {len(model.sessions)} session(s); got {len(data_files)} data files"
        )
    torch.manual_seed(seed)
    for session, (data_file, out_path) in enumerate(zip(data_files, out_paths)):
        data = load_session(data_file)
        if data.dims != model.sessions[session]:
            raise ValueError(
                f"{data_file}: sizes {data.dims} differ from the model's session {session} "
                f"{model.sessions[session]}; pass the files in training order"
            )
        start = time.perf_counter()
        size = batch_size or auto_batch_size(model, n_samples, data.dims.n_recon_bins)
        results = sample_splits(model, data, session, n_samples, size, device)
        _write(
            out_path, data_file, results, model, checkpoint, session, n_samples, seed, mantissa_bits
        )
        log.info(
            "%s: %d samples of %d trials in %.1f s -> %s",
            Path(data_file).name,
            n_samples,
            sum(len(r["rates"]) for r in results.values()),
            time.perf_counter() - start,
            out_path,
        )


def sample_splits(
    model, data, session: int, n_samples: int, batch_size: int, device: str
) -> dict[str, dict[str, np.ndarray]]:
    """Posterior averages of every trial of each split of `data` (a loaded session): split -> key -> array."""
    return {
        split: _sample_split(model, data, session, split, n_samples, batch_size, device)
        for split in ("train", "valid", "eval")
        if data.n_trials(split) > 0
    }


def _sample_split(
    model, data, session: int, split: str, n_samples: int, batch_size: int, device: str
) -> dict[str, np.ndarray]:
    n = data.n_trials(split)
    out: dict[str, np.ndarray] = {}
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        batch = data.batch(split, rows).to(device)
        batch, _ = model.infer_augmentations.process_batch(batch)
        averages = model.posterior_average({session: batch}, n_samples)[session]
        for key, value in averages.items():
            if key not in out:
                out[key] = np.empty((n, *value.shape[1:]), dtype=np.float32)
            out[key][rows] = value.float().cpu().numpy()
    return out


def _write(
    out_path: Path,
    data_file: Path,
    results: dict[str, dict[str, np.ndarray]],
    model,
    checkpoint: dict,
    session: int,
    n_samples: int,
    seed: int,
    mantissa_bits: int,
) -> None:
    with (
        h5py.File(data_file, "r") as prepared,
        atomic_path(out_path) as tmp,
        h5py.File(tmp, "w") as file,
    ):
        for key in (
            "bin_width_ms",
            "n_heldin",
            "n_heldout",
            "n_obs_bins",
            "n_fwd_bins",
            "dataset",
            "nlb_layout",
            "phase",
        ):
            if key in prepared.attrs:
                file.attrs[key] = prepared.attrs[key]
        file.attrs.update(
            n_samples=n_samples if model.hparams.variational else 1,
            seed=seed,
            session=session,
            model_epochs=int(checkpoint.get("epochs", -1)),
            data_file=str(data_file),
            mantissa_bits=mantissa_bits,
            format_version=1,
            units="rates: spikes per bin",
        )
        for split, arrays in results.items():
            group = file.create_group(split)
            for key in (*SEQUENCE_KEYS, *TRIAL_KEYS):
                value = (
                    round_mantissa(arrays[key], mantissa_bits)
                    if key in ROUNDED_KEYS
                    else arrays[key]
                )
                chunks = (min(64, value.shape[0]), *value.shape[1:]) if value.size else None
                group.create_dataset(
                    key,
                    data=value,
                    dtype=np.float32,
                    chunks=chunks,
                    compression="gzip" if value.size else None,
                    compression_opts=4 if value.size else None,
                    shuffle=bool(value.size),
                )
            if f"{split}/nlb_index" in prepared:
                group["nlb_index"] = prepared[f"{split}/nlb_index"][()]


# -- command line -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, required=True, help="model.ckpt written by `lfads train`"
    )
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="prepared HDF5 file; repeat for several sessions, in training order",
    )
    parser.add_argument(
        "--out", type=Path, action="append", required=True, help="output HDF5, one per --data"
    )
    parser.add_argument(
        "--samples", type=int, default=50, help="posterior samples averaged (default 50)"
    )
    parser.add_argument("--batch-size", type=int, help="trials per pass (default: automatic)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mantissa-bits",
        type=int,
        default=12,
        help="precision of factors, gen_states, co_mean, co_std (23: exact float32; default 12)",
    )
    from lfads.model.loops import RNN_IMPLS

    parser.add_argument(
        "--rnn-impl", choices=list(RNN_IMPLS), default="fast", help="how the recurrent loops run"
    )


def run(args: argparse.Namespace) -> int:
    from lfads.infra.logs import configure

    configure()
    try:
        posterior_sample(
            args.model,
            args.data,
            args.out,
            args.samples,
            args.batch_size,
            args.device,
            args.seed,
            args.mantissa_bits,
            rnn_impl=args.rnn_impl,
        )
    except ValueError as error:
        log.error("%s", error)
        return 2
    return 0
