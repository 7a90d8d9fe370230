"""The LightningModule of a pack: training and validation steps, each member's epoch metrics,
learning-rate schedule, stopping and best epoch, and resumable state; and its LightningDataModule.

The members train together (one forward and one backward pass) but decide alone: each has its
own gradient clip, learning rate, smoothed validation loss, best epoch, early stopping and
scheduler. A member that stops, or meets a non-finite value (it diverged), is frozen: its
weights, moments and history stay as they were while the others go on, and the pack stops when
none is left. Optimisation is manual (`automatic_optimization = False`): Lightning's own clip is
one norm over all parameters, which would couple the members.

Everything a resumed pack needs beyond weights and optimiser (each member's metric history,
smoothed validation loss, best epoch and its weights, schedule, the members' random streams, the
pack's identity) is saved under the checkpoint's "lfads" key as plain tensors, numbers and lists,
so checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lfads.formats.checkpoints import (
    Divergence,
    MemberState,
    TrainingState,
    add_training_state,
    training_state,
)
from lfads.formats.metrics import EPOCH, EPOCH_SECONDS, VALID_RECON_SMOOTHED
from lfads.model.batch import SessionBatch
from lfads.model.hparams import HParams
from lfads.model.lfads import LFADS, ramp
from lfads.model.metrics import RegionMetrics, mean_over_sessions
from lfads.training.datamodule import SessionData, batches, load_session
from lfads.training.optimizer import (
    MemberAdamW,
    PlateauSchedule,
    clip_member_gradients,
    member_gradient_norms,
    zero_member_gradients,
)
from lfads.training.step import StepResult, describe_non_finite, finite_members, run_step

log = logging.getLogger("lfads.training.train")

LOSS_TERMS = ("loss", "recon", "kl_ic", "kl_co", "l2")
SPLITS = ("train", "valid")


class LFADSDataModule(L.LightningDataModule):
    """Train and valid batches over a list of session files (the model's session i: file i), for a
    pack whose members have `seeds` (each member's own batch order and sample-validation mask)."""

    def __init__(
        self,
        paths: list[str | Path],
        batch_size: int,
        seeds: list[int],
        sv_rate: float = 0.0,
    ):
        super().__init__()
        self.paths, self.batch_size = [Path(p) for p in paths], batch_size
        self.seeds, self.sv_rate = list(seeds), sv_rate
        self.sessions: list[SessionData] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.sessions:
            self.sessions = [
                load_session(path, self.sv_rate, tuple(self.seeds), i)
                for i, path in enumerate(self.paths)
            ]

    def train_dataloader(self):
        return batches(self.sessions, "train", self.batch_size, len(self.seeds), self.seeds)

    def val_dataloader(self):
        return batches(self.sessions, "valid", self.batch_size, len(self.seeds))


class LFADSModule(L.LightningModule):
    """Trains `model`, a pack of members (`names[m]` is member m's run); identity: the pack's
    `RunIdentity.to_dict()`, saved in every last.ckpt."""

    def __init__(self, model: LFADS, names: list[str], identity: dict[str, Any] | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.identity = dict(identity or {})
        self.model = model
        self.states = [
            MemberState(name, member.to_dict(), []) for name, member in zip(names, model.members)
        ]
        for state, member in zip(self.states, model.members):
            state.schedule = _schedule(member)
        self.search: dict[str, Any] | None = None  # a PBT search's record (lfads.search.pbt)
        self._restored_rng: dict[str, Any] | None = None
        self._reset_epoch()

    @property
    def members(self) -> list[HParams]:
        return self.model.members

    def active(self) -> torch.Tensor:
        """(P,) bool: the members still training."""
        return torch.tensor([not s.finished for s in self.states], device=self.device)

    # -- batches ---------------------------------------------------------------------------
    def transfer_batch_to_device(
        self, batch: dict[int, SessionBatch], device: torch.device, dataloader_idx: int
    ) -> dict[int, SessionBatch]:
        return {s: b.to(device) for s, b in batch.items()}

    def _reset_epoch(self) -> None:
        n = self.model.n_members
        self._sums: dict[str, dict[str, torch.Tensor]] = {split: {} for split in SPLITS}
        self._trials = dict.fromkeys(SPLITS, 0)
        self._metrics = {
            split: [RegionMetrics(d.n_heldin, d.n_obs_bins, n) for d in self.model.sessions]
            for split in SPLITS
        }
        self._epoch_start = time.perf_counter()

    def _step(self, batch: dict[int, SessionBatch], split: str) -> StepResult:
        result = run_step(self.model, batch, self.current_epoch, training=split == "train")
        self._mark_diverged(~finite_members(result), result, split)
        size = sum(len(b) for b in batch.values())
        self._trials[split] += size
        sums = self._sums[split]
        values = {name: getattr(result.terms, name) for name in LOSS_TERMS} | result.metrics
        for name, value in values.items():
            value = value.detach().double() * size
            sums[name] = sums[name] + value if name in sums else value
        return result

    def _mark_diverged(self, non_finite: torch.Tensor, result: StepResult | None, split: str):
        """Freeze the active members among `non_finite` ((P,) bool) as diverged, with the reason."""
        newly = non_finite & self.active()
        if not bool(newly.any()):
            return
        for m in torch.nonzero(newly).flatten().tolist():
            reason = (
                describe_non_finite(result, m, split, self.current_epoch)
                if result is not None
                else f"{split} gradients are not finite at epoch {self.current_epoch + 1}"
            )
            self.states[m].diverged = Divergence(reason, self.current_epoch + 1).to_dict()
            if self.model.n_members > 1:
                log.error("%s: %s", self.states[m].name, reason)
            else:
                log.error("%s", reason)

    def training_step(self, batch: dict[int, SessionBatch], batch_idx: int) -> None:
        result = self._step(batch, "train")
        active = self.active()
        loss = torch.where(active, result.terms.loss, 0.0).sum()
        optimizer = self.optimizers(use_pl_optimizer=False)
        optimizer.zero_grad()
        self.manual_backward(loss)
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        zero_member_gradients(parameters, ~active)
        norms = member_gradient_norms(parameters, self.model.n_members).to(self.device)
        self._mark_diverged(~norms.isfinite(), None, "train")
        active = self.active()
        zero_member_gradients(parameters, ~active)
        clips = torch.tensor([m.gradient_clip for m in self.members], device=self.device)
        clip_member_gradients(parameters, clips.double(), torch.nan_to_num(norms))
        hp = self.model.hparams
        optimizer.step(active, ramp(self.current_epoch, hp.l2_start_epoch, hp.l2_increase_epoch))
        for s, out in result.outputs.items():  # bits/spike of the training outputs
            self._metrics["train"][s].update(
                self.model.rates(s, out).detach(), batch[s].recon_data, None
            )

    def validation_step(self, batch: dict[int, SessionBatch], batch_idx: int) -> None:
        self._step(batch, "valid")
        # Metrics of the posterior means: the rates a single deterministic pass would report.
        processed = {
            s: self.model.infer_augmentations.process_batch(b, self.model.random)[0]
            for s, b in batch.items()
        }
        outputs = self.model(processed, sample_posteriors=False)
        for s, out in outputs.items():
            self._metrics["valid"][s].update(
                self.model.rates(s, out), batch[s].recon_data, batch[s].truth
            )

    # -- optimiser -------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.model.hparams
        return MemberAdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=[member.lr for member in self.members],
            betas=(hp.adam_beta1, hp.adam_beta2),
            eps=hp.adam_epsilon,
            weight_decay=[member.weight_decay for member in self.members],
        )

    def learning_rates(self) -> list[float]:
        return list(self.optimizers(use_pl_optimizer=False).param_groups[0]["lr"])

    # -- epochs ----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        if self._restored_rng is not None:  # continue the streams where the checkpoint left them
            if not self.model.random.set_state(self._restored_rng, self.device):
                log.warning("the random streams were saved on another device: drawn afresh")
            self._restored_rng = None
        self._reset_epoch()

    def on_train_epoch_end(self) -> None:
        epoch, seconds = self.current_epoch, time.perf_counter() - self._epoch_start
        values = self._epoch_values()
        lrs = self.learning_rates()
        for m, state in enumerate(self.states):
            if state.finished:  # stopped before this epoch, or diverged in it or before
                continue
            row = {EPOCH: epoch, **values[m]}
            self._update_member(m, state, row, lrs, seconds)
        self.optimizers(use_pl_optimizer=False).param_groups[0]["lr"] = lrs
        if all(state.finished for state in self.states):
            self.trainer.should_stop = True

    def _epoch_values(self) -> list[dict[str, float]]:
        """Each member's epoch means of the loss terms and metrics, by metrics.csv column."""
        n = self.model.n_members
        rows: list[dict[str, float]] = [{} for _ in range(n)]
        for split in SPLITS:
            sums, trials = self._sums[split], self._trials[split]
            names = [*LOSS_TERMS, *sorted(k for k in sums if k not in LOSS_TERMS)]
            for name in names:
                per_member = (sums[name] / trials).tolist() if trials else [math.nan] * n
                for m in range(n):
                    rows[m][f"{split}_{name}"] = per_member[m]
            per_session = [metric.compute() for metric in self._metrics[split]]
            for m in range(n):
                member = [{k: v[m] for k, v in session.items()} for session in per_session]
                for k, v in mean_over_sessions(member).items():
                    if split == "valid" or k != "rate_r2":  # no true rates in training metrics
                        rows[m][f"{split}_{k}"] = v
                if split == "valid" and len(member) > 1:  # every session's NLB metrics
                    rows[m].update(
                        {
                            f"valid_{k}_session{s}": v
                            for s, values in enumerate(member)
                            for k, v in values.items()
                        }
                    )
        return rows

    def _update_member(
        self, m: int, state: MemberState, row: dict[str, float], lrs: list[float], seconds: float
    ) -> None:
        """One member's end of epoch: smoothed loss, best epoch, schedule, stopping, log."""
        hp, epoch = self.members[m], self.current_epoch
        valid_recon = row["valid_recon"]
        a = hp.valid_smoothing
        state.valid_smoothed = (
            valid_recon
            if math.isnan(state.valid_smoothed)
            else a * valid_recon + (1 - a) * state.valid_smoothed
        )
        row[VALID_RECON_SMOOTHED] = state.valid_smoothed
        # (A NaN valid_smoothed means no validation trials: then the latest epoch is kept.)
        if (
            math.isnan(state.valid_smoothed)
            or state.valid_smoothed < state.best_valid_recon_smoothed
        ):
            state.best_epoch, state.best_valid_recon_smoothed = epoch + 1, state.valid_smoothed
            state.best_weights = self.model.member_state_dict(m)
        row["l2_ramp"] = ramp(epoch, hp.l2_start_epoch, hp.l2_increase_epoch)
        row["kl_ramp"] = ramp(epoch, hp.kl_start_epoch, hp.kl_increase_epoch)
        row["lr"] = lrs[m]
        row[EPOCH_SECONDS] = seconds
        state.history.append(row)
        self._schedule_and_stop(m, state, lrs)
        log.info(
            "epoch %d/%d%s: objective (x loss_scale) train %.4g, valid %.4g; valid recon %.4g "
            "nats/bin/neuron, valid co-bps %.4f, fp-bps %.4f, rate R2 %.4f, lr %.3g, %.1f s",
            epoch + 1,
            self.trainer.max_epochs,
            f" {state.name}" if self.model.n_members > 1 else "",
            row["train_loss"],
            row["valid_loss"],
            valid_recon,
            row["valid_co_bps"],
            row["valid_fp_bps"],
            row["valid_rate_r2"],
            row["lr"],
            seconds,
        )

    def _schedule_and_stop(self, m: int, state: MemberState, lrs: list[float]) -> None:
        hp, epoch = self.members[m], self.current_epoch
        if state.schedule is not None:
            schedule = PlateauSchedule(**state.schedule)
            lrs[m] = schedule.step(state.valid_smoothed, lrs[m])
            state.schedule = schedule.state_dict()
            if lrs[m] <= hp.lr_stop * (1 + 1e-9):
                state.stop_reason = (
                    f"learning rate reached lr_stop {hp.lr_stop:g} at epoch {epoch + 1}"
                )
        ramps_done = epoch >= max(
            hp.l2_start_epoch + hp.l2_increase_epoch, hp.kl_start_epoch + hp.kl_increase_epoch
        )
        if not ramps_done:  # no early stopping while the penalties ramp up
            return
        if state.valid_smoothed < state.best_smoothed:
            state.best_smoothed, state.epochs_since_best = state.valid_smoothed, 0
        else:
            state.epochs_since_best += 1
        patience = hp.early_stopping_patience
        if patience and state.epochs_since_best >= patience and not state.stop_reason:
            state.stop_reason = (
                f"no better smoothed valid recon for {state.epochs_since_best} epochs "
                f"(early stopping at epoch {epoch + 1})"
            )

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = TrainingState(
            sessions=[d.to_dict() for d in self.model.sessions],
            members=self.states,
            rng=self.model.random.state(),
            identity=self.identity,
            search=self.search,
        )
        add_training_state(checkpoint, state)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = training_state(checkpoint, self.trainer.ckpt_path or "the checkpoint")
        names = [s.name for s in self.states]
        self.states = state.members
        for own, name in zip(self.states, names):
            own.name = name
        self.search = state.search
        self._restored_rng = state.rng


def _schedule(hparams: HParams) -> dict[str, Any] | None:
    if not hparams.lr_scheduler:
        return None
    return PlateauSchedule(hparams.lr_decay, hparams.lr_patience, hparams.lr_stop).state_dict()
