"""Training data: prepared files (lfads.formats.prepared), one per session, in batches for a pack.

Every split is read into memory once (NLB files are tens of MB). In a training epoch each member
of a pack sees every trial once, in an order fixed by (its seed, epoch) alone, so a resumed run
sees exactly the batches it would have and a member's batches do not depend on its pack. A batch
holds trials of all sessions together: member m's batch b takes its share of each session
(in proportion to the sessions' sizes, the same for every member), so a pack's batch is one
(P, B_s, ...) tensor per session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lfads.formats.prepared import MODEL_SPLITS, read_prepared
from lfads.model.batch import SessionBatch
from lfads.model.lfads import SessionDims


@dataclass
class SessionData:
    """One prepared file in memory: each split's trials as one SessionBatch of float32 tensors.

    Its `sv_mask` (sample validation) has one mask per member seed: (P, N, T, n_heldin).
    """

    path: Path
    dims: SessionDims
    attrs: dict[str, Any]  # the file's SESSION_ATTRIBUTES (copied into checkpoints)
    splits: dict[str, SessionBatch] = field(default_factory=dict)  # split -> all its trials
    # split -> (N,) condition index, -1 none
    conditions: dict[str, np.ndarray] = field(default_factory=dict)
    nlb_index: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N,) nlb_tools row

    def n_trials(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0

    def batch(
        self, split: str, rows: torch.Tensor | np.ndarray, n_members: int | None = None
    ) -> SessionBatch:
        """Trials `rows` of a split: rows (B,) -> fields (B, ...), or (P, B, ...) shared by
        `n_members` members; rows (P, B) (each member's own trials) -> (P, B, ...)."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        trials = self.splits[split]
        members = rows.dim() == 2
        batch = SessionBatch(
            encod_data=trials.encod_data[rows],
            recon_data=trials.recon_data[rows],
            ext_input=trials.ext_input[rows],
            truth=trials.truth[rows] if trials.truth is not None else None,
        )
        if not members and n_members is not None:
            batch = batch.expand_members(n_members)
        if trials.sv_mask is not None:  # (P, N, T, n_heldin): each member's own mask
            slots = torch.arange(trials.sv_mask.shape[0])
            mask = trials.sv_mask[slots[:, None], rows] if members else trials.sv_mask[:, rows]
            batch = batch.replace(sv_mask=mask)
        return batch

    def has_missing_targets(self) -> bool:
        return any(
            bool(torch.isnan(self.splits[s].recon_data).any())
            for s in MODEL_SPLITS
            if s in self.splits
        )


def load_session(
    path: str | Path, sv_rate: float = 0.0, seeds: tuple[int, ...] = (0,), session: int = 0
) -> SessionData:
    """Read a prepared file (`lfads.formats.prepared.read_prepared`) into tensors.

    Optional `<split>/ext_input` (N, T or T + F, ext_input_dim) gives external
    inputs (zero-padded over bins it lacks); eval trials get NaN reconstruction targets. With
    sv_rate > 0, a fixed `sv_mask` (1 = used for training) is drawn per train/valid element
    for each member from (its seed, session). A NaN or infinite input (encod_data, ext_input), or
    an infinite recon_data (NaN there means unobserved), is a ValueError naming file, split and
    trial.
    """
    prepared = read_prepared(path)
    for split, arrays in prepared.splits.items():
        _check_finite_input(prepared.path, split, "encod_data", arrays.encod_data)
        _check_finite_input(prepared.path, split, "ext_input", arrays.ext_input)
        _check_finite_input(prepared.path, split, "recon_data", arrays.recon_data, nan_ok=True)
    attributes = prepared.attributes
    n_obs, n_fwd = attributes.n_obs_bins, attributes.n_fwd_bins
    n_neurons = attributes.n_heldin + attributes.n_heldout
    dims = SessionDims(
        attributes.n_heldin, attributes.n_heldout, n_obs, n_fwd, prepared.ext_input_dim
    )
    data = SessionData(prepared.path, dims, prepared.session_attributes())
    streams = [np.random.default_rng([seed, session]) for seed in seeds]
    for split, arrays in prepared.splits.items():
        encod = arrays.encod_data
        n = encod.shape[0]
        recon = arrays.recon_data
        if recon is None:  # eval trials: nothing to reconstruct
            recon = np.full((n, n_obs + n_fwd, n_neurons), np.nan, dtype=np.float32)
        ext = np.zeros((n, n_obs + n_fwd, dims.ext_input_dim), dtype=np.float32)
        if arrays.ext_input is not None:
            ext[:, : arrays.ext_input.shape[1]] = arrays.ext_input
        sv_mask = None
        if sv_rate > 0 and split in MODEL_SPLITS:
            sv_mask = np.stack([(rng.random(encod.shape) >= sv_rate) for rng in streams])
            sv_mask = sv_mask.astype(np.float32)
        if arrays.condition is not None:
            data.conditions[split] = arrays.condition
        if arrays.nlb_index is not None:
            data.nlb_index[split] = arrays.nlb_index
        data.splits[split] = SessionBatch(
            encod_data=_tensor(encod),
            recon_data=_tensor(recon),
            ext_input=_tensor(ext),
            truth=_tensor(arrays.truth),
            sv_mask=_tensor(sv_mask),
        )
    return data


def _check_finite_input(
    path: Path, split: str, key: str, array: np.ndarray | None, nan_ok: bool = False
) -> None:
    """ValueError unless `array` (N trials, bins, channels) is finite (or NaN, with nan_ok)."""
    if array is None:
        return
    bad = np.isinf(array) if nan_ok else ~np.isfinite(array)
    if not bad.any():
        return
    trial, bin_index, channel = np.argwhere(bad)[0]
    what = "infinite" if nan_ok else "NaN or infinite"
    raise ValueError(
        f"{path}: {split}/{key} has {int(bad.sum())} {what} value(s), the first in trial "
        f"{trial} (bin {bin_index}, column {channel}): the model's data must be finite. Rerun the "
        "`prepare` rule, or fix the program that wrote the file."
    )


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


class PackTrials(Dataset):
    """All trials of one split across sessions, for a pack of `n_members`: item `rows` (a
    {session: row indices} of `PackOrder`) -> {session: SessionBatch (P, B_s, ...)}."""

    def __init__(self, sessions: list[SessionData], split: str, n_members: int):
        self.sessions, self.split, self.n_members = sessions, split, n_members

    def __getitem__(self, rows: dict[int, np.ndarray]) -> dict[int, SessionBatch]:
        return {
            s: self.sessions[s].batch(self.split, r, self.n_members)
            for s, r in sorted(rows.items())
        }


class PackOrder(Sampler[dict]):
    """The batches of one split: {session: rows}, rows (P, B_s) (each member's own order) or
    (B_s,) (one order shared by every member).

    Batch b covers trials [b * batch_size, (b + 1) * batch_size) of the split (the last batch
    smaller); each session gives its share of them, in proportion to its size. With `seeds`
    (one per member), member m's trials of a session come in the order
    `np.random.default_rng([seeds[m], epoch])` permutes them (sessions in order); without,
    in file order.
    """

    def __init__(self, sizes: list[int], batch_size: int, seeds: list[int] | None = None):
        self.sizes, self.batch_size, self.seeds, self.epoch = list(sizes), batch_size, seeds, 0
        total = sum(self.sizes)
        ends = [min(end, total) for end in range(batch_size, total + batch_size, batch_size)]
        # per session, the first row of each batch and the end of the last
        self.bounds = [
            [0, *(round(size * end / total) for end in ends)] if total else [0]
            for size in self.sizes
        ]

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        self.epoch = epoch

    def __iter__(self):
        if self.seeds is None:
            orders = [np.arange(size) for size in self.sizes]
        else:
            streams = [np.random.default_rng([seed, self.epoch]) for seed in self.seeds]
            permutations = [[rng.permutation(size) for size in self.sizes] for rng in streams]
            orders = [
                np.stack([member[s] for member in permutations]) for s in range(len(self.sizes))
            ]
        for b in range(len(self)):
            rows = {}
            for s, (order, bounds) in enumerate(zip(orders, self.bounds)):
                if bounds[b + 1] > bounds[b]:
                    rows[s] = order[..., bounds[b] : bounds[b + 1]]
            yield rows

    def __len__(self) -> int:
        return len(self.bounds[0]) - 1 if self.bounds else 0


def _identity(batch: Any) -> Any:
    return batch


def batches(
    sessions: list[SessionData],
    split: str,
    batch_size: int,
    n_members: int,
    seeds: list[int] | None = None,
) -> DataLoader:
    """The split's batches for a pack of `n_members`: shuffled per member with `seeds`, else in
    file order, shared."""
    sizes = [data.n_trials(split) for data in sessions]
    return DataLoader(
        PackTrials(sessions, split, n_members),
        sampler=PackOrder(sizes, batch_size, seeds),
        batch_size=None,
        collate_fn=_identity,
        num_workers=0,
    )
