"""Augmentations: they act on a session's batch before the forward pass and/or on its loss after.

Interface (`Augmentation`): `process_batch(batch, generator) -> (batch, memo)` and
`process_losses(losses, batch, memo, metrics) -> losses`, where `losses` is the
elementwise reconstruction loss (B, T + F, H) and `memo` whatever the batch
step wants to hand to the loss step (e.g. a mask). Either step may be left as
the identity. Augmentations see one member's batch (no member axis) and draw their random
numbers from `generator`, that member's stream (`torch.rand(..., generator=generator)`), so a
member's draws do not depend on its pack. An `AugmentationStack` applies its augmentations in
list order, first to the batch, then to the losses; the model keeps one stack for training
and one for validation and inference per member, built from that member's hyperparameters
(`MemberAugmentations`). Constructors take keyword arguments only
(the options of the config); the options of coordinated_dropout and
sample_validation that have flat hyperparameters (`cd_rate`, `sv_rate`, ...)
are filled in from them by `lfads.model.hparams.HParams`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lfads.model.batch import SessionBatch
from lfads.model.members import MemberRandom


def pad_to(mask: torch.Tensor, like: torch.Tensor, value: float) -> torch.Tensor:
    """Extend an encoder-shaped mask (B, T, n_heldin) to the reconstruction shape (B, T + F, H)."""
    return F.pad(
        mask, (0, like.shape[2] - mask.shape[2], 0, like.shape[1] - mask.shape[1]), value=value
    )


class Augmentation:
    def process_batch(
        self, batch: SessionBatch, generator: torch.Generator
    ) -> tuple[SessionBatch, Any]:
        return batch, None

    def process_losses(
        self, losses: torch.Tensor, batch: SessionBatch, memo: Any, metrics: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return losses


class AugmentationStack:
    def __init__(self, augmentations: list[Augmentation]):
        self.augmentations = list(augmentations)

    def process_batch(
        self, batch: SessionBatch, generator: torch.Generator
    ) -> tuple[SessionBatch, list[Any]]:
        memos = []
        for augmentation in self.augmentations:
            batch, memo = augmentation.process_batch(batch, generator)
            memos.append(memo)
        return batch, memos

    def process_losses(
        self,
        losses: torch.Tensor,
        batch: SessionBatch,
        memos: list[Any],
        metrics: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        for augmentation, memo in zip(self.augmentations, memos):
            losses = augmentation.process_losses(losses, batch, memo, metrics)
        return losses


def _rand(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) shaped like `like`, from `generator` (torch.rand_like takes none)."""
    return torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)


class MemberAugmentations:
    """One `AugmentationStack` per member, applied to each member's rows of a (P, B, ...) batch
    with the member's own stream: members may differ in their augmentations' options (cd_rate)."""

    def __init__(self, stacks: list[AugmentationStack]):
        self.stacks = list(stacks)

    @property
    def empty(self) -> bool:
        return not any(stack.augmentations for stack in self.stacks)

    def process_batch(
        self, batch: SessionBatch, random: MemberRandom
    ) -> tuple[SessionBatch, list[list[Any]]]:
        """batch (P, B, ...) -> the augmented batch (P, B, ...) and each member's memos."""
        if self.empty:
            return batch, [[] for _ in self.stacks]
        generators = random.generators(batch.encod_data.device)
        results = [
            stack.process_batch(batch.member(m), generators[m])
            for m, stack in enumerate(self.stacks)
        ]
        return SessionBatch.stack([b for b, _ in results]), [memos for _, memos in results]

    def process_losses(
        self,
        losses: torch.Tensor,
        batch: SessionBatch,
        memos: list[list[Any]],
        metrics: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """losses (P, B, T + F, H) -> (P, B, T + F, H); each member's extra scalars go into
        `metrics` as (P,) tensors."""
        if self.empty:
            return losses
        processed, found = [], []
        # unbind, not losses[m]: each index's backward would write a zero tensor of all members
        for m, (stack, member_losses) in enumerate(zip(self.stacks, losses.unbind(0))):
            member_metrics: dict[str, torch.Tensor] = {}
            processed.append(
                stack.process_losses(member_losses, batch.member(m), memos[m], member_metrics)
            )
            found.append(member_metrics)
        for name in found[0]:
            metrics[name] = torch.stack([member[name] for member in found])
        return torch.stack(processed)


class CoordinatedDropout(Augmentation):
    """Mask a random `rate` of the encoder input elements (scaling the rest by 1 / (1 - rate)) and
    back-propagate the reconstruction only through the masked elements, so the model cannot learn
    to copy its input to its output. `pass_rate` of the kept elements pass gradients too.
    Bins the IC encoder sees alone (`ic_enc_seq_len`) are never masked.
    """

    def __init__(self, *, rate: float = 0.3, pass_rate: float = 0.0, ic_enc_seq_len: int = 0):
        self.rate, self.pass_rate, self.ic_enc_seq_len = rate, pass_rate, ic_enc_seq_len

    def process_batch(self, batch, generator):
        if self.rate == 0:
            return batch, None
        data = batch.encod_data
        keep = _rand(data, generator) >= self.rate  # (B, T, n_heldin)
        keep[:, : self.ic_enc_seq_len] = True
        passes = _rand(data, generator) < self.pass_rate
        grad_mask = (~keep | passes).to(data.dtype)
        grad_mask[:, : self.ic_enc_seq_len] = 1.0
        return batch.replace(encod_data=data * keep / (1.0 - self.rate)), grad_mask

    def process_losses(self, losses, batch, memo, metrics):
        if memo is None:
            return losses
        grad_mask = pad_to(memo, losses, value=1.0)  # held-out neurons and forward bins always pass
        return losses * grad_mask + (losses * (1.0 - grad_mask)).detach()


class SampleValidation(Augmentation):
    """Hold a fixed random `rate` of input elements (the data's `sv_mask`) out of training: they are
    zeroed in the input and dropped from the loss, and their reconstruction cost is reported as
    `recon_sv` to score overfitting. The data module draws `sv_mask` when `sv_rate` > 0.
    """

    def __init__(self, *, rate: float = 0.0, ic_enc_seq_len: int = 0):
        self.rate, self.ic_enc_seq_len = rate, ic_enc_seq_len

    def _mask(self, batch: SessionBatch) -> torch.Tensor | None:
        if self.rate == 0:
            return None
        if batch.sv_mask is None:
            raise ValueError(
                "sample_validation needs the data's sv_mask: set sv_rate > 0 in the hyperparameters"
            )
        mask = batch.sv_mask.clone()
        mask[:, : self.ic_enc_seq_len] = 1.0
        return mask

    def process_batch(self, batch, generator):
        mask = self._mask(batch)
        if mask is None:
            return batch, None
        return batch.replace(encod_data=batch.encod_data * mask / (1.0 - self.rate)), mask

    def process_losses(self, losses, batch, memo, metrics):
        if memo is None:
            return losses
        heldout = 1.0 - memo
        n_bins, n_heldin = memo.shape[1:]
        metrics["recon_sv"] = (
            losses[:, :n_bins, :n_heldin] * heldout
        ).sum() / heldout.sum().clamp_min(1.0)
        return losses * pad_to(memo / (1.0 - self.rate), losses, value=1.0)


class TemporalShift(Augmentation):
    """Shift every channel of every trial in time by round(N(0, std)) bins, at most `max_shift`,
    repeating the edge bins (encoder and reconstruction data are shifted independently)."""

    def __init__(self, *, std: float = 3.0, max_shift: int = 6):
        self.std, self.max_shift = std, max_shift

    def _shift(self, data: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, n_bins, n_channels = data.shape
        noise = torch.randn(
            batch, 1, n_channels, device=data.device, dtype=data.dtype, generator=generator
        )
        shifts = torch.round(noise * self.std).long()
        shifts = shifts.clamp(-self.max_shift, self.max_shift)
        source = (torch.arange(n_bins, device=data.device)[None, :, None] - shifts).clamp(
            0, n_bins - 1
        )
        return torch.gather(data, 1, source)

    def process_batch(self, batch, generator):
        return batch.replace(
            encod_data=self._shift(batch.encod_data, generator),
            recon_data=self._shift(batch.recon_data, generator),
        ), None


class SpikeJitter(Augmentation):
    """Move each spike by a uniform integer in [-width, width] bins, reflected at the edges."""

    def __init__(self, *, width: int = 2):
        self.width = width

    def _jitter(self, data: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        missing = torch.isnan(data)
        counts = torch.nan_to_num(data).round().long()
        n_bins = data.shape[1]
        trial, time, channel = [], [], []
        for level in range(1, int(counts.max().item()) + 1 if counts.numel() else 1):
            # one entry per spike at this level
            b, t, n = torch.nonzero(counts >= level, as_tuple=True)
            trial.append(b), time.append(t), channel.append(n)
        if not trial:
            return data
        trial, time, channel = torch.cat(trial), torch.cat(time), torch.cat(channel)
        time = time + torch.randint(
            -self.width, self.width + 1, time.shape, device=data.device, generator=generator
        )
        time = time.abs()  # reflect below 0
        time = torch.where(time > n_bins - 1, 2 * (n_bins - 1) - time, time)  # and above T - 1
        jittered = torch.zeros_like(data)
        jittered.index_put_(
            (trial, time, channel), torch.ones_like(time, dtype=data.dtype), accumulate=True
        )
        return jittered.masked_fill(missing, float("nan"))

    def process_batch(self, batch, generator):
        return batch.replace(
            encod_data=self._jitter(batch.encod_data, generator),
            recon_data=self._jitter(batch.recon_data, generator),
        ), None


class SelectiveBackprop(Augmentation):
    """Selective back-propagation through time: NaN targets (unobserved bins or neurons) are left
    out of the loss, which is rescaled so that its mean over elements is unchanged; NaN inputs
    become 0."""

    def __init__(self, *, fill_value: float = 1.0):
        # placeholder target where data are NaN (any value in every model's support)
        self.fill_value = fill_value

    def process_batch(self, batch, generator):
        missing = torch.isnan(batch.recon_data)
        batch = batch.replace(
            encod_data=torch.nan_to_num(batch.encod_data, nan=0.0),
            recon_data=batch.recon_data.masked_fill(missing, self.fill_value),
        )
        return batch, missing

    def process_losses(self, losses, batch, memo, metrics):
        observed_fraction = 1.0 - memo.float().mean()
        if observed_fraction == 0:
            return losses * 0.0
        return torch.where(memo, torch.zeros_like(losses), losses) / observed_fraction
