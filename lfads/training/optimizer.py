"""The optimiser of a pack: AdamW over stacked tensors with each member's own learning rate and
weight decay, gradient clipping per member, and each member's plateau schedule.

Every parameter has the members' axis first (`lfads.model.members`), so one step updates all
members at once; nothing crosses members. A clip of the global norm over the pack would couple
them, so each member's gradients are clipped by their own norm. Members that are not `active`
(stopped, or diverged) are left as they are: weights, moments and step counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(P,) -> (P, 1, ..., 1) to broadcast against a (P, ...) tensor."""
    return values.view(-1, *[1] * (like.dim() - 1))


class MemberAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay; the arithmetic of torch.optim.AdamW) with per-member `lr`
    and `weight_decay` (lists of P floats in the parameter group).

    `step(active, decay_ramp)`: active (P,) bool, members to update; decay_ramp scales every
    member's weight decay (the L2 ramp). State per parameter: `step` (P,) counts, `exp_avg`,
    `exp_avg_sq`.
    """

    def __init__(
        self,
        params,
        lr: list[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: list[float] | None = None,
    ):
        weight_decay = weight_decay if weight_decay is not None else [0.0] * len(lr)
        super().__init__(
            params,
            {"lr": list(lr), "betas": tuple(betas), "eps": eps, "weight_decay": list(weight_decay)},
        )

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None, decay_ramp: float = 1.0) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            device = next((p.device for p in group["params"]), None)
            lr = torch.tensor(group["lr"], dtype=torch.float64, device=device)
            decay = torch.tensor(group["weight_decay"], dtype=torch.float64, device=device)
            mask = active if active is not None else torch.ones_like(lr, dtype=torch.bool)
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad, state = param.grad, self.state[param]
                if not state:
                    state["step"] = torch.zeros(len(lr), dtype=torch.float64, device=device)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                steps = state["step"] + mask.to(torch.float64)
                keep = _per_member(mask, param)
                # bias corrections of each member's step count (>= 1 where updated)
                correction1 = 1 - beta1 ** steps.clamp_min(1)
                correction2_sqrt = torch.sqrt(1 - beta2 ** steps.clamp_min(1))
                exp_avg = state["exp_avg"].lerp(grad, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].mul(beta2).addcmul(grad, grad, value=1 - beta2)
                step_size = _per_member((lr / correction1).to(param.dtype), param)
                denom = (
                    exp_avg_sq.sqrt() / _per_member(correction2_sqrt.to(param.dtype), param)
                ).add(group["eps"])
                decayed = param * _per_member((1 - lr * decay * decay_ramp).to(param.dtype), param)
                updated = decayed - step_size * exp_avg / denom
                param.copy_(torch.where(keep, updated, param))
                state["exp_avg"] = torch.where(keep, exp_avg, state["exp_avg"])
                state["exp_avg_sq"] = torch.where(keep, exp_avg_sq, state["exp_avg_sq"])
                state["step"] = steps


def member_gradient_norms(parameters: list[torch.nn.Parameter], n_members: int) -> torch.Tensor:
    """Each member's 2-norm of all its gradients, (P,) (float64 sums)."""
    total = None
    for param in parameters:
        if param.grad is None:
            continue
        squares = param.grad.detach().double().pow(2).reshape(n_members, -1).sum(dim=1)
        total = squares if total is None else total + squares
    if total is None:
        return torch.zeros(n_members, dtype=torch.float64)
    return total.sqrt()


def clip_member_gradients(
    parameters: list[torch.nn.Parameter], max_norms: torch.Tensor, norms: torch.Tensor
) -> None:
    """Scale member m's gradients by min(1, max_norms[m] / (norms[m] + 1e-6)) where max_norms[m]
    > 0 (torch.nn.utils.clip_grad_norm_'s rule, per member)."""
    factors = (max_norms / (norms + 1e-6)).clamp(max=1.0)
    factors = torch.where(max_norms > 0, factors, torch.ones_like(factors))
    for param in parameters:
        if param.grad is not None:
            param.grad.mul_(_per_member(factors.to(param.grad.dtype), param.grad))


def zero_member_gradients(parameters: list[torch.nn.Parameter], members: torch.Tensor) -> None:
    """Set the gradients of `members` ((P,) bool) to zero (NaN included)."""
    for param in parameters:
        if param.grad is not None:
            param.grad.copy_(torch.where(_per_member(members, param.grad), 0.0, param.grad))


@dataclass
class PlateauSchedule:
    """One member's ReduceLROnPlateau (mode min, threshold 0, no cooldown): after more than
    `patience` epochs without a lower value, lr = max(lr * factor, min_lr)."""

    factor: float
    patience: int
    min_lr: float
    best: float = math.inf
    bad_epochs: int = 0

    def step(self, value: float, lr: float) -> float:
        """The learning rate after an epoch that ended at `value`."""
        if value < self.best:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.bad_epochs = 0
            reduced = max(lr * self.factor, self.min_lr)
            if lr - reduced > 1e-8:
                return reduced
        return lr

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)
