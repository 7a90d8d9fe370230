"""What one session contributes to a batch. A batch is `dict[session index, SessionBatch]`."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class SessionBatch:
    encod_data: torch.Tensor  # (B, T, n_heldin) spikes per bin seen by the encoders
    recon_data: torch.Tensor  # (B, T + F, H) reconstruction targets, NaN where unobserved
    ext_input: torch.Tensor  # (B, T + F, ext_input_dim) external inputs (zeros over bins they lack)
    truth: torch.Tensor | None = None  # (B, T + F, H) true rates in spikes per bin, when known
    sv_mask: torch.Tensor | None = None  # (B, T, n_heldin) 1 where an element is used for training

    def replace(self, **changes: torch.Tensor) -> SessionBatch:
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> SessionBatch:
        return SessionBatch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in fields(self)
            }
        )

    def __len__(self) -> int:
        return self.encod_data.shape[0]
