"""In-house certification: IBP, CROWN-IBP and CROWN bounds, and the per-sample cascade.

`tapsc.certify.linear.LinearBounds` bounds the margin of a module list over an input
box; `tapsc.certify.cascade.Cascade` turns bounds and an attack into per-sample
verdicts; `certified` is the one-call form the evaluation metrics use.

Shape legend: B batch.
"""

from __future__ import annotations

import torch
from torch import nn

from tapsc.certify.linear import METHODS, LinearBounds
from tapsc.certify.rounding import perturbation_box
from tapsc.precision import full_float32

__all__ = ["METHODS", "LinearBounds", "certified", "full_float32", "margin_lower_bounds"]


def margin_lower_bounds(network: nn.Module, x_B: torch.Tensor, y_B: torch.Tensor, eps: float,
                        method: str = "crown_ibp", bounds: LinearBounds | None = None) -> torch.Tensor:
    """Sound lower bounds of min_{j != y} (o_y - o_j) over clip(x -+ eps, 0, 1): shape (B,).

    The network must be in eval mode (BatchNorm on running statistics). The bounds hold in
    exact arithmetic over the stored weights (float64, rounding errors added: see
    `tapsc.certify.rounding`); returned in float64. ``bounds``: a `LinearBounds` of this
    network already made (its float64 copy), else one is made.
    """
    bounds = bounds or LinearBounds(network.layers if hasattr(network, "layers") else network)
    lo, hi = perturbation_box(x_B, eps, bounds.dtype)
    return bounds.margin_lower_bounds(lo, hi, y_B, method).min(1).values


def certified(network: nn.Module, x_B: torch.Tensor, y_B: torch.Tensor, eps: float,
              method: str = "crown_ibp") -> torch.Tensor:
    """Per-sample bool (B,): ``method`` proves every margin o_y - o_j > 0 over the box.

    For ``"crown"`` the cheap CROWN-IBP runs first and CROWN only on what it leaves
    (a sample proven by either is soundly certified; CROWN is the costly one).
    """
    bounds = LinearBounds(network.layers if hasattr(network, "layers") else network)
    if method != "crown":
        return margin_lower_bounds(network, x_B, y_B, eps, method, bounds) > 0
    proven_B = margin_lower_bounds(network, x_B, y_B, eps, "crown_ibp", bounds) > 0
    rest = (~proven_B).nonzero().squeeze(1)
    if rest.numel():
        proven_B[rest] = margin_lower_bounds(network, x_B[rest], y_B[rest], eps, "crown", bounds) > 0
    return proven_B
