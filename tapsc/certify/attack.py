"""Falsification: the input PGD of `tapsc.method` on the margin, keeping real counterexamples.

A counterexample is a point of the box clip(x -+ eps, 0, 1) where some class j != y
scores at least as high as y (o_j >= o_y, the same region a VNN-LIB property states).
The attack always runs on the margin objective with the spec's steps and restarts
(whatever loss the spec's eval attack names: a CE optimum is not a margin optimum).
Every returned point is clipped to the box and re-evaluated, so a "falsified"
verdict never rests on a point outside the box or on a value from inside the loop.

Shape legend: B batch, K classes, X the per-sample input shape.
"""

from __future__ import annotations

import torch
from torch import nn

from tapsc import ir
from tapsc.method.input_attack import margin_objective, pgd_attack


def pgd_counterexamples(network: nn.Module, x_BX: torch.Tensor, labels_B: torch.Tensor, eps: float,
                        attack: ir.InputAttack):
    """Search the box for counterexamples.

    Returns:
        (found_B, point_BX, margin_B): whether a counterexample was found, the best
        point, and its margin max_{j != y} o_j - o_y (>= 0: counterexample).
    """
    lo_BX, hi_BX = (x_BX - eps).clamp(0, 1), (x_BX + eps).clamp(0, 1)
    with torch.no_grad():
        centre_B = margin_objective(network(x_BX), labels_B)
    if eps > 0:
        point_BX, _ = pgd_attack(network, x_BX, labels_B, eps, attack.model_copy(update={"loss": "margin"}))
    else:
        point_BX = x_BX
    with torch.no_grad():  # the verdict rests on a fresh evaluation of the clipped point
        point_BX = torch.minimum(torch.maximum(point_BX, lo_BX), hi_BX)
        margin_B = margin_objective(network(point_BX), labels_B)
    use_centre = centre_B > margin_B
    point_BX = torch.where(use_centre.reshape(-1, *[1] * (x_BX.dim() - 1)), x_BX, point_BX)
    margin_B = torch.maximum(margin_B, centre_B)
    return margin_B >= 0, point_BX, margin_B
