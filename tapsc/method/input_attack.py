"""PGD in input space (Madry et al.), batched over restarts.

The box is clip(x -+ eps, 0, 1) in [0, 1] pixel units (`tapsc.measures.input_box`; or any
explicit [lo, hi]).
Every restart starts uniformly at random in the box and they run as one (R*B) batch;
the best iterate per sample over restarts and steps (random starts included) wins.
Step size: ``step_size * eps`` (IR fraction), default 2.5 / steps of eps (Madry).

In training mode BatchNorm must not see the attack batch: the attack runs under
``network.frozen_batchnorm(detach=True)``, so the clean forward of the batch must come
first (see tapsc.layers.batchnorm).

Shape legend: B batch, R restarts, K classes, X the per-sample input shape.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from tapsc.language import ir
from tapsc.measures import input_box  # the box clip(x -+ eps, 0, 1); imported from here by the method modules


def margin_objective(logits_BK: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
    """max_{i != y} o_i - o_y per sample (positive: misclassified)."""
    true_B = logits_BK.gather(1, y_B[:, None])[:, 0]
    others_BK = logits_BK.scatter(1, y_B[:, None], float("-inf"))
    return others_BK.max(1).values - true_B


def ce_objective(logits_BK: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_BK, y_B, reduction="none")


OBJECTIVES = {"ce": ce_objective, "margin": margin_objective}


def pgd_attack(network, x: torch.Tensor, y: torch.Tensor, eps: float, attack: ir.InputAttack,
               lo: torch.Tensor | None = None, hi: torch.Tensor | None = None):
    """Maximise the attack objective over the box; returns (x_adv (B, ...), objective (B,)), detached.

    ``lo``/``hi`` override the default box clip(x -+ eps, 0, 1).
    """
    if lo is None or hi is None:
        lo, hi = input_box(x, eps)
    objective = OBJECTIVES[attack.loss]
    restarts, batch = attack.restarts, x.shape[0]
    lo_R, hi_R = lo.detach().repeat((restarts,) + (1,) * (x.dim() - 1)), hi.detach().repeat(
        (restarts,) + (1,) * (x.dim() - 1))
    y_R = y.repeat(restarts)
    step = (attack.step_size if attack.step_size is not None else 2.5 / attack.steps) * eps
    x_adv = lo_R + torch.rand_like(lo_R) * (hi_R - lo_R)
    best_x, best_value = x_adv.clone(), torch.full((restarts * batch,), float("-inf"), device=x.device)
    # Any nn.Module works (e.g. a BN-folded export network); a tapsc Network freezes BatchNorm.
    frozen = network.frozen_batchnorm(detach=True) if hasattr(network, "frozen_batchnorm") else nullcontext()
    with frozen, torch.enable_grad():
        for index in range(attack.steps + 1):
            last = index == attack.steps
            x_adv.requires_grad_(not last)
            with torch.set_grad_enabled(not last):  # the last pass only scores the final points
                value = objective(network(x_adv), y_R)
            improved = value.detach() > best_value
            best_value = torch.where(improved, value.detach(), best_value)
            # torch.where, not boolean indexing: no device sync, no gather/scatter copies
            torch.where(improved.reshape((-1,) + (1,) * (x.dim() - 1)), x_adv.detach(), best_x, out=best_x)
            if last:
                break
            grad, = torch.autograd.grad(value.sum(), x_adv)
            x_adv = torch.minimum(torch.maximum(x_adv.detach() + step * grad.sign(), lo_R), hi_R)
    value_RB = best_value.reshape(restarts, batch)
    winner_B = value_RB.argmax(0)
    rows_B = winner_B * batch + torch.arange(batch, device=x.device)
    return best_x[rows_B], value_RB.max(0).values


def pgd_margin_attack(network, x_BX: torch.Tensor, y_B: torch.Tensor, eps: float, attack: ir.InputAttack,
                      recheck: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The worst point for the margin that PGD finds in the box clip(x -+ eps, 0, 1), the
    clean point x included: the PGD of every margin measure (accuracy, estimate, falsification).

    PGD runs on the margin objective whatever ``attack.loss`` names (a CE optimum is not a
    margin optimum), with the attack's steps and restarts.

    Args:
        network: any module mapping inputs to logits (a tapsc Network freezes BatchNorm).
        x_BX, y_B: inputs (B, *X) and labels (B,).
        eps: the radius, [0, 1] pixel units.
        attack: PGD settings (steps, restarts, step size).
        recheck: clip the PGD point to the box and evaluate it afresh, so that the margin is
            a value of the returned point computed outside the loop (falsification verdicts
            rest on it); otherwise the margin is the best value PGD saw.

    Returns:
        ``(point_BX, margin_B)``: the point and its margin max_{j != y} o_j - o_y (>= 0: some
        class j != y scores at least as high as y there), detached.
    """
    with torch.no_grad():
        clean_B = margin_objective(network(x_BX), y_B)
    point_BX, margin_B = pgd_attack(network, x_BX, y_B, eps, attack.model_copy(update={"loss": "margin"}))
    if recheck:
        lo_BX, hi_BX = input_box(x_BX, eps)
        with torch.no_grad():
            point_BX = torch.minimum(torch.maximum(point_BX, lo_BX), hi_BX)
            margin_B = margin_objective(network(point_BX), y_B)
    use_clean_B = clean_B > margin_B
    point_BX = torch.where(use_clean_B.reshape(-1, *[1] * (x_BX.dim() - 1)), x_BX, point_BX)
    return point_BX, torch.maximum(margin_B, clean_B)
