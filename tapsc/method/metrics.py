"""Per-sample evaluation metrics (bool tensors): natural, PGD, IBP and TAPS robustness.

Each metric switches the network to eval mode (running BatchNorm statistics) for the
call and restores the previous mode; bounds are computed without autograd.

Shape legend: B batch, K classes.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from tapsc import ir
from tapsc.method.input_attack import input_box, margin_objective, pgd_attack
from tapsc.method.latent_attack import latent_attack, margins_at
from tapsc.method.losses import ibp_margin_upper

__all__ = ["natural_correct", "pgd_robust", "ibp_certified", "taps_robust", "ibp_margin_upper"]


@contextmanager
def evaluating(network):
    """Eval mode for the block, then the previous mode again."""
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)


def natural_correct(network, x, y) -> torch.Tensor:
    """(B,) clean prediction is y."""
    with evaluating(network), torch.no_grad():
        return network(x).argmax(1) == y


def pgd_robust(network, x, y, eps: float, attack: ir.InputAttack) -> torch.Tensor:
    """(B,) no point found by PGD (nor x itself) is misclassified; the margin objective is
    used whatever ``attack.loss`` says, since it is what decides misclassification."""
    margin_attack = attack.model_copy(update={"loss": "margin"})
    with evaluating(network):
        _, worst_B = pgd_attack(network, x, y, eps, margin_attack)
        with torch.no_grad():
            clean_B = margin_objective(network(x), y)
    return (worst_B < 0) & (clean_B < 0)


def ibp_certified(network, x, y, eps: float) -> torch.Tensor:
    """(B,) every IBP upper bound of o_i - o_y (i != y) is < 0."""
    with evaluating(network), torch.no_grad():
        upper_BK = ibp_margin_upper(network, *input_box(x, eps), y)
    return _all_negative(upper_BK, y)


def taps_robust(network, x, y, eps: float, attack: ir.LatentAttack) -> torch.Tensor:
    """(B,) correctly classified and every TAPS latent estimate of o_i - o_y is < 0."""
    with evaluating(network):
        with torch.no_grad():
            logits = network(x)
            z_lo, z_hi = network.extractor_box(*input_box(x, eps))
        z_BE = latent_attack(network, z_lo, z_hi, y, attack)
        with torch.no_grad():
            estimates_BK = margins_at(network, z_BE, y, attack.estimator == "multi")
    return _all_negative(estimates_BK, y) & (logits.argmax(1) == y)


def _all_negative(upper_BK: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return upper_BK.scatter(1, y[:, None], float("-inf")).max(1).values < 0
