"""An ensemble of a search's best runs: their posterior-mean rates averaged (rule `ensemble`).

The members are the `top_k` runs with the lowest best-epoch smoothed validation reconstruction
loss (the summary's selection, `lfads.evaluation.aggregate`); runs that diverged are never members.
The ensemble's folder `runs/ensemble-top<k>/` holds what a run's holds for the rules after infer:

- `inferred.h5`: the members' rates averaged, trial by trial, in every split (`rates` and
  `nlb_index` only: factors, generator states and inferred inputs of different models live in
  different coordinates, so their average means nothing);
- `metrics.csv`: one row (epoch 0) whose `valid_recon` and `valid_recon_smoothed` are the
  ensemble's VALIDATION POISSON LOSS (below), so the summary reads it like a run's;
- `members.tsv`: the members, best first, with their best-epoch smoothed validation loss and
  their own validation Poisson loss.

VALIDATION POISSON LOSS: the Poisson negative log-likelihood (log k! included) of the valid
split's recorded spikes (every neuron and bin of recon_data, NaN entries left out) under a rates
file's posterior-mean rates, averaged over trials, bins and neurons (nats per bin and neuron: the
units of a run's `valid_recon`). It is convex in the rates, so the ensemble's is at most the
mean of its members'. The training's `valid_recon` comes from sampled posteriors and is smoothed
over epochs, so the ensemble is compared with the best run on this loss alone, each computed from
its own inferred.h5 (`lfads.evaluation.submission.submitted_run`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfads.formats.metrics import EPOCH, VALID_RECON_SMOOTHED, write_metrics_csv
from lfads.formats.runs import RunFiles, write_members

# The workflow imports this module when it parses (common.smk), so h5py and pandas are imported
# by the functions that read and write files.
log = logging.getLogger(__name__)

ENSEMBLE_PREFIX = "ensemble-top"
# The root attribute of the ensemble's inferred.h5 that names its members (a JSON list).
MEMBERS_ATTRIBUTE = "ensemble_members"
# Rates below this floor (spikes per bin) count as the floor, as in the submission.
RATE_FLOOR = 1e-9


def ensemble_name(top_k: int) -> str:
    """The ensemble's run name: `ensemble-top<k>`."""
    return f"{ENSEMBLE_PREFIX}{top_k}"


def is_ensemble(name: str) -> bool:
    """Whether a summary row's name is an ensemble's (run names of a search contain `~`)."""
    return re.fullmatch(rf"{ENSEMBLE_PREFIX}\d+", str(name)) is not None


@dataclass(frozen=True)
class Member:
    """A run chosen for the ensemble."""

    name: str
    best_valid_recon_smoothed: float  # at its best epoch: the selection
    files: RunFiles  # its curves, inferred and (if given) model


def rank_runs(runs: dict[str, RunFiles]) -> list[Member]:
    """The runs that did not diverge, by best-epoch smoothed validation reconstruction loss
    (lowest first; ties keep the order of `runs`, as the summary does).

    runs: {run name: its curves (metrics.csv) and inferred.h5}. A run diverged when its
    inferred.h5 is the placeholder that infer writes for it.
    """
    from lfads.formats.inferred import DIVERGED, read_inferred
    from lfads.formats.metrics import SELECTION_COLUMN, best_and_final_epoch

    ranked = []
    for name, files in runs.items():
        attributes = read_inferred(files.need("inferred", name), keys=()).attrs
        if DIVERGED in attributes:
            log.info("%s diverged, so it is no member: %s", name, attributes[DIVERGED])
            continue
        best, _ = best_and_final_epoch(files.need("curves", name))
        ranked.append(Member(name, float(best[SELECTION_COLUMN]), files))
    return sorted(ranked, key=lambda member: member.best_valid_recon_smoothed)


def weights_digest(path: Path | None) -> str | None:
    """SHA-256 of the weights in a run's model.ckpt (None when it has none)."""
    import hashlib

    from lfads.formats.checkpoints import read_model

    if path is None:
        return None
    digest = hashlib.sha256()
    for key, tensor in sorted(read_model(path).state_dict.items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def select_members(runs: dict[str, RunFiles], top_k: int) -> list[Member]:
    """The `top_k` best runs of rank_runs that hold different weights; fewer (with a warning)
    when diverged runs or copies leave fewer.

    A run whose model.ckpt holds the same weights as a better one is no second member: the
    workers of a PBT search that copied the same state keep that state's best epoch.
    """
    members, seen = [], {}
    for member in rank_runs(runs):
        digest = weights_digest(member.files.model)
        if digest is not None and digest in seen:
            log.info(
                "%s holds the same weights as %s (a copy of the same training state), so it "
                "is no second member",
                member.name,
                seen[digest],
            )
            continue
        seen[digest] = member.name
        members.append(member)
    if len(members) < top_k:
        log.warning(
            "ensemble.top_k is %d but only %d of the %d runs did not diverge and hold "
            "different weights: the ensemble averages those %d",
            top_k,
            len(members),
            len(runs),
            len(members),
        )
    return members[:top_k]


def average_rates(rates: list[np.ndarray]) -> np.ndarray:
    """The elementwise mean of equally shaped float32 arrays, summed in float64 (the mean of k
    copies of one array is that array, exactly), as float32."""
    shapes = {array.shape for array in rates}
    if len(shapes) != 1:
        raise ValueError(f"average_rates: the members' rates differ in shape: {sorted(shapes)}")
    return np.mean(np.stack(rates).astype(np.float64), axis=0).astype(np.float32)


def poisson_loss(rates: np.ndarray, spikes: np.ndarray) -> float:
    """The VALIDATION POISSON LOSS of the module docstring: the mean over observed entries of
    rate - k log(rate) + log(k!), in nats per bin and neuron.

    rates, spikes: (N, T + F, H) spikes per bin; NaN spikes are unobserved and left out.
    """
    from scipy.special import gammaln

    if rates.shape != spikes.shape:
        raise ValueError(f"poisson_loss: rates {rates.shape} but spikes {spikes.shape}")
    observed = ~np.isnan(spikes)
    counts = spikes[observed].astype(np.float64)
    rate = np.maximum(rates[observed].astype(np.float64), RATE_FLOOR)
    return float(np.mean(rate - counts * np.log(rate) + gammaln(counts + 1.0)))


@dataclass(frozen=True)
class EnsembleResult:
    """What write_ensemble wrote: its members and the validation Poisson losses."""

    members: list[Member]
    member_losses: list[float]  # each member's validation Poisson loss, in members' order
    loss: float  # the ensemble's validation Poisson loss (NaN when it has no member)


def write_ensemble(
    prepared_path: str | Path, runs: dict[str, RunFiles], top_k: int, out: RunFiles, name: str
) -> EnsembleResult:
    """Write the inferred.h5, metrics.csv and members.tsv of `out` (the ensemble `name`) from
    the `top_k` best runs.

    prepared_path: the prepared file the runs trained on (its valid recon_data is what the
    validation Poisson loss scores). runs: {run name: its curves, inferred and model files}.
    When every run diverged, inferred.h5 is a diverged run's placeholder, so the ensemble is
    listed as diverged like one.
    """
    from lfads.formats.inferred import (
        InferredAttributes,
        InferredSplit,
        read_inferred,
        write_inferred,
    )
    from lfads.formats.prepared import read_prepared

    prepared = read_prepared(prepared_path, keys=("recon_data", "nlb_index"))
    members = select_members(runs, top_k)
    if not members:
        _write_without_members(prepared, prepared_path, out, name, len(runs))
        return EnsembleResult([], [], math.nan)
    inferred = [
        read_inferred(member.files.inferred, keys=("rates", "nlb_index")) for member in members
    ]
    splits = {}
    for split in inferred[0].splits:
        for member, file in zip(members, inferred):
            if split not in file.splits or not np.array_equal(
                file.splits[split].nlb_index, inferred[0].splits[split].nlb_index
            ):
                raise ValueError(
                    f"{file.path}: its {split} trials differ from those of {inferred[0].path}; "
                    f"the runs must be sampled from one prepared file ({prepared_path}): rerun "
                    f"infer for {member.name}"
                )
        splits[split] = InferredSplit(
            rates=average_rates([file.splits[split].rates for file in inferred]),
            nlb_index=inferred[0].splits[split].nlb_index,
        )
    valid_spikes = prepared.splits["valid"].recon_data
    member_losses = [poisson_loss(file.splits["valid"].rates, valid_spikes) for file in inferred]
    loss = poisson_loss(splits["valid"].rates, valid_spikes)
    first = inferred[0].attrs
    attributes = InferredAttributes(
        n_samples=sum(int(file.attrs["n_samples"]) for file in inferred),  # over all members
        seed=int(first["seed"]),
        session=int(first["session"]),
        model_epochs=0,  # no model of its own
        data_file=str(prepared_path),
        mantissa_bits=23,
    )
    names = [member.name for member in members]
    session_attributes = {**prepared.session_attributes(), MEMBERS_ATTRIBUTE: json.dumps(names)}
    write_inferred(out.need("inferred", name), session_attributes, attributes, splits)
    write_metrics_csv(
        out.need("curves", name), [{EPOCH: 0, "valid_recon": loss, VALID_RECON_SMOOTHED: loss}]
    )
    write_members(
        out.need("members", name),
        [
            (member.name, member.best_valid_recon_smoothed, member_loss)
            for member, member_loss in zip(members, member_losses, strict=True)
        ],
    )
    log.info(
        "%s: %d members (%s); validation Poisson loss %.6f, best member's %.6f, members' mean "
        "%.6f (nats per bin and neuron)",
        name,
        len(members),
        ", ".join(names),
        loss,
        member_losses[0],
        float(np.mean(member_losses)),
    )
    return EnsembleResult(members, member_losses, loss)


def _write_without_members(prepared, prepared_path, out: RunFiles, name: str, n_runs: int):
    from lfads.formats.inferred import DIVERGED, DIVERGED_EPOCH, InferredAttributes, write_inferred

    reason = f"every one of the {n_runs} runs diverged, so the ensemble has no member"
    log.error("%s: %s", name, reason)
    attributes = {**prepared.session_attributes(), DIVERGED: reason, DIVERGED_EPOCH: 0}
    placeholder = InferredAttributes(
        n_samples=0,
        seed=0,
        session=0,
        model_epochs=0,
        data_file=str(prepared_path),
        mantissa_bits=23,
    )
    write_inferred(out.need("inferred", name), attributes, placeholder, {})
    write_metrics_csv(out.need("curves", name), [])
    write_members(out.need("members", name), [])
