"""SABR's small box: radius lambda * eps around a PGD point, kept inside the eps-ball and [0, 1].

With [L, U] = clip(x -+ eps, 0, 1) and tau = lambda * eps, the centre is the PGD point
clamped to [L + tau, U - tau] (to U - tau when that interval is empty), and the box is
[centre - tau, centre + tau] intersected with [L, U]. So the small box always lies in
the eps-ball, and lambda = 1 gives exactly the IBP box [L, U].
"""

from __future__ import annotations

import torch

from tapsc.language import ir
from tapsc.method.input_attack import input_box, pgd_attack
from tapsc.method.losses import bound_ce, ibp_margin_upper


def sabr_box(network, x, y, eps: float, sabr_lambda: float, attack: ir.InputAttack):
    """(lo, hi) of the small box, detached; runs PGD (clean forward of the batch first in training)."""
    lo, hi = input_box(x, eps)
    tau = sabr_lambda * eps
    x_adv, _ = pgd_attack(network, x, y, eps, attack)
    centre = torch.minimum(torch.maximum(x_adv, lo + tau), hi - tau)
    return torch.maximum(centre - tau, lo).detach(), torch.minimum(centre + tau, hi).detach()


def sabr_loss(network, x, y, eps: float, sabr_lambda: float, attack: ir.InputAttack) -> torch.Tensor:
    """Mean CE on the IBP bounds of the SABR small box."""
    lo, hi = sabr_box(network, x, y, eps, sabr_lambda, attack)
    return bound_ce(ibp_margin_upper(network, lo, hi, y), y)
