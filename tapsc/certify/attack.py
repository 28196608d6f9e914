"""Falsification: the input PGD of `tapsc.method` on the margin, keeping real counterexamples.

A counterexample is a point of the box clip(x -+ eps, 0, 1) where some class j != y
scores at least as high as y (o_j >= o_y, the same region a VNN-LIB property states).
The attack is `tapsc.method.input_attack.pgd_margin_attack` (the margin objective with the
spec's steps and restarts, the clean point included) with ``recheck``: every returned
point is clipped to the box and re-evaluated, so a "falsified" verdict never rests on a
point outside the box or on a value from inside the loop.

Shape legend: B batch, K classes, X the per-sample input shape.
"""

from __future__ import annotations

import torch
from torch import nn

from tapsc.language import ir
from tapsc.method.input_attack import pgd_margin_attack


def pgd_counterexamples(network: nn.Module, x_BX: torch.Tensor, labels_B: torch.Tensor, eps: float,
                        attack: ir.InputAttack):
    """Search the box for counterexamples.

    Returns:
        (found_B, point_BX, margin_B): whether a counterexample was found, the best
        point, and its margin max_{j != y} o_j - o_y (>= 0: counterexample).
    """
    point_BX, margin_B = pgd_margin_attack(network, x_BX, labels_B, eps, attack, recheck=True)
    return margin_B >= 0, point_BX, margin_B
