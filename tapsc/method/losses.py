"""Training losses on bounds of the logit differences o_i - o_y.

Every robust loss is cross-entropy on the pseudo-logits (upper bound of o_i - o_y for
i != y, 0 for y): ln(1 + sum_{i != y} exp(upper_i)).

IBP bounds of o_i - o_y: the box is propagated to the input of the last layer, and
when that layer is linear its DIFFERENCE rows (w_i - w_y, b_i - b_y) are applied to
the box directly. That is sound and never looser than subtracting interval bounds of
the logits (upper_i - lower_y), which is the fallback for any other last layer.

Shape legend: B batch, K classes, D features at the last layer's input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tapsc.language import ir
from tapsc.layers import Linear
from tapsc.method.input_attack import input_box, pgd_attack


def bound_ce(upper_BK: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CE on the pseudo-logits; ``upper_BK`` must be 0 (or anything: it is zeroed) at y."""
    pseudo_BK = upper_BK.scatter(1, y[:, None], 0.0)
    return F.cross_entropy(pseudo_BK, y, reduction=reduction)


def margin_upper_last(network, lo_BD: torch.Tensor, hi_BD: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Upper bounds of o_i - o_y (B, K), 0 at y, from the box at the LAST layer's input."""
    last = network.layers[-1]
    if not isinstance(last, Linear):
        lo_BK, hi_BK = last.interval(lo_BD, hi_BD)
        upper_BK = hi_BK - lo_BK.gather(1, y[:, None])
        return upper_BK.scatter(1, y[:, None], 0.0)
    c_BD, r_BD = (hi_BD + lo_BD) / 2, (hi_BD - lo_BD) / 2
    w_BKD = last.weight[None] - last.weight[y][:, None]
    upper_BK = torch.einsum("bkd,bd->bk", w_BKD, c_BD) + torch.einsum("bkd,bd->bk", w_BKD.abs(), r_BD)
    if last.bias is not None:
        upper_BK = upper_BK + (last.bias[None] - last.bias[y][:, None])
    return upper_BK.scatter(1, y[:, None], 0.0)


def ibp_margin_upper(network, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor, start: int = 0):
    """Sound upper bounds of o_i - o_y (B, K), 0 at y, for the box [lo, hi] at ``layers[start]``."""
    last = len(network.layers) - 1
    if start > last:
        raise ValueError(f"start {start} is past the last layer ({last})")
    lo, hi = network.interval(lo, hi, start, last)
    return margin_upper_last(network, lo, hi, y)


def natural_loss(network, x, y, logits=None) -> torch.Tensor:
    """Mean CE of the clean logits (pass ``logits`` to reuse a forward already done)."""
    return F.cross_entropy(network(x) if logits is None else logits, y)


def ibp_loss(network, x, y, eps: float) -> torch.Tensor:
    """Mean IBP loss over the box clip(x -+ eps, 0, 1)."""
    lo, hi = input_box(x, eps)
    return bound_ce(ibp_margin_upper(network, lo, hi, y), y)


def pgd_loss(network, x, y, eps: float, attack: ir.InputAttack) -> torch.Tensor:
    """Madry's loss: mean CE at the PGD point; BatchNorm reuses the clean batch's statistics."""
    x_adv, _ = pgd_attack(network, x, y, eps, attack)
    with network.frozen_batchnorm(detach=False):
        return F.cross_entropy(network(x_adv), y)


def combine_scaled(l_taps: torch.Tensor, l_ibp: torch.Tensor, weight: float) -> torch.Tensor:
    """L_TAPS * L_IBP whose gradient is 2a dL_TAPS L_IBP + (2 - 2a) dL_IBP L_TAPS (App. A).

    a = w / (1 + w), i.e. w = a / (1 - a); w = 1 is the plain product rule. The value is
    the product; each factor's gradient is rescaled with a detach trick
    (s * f + (1 - s) * f.detach() has value f and gradient s df).
    """
    a = weight / (1.0 + weight)
    taps_scaled = 2 * a * l_taps + (1 - 2 * a) * l_taps.detach()
    ibp_scaled = (2 - 2 * a) * l_ibp + (2 * a - 1) * l_ibp.detach()
    return taps_scaled * ibp_scaled


def combine_scaled_over_ranks(l_taps: torch.Tensor, l_ibp: torch.Tensor, weight: float,
                              taps_mean: torch.Tensor, ibp_mean: torch.Tensor) -> torch.Tensor:
    """``combine_scaled`` for one rank's share of a data-parallel batch.

    ``l_taps``/``l_ibp`` are this rank's batch means, ``taps_mean``/``ibp_mean`` the means
    over every rank (detached). The value is the global product; the gradient is this rank's
    share 2a dL_TAPS,r L_IBP + (2 - 2a) dL_IBP,r L_TAPS, so averaging the ranks' gradients
    (as the all-reduce does) gives exactly the gradient of the product of the global means,
    not the mean of per-rank products. With one rank it equals ``combine_scaled``.
    """
    a = weight / (1.0 + weight)
    share = 2 * a * l_taps * ibp_mean + (2 - 2 * a) * l_ibp * taps_mean
    return share - share.detach() + taps_mean * ibp_mean



# De Palma et al., "Expressive Losses for Verified Robustness via Convex Combinations", ICLR
# 2024, Sec. 4: each loss takes the adversarial margins z_adv = o_i(x_adv) - o_y(x_adv) and
# the IBP upper bounds z_IBP of o_i - o_y (both (B, K), 0 at y; the paper's z are lower bounds
# of o_y - o_i, i.e. minus ours) and alpha in [0, 1]: alpha = 0 is the adversarial loss,
# alpha = 1 the IBP loss.


def adversarial_margins(adv_BK: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """o_i - o_y (B, K), 0 at y, of the logits at the adversarial point."""
    return (adv_BK - adv_BK.gather(1, y[:, None])).scatter(1, y[:, None], 0.0)


def mtl_ibp_loss(alpha: float, z_adv_BK: torch.Tensor, z_ibp_BK: torch.Tensor, y: torch.Tensor):
    """MTL-IBP: alpha L_IBP + (1 - alpha) L_adv of batch means. Returns (loss, l_adv, l_ibp)."""
    l_adv, l_ibp = bound_ce(z_adv_BK, y), bound_ce(z_ibp_BK, y)
    return alpha * l_ibp + (1 - alpha) * l_adv, l_adv, l_ibp


def cc_ibp_loss(alpha: float, z_adv_BK: torch.Tensor, z_ibp_BK: torch.Tensor, y: torch.Tensor):
    """CC-IBP: CE of the convex combination (1 - alpha) z_adv + alpha z_IBP."""
    loss = bound_ce((1 - alpha) * z_adv_BK + alpha * z_ibp_BK, y)
    return loss, bound_ce(z_adv_BK.detach(), y), bound_ce(z_ibp_BK.detach(), y)


def exp_ibp_loss(alpha: float, z_adv_BK: torch.Tensor, z_ibp_BK: torch.Tensor, y: torch.Tensor):
    """Exp-IBP: L_adv^(1 - alpha) L_IBP^alpha of batch means."""
    l_adv, l_ibp = bound_ce(z_adv_BK, y), bound_ce(z_ibp_BK, y)
    tiny = torch.finfo(l_adv.dtype).tiny  # a zero factor has no finite power gradient
    return l_adv.clamp(min=tiny) ** (1 - alpha) * l_ibp.clamp(min=tiny) ** alpha, l_adv, l_ibp


def exp_ibp_over_ranks(alpha: float, l_adv: torch.Tensor, l_ibp: torch.Tensor, adv_mean: torch.Tensor,
                       ibp_mean: torch.Tensor) -> torch.Tensor:
    """Exp-IBP for one rank's share of a data-parallel batch (as `combine_scaled_over_ranks`).

    ``l_adv``/``l_ibp`` are this rank's batch means, ``adv_mean``/``ibp_mean`` the means over
    every rank (detached, positive). The value is the global A^(1 - alpha) I^alpha; the gradient
    is this rank's share (1 - alpha) (I/A)^alpha dA_r + alpha (A/I)^(1 - alpha) dI_r, whose
    average over ranks is the gradient of the global product. With one rank it is `exp_ibp_loss`.
    """
    tiny = torch.finfo(l_adv.dtype).tiny
    a, i = adv_mean.clamp(min=tiny), ibp_mean.clamp(min=tiny)
    share = (1 - alpha) * (i / a) ** alpha * l_adv + alpha * (a / i) ** (1 - alpha) * l_ibp
    return share - share.detach() + a ** (1 - alpha) * i ** alpha
