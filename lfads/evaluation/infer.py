"""Posterior sampling of a trained model (`python -m lfads infer`, `posterior_sample`).

For every trial of every split, N posterior samples run through the decoder in
one vectorised pass per batch (samples x trials rows); the file keeps their
average. Output layout: `lfads.formats.inferred` (lfads/README.md, "Inference file").
The model is model.ckpt's, the run's best epoch. A run that diverged gets a placeholder
file: no groups, and the root attributes DIVERGED (the reason) and DIVERGED_EPOCH.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from lfads.formats.inferred import (
    DIVERGED,
    DIVERGED_EPOCH,
    InferredAttributes,
    InferredSplit,
    round_mantissa,
    write_inferred,
)
from lfads.model.members import MemberRandom

log = logging.getLogger("lfads.evaluation.infer")

# Seconds between progress lines while a split is sampled (a line also ends each split).
PROGRESS_SECONDS = 10.0

# Posterior samples averaged per trial (lfads-torch also uses 50); the configfile's model.n_samples.
DEFAULT_N_SAMPLES = 50

# Decoder activations kept in memory per (sample x trial) row and bin, in floats, for the automatic
# batch size.
_ROW_BUDGET_FLOATS = 32 * 2**20  # 128 MB of float32


def auto_batch_size(model, n_samples: int, n_bins: int) -> int:
    """Trials per pass that keep the decoder's activations of (members x samples x trials) rows
    near 128 MB."""
    rows_per_trial = n_samples * model.n_members
    floats_per_trial = model.activation_floats_per_bin() * n_bins * rows_per_trial
    return max(1, _ROW_BUDGET_FLOATS // floats_per_trial)


def posterior_sample(
    model_path: Path,
    data_files: list[Path],
    out_paths: list[Path],
    n_samples: int = DEFAULT_N_SAMPLES,
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
    from lfads.formats.checkpoints import load_model, read_model
    from lfads.formats.prepared import read_prepared
    from lfads.training.datamodule import load_session
    from lfads.training.train import resolve_device

    if len(data_files) != len(out_paths):
        raise ValueError(
            f"posterior_sample: {len(data_files)} data files but {len(out_paths)} output paths"
        )
    round_mantissa(np.zeros(1, np.float32), mantissa_bits)  # checks the value before any work
    if n_samples < 1:
        raise ValueError(f"n_samples: must be at least 1, got {n_samples}")
    device = resolve_device(device)
    diverged = read_model(model_path).diverged
    if diverged is not None:
        for session, (data_file, out_path) in enumerate(zip(data_files, out_paths)):
            attributes = read_prepared(data_file, keys=()).session_attributes()
            attributes.update({DIVERGED: diverged.reason, DIVERGED_EPOCH: diverged.epoch})
            placeholder = InferredAttributes(
                n_samples=0,
                seed=seed,
                session=session,
                model_epochs=0,
                data_file=str(data_file),
                mantissa_bits=mantissa_bits,
            )
            write_inferred(out_path, attributes, placeholder, {})
            log.warning(
                "%s: the run diverged at epoch %d, so nothing is sampled; %s is a placeholder",
                model_path,
                diverged.epoch,
                out_path,
            )
        return
    model, saved = load_model(model_path, device, rnn_impl=rnn_impl)
    if len(data_files) > len(model.sessions):
        raise ValueError(
            f"{model_path} has {len(model.sessions)} session(s); got {len(data_files)} data files"
        )
    model.random = MemberRandom([seed])  # the samples' stream
    for session, (data_file, out_path) in enumerate(zip(data_files, out_paths)):
        data = load_session(data_file)
        if data.dims != model.sessions[session]:
            raise ValueError(
                f"{data_file}: sizes {data.dims} differ from the model's session {session} "
                f"{model.sessions[session]}; pass the files in training order"
            )
        start = time.perf_counter()
        size = batch_size or auto_batch_size(model, n_samples, data.dims.n_recon_bins)
        (results,) = sample_splits(model, data, session, n_samples, size, device)
        for split, arrays in results.items():
            arrays.nlb_index = data.nlb_index.get(split)
        attributes = InferredAttributes(
            n_samples=n_samples if model.hparams.variational else 1,
            seed=seed,
            session=session,
            model_epochs=saved.best_epoch,  # the epochs behind the weights sampled
            data_file=str(data_file),
            mantissa_bits=mantissa_bits,
        )
        write_inferred(out_path, data.attrs, attributes, results)
        log.info(
            "%s: %d samples of %d trials in %.1f s -> %s",
            Path(data_file).name,
            n_samples,
            sum(data.n_trials(split) for split in results),
            time.perf_counter() - start,
            out_path,
        )


def sample_splits(
    model, data, session: int, n_samples: int, batch_size: int, device: str
) -> list[dict[str, InferredSplit]]:
    """Posterior averages of every trial of each split of `data` (a loaded session), per split,
    for each member of the model's pack (all members in one pass per batch)."""
    found = {
        split: _sample_split(model, data, session, split, n_samples, batch_size, device)
        for split in ("train", "valid", "eval")
        if data.n_trials(split) > 0
    }
    return [{split: members[m] for split, members in found.items()} for m in range(model.n_members)]


def _sample_split(
    model, data, session: int, split: str, n_samples: int, batch_size: int, device: str
) -> list[InferredSplit]:
    n, n_members = data.n_trials(split), model.n_members
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n_members)]
    started = last_line = time.perf_counter()
    log.info("%s: sampling %d trials in batches of %d", split, n, batch_size)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        batch = data.batch(split, rows, n_members=n_members).to(device)
        batch, _ = model.infer_augmentations.process_batch(batch, model.random)
        averages = model.posterior_average({session: batch}, n_samples)[session]
        for key, value in averages.items():  # (P, B, ...)
            if not bool(value.isfinite().all()):
                raise ValueError(
                    f"{split} {key} of trials {rows[0]}..{rows[-1]} of session {session} is not "
                    "finite: the model's weights give NaN or infinite values on these data. "
                    "Retrain with a lower lr, a smaller cell_clip or a stronger gradient_clip."
                )
            for member, member_value in zip(out, value.float().cpu().numpy()):
                if key not in member:
                    member[key] = np.empty((n, *member_value.shape[1:]), dtype=np.float32)
                member[key][rows] = member_value
        now = time.perf_counter()
        if now - last_line >= PROGRESS_SECONDS or rows[-1] == n - 1:
            log.info(
                "%s: %d/%d trials (%.0f%%) in %.1f s",
                split,
                rows[-1] + 1,
                n,
                100 * (rows[-1] + 1) / n,
                now - started,
            )
            last_line = now
    return [InferredSplit(**member) for member in out]


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
        "--samples",
        type=int,
        default=DEFAULT_N_SAMPLES,
        help=f"posterior samples averaged (default {DEFAULT_N_SAMPLES})",
    )
    parser.add_argument("--batch-size", type=int, help="trials per pass (default: automatic)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run (auto: CUDA when torch sees a GPU)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
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
    return 0
