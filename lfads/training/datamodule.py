"""Training data: prepared-tensor HDF5 files (lfads/README.md), one per session, as mixed-session batches.

Every split is read into memory once (NLB files are tens of MB). A training
batch draws trials from all sessions together, in an order fixed by
(seed, epoch) alone, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from lfads.model.batch import SessionBatch
from lfads.model.lfads import SessionDims

SPLITS = ("train", "valid", "eval")
# Root attributes copied into checkpoints and inference files.
COPIED_ATTRS = (
    "dataset",
    "nlb_layout",
    "phase",
    "bin_width_ms",
    "n_heldin",
    "n_heldout",
    "n_obs_bins",
    "n_fwd_bins",
    "has_truth",
)


@dataclass
class SessionData:
    """One prepared file in memory. splits[split][key] are float32 tensors, `index` int64."""

    path: Path
    dims: SessionDims
    attrs: dict[str, Any]
    splits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    conditions: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # split -> (N,) condition index, -1 none

    def n_trials(self, split: str) -> int:
        return len(self.splits[split]["index"]) if split in self.splits else 0

    def batch(self, split: str, rows: torch.Tensor | np.ndarray) -> SessionBatch:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        arrays = self.splits[split]
        return SessionBatch(
            encod_data=arrays["encod_data"][rows],
            recon_data=arrays["recon_data"][rows],
            ext_input=arrays["ext_input"][rows],
            truth=arrays["truth"][rows] if "truth" in arrays else None,
            sv_mask=arrays["sv_mask"][rows] if "sv_mask" in arrays else None,
        )

    def has_missing_targets(self) -> bool:
        return any(
            bool(torch.isnan(self.splits[s]["recon_data"]).any())
            for s in ("train", "valid")
            if s in self.splits
        )


def _plain(value: Any) -> Any:
    """HDF5 attribute -> plain Python value (numpy scalars and bytes are not weights_only-safe)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def load_session(
    path: str | Path, sv_rate: float = 0.0, seed: int = 0, session: int = 0
) -> SessionData:
    """Read a prepared file. Missing keys are reported with the file and key.

    Optional `<split>/ext_input` (N, T or T + F, ext_input_dim) gives external
    inputs (zero-padded over bins it lacks). With sv_rate > 0, a fixed
    `sv_mask` (1 = used for training) is drawn per train/valid element from (seed, session).
    """
    path = Path(path)
    with h5py.File(path, "r") as file:
        attrs = {key: _plain(value) for key, value in file.attrs.items()}
        for key in ("n_heldin", "n_heldout", "n_obs_bins", "n_fwd_bins"):
            if key not in attrs:
                raise ValueError(
                    f"{path}: root attribute {key!r} is missing; is this a prepared file (lfads/README.md)?"
                )
        n_heldin, n_heldout, n_obs, n_fwd = (
            int(attrs[k]) for k in ("n_heldin", "n_heldout", "n_obs_bins", "n_fwd_bins")
        )
        ext_dims = {file[f"{s}/ext_input"].shape[2] for s in SPLITS if f"{s}/ext_input" in file}
        if len(ext_dims) > 1:
            raise ValueError(f"{path}: ext_input widths differ between splits: {sorted(ext_dims)}")
        dims = SessionDims(n_heldin, n_heldout, n_obs, n_fwd, ext_dims.pop() if ext_dims else 0)
        data = SessionData(path, dims, {k: attrs[k] for k in COPIED_ATTRS if k in attrs})
        rng = np.random.default_rng([seed, session])
        for split in SPLITS:
            if f"{split}/encod_data" not in file:
                continue
            group = file[split]
            encod = np.asarray(group["encod_data"][()], dtype=np.float32)
            n = encod.shape[0]
            if encod.shape[1:] != (n_obs, n_heldin):
                raise ValueError(
                    f"{path}: {split}/encod_data has shape {encod.shape}; "
                    f"expected (N, {n_obs}, {n_heldin}) from the file's attributes"
                )
            if "recon_data" in group:
                recon = np.asarray(group["recon_data"][()], dtype=np.float32)
                if recon.shape != (n, n_obs + n_fwd, n_heldin + n_heldout):
                    raise ValueError(
                        f"{path}: {split}/recon_data has shape {recon.shape}; "
                        f"expected ({n}, {n_obs + n_fwd}, {n_heldin + n_heldout})"
                    )
            else:  # eval trials: nothing to reconstruct
                recon = np.full((n, n_obs + n_fwd, n_heldin + n_heldout), np.nan, dtype=np.float32)
            ext = np.zeros((n, n_obs + n_fwd, dims.ext_input_dim), dtype=np.float32)
            if "ext_input" in group:
                given = group["ext_input"][()]
                ext[:, : given.shape[1]] = given
            arrays = {
                "encod_data": encod,
                "recon_data": recon,
                "ext_input": ext,
                "index": np.asarray(
                    group["nlb_index"][()] if "nlb_index" in group else np.arange(n)
                ),
            }
            if "truth" in group:
                arrays["truth"] = np.asarray(group["truth"][()], dtype=np.float32)
            if "condition" in group:
                data.conditions[split] = np.asarray(group["condition"][()], dtype=np.int64)
            if sv_rate > 0 and split in ("train", "valid"):
                arrays["sv_mask"] = (rng.random(encod.shape) >= sv_rate).astype(np.float32)
            data.splits[split] = {
                k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()
            }
            data.splits[split]["index"] = torch.arange(
                n
            )  # rows of the split; nlb_index stays in the file
    for split in ("train", "valid"):
        if split not in data.splits:
            raise ValueError(f"{path}: group {split!r} with encod_data and recon_data is missing")
    return data


class MixedSessionTrials(Dataset):
    """All trials of one split across sessions; item i is (session, row). `__getitems__` builds a batch."""

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
    """Defined on first use: importing Lightning costs ~0.2 GiB and 3 s, which inference does not need."""
    import lightning as L

    class LFADSDataModule(L.LightningDataModule):
        """Train and valid batches over a list of session files (the model's session i is file i)."""

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
