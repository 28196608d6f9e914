"""Shi et al. (2021) regularizers for the eps ramp, and the L1 penalty.

We follow the authors' code (TAPS/CTBench), not Algorithm 1's (eps / eps_target) weight:
the regularizer is weighted by lambda_reg * (1 - eps / eps_target), so it is strongest
early in the ramp and vanishes at the target. Over the top-level ReLU layers'
pre-activation boxes (ReLUs inside residual blocks are not included), with tolerance
tau = 0.5:

- tightness: relu(tau - r0 / r_l) / tau, where r is a box's mean radius and r0 that of
  the box entering the first non-normalisation layer;
- ReLU balance: with centres c, active units lo > 0, inactive hi < 0, the ratio of the
  (masked) mean centres of active vs inactive units and the ratio of their summed
  squared deviations from the mean centre, each folded to min(q, 1/q); the term is
  (relu(tau - mean ratio) + relu(tau - var ratio)) / tau, skipped for a layer where it
  is not finite (no active or no inactive units), as the authors do.

The sum of both terms is averaged over the ReLU layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tapsc.layers import Normalize

TOLERANCE = 0.5


def _mean_radius(lo, hi):
    return ((hi - lo) / 2).mean()


def _fold(ratio):
    return torch.minimum(ratio, 1 / ratio.clamp(min=1e-12))


def _balance_term(lo, hi, tol: float):
    centre = (hi + lo) / 2
    active, inactive = (lo > 0).to(centre.dtype), (hi < 0).to(centre.dtype)
    mean_ratio = (centre * active).mean() / -(centre * inactive).mean()
    deviation = (centre - centre.mean()) ** 2
    var_ratio = (deviation * active).sum() / (deviation * inactive).sum()
    term = (F.relu(tol - _fold(mean_ratio)) + F.relu(tol - _fold(var_ratio))) / tol
    return term if bool(torch.isfinite(term)) else None


def shi_regularizer_from_trace(network, lo_in, hi_in, trace, tol: float = TOLERANCE) -> torch.Tensor:
    """Unweighted Shi regularizer from an ``interval_trace`` over all layers (input box lo_in/hi_in)."""
    boxes_in = [(lo_in, hi_in)] + list(trace[:-1])  # the box entering each layer
    first = next(i for i, layer in enumerate(network.layers) if not isinstance(layer, Normalize))
    r0 = _mean_radius(*boxes_in[first])
    relus = network.relu_layers()
    total = torch.zeros((), device=lo_in.device)
    if not relus:
        return total
    for index in relus:
        lo, hi = boxes_in[index]
        total = total + F.relu(tol - r0 / _mean_radius(lo, hi).clamp(min=1e-12)) / tol
        balance = _balance_term(lo, hi, tol)
        if balance is not None:
            total = total + balance
    return total / len(relus)


def shi_weight(lambda_reg: float, eps: float, eps_target: float) -> float:
    """lambda_reg * (1 - eps / eps_target) during the ramp (0 at or past the target, or at eps = 0)."""
    if eps <= 0 or eps_target <= 0 or eps >= eps_target:
        return 0.0
    return lambda_reg * (1 - eps / eps_target)


def l1_penalty(network) -> torch.Tensor:
    """Sum of |W| and |b| over conv and linear layers, divided by their number."""
    layers = network.affine_layers()
    total = sum(layer.weight.abs().sum() + (layer.bias.abs().sum() if layer.bias is not None else 0)
                for layer in layers)
    return total / max(len(layers), 1)
