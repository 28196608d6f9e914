"""Shared helpers for the compiler tests: spec construction and bound checks."""

from __future__ import annotations

import torch

from tapsc.language import ir

F32_EPS = torch.finfo(torch.float32).eps


def make_spec(layers, input_shape=(1, 6, 6), split=0, normalize=None, init="default",
              phases=(ir.NaturalPhase(),), dataset="mnist", eps=0.1) -> ir.Spec:
    """A minimal Spec around ``layers`` (IR nodes); an int ``split`` is relus_in_classifier."""
    if isinstance(split, int):
        split = ir.SplitByRelus(count=split)
    return ir.Spec(
        data=ir.Data(dataset=dataset, normalize=normalize),
        model=ir.Model(input_shape=input_shape, layers=tuple(layers)),
        split=split,
        perturbation=ir.Perturbation(eps=eps),
        method=ir.Method(phases=tuple(phases), initialization=init),
        optimizer=ir.Optimizer(epochs=1),
    )


def sample_box(lo: torch.Tensor, hi: torch.Tensor, samples: int, generator=None) -> torch.Tensor:
    """(S*B, ...) points in the box: half uniform, half random corners; row s*B + b is in box b."""
    shape = (samples,) + tuple(lo.shape)
    u = torch.rand(shape, generator=generator)
    corners = torch.rand(shape, generator=generator) < 0.5
    u[samples // 2:] = corners[samples // 2:].float()
    points = lo + u * (hi - lo)
    return points.reshape((-1,) + tuple(lo.shape[1:]))


def assert_contains(lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor, what: str = "", depth: int = 1) -> None:
    """Every row block of y (S*B, ...) lies in [lo, hi] (B, ...) up to float32 rounding.

    Training's interval pass is float32 without rounding terms (certification's bounds are the
    rigorous ones), so the forward and the bounds drift apart by rounding that accumulates over
    the ``depth`` layers before this one: the tolerance grows with it (a train-mode BatchNorm on
    a batch of 3 after ten layers drifted 8.6e-6 against a one-layer tolerance of 7.6e-6). A
    wrong rule is off by a share of the box width, orders of magnitude more.
    """
    y = y.reshape((-1,) + tuple(lo.shape))
    scale = 1.0 + max(lo.abs().max().item(), hi.abs().max().item())
    tol = 64 * F32_EPS * scale * max(depth, 1)
    assert (lo <= hi + tol).all(), f"{what}: lower bound above upper bound"
    below = (lo - y).max().item()
    above = (y - hi).max().item()
    assert below <= tol and above <= tol, f"{what}: point escapes its bounds by {max(below, above):.3g} (tol {tol:.3g})"
