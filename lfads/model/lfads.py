"""The whole LFADS: per-session readins -> encoders -> decoder -> per-session readouts; its loss.

The model is a pack of P independent members (`lfads.model.members`), every tensor member-major.
A batch is `dict[session index, SessionBatch]` of (P, B, ...) fields; trials of all sessions in
it go through the shared core together and are split back by session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lfads.model import registry
from lfads.model.augmentations import AugmentationStack, MemberAugmentations
from lfads.model.batch import SessionBatch
from lfads.model.decoder import Decoder
from lfads.model.encoders import Encoder
from lfads.model.hparams import MEMBER_KEYS, HParams, pack_conflicts
from lfads.model.loops import recurrent_loops
from lfads.model.members import MemberLinear, MemberRandom, init_generators
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
    params: torch.Tensor  # (P, B, T + F, H, n_params) reconstruction parameters
    factors: torch.Tensor  # (P, B, T + F, fac_dim)
    ic_mean: torch.Tensor  # (P, B, ic_dim)
    ic_std: torch.Tensor  # (P, B, ic_dim)
    co_mean: torch.Tensor  # (P, B, T + F, co_dim)
    co_std: torch.Tensor  # (P, B, T + F, co_dim)
    gen_states: torch.Tensor  # (P, B, T + F, gen_dim)


@dataclass
class LossTerms:
    """Each member's terms, (P,) each; the optimiser minimises their sum of `loss`."""

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


# Member keys held as per-member tensors of the model (non-persistent buffers, (P,)).
SCALE_KEYS = (
    "kl_ic_scale",
    "kl_co_scale",
    "l2_ic_enc_scale",
    "l2_ci_enc_scale",
    "l2_gen_scale",
    "l2_con_scale",
)


def check_pack(members: Sequence[HParams]) -> None:
    """ValueError naming the keys that keep a member out of the pack of the first."""
    for index, member in enumerate(members[1:], start=1):
        conflicts = pack_conflicts(members[0], member)
        if conflicts:
            raise ValueError(
                f"member {index} differs from member 0 in {conflicts}, which the members of one "
                f"pack share (only {list(MEMBER_KEYS)} may differ)"
            )


class LFADS(nn.Module):
    """The model: a pack of P members (one `HParams` each) for `sessions` (one `SessionDims` per
    session file, in training order); one HParams is a pack of one.

    Members share the architecture (`lfads.model.hparams.pack_settings`) and differ in
    MEMBER_KEYS: weights, seeds and random streams, dropout, coordinated dropout, KL and L2
    scales. `self.hparams` is member 0's (what members share); `self.members` every member's.
    rnn_impl: how every recurrent loop runs, "fast", "reference" or "compiled"
    (`lfads.model.loops`); the numbers are the same, so it is not a hyperparameter, and a
    model built with another rnn_impl loads the same state dict.
    """

    def __init__(
        self,
        hparams: HParams | Sequence[HParams],
        sessions: list[SessionDims],
        *,
        rnn_impl: str = "fast",
    ):
        super().__init__()
        if not sessions:
            raise ValueError("LFADS needs at least one session")
        shared = {(s.n_obs_bins, s.n_fwd_bins, s.ext_input_dim) for s in sessions}
        if len(shared) != 1:
            raise ValueError(
                "sessions must share bins and external inputs (T, F, ext_input_dim); "
                f"got {sorted(shared)}"
            )
        members = [hparams] if isinstance(hparams, HParams) else list(hparams)
        if not members:
            raise ValueError("LFADS needs at least one member")
        check_pack(members)
        hp, first, n_members = members[0], sessions[0], len(members)
        self.hparams, self.members, self.sessions = hp, members, list(sessions)
        self.loops = recurrent_loops(rnn_impl)
        self.use_controller = hp.use_controller
        self.random = MemberRandom([member.seed for member in members])
        generators = init_generators([member.seed for member in members])
        dropout = [member.dropout for member in members]
        readin_dim = hp.readin_dim or (hp.fac_dim if len(sessions) > 1 else None)
        if readin_dim is None:
            self.readins = nn.ModuleList([nn.Identity()])
            encoder_dim = first.n_heldin
        else:
            self.readins = nn.ModuleList(
                MemberLinear(s.n_heldin, readin_dim, generators) for s in sessions
            )
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
            dropout=dropout,
            cell_clip=hp.cell_clip,
            ic_post_var_min=hp.ic_post_var_min,
            loops=self.loops,
            generators=generators,
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
            dropout=dropout,
            cell_clip=hp.cell_clip,
            loops=self.loops,
            generators=generators,
        )
        self.recons = nn.ModuleList(
            registry.build(
                "reconstruction", hp.reconstruction, n_neurons=s.n_neurons, n_members=n_members
            )
            for s in sessions
        )
        self.readouts = nn.ModuleList(
            MemberLinear(hp.fac_dim, recon.n_params * s.n_neurons, generators)
            for recon, s in zip(self.recons, sessions)
        )
        self.ic_prior = registry.build("prior", hp.ic_prior, dim=hp.ic_dim, n_members=n_members)
        self.co_prior = (
            registry.build("prior", hp.co_prior, dim=hp.co_dim, n_members=n_members)
            if hp.use_controller
            else NullPrior()
        )
        for key in SCALE_KEYS:
            values = [getattr(member, key) for member in members]
            self.register_buffer(key, torch.tensor(values), persistent=False)
        self.train_augmentations = self.infer_augmentations = MemberAugmentations([])
        self._build_augmentations()

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def readin_dim(self) -> int | None:
        """Width of the per-session readins (the encoders' input size), or None without readins."""
        first = self.readins[0]
        return None if isinstance(first, nn.Identity) else first.out_features

    # -- sizes ---------------------------------------------------------------------------
    def activation_floats_per_bin(self) -> int:
        """Floats of decoder activations that one (sample x trial) row keeps per bin while it is
        sampled (the largest session's readout): what infer's batch size is sized by."""
        hp = self.hparams
        readout = max(readout.out_features for readout in self.readouts)
        return (
            3 * (hp.gen_dim + hp.con_dim) + hp.fac_dim + 4 * hp.co_dim + 2 * hp.ci_enc_dim + readout
        )

    def forward_flops(self, session: int = 0) -> tuple[float, float]:
        """Matmul floating-point operations of one member's forward pass of one trial of
        `session`: (encoders, decoder with the readout). Backward adds two products per matmul."""
        hp, dims = self.hparams, self.sessions[session]
        n_in, n_bins = self.readin_dim or dims.n_heldin, dims.n_obs_bins
        gru = [hp.ic_enc_dim] + ([hp.ci_enc_dim] if self.use_controller else [])
        # both directions of each encoder, its input and recurrent products (3 gates)
        encoders = sum(2 * n_bins * 2 * (n_in + hidden) * 3 * hidden for hidden in gru)
        encoders += 2 * n_bins * dims.n_heldin * n_in if self.readin_dim else 0  # the readin
        per_bin = 2 * (hp.gen_dim + hp.co_dim * self.use_controller + dims.ext_input_dim)
        per_bin *= 3 * hp.gen_dim  # the generator
        per_bin += (
            2 * hp.gen_dim * hp.fac_dim + 2 * hp.fac_dim * self.readouts[session].out_features
        )
        if self.use_controller:
            per_bin += 2 * (2 * hp.ci_enc_dim + hp.fac_dim + hp.con_dim) * 3 * hp.con_dim
            per_bin += 2 * hp.con_dim * 2 * hp.co_dim  # the posterior of u_t
        return float(encoders), float(dims.n_recon_bins * per_bin)

    def _build_augmentations(self) -> None:
        def stacks(name: str) -> MemberAugmentations:
            return MemberAugmentations(
                [
                    AugmentationStack(
                        [registry.build("augmentation", spec) for spec in getattr(member, name)]
                    )
                    for member in self.members
                ]
            )

        self.train_augmentations = stacks("train_augmentations")
        self.infer_augmentations = stacks("infer_augmentations")

    # -- forward -------------------------------------------------------------------------
    def encode(
        self, batch: dict[int, SessionBatch]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All sessions' trials through readins and encoders.

        -> ic_mean, ic_std (P, B, ic_dim), ci (P, B, T + F, 2C); rows follow `sorted(batch)`
        sessions, each session's trials in order.
        """
        data = torch.cat([self._readin(s)(batch[s].encod_data) for s in sorted(batch)], dim=1)
        return self.encoder(data, self.random)

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

        sizes: rows of each session, in sorted session order; ext_input (P, rows, T + F, E).
        """
        sessions = sorted(sizes)
        ic_sample = (
            self.ic_prior.sample(ic_mean, ic_std, self.random) if sample_posteriors else ic_mean
        )
        co_prior = self.co_prior if sample_posteriors else None
        out = self.decoder(ic_sample, ci, ext_input, self.random, co_prior)
        pieces = {
            name: value.split([sizes[s] for s in sessions], dim=1)
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
        """batch: every field (P, B, ...) -> per session, each member's outputs (P, B, ...)."""
        ic_mean, ic_std, ci = self.encode(batch)
        sizes = {s: len(b) for s, b in batch.items()}
        ext_input = torch.cat([batch[s].ext_input for s in sorted(batch)], dim=1)
        return self.decode(
            sizes, ext_input, ic_mean, ic_std, ci, sample_posteriors and self.hparams.variational
        )

    def _readin(self, session: int) -> nn.Module:
        return self.readins[session if len(self.readins) > 1 else 0]

    def rates(self, session: int, output: SessionOutput) -> torch.Tensor:
        """Expected data (P, B, T + F, H), e.g. spikes per bin."""
        return self.recons[session].compute_means(output.params)

    @torch.no_grad()
    def posterior_average(
        self, batch: dict[int, SessionBatch], n_samples: int
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Average of `n_samples` posterior samples, in one decoder pass of (samples x trials) rows.

        The encoders are deterministic in eval mode, so they run once per trial.
        Returns per session: rates, factors, gen_states, co_mean, co_std (P, B, T + F, .) averaged
        over samples, and ic_mean, ic_std (P, B, ic_dim). Non-variational models use the means
        (one pass).
        """
        if self.training:
            raise RuntimeError(
                "posterior_average needs eval mode (model.eval()): dropout would vary per trial"
            )
        samples = n_samples if self.hparams.variational else 1
        ic_mean, ic_std, ci = self.encode(batch)
        sizes = {s: samples * len(b) for s, b in batch.items()}
        ext_input = torch.cat(
            [batch[s].ext_input.repeat(1, samples, 1, 1) for s in sorted(batch)], dim=1
        )
        # Row order inside each session: sample-major, so a reshape to (S, B_s, ...) splits them.
        order = _sample_major_rows([len(batch[s]) for s in sorted(batch)], samples, ic_mean.device)

        def rows(x: torch.Tensor) -> torch.Tensor:  # (P, B, ...) -> (P, samples x B, ...) in order
            return x.repeat(1, samples, *([1] * (x.dim() - 2)))[:, order]

        outputs = self.decode(
            sizes, ext_input, rows(ic_mean), rows(ic_std), rows(ci), self.hparams.variational
        )
        result = {}
        for s, out in outputs.items():

            def mean(x: torch.Tensor) -> torch.Tensor:
                return x.unflatten(1, (samples, x.shape[1] // samples)).mean(1)

            sampled = {
                "rates": self.rates(s, out),
                "factors": out.factors,
                "gen_states": out.gen_states,
                "co_mean": out.co_mean,
                "co_std": out.co_std,
            }
            result[s] = {name: mean(value) for name, value in sampled.items()}
            result[s].update(
                ic_mean=out.ic_mean[:, : len(batch[s])], ic_std=out.ic_std[:, : len(batch[s])]
            )
        return result

    # -- loss ----------------------------------------------------------------------------
    def recurrent_l2(self) -> torch.Tensor:
        """Each member's scaled 0.5 * ||W||^2 of the recurrent matrices, over the count of the
        weights it penalises, plus the reconstructions' own penalties: (P,)."""
        scales = {
            "ic_enc": self.l2_ic_enc_scale,
            "ci_enc": self.l2_ci_enc_scale,
            "gen": self.l2_gen_scale,
            "con": self.l2_con_scale,
        }
        weights = {**self.encoder.recurrent_weights(), **self.decoder.recurrent_weights()}
        penalty = self.l2_gen_scale.new_zeros(self.n_members)
        size = penalty.clone()
        for name, matrices in weights.items():
            scale = scales[name].to(penalty.dtype)
            for matrix in matrices:  # (P, rows, columns)
                squares = 0.5 * matrix.pow(2).sum(dim=(1, 2))
                penalty = penalty + torch.where(scale > 0, scale * squares, 0.0)
                size = size + (scale > 0) * matrix[0].numel()
        penalty = penalty / size.clamp_min(1)
        return penalty + sum(recon.penalty() for recon in self.recons)

    def loss(
        self,
        batch: dict[int, SessionBatch],
        outputs: dict[int, SessionOutput],
        augmentations: MemberAugmentations,
        memos: dict[int, list],
        epoch: int,
        metrics: dict[str, torch.Tensor],
    ) -> LossTerms:
        """loss_scale * (recon + l2_ramp * l2 + kl_ramp * (kl_ic + kl_co)), and its terms, (P,).

        The KL terms come scaled by each member's kl_ic_scale and kl_co_scale (`LossTerms`).
        `batch` is the augmented batch the outputs came from; `memos` the augmentations' notes
        per session (`MemberAugmentations.process_batch`).
        """
        hp = self.hparams
        session_recon = []
        for s in sorted(batch):
            # the elementwise loss, shape (P, B, T + F, H)
            losses = self.recons[s].compute_loss(batch[s].recon_data, outputs[s].params)
            losses = augmentations.process_losses(losses, batch[s], memos[s], metrics)
            reduce = torch.mean if hp.recon_reduce_mean else torch.sum
            session_recon.append(reduce(losses, dim=(2, 3)).mean(dim=1))
        recon = torch.stack(session_recon).mean(dim=0)
        sessions = sorted(batch)

        def cat(name: str) -> torch.Tensor:  # one output of every session, trials joined
            return torch.cat([getattr(outputs[s], name) for s in sessions], dim=1)

        kl_ic = self.kl_ic_scale * self.ic_prior(cat("ic_mean"), cat("ic_std"), self.random)
        kl_co = (
            self.kl_co_scale * self.co_prior(cat("co_mean"), cat("co_std"), self.random)
            if self.use_controller
            else torch.zeros_like(recon)
        )
        l2 = self.recurrent_l2()
        l2_ramp = ramp(epoch, hp.l2_start_epoch, hp.l2_increase_epoch)
        kl_ramp = ramp(epoch, hp.kl_start_epoch, hp.kl_increase_epoch)
        loss = hp.loss_scale * (recon + l2_ramp * l2 + kl_ramp * (kl_ic + kl_co))
        return LossTerms(loss, recon, kl_ic, kl_co, l2, l2_ramp, kl_ramp)

    # -- members' weights -------------------------------------------------------------------
    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member `member`'s weights without the member axis: the state dict of a pack of one,
        squeezed; what model.ckpt holds."""
        return {name: value[member].clone() for name, value in self.state_dict().items()}

    def load_member_state_dict(self, state: dict[str, torch.Tensor], member: int = 0) -> None:
        """Put weights of `member_state_dict`'s form into slot `member`."""
        own = self.state_dict()
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(
                f"the weights do not fit this model: missing {missing}, unexpected {unexpected}"
            )
        with torch.no_grad():
            for name, value in state.items():
                if own[name][member].shape != value.shape:
                    raise ValueError(
                        f"{name}: shape {tuple(value.shape)} does not fit this model's "
                        f"{tuple(own[name][member].shape)}"
                    )
                own[name][member].copy_(value)

    # -- multi-session readin --------------------------------------------------------------
    def set_readins(
        self, readins: list[tuple[torch.Tensor, torch.Tensor]], member: int | None = None
    ) -> None:
        """Set the per-session readins (e.g. from PCR) of `member` (None: every member):
        weight (readin_dim, n_heldin), bias, per session."""
        if len(readins) != len(self.readins) or isinstance(self.readins[0], nn.Identity):
            raise ValueError(
                "set_readins: the model has no per-session readin layers for these sessions"
            )
        with torch.no_grad():
            for layer, (weight, bias) in zip(self.readins, readins):
                slots = slice(None) if member is None else slice(member, member + 1)
                layer.weight[slots] = torch.as_tensor(weight)
                layer.bias[slots] = torch.as_tensor(bias)


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
