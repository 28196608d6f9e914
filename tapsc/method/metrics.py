"""Per-sample margins of the measures that `tapsc.method` computes (`tapsc.measures`), and the
clean prediction; `tapsc.margins` registers them under their measures' names and turns
them into verdicts.

A margin is (B,) in logit units, positive where the measure calls the sample robust:
o_y - max_{j != y} o_j at the clean point, at the worst point PGD finds (the clean point
included), or from upper bounds/estimates u_j of o_j - o_y as -max_{j != y} u_j. Each
function switches the network to eval mode (running BatchNorm statistics) for the call
and restores the previous mode; bounds are computed without autograd.

Shape legend: B batch, K classes.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from tapsc.language import ir
from tapsc.method.input_attack import input_box, margin_objective, pgd_margin_attack
from tapsc.method.latent_attack import latent_attack, margins_at
from tapsc.method.losses import ibp_margin_upper
from tapsc.method.sabr import sabr_box

__all__ = [
    "clean_margin",
    "ibp_margin",
    "ibp_margin_upper",
    "margin_from_upper",
    "natural_correct",
    "pgd_margin",
    "sabr_margin",
    "taps_margin",
]


@contextmanager
def evaluating(network):
    """Eval mode for the block, then the previous mode again."""
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)


def margin_from_upper(upper_BK: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
    """min_j (o_y - o_j), (B,), from upper bounds or estimates of o_j - o_y, (B, K)."""
    return -upper_BK.scatter(1, y_B[:, None], float("-inf")).max(1).values


# ---------------------------------------------------------------- margins


def clean_margin(network, x, y) -> torch.Tensor:
    """(B,) o_y - max_{j != y} o_j at x itself."""
    with evaluating(network), torch.no_grad():
        return -margin_objective(network(x), y)


def pgd_margin(network, x, y, eps: float, attack: ir.InputAttack) -> torch.Tensor:
    """(B,) the smallest margin PGD on the margin finds in the box, the clean point included
    (`pgd_margin_attack`): an upper bound on the worst-case margin."""
    with evaluating(network):
        return -pgd_margin_attack(network, x, y, eps, attack)[1]


def ibp_margin(network, x, y, eps: float) -> torch.Tensor:
    """(B,) IBP's lower bound of the margin over the box, in the network's own float32
    interval pass (training's IBP); certified accuracy uses `tapsc.certify`'s rigorous one."""
    with evaluating(network), torch.no_grad():
        return margin_from_upper(ibp_margin_upper(network, *input_box(x, eps), y), y)


def taps_margin(network, x, y, eps: float, attack: ir.LatentAttack) -> torch.Tensor:
    """(B,) TAPS's estimate: the multi-estimator latent PGD's margins in the extractor's IBP box."""
    with evaluating(network):
        with torch.no_grad():
            z_lo, z_hi = network.extractor_box(*input_box(x, eps))
        z_BE = latent_attack(network, z_lo, z_hi, y, attack)
        with torch.no_grad():
            return margin_from_upper(margins_at(network, z_BE, y, attack.estimator == "multi"), y)


def sabr_margin(network, x, y, eps: float, sabr_lambda: float, attack: ir.InputAttack) -> torch.Tensor:
    """(B,) SABR's estimate: IBP's bound over the small box of radius lambda * eps around a PGD point."""
    with evaluating(network):
        lo, hi = sabr_box(network, x, y, eps, sabr_lambda, attack)
        with torch.no_grad():
            return margin_from_upper(ibp_margin_upper(network, lo, hi, y), y)


# ---------------------------------------------------------------- the prediction


def natural_correct(network, x, y) -> torch.Tensor:
    """(B,) clean prediction is y (argmax: on an exact tie the first class wins)."""
    with evaluating(network), torch.no_grad():
        return network(x).argmax(1) == y
