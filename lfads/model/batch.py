"""What one session contributes to a batch. A batch is `dict[session index, SessionBatch]`.

The model takes member-major batches, every field (P, B, ...): member m's trials in row m (a
pack's members may train on different trials, each in its own order). Data files hand out
batches without the member axis (B, ...); `expand_members` shares one such batch among P members
without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class SessionBatch:
    encod_data: torch.Tensor  # ([P,] B, T, n_heldin) spikes per bin seen by the encoders
    recon_data: torch.Tensor  # ([P,] B, T + F, H) reconstruction targets, NaN where unobserved
    ext_input: torch.Tensor  # ([P,] B, T + F, ext_input_dim) external inputs (0 where they lack)
    truth: torch.Tensor | None = None  # ([P,] B, T + F, H) true rates in spikes per bin
    sv_mask: torch.Tensor | None = None  # ([P,] B, T, n_heldin) 1 where used for training

    def replace(self, **changes: torch.Tensor) -> SessionBatch:
        return replace(self, **changes)

    def _map(self, function) -> SessionBatch:
        return SessionBatch(
            **{
                f.name: None if getattr(self, f.name) is None else function(getattr(self, f.name))
                for f in fields(self)
            }
        )

    def to(self, device: torch.device | str) -> SessionBatch:
        return self._map(lambda x: x.to(device))

    def member(self, m: int) -> SessionBatch:
        """Member m's rows of a member-major batch: (B, ...) fields."""
        return self._map(lambda x: x[m])

    def expand_members(self, n_members: int) -> SessionBatch:
        """The same trials for each of `n_members` members: (B, ...) -> (P, B, ...), no copy."""
        return self._map(lambda x: x.unsqueeze(0).expand(n_members, *x.shape))

    @staticmethod
    def stack(batches: list[SessionBatch]) -> SessionBatch:
        """Members' batches (B, ...) -> one member-major batch (P, B, ...)."""
        return SessionBatch(
            **{
                f.name: None
                if getattr(batches[0], f.name) is None
                else torch.stack([getattr(b, f.name) for b in batches])
                for f in fields(SessionBatch)
            }
        )

    def __len__(self) -> int:
        """Trials (B), with or without the member axis."""
        return self.encod_data.shape[-3]
