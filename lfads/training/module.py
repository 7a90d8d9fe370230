"""The LightningModule: training and validation steps, per-epoch metrics, LR schedule, stopping,
the best epoch and resumable state.

Everything a resumed run needs beyond weights and optimiser (metric history, smoothed validation
loss, the best epoch and its weights, scheduler, RNG states, the run's identity) is saved under
the checkpoint's "lfads" key as plain tensors, numbers and lists, so checkpoints load with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from typing import Any

import lightning as L
import numpy as np
import torch

from lfads.formats.checkpoints import TrainingState, add_training_state, training_state
from lfads.formats.metrics import EPOCH, EPOCH_SECONDS, VALID_RECON_SMOOTHED
from lfads.model.batch import SessionBatch
from lfads.model.hparams import HParams
from lfads.model.lfads import LFADS, LossTerms, SessionDims, ramp
from lfads.model.metrics import RegionMetrics, mean_over_sessions
from lfads.training.step import check_finite, run_step

log = logging.getLogger("lfads.training.train")

LOSS_TERMS = ("loss", "recon", "kl_ic", "kl_co", "l2")


class LFADSModule(L.LightningModule):
    """identity: the run's `RunIdentity.to_dict()`, saved in every last.ckpt."""

    def __init__(
        self,
        hparams: HParams,
        sessions: list[SessionDims],
        rnn_impl: str = "fast",
        identity: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.config = hparams  # (`self.hparams` is Lightning's own)
        self.identity = dict(identity or {})
        self.model = LFADS(hparams, sessions, rnn_impl=rnn_impl)
        self.history: list[dict[str, float]] = []  # one row per finished epoch (metrics.csv)
        self.valid_smoothed = math.nan  # exponentially smoothed valid reconstruction
        self.best_smoothed = math.inf  # best valid_smoothed since the ramps ended
        self.epochs_since_best = 0
        self.stop_reason = ""
        # The epoch (from 1) with the lowest valid_smoothed so far, and the LFADS weights after it:
        # what model.ckpt holds and inference samples (0 and {} before the first epoch ends).
        self.best_epoch = 0
        self.best_valid_recon_smoothed = math.inf
        self.best_weights: dict[str, torch.Tensor] = {}
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._restored: TrainingState | None = None
        self._reset_epoch()

    # -- batches ---------------------------------------------------------------------------
    def transfer_batch_to_device(
        self, batch: dict[int, SessionBatch], device: torch.device, dataloader_idx: int
    ) -> dict[int, SessionBatch]:
        return {s: b.to(device) for s, b in batch.items()}

    def _reset_epoch(self) -> None:
        self._sums: dict[str, dict[str, float]] = {
            "train": defaultdict(float),
            "valid": defaultdict(float),
        }
        self._metrics = {
            split: [RegionMetrics(d.n_heldin, d.n_obs_bins) for d in self.model.sessions]
            for split in ("train", "valid")
        }
        self._epoch_start = time.perf_counter()

    def _step(self, batch: dict[int, SessionBatch], split: str) -> LossTerms:
        result = run_step(self.model, batch, self.current_epoch, training=split == "train")
        check_finite(result, split, self.current_epoch)
        terms = result.terms
        size = sum(len(b) for b in batch.values())
        sums = self._sums[split]
        sums["trials"] += size
        for name in LOSS_TERMS:
            sums[name] += float(getattr(terms, name).detach()) * size
        for name, value in result.metrics.items():
            sums[name] += float(value.detach()) * size
        if split == "train":  # bits/spike of the training outputs (with augmentations and sampling)
            for s, out in result.outputs.items():
                self._metrics["train"][s].update(
                    self.model.rates(s, out).detach(), batch[s].recon_data, None
                )
        return terms

    def training_step(self, batch: dict[int, SessionBatch], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train").loss

    def validation_step(self, batch: dict[int, SessionBatch], batch_idx: int) -> None:
        self._step(batch, "valid")
        # Metrics of the posterior means: the rates a single deterministic pass would report.
        processed = {
            s: self.model.infer_augmentations.process_batch(b)[0] for s, b in batch.items()
        }
        outputs = self.model(processed, sample_posteriors=False)
        for s, out in outputs.items():
            self._metrics["valid"][s].update(
                self.model.rates(s, out), batch[s].recon_data, batch[s].truth
            )

    # -- optimiser -------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.config
        optimizer = torch.optim.AdamW(
            self.parameters(),
            lr=hp.lr,
            betas=(hp.adam_beta1, hp.adam_beta2),
            eps=hp.adam_epsilon,
            weight_decay=hp.weight_decay,
        )
        if hp.lr_scheduler:
            # Stepped by hand once per epoch on the smoothed validation loss (see
            # on_train_epoch_end).
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=hp.lr_decay,
                patience=hp.lr_patience,
                threshold=0.0,
                min_lr=hp.lr_stop,
            )
        return optimizer

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # AdamW's weight decay ramps up with the L2 penalty.
        hp = self.config
        for group in optimizer.param_groups:
            group["weight_decay"] = (
                ramp(self.current_epoch, hp.l2_start_epoch, hp.l2_increase_epoch) * hp.weight_decay
            )

    # -- epochs ----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        if (
            self._restored is not None
            and self.scheduler is not None
            and self._restored.scheduler is not None
        ):
            self.scheduler.load_state_dict(self._restored.scheduler)

    def on_train_epoch_start(self) -> None:
        if (
            self._restored is not None
        ):  # continue the random streams exactly where the checkpoint left them
            set_rng_state(self._restored.rng)
            self._restored = None
        self._reset_epoch()

    def on_train_epoch_end(self) -> None:
        hp, epoch = self.config, self.current_epoch
        row: dict[str, float] = {EPOCH: epoch}
        for split in ("train", "valid"):
            sums = self._sums[split]
            for name in [*LOSS_TERMS, *sorted(k for k in sums if k not in (*LOSS_TERMS, "trials"))]:
                row[f"{split}_{name}"] = sums[name] / sums["trials"] if sums["trials"] else math.nan
            per_session = [m.compute() for m in self._metrics[split]]
            for k, v in mean_over_sessions(per_session).items():
                if split == "valid" or k != "rate_r2":  # no true rates go into the training metrics
                    row[f"{split}_{k}"] = v
            if (
                split == "valid" and len(per_session) > 1
            ):  # every session's NLB metrics, not just the first's
                row.update(
                    {
                        f"valid_{k}_session{s}": v
                        for s, m in enumerate(per_session)
                        for k, v in m.items()
                    }
                )
        valid_recon = row["valid_recon"]
        a = hp.valid_smoothing
        self.valid_smoothed = (
            valid_recon
            if math.isnan(self.valid_smoothed)
            else a * valid_recon + (1 - a) * self.valid_smoothed
        )
        row[VALID_RECON_SMOOTHED] = self.valid_smoothed
        # (A NaN valid_smoothed means no validation trials: then the latest epoch is kept.)
        if math.isnan(self.valid_smoothed) or self.valid_smoothed < self.best_valid_recon_smoothed:
            self.best_epoch, self.best_valid_recon_smoothed = epoch + 1, self.valid_smoothed
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        row["l2_ramp"] = ramp(epoch, hp.l2_start_epoch, hp.l2_increase_epoch)
        row["kl_ramp"] = ramp(epoch, hp.kl_start_epoch, hp.kl_increase_epoch)
        optimizer = self.optimizers(use_pl_optimizer=False)
        row["lr"] = optimizer.param_groups[0]["lr"]
        row[EPOCH_SECONDS] = time.perf_counter() - self._epoch_start
        self.history.append(row)
        self._update_schedule_and_stopping(optimizer)
        if self.logger is not None:
            self.log_dict({k.replace("_", "/", 1): float(v) for k, v in row.items() if k != EPOCH})
        log.info(
            "epoch %d/%d: train loss %.4g, valid loss %.4g (recon %.4g), valid co-bps %.4f, "
            "fp-bps %.4f, rate R2 %.4f, lr %.3g, %.1f s",
            epoch + 1,
            self.trainer.max_epochs,
            row["train_loss"],
            row["valid_loss"],
            valid_recon,
            row["valid_co_bps"],
            row["valid_fp_bps"],
            row["valid_rate_r2"],
            row["lr"],
            row[EPOCH_SECONDS],
        )

    def _update_schedule_and_stopping(self, optimizer: torch.optim.Optimizer) -> None:
        hp, epoch = self.config, self.current_epoch
        if self.scheduler is not None:
            self.scheduler.step(self.valid_smoothed)
            if optimizer.param_groups[0]["lr"] <= hp.lr_stop * (1 + 1e-9):
                self.stop_reason = (
                    f"learning rate reached lr_stop {hp.lr_stop:g} at epoch {epoch + 1}"
                )
                self.trainer.should_stop = True
        ramps_done = epoch >= max(
            hp.l2_start_epoch + hp.l2_increase_epoch, hp.kl_start_epoch + hp.kl_increase_epoch
        )
        if not ramps_done:  # no early stopping while the penalties ramp up
            return
        if self.valid_smoothed < self.best_smoothed:
            self.best_smoothed, self.epochs_since_best = self.valid_smoothed, 0
        else:
            self.epochs_since_best += 1
        if hp.early_stopping_patience and self.epochs_since_best >= hp.early_stopping_patience:
            self.stop_reason = (
                f"no better smoothed valid recon for {self.epochs_since_best} epochs "
                f"(early stopping at epoch {epoch + 1})"
            )
            self.trainer.should_stop = True

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = TrainingState(
            hparams=self.config.to_dict(),
            sessions=[d.to_dict() for d in self.model.sessions],
            history=[dict(row) for row in self.history],
            valid_smoothed=self.valid_smoothed,
            best_smoothed=self.best_smoothed,
            epochs_since_best=self.epochs_since_best,
            stop_reason=self.stop_reason,
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            rng=get_rng_state(),
            identity=self.identity,
            best_epoch=self.best_epoch,
            best_valid_recon_smoothed=self.best_valid_recon_smoothed,
            best_weights=self.best_weights,
        )
        add_training_state(checkpoint, state)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = training_state(checkpoint, self.trainer.ckpt_path or "the checkpoint")
        self.history = [dict(row) for row in state.history]
        self.valid_smoothed, self.best_smoothed = state.valid_smoothed, state.best_smoothed
        self.epochs_since_best, self.stop_reason = state.epochs_since_best, state.stop_reason
        self.best_epoch, self.best_weights = state.best_epoch, state.best_weights
        self.best_valid_recon_smoothed = state.best_valid_recon_smoothed
        self._restored = state


# -- RNG state as plain data ----------------------------------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors, lists and numbers."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {
            "version": python_state[0],
            "state": list(python_state[1]),
            "gauss_next": python_state[2],
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
