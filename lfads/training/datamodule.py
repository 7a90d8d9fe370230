"""Training data: prepared files (lfads.formats.prepared), one per session, in mixed batches.

Every split is read into memory once (NLB files are tens of MB). A training
batch draws trials from all sessions together, in an order fixed by
(seed, epoch) alone, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from lfads.formats.prepared import MODEL_SPLITS, read_prepared
from lfads.model.batch import SessionBatch
from lfads.model.lfads import SessionDims


@dataclass
class SessionData:
    """One prepared file in memory: each split's trials as one SessionBatch of float32 tensors."""

    path: Path
    dims: SessionDims
    attrs: dict[str, Any]  # the file's SESSION_ATTRIBUTES (copied into checkpoints)
    splits: dict[str, SessionBatch] = field(default_factory=dict)  # split -> all its trials
    # split -> (N,) condition index, -1 none
    conditions: dict[str, np.ndarray] = field(default_factory=dict)
    nlb_index: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N,) nlb_tools row

    def n_trials(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0

    def batch(self, split: str, rows: torch.Tensor | np.ndarray) -> SessionBatch:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        trials = self.splits[split]
        return SessionBatch(
            encod_data=trials.encod_data[rows],
            recon_data=trials.recon_data[rows],
            ext_input=trials.ext_input[rows],
            truth=trials.truth[rows] if trials.truth is not None else None,
            sv_mask=trials.sv_mask[rows] if trials.sv_mask is not None else None,
        )

    def has_missing_targets(self) -> bool:
        return any(
            bool(torch.isnan(self.splits[s].recon_data).any())
            for s in MODEL_SPLITS
            if s in self.splits
        )


def load_session(
    path: str | Path, sv_rate: float = 0.0, seed: int = 0, session: int = 0
) -> SessionData:
    """Read a prepared file (`lfads.formats.prepared.read_prepared`) into tensors.

    Optional `<split>/ext_input` (N, T or T + F, ext_input_dim) gives external
    inputs (zero-padded over bins it lacks); eval trials get NaN reconstruction targets. With
    sv_rate > 0, a fixed `sv_mask` (1 = used for training) is drawn per train/valid element
    from (seed, session). A NaN or infinite input (encod_data, ext_input), or an infinite
    recon_data (NaN there means unobserved), is a ValueError naming file, split and trial.
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
    rng = np.random.default_rng([seed, session])
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
            sv_mask = (rng.random(encod.shape) >= sv_rate).astype(np.float32)
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


class MixedSessionTrials(Dataset):
    """All trials of one split across sessions; item i is (session, row). `__getitems__` builds a
    batch."""

    def __init__(self, sessions: list[SessionData], split: str):
        self.sessions, self.split = sessions, split
        self.keys = [
            (s, row) for s, data in enumerate(sessions) for row in range(data.n_trials(split))
        ]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return self.keys[i]

    def __getitems__(self, indices: list[int]) -> dict[int, SessionBatch]:
        rows: dict[int, list[int]] = {}
        for i in indices:
            session, row = self.keys[i]
            rows.setdefault(session, []).append(row)
        return {s: self.sessions[s].batch(self.split, sorted(r)) for s, r in sorted(rows.items())}


class EpochOrder(Sampler[int]):
    """Trial order: a permutation fixed by (seed, epoch) when shuffling, else 0, 1, 2, ..."""

    def __init__(self, n_items: int, shuffle: bool, seed: int = 0):
        self.n_items, self.shuffle, self.seed, self.epoch = n_items, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            return iter(
                np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items).tolist()
            )
        return iter(range(self.n_items))

    def __len__(self) -> int:
        return self.n_items


def _identity(batch: Any) -> Any:
    return batch


def batches(
    sessions: list[SessionData], split: str, batch_size: int, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    dataset = MixedSessionTrials(sessions, split)
    # Its own generator: a DataLoader iterator otherwise draws a seed from the global RNG, which
    # would
    # make the random stream depend on when iterators are created (and break exact resumption).
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(
            EpochOrder(len(dataset), shuffle, seed), batch_size, drop_last=False
        ),
        collate_fn=_identity,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )


def _data_module_class() -> type:
    """Defined on first use: importing Lightning costs ~0.2 GiB and 3 s, which inference does not
    need."""
    import lightning as L

    class LFADSDataModule(L.LightningDataModule):
        """Train and valid batches over a list of session files (the model's session i: file i)."""

        def __init__(
            self, paths: list[str | Path], batch_size: int, seed: int = 0, sv_rate: float = 0.0
        ):
            super().__init__()
            self.paths, self.batch_size, self.seed, self.sv_rate = (
                [Path(p) for p in paths],
                batch_size,
                seed,
                sv_rate,
            )
            self.sessions: list[SessionData] = []

        def setup(self, stage: str | None = None) -> None:
            if not self.sessions:
                self.sessions = [
                    load_session(p, self.sv_rate, self.seed, i) for i, p in enumerate(self.paths)
                ]

        def train_dataloader(self) -> DataLoader:
            return batches(self.sessions, "train", self.batch_size, shuffle=True, seed=self.seed)

        def val_dataloader(self) -> DataLoader:
            return batches(self.sessions, "valid", self.batch_size)

    LFADSDataModule.__qualname__ = "LFADSDataModule"
    return LFADSDataModule


def __getattr__(name: str) -> Any:
    if name == "LFADSDataModule":
        globals()[name] = _data_module_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
