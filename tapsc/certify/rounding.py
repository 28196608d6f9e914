"""Floating-point rounding as part of soundness: error bounds and outward rounding.

A certified verdict is a claim in exact arithmetic over the stored float32 weights:
every x in the box has o_y(x) - o_j(x) > 0. The bounds are computed in floating point
(float64 by default, `CERTIFY_DTYPE`), so every step that rounds also returns an upper
bound on the error it made, and every final bound is pushed outward by the sum.

The error model is standard forward error analysis (Higham, "Accuracy and Stability of
Numerical Algorithms", 2nd ed., eq. 3.5 and Lemma 3.1): a dot product or sum of n
floating-point terms computed in any order, with or without fused multiply-adds, is off
from the exact sum by at most gamma_n * sum |terms|, gamma_n = n u / (1 - n u), where u
is the unit roundoff (2^-53 for float64, 2^-24 for float32). Underflow adds at most
n * eta (eta the smallest subnormal) per sum. `error_factor` returns a safe multiple of
gamma_n: twice it, which also covers the rounding in computing the magnitude itself
(the sum of |terms| is computed in floating point too) and the few extra roundings each
rule makes (centre and radius of a box, a layer's precomputed scale).

What this assumes of the kernels: each output is a sum of products of its inputs (direct
or GEMM-based convolution and matrix products, any summation order or blocking). Winograd
or FFT convolutions do not compute such sums; PyTorch does not choose them for float64
(the default here), which is one reason certification computes in float64.

Shape legend: any shape; all helpers are elementwise unless they say otherwise.
"""

from __future__ import annotations

import torch

from tapsc.measures import input_box

CERTIFY_DTYPE = torch.float64  # the dtype bound computations run in (float32 weights convert exactly)


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2^-p for a p-bit significand: 2^-53 (float64), 2^-24 (float32)."""
    return torch.finfo(dtype).eps / 2


def error_factor(terms: int, dtype: torch.dtype) -> float:
    """A safe multiplier m such that a sum of ``terms`` products, computed in ``dtype``, is
    within m * (sum of |products|) + `underflow(terms)` of its exact value (2 gamma_{n+4})."""
    nu = (terms + 4) * unit_roundoff(dtype)
    if nu >= 0.01:
        raise ValueError(f"{terms} terms are too many for a rounding bound in {dtype}")
    return 2 * nu / (1 - nu)


def underflow(terms: int, dtype: torch.dtype) -> float:
    """Absolute error that gradual underflow can add to a sum of ``terms`` products."""
    return (terms + 4) * torch.finfo(dtype).tiny


def sum_error(magnitude: torch.Tensor, terms: int) -> torch.Tensor:
    """Upper bound on the rounding error of sums of ``terms`` products whose absolute values
    sum to ``magnitude`` (same shape; computed in ``magnitude.dtype``)."""
    return error_factor(terms, magnitude.dtype) * magnitude + underflow(terms, magnitude.dtype)


def round_down(t: torch.Tensor) -> torch.Tensor:
    """The next representable value below ``t`` (absorbs the rounding of the last operation).
    Its gradient is that of ``t`` (alpha-CROWN differentiates through bounds)."""
    step = torch.nextafter(t.detach(), t.new_full((), float("-inf"))) - t.detach()
    return t + step


def round_up(t: torch.Tensor) -> torch.Tensor:
    """The next representable value above ``t`` (gradient: that of ``t``)."""
    step = torch.nextafter(t.detach(), t.new_full((), float("inf"))) - t.detach()
    return t + step


def widen(lo: torch.Tensor, hi: torch.Tensor, error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Push the box [lo, hi] outward by ``error`` (broadcastable), rounding outward."""
    return round_down(lo - error), round_up(hi + error)


def magnitude_of(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """max(|lo|, |hi|): an elementwise bound on |x| for every x in the box."""
    return torch.maximum(lo.abs(), hi.abs())


def perturbation_box(x: torch.Tensor, eps: float, dtype: torch.dtype = CERTIFY_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """The l_inf box clip(x -+ eps, 0, 1) in ``dtype``, rounded outward so that it contains
    the exact box of the real number ``eps`` around the stored ``x`` (pixel units)."""
    return input_box(x.to(dtype), eps, outward=(round_down, round_up))
