"""The whole LFADS: per-session readins -> encoders -> decoder -> per-session readouts; its loss.

A batch is `dict[session index, SessionBatch]`; trials of all sessions in it
go through the shared core together and are split back by session.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lfads.model import registry
from lfads.model.augmentations import AugmentationStack
from lfads.model.batch import SessionBatch
from lfads.model.decoder import Decoder
from lfads.model.encoders import Encoder
from lfads.model.gru import fan_in_linear
from lfads.model.hparams import HParams
from lfads.model.loops import recurrent_loops
from lfads.model.priors import NullPrior


@dataclass(frozen=True)
class SessionDims:
    """Sizes of one session's data (from its prepared file's attributes)."""

    n_heldin: int
    n_heldout: int
    n_obs_bins: int  # T
    n_fwd_bins: int  # F
    ext_input_dim: int = 0

    @property
    def n_neurons(self) -> int:  # H
        return self.n_heldin + self.n_heldout

    @property
    def n_recon_bins(self) -> int:  # T + F
        return self.n_obs_bins + self.n_fwd_bins

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class SessionOutput:
    params: torch.Tensor  # (B, T + F, H, n_params) reconstruction parameters
    factors: torch.Tensor  # (B, T + F, fac_dim)
    ic_mean: torch.Tensor  # (B, ic_dim)
    ic_std: torch.Tensor  # (B, ic_dim)
    co_mean: torch.Tensor  # (B, T + F, co_dim)
    co_std: torch.Tensor  # (B, T + F, co_dim)
    gen_states: torch.Tensor  # (B, T + F, gen_dim)


@dataclass
class LossTerms:
    loss: torch.Tensor  # what the optimiser minimises
    recon: torch.Tensor  # mean over sessions of the reconstruction cost
    kl_ic: torch.Tensor  # KL of the IC posterior, times kl_ic_scale
    kl_co: torch.Tensor  # KL of the CO posterior, times kl_co_scale
    l2: torch.Tensor  # L2 of the recurrent weights (scaled) plus reconstruction penalties
    l2_ramp: float
    kl_ramp: float


def ramp(epoch: int, start: int, increase: int) -> float:
    """0 before `start`, rising linearly to 1: (epoch + 1 - start) / (increase + 1), clipped."""
    return min(max((epoch + 1 - start) / (increase + 1), 0.0), 1.0)


class LFADS(nn.Module):
    """The model for `sessions` (one `SessionDims` per session file, in training order).

    rnn_impl: how every recurrent loop runs, "fast", "reference" or "compiled"
    (`lfads.model.loops`); the numbers are the same, so it is not a hyperparameter, and a
    model built with another rnn_impl loads the same state dict.
    """

    def __init__(self, hparams: HParams, sessions: list[SessionDims], *, rnn_impl: str = "fast"):
        super().__init__()
        if not sessions:
            raise ValueError("LFADS needs at least one session")
        shared = {(s.n_obs_bins, s.n_fwd_bins, s.ext_input_dim) for s in sessions}
        if len(shared) != 1:
            raise ValueError(
                "sessions must share bins and external inputs (T, F, ext_input_dim); "
                f"got {sorted(shared)}"
            )
        hp, first = hparams, sessions[0]
        self.hparams, self.sessions = hp, list(sessions)
        self.loops = recurrent_loops(rnn_impl)
        self.use_controller = hp.use_controller
        readin_dim = hp.readin_dim or (hp.fac_dim if len(sessions) > 1 else None)
        if readin_dim is None:
            self.readins = nn.ModuleList([nn.Identity()])
            encoder_dim = first.n_heldin
        else:
            self.readins = nn.ModuleList(fan_in_linear(s.n_heldin, readin_dim) for s in sessions)
            encoder_dim = readin_dim
            for readin in self.readins:
                readin.requires_grad_(hp.readin_trainable or hp.readin_init == "random")
        self.encoder = Encoder(
            input_dim=encoder_dim,
            n_obs_bins=first.n_obs_bins,
            n_recon_bins=first.n_recon_bins,
            ic_enc_dim=hp.ic_enc_dim,
            ic_dim=hp.ic_dim,
            ci_enc_dim=hp.ci_enc_dim,
            ci_lag=hp.ci_lag,
            ic_enc_seq_len=hp.ic_enc_seq_len,
            use_controller=hp.use_controller,
            dropout=hp.dropout,
            cell_clip=hp.cell_clip,
            ic_post_var_min=hp.ic_post_var_min,
            loops=self.loops,
        )
        self.decoder = Decoder(
            ic_dim=hp.ic_dim,
            gen_dim=hp.gen_dim,
            fac_dim=hp.fac_dim,
            con_dim=hp.con_dim,
            co_dim=hp.co_dim,
            ci_dim=2 * hp.ci_enc_dim,
            ext_input_dim=first.ext_input_dim,
            use_controller=hp.use_controller,
            dropout=hp.dropout,
            cell_clip=hp.cell_clip,
            loops=self.loops,
        )
        self.recons = nn.ModuleList(
            registry.build("reconstruction", hp.reconstruction, n_neurons=s.n_neurons)
            for s in sessions
        )
        self.readouts = nn.ModuleList(
            fan_in_linear(hp.fac_dim, recon.n_params * s.n_neurons)
            for recon, s in zip(self.recons, sessions)
        )
        self.ic_prior = registry.build("prior", hp.ic_prior, dim=hp.ic_dim)
        self.co_prior = (
            registry.build("prior", hp.co_prior, dim=hp.co_dim)
            if hp.use_controller
            else NullPrior()
        )
        self.train_augmentations = AugmentationStack(
            [registry.build("augmentation", spec) for spec in hp.train_augmentations]
        )
        self.infer_augmentations = AugmentationStack(
            [registry.build("augmentation", spec) for spec in hp.infer_augmentations]
        )

    @property
    def readin_dim(self) -> int | None:
        """Width of the per-session readins (the encoders' input size), or None without readins."""
        first = self.readins[0]
        return None if isinstance(first, nn.Identity) else first.out_features

    # -- forward -------------------------------------------------------------------------
    def encode(
        self, batch: dict[int, SessionBatch]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All sessions' trials through readins and encoders.

        -> ic_mean, ic_std (B, ic_dim), ci (B, T + F, 2C); rows follow `sorted(batch)` sessions,
        each session's trials in order.
        """
        data = torch.cat([self._readin(s)(batch[s].encod_data) for s in sorted(batch)])
        return self.encoder(data)

    def decode(
        self,
        sizes: dict[int, int],
        ext_input: torch.Tensor,
        ic_mean: torch.Tensor,
        ic_std: torch.Tensor,
        ci: torch.Tensor,
        sample_posteriors: bool,
    ) -> dict[int, SessionOutput]:
        """Posterior sample (or mean) of g0 and u_t -> decoder -> readouts, split back by session.

        sizes: rows of each session, in sorted session order; ext_input (rows, T + F, E).
        """
        sessions = sorted(sizes)
        ic_sample = self.ic_prior.sample(ic_mean, ic_std) if sample_posteriors else ic_mean
        out = self.decoder(ic_sample, ci, ext_input, self.co_prior if sample_posteriors else None)
        pieces = {
            name: value.split([sizes[s] for s in sessions])
            for name, value in (
                ("factors", out.factors),
                ("ic_mean", ic_mean),
                ("ic_std", ic_std),
                ("co_mean", out.co_mean),
                ("co_std", out.co_std),
                ("gen_states", out.gen_states),
            )
        }
        outputs = {}
        for i, s in enumerate(sessions):
            factors = pieces["factors"][i]
            params = self.recons[s].reshape_output_params(self.readouts[s](factors))
            outputs[s] = SessionOutput(
                params=params, **{name: piece[i] for name, piece in pieces.items()}
            )
        return outputs

    def forward(
        self, batch: dict[int, SessionBatch], sample_posteriors: bool = False
    ) -> dict[int, SessionOutput]:
        ic_mean, ic_std, ci = self.encode(batch)
        sizes = {s: len(b) for s, b in batch.items()}
        ext_input = torch.cat([batch[s].ext_input for s in sorted(batch)])
        return self.decode(
            sizes, ext_input, ic_mean, ic_std, ci, sample_posteriors and self.hparams.variational
        )

    def _readin(self, session: int) -> nn.Module:
        return self.readins[session if len(self.readins) > 1 else 0]

    def rates(self, session: int, output: SessionOutput) -> torch.Tensor:
        """Expected data (B, T + F, H), e.g. spikes per bin."""
        return self.recons[session].compute_means(output.params)

    @torch.no_grad()
    def posterior_average(
        self, batch: dict[int, SessionBatch], n_samples: int
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Average of `n_samples` posterior samples, in one decoder pass of (samples x trials) rows.

        The encoders are deterministic in eval mode, so they run once per trial.
        Returns per session: rates, factors, gen_states, co_mean, co_std (B, T + F, .) averaged over
        samples, and ic_mean, ic_std (B, ic_dim). Non-variational models use the means (one pass).
        The reference loops run the whole model once per sample instead.
        """
        if self.training:
            raise RuntimeError(
                "posterior_average needs eval mode (model.eval()): dropout would vary per trial"
            )
        samples = n_samples if self.hparams.variational else 1
        if not self.loops.samples_in_one_pass:
            return self._posterior_average_one_by_one(batch, samples)
        ic_mean, ic_std, ci = self.encode(batch)
        sizes = {s: samples * len(b) for s, b in batch.items()}
        ext_input = torch.cat([batch[s].ext_input.repeat(samples, 1, 1) for s in sorted(batch)])
        # Row order inside each session: sample-major, so a reshape to (S, B_s, ...) splits them.
        order = _sample_major_rows([len(batch[s]) for s in sorted(batch)], samples, ic_mean.device)

        def rows(x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (samples x B, ...) in `order`
            return x.repeat(samples, *([1] * (x.dim() - 1)))[order]

        outputs = self.decode(
            sizes, ext_input, rows(ic_mean), rows(ic_std), rows(ci), self.hparams.variational
        )
        result = {}
        for s, out in outputs.items():

            def mean(x: torch.Tensor) -> torch.Tensor:
                return x.reshape(samples, x.shape[0] // samples, *x.shape[1:]).mean(0)

            result[s] = {
                "rates": mean(self.rates(s, out)),
                "factors": mean(out.factors),
                "gen_states": mean(out.gen_states),
                "co_mean": mean(out.co_mean),
                "co_std": mean(out.co_std),
                "ic_mean": out.ic_mean[: len(batch[s])],
                "ic_std": out.ic_std[: len(batch[s])],
            }
        return result

    def _posterior_average_one_by_one(
        self, batch: dict[int, SessionBatch], samples: int
    ) -> dict[int, dict[str, torch.Tensor]]:
        """The reference path of `posterior_average`: the whole model once per sample."""
        sums: dict[int, dict[str, torch.Tensor]] = {}
        for _ in range(samples):
            for s, out in self(batch, sample_posteriors=True).items():
                values = {
                    "rates": self.rates(s, out),
                    "factors": out.factors,
                    "gen_states": out.gen_states,
                    "co_mean": out.co_mean,
                    "co_std": out.co_std,
                }
                if s not in sums:
                    sums[s] = {**values, "ic_mean": out.ic_mean, "ic_std": out.ic_std}
                else:
                    for name, value in values.items():
                        sums[s][name] = sums[s][name] + value
        return {
            s: {
                name: value / samples if name not in ("ic_mean", "ic_std") else value
                for name, value in found.items()
            }
            for s, found in sums.items()
        }

    # -- loss ----------------------------------------------------------------------------
    def recurrent_l2(self) -> torch.Tensor:
        """Scaled 0.5 * ||W||^2 of the recurrent matrices, over the count of penalised weights,
        plus the reconstructions' own penalties."""
        hp = self.hparams
        scales = {
            "ic_enc": hp.l2_ic_enc_scale,
            "ci_enc": hp.l2_ci_enc_scale,
            "gen": hp.l2_gen_scale,
            "con": hp.l2_con_scale,
        }
        weights = {**self.encoder.recurrent_weights(), **self.decoder.recurrent_weights()}
        penalty, size = self.decoder.generator.weight_hh.new_zeros(()), 0
        for name, matrices in weights.items():
            if scales[name] > 0:
                for matrix in matrices:
                    penalty = penalty + scales[name] * 0.5 * matrix.pow(2).sum()
                    size += matrix.numel()
        penalty = penalty / max(size, 1)
        return penalty + sum(recon.penalty() for recon in self.recons)

    def loss(
        self,
        batch: dict[int, SessionBatch],
        outputs: dict[int, SessionOutput],
        stack: AugmentationStack,
        memos: dict[int, list],
        epoch: int,
        metrics: dict[str, torch.Tensor],
    ) -> LossTerms:
        """loss_scale * (recon + l2_ramp * l2 + kl_ramp * (kl_ic + kl_co)), and its terms.

        The KL terms come scaled by kl_ic_scale and kl_co_scale (`LossTerms`).
        `batch` is the augmented batch the outputs came from; `memos` the stack's notes per session.
        """
        hp = self.hparams
        session_recon = []
        for s in sorted(batch):
            # the elementwise loss, shape (B, T + F, H)
            losses = self.recons[s].compute_loss(batch[s].recon_data, outputs[s].params)
            losses = stack.process_losses(losses, batch[s], memos[s], metrics)
            per_trial = losses.mean(dim=(1, 2)) if hp.recon_reduce_mean else losses.sum(dim=(1, 2))
            session_recon.append(per_trial.mean())
        recon = torch.stack(session_recon).mean()
        sessions = sorted(batch)

        def cat(name: str) -> torch.Tensor:  # one output of every session, trials stacked
            return torch.cat([getattr(outputs[s], name) for s in sessions])

        kl_ic = hp.kl_ic_scale * self.ic_prior(cat("ic_mean"), cat("ic_std"))
        kl_co = (
            hp.kl_co_scale * self.co_prior(cat("co_mean"), cat("co_std"))
            if self.use_controller
            else recon.new_zeros(())
        )
        l2 = self.recurrent_l2()
        l2_ramp = ramp(epoch, hp.l2_start_epoch, hp.l2_increase_epoch)
        kl_ramp = ramp(epoch, hp.kl_start_epoch, hp.kl_increase_epoch)
        loss = hp.loss_scale * (recon + l2_ramp * l2 + kl_ramp * (kl_ic + kl_co))
        return LossTerms(loss, recon, kl_ic, kl_co, l2, l2_ramp, kl_ramp)

    # -- multi-session readin --------------------------------------------------------------
    def set_readins(self, readins: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Set the per-session readins (e.g. from PCR): weight (readin_dim, n_heldin), bias."""
        if len(readins) != len(self.readins) or isinstance(self.readins[0], nn.Identity):
            raise ValueError(
                "set_readins: the model has no per-session readin layers for these sessions"
            )
        with torch.no_grad():
            for layer, (weight, bias) in zip(self.readins, readins):
                layer.weight.copy_(torch.as_tensor(weight))
                layer.bias.copy_(torch.as_tensor(bias))


def _sample_major_rows(sizes: list[int], samples: int, device: torch.device) -> torch.Tensor:
    """Row permutation from `x.repeat(samples)` (all sessions per sample) to per-session
    sample-major order: session 0 sample 0 trials, session 0 sample 1 trials, ...,
    session 1 sample 0 trials, ..."""
    total, offsets, order = sum(sizes), [0], []
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    for offset, size in zip(offsets, sizes):
        for sample in range(samples):
            order.append(torch.arange(size, device=device) + sample * total + offset)
    return torch.cat(order)
