"""Soundness checks of bound rules against sampled points, shared by the registry-driven tests
and the mutation tests (which show the checks catch a wrong rule).

Every check computes in float64 on a float64 copy of the layer, compares against points drawn
uniformly, at random vertices, and found by projected gradient descent on each bound row (the
point most likely to escape), and fails with the worst violation.

Shape legend: B batch, S bound rows, X the layer's per-sample input shape, Y its output's.
"""

from __future__ import annotations

import copy

import torch
from layer_cases import LAYER_CASES, randomize
from torch import nn

from tapsc.certify import rules
from tapsc.certify.linear import LinearBounds
from tapsc.layers import LAYERS

# One instance recipe per layer class that has bound rules: tapsc kinds from their IR node in
# the one table of layer cases (tests/layer_cases.py; a kind missing there fails
# tests/compile/test_layer_kinds.py), plain torch classes (the folded export model) by constructor
# (`test_every_rule_class_has_a_case` fails on a class missing here). Input shapes per sample.
TORCH_CASES: dict[type, tuple] = {
    nn.Linear: (lambda: nn.Linear(6, 4), (6,)),
    nn.Conv2d: (lambda: nn.Conv2d(2, 3, 3, stride=1, padding=1), (2, 4, 4)),
    nn.BatchNorm1d: (lambda: nn.BatchNorm1d(5), (5,)),
    nn.BatchNorm2d: (lambda: nn.BatchNorm2d(2), (2, 3, 3)),
    nn.Flatten: (lambda: nn.Flatten(), (2, 3, 3)),
    nn.Identity: (lambda: nn.Identity(), (5,)),
    nn.AvgPool2d: (lambda: nn.AvgPool2d(2, 1), (2, 4, 4)),
    nn.ReLU: (lambda: nn.ReLU(), (6,)),
    nn.LeakyReLU: (lambda: nn.LeakyReLU(0.3), (6,)),
    nn.MaxPool2d: (lambda: nn.MaxPool2d(2), (2, 4, 4)),  # square; the tapsc case is not
}


def build_case(key, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The layer of case ``key`` (a tapsc kind or a torch class) with random parameters and
    BatchNorm statistics (some scales negative), in eval mode, float64."""
    torch.manual_seed(seed)
    if isinstance(key, str):
        node, in_shape = LAYER_CASES[key]
        layer, _ = LAYERS[key].build(node, in_shape)
    else:
        factory, in_shape = TORCH_CASES[key]
        layer = factory()
    return randomize(layer, seed).double().eval(), in_shape


def random_box(in_shape, batch: int, radius: float, seed: int):
    """(lo, hi) float64 boxes, centres near 0 so ReLUs are unstable, radius in [radius/4, radius]."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.randn((batch, *in_shape), generator=generator, dtype=torch.float64) * max(radius, 0.1)
    r = radius * (0.25 + 0.75 * torch.rand((batch, *in_shape), generator=generator, dtype=torch.float64))
    return centre - r, centre + r


def _project(x, lo, hi):
    return torch.maximum(torch.minimum(x, hi), lo)


def worst_points(objective, lo, hi, samples: int = 48, steps: int = 30, seed: int = 0) -> torch.Tensor:
    """Points (P, B, *X) in the box [lo, hi] (B, *X): uniform, vertices, and ends of projected
    sign-gradient descent on ``objective(x) -> (B, S)`` for every row S (from vertices and
    uniform starts). The caller takes the minimum of its own objective over them."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand((samples, *lo.shape), generator=generator, dtype=lo.dtype)
    u[samples // 2:] = (u[samples // 2:] < 0.5).to(lo.dtype)
    points = [lo + u * (hi - lo)]
    with torch.no_grad():
        S = objective(lo).shape[1]
    step = (hi - lo) / 8
    for s in range(S):
        for start in (points[0][0], points[0][-1]):
            x = start.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(objective(x)[:, s].sum(), x)
                x = _project(x.detach() - step * grad.sign(), lo, hi)
            points.append(x.detach().unsqueeze(0))
    return torch.cat(points)


def _tolerance(*magnitudes: torch.Tensor) -> torch.Tensor:
    # float64 evaluation of the check itself rounds at ~1e-16 of the magnitudes; a wrong rule
    # is off by far more (a dropped intercept: the size of the box).
    return 1e-10 * (1 + sum(m for m in magnitudes))


def check_backward_rule(layer: nn.Module, lo_BX, hi_BX, S: int = 3, seed: int = 0) -> None:
    """The rule's contract: for every x in the box, A . layer(x) >= A_in . x + bias - error."""
    B = lo_BX.shape[0]
    with torch.no_grad():
        Y = layer(lo_BX).shape[1:]
    generator = torch.Generator().manual_seed(seed)
    A_BSY = torch.randn((B, S, *Y), generator=generator, dtype=lo_BX.dtype)
    A_in, bias_BS, error_BS = rules.backward_rule(layer)(layer, A_BSY, lo_BX, hi_BX)
    A_in, bias_BS, error_BS = A_in.detach(), bias_BS.detach(), error_BS.detach()

    def slack(x_BX):  # >= 0 everywhere iff the linear bound holds
        exact_BS = (A_BSY * layer(x_BX).unsqueeze(1)).flatten(2).sum(-1)
        linear_BS = (A_in * x_BX.unsqueeze(1)).flatten(2).sum(-1) + bias_BS - error_BS
        return exact_BS - linear_BS

    points = worst_points(slack, lo_BX, hi_BX, seed=seed)
    with torch.no_grad():
        worst_BS = torch.stack([slack(p) for p in points]).min(0).values
        scale = (A_BSY.abs() * layer(points[0]).abs().unsqueeze(1)).flatten(2).sum(-1)
    tolerance = _tolerance(scale, bias_BS.abs())
    bad = (worst_BS < -tolerance)
    assert not bad.any(), (f"{type(layer).__name__}: backward rule's bound exceeds A . layer(x) by "
                           f"{(-worst_BS - tolerance).max().item():.3g}")


def check_interval(layer: nn.Module, lo_BX, hi_BX, seed: int = 0) -> None:
    """Certification's interval for the layer (rule + rounding pad, as LinearBounds uses it)
    contains layer(x) for the sampled points and for points pushed to each output's extremes."""
    bounds = LinearBounds([layer])
    with torch.no_grad():
        out_lo, out_hi = bounds.node_boxes(lo_BX, hi_BX, "ibp")[-1]
    forward = bounds.layers[0]
    B = lo_BX.shape[0]

    def spread(x_BX):  # each output coordinate, both directions: rows (B, 2 * Y)
        y = forward(x_BX).flatten(1)
        return torch.cat([y, -y], 1)

    width = spread(lo_BX).shape[1]
    rows = list(range(0, width, max(1, width // 6)))  # a few outputs per direction by gradient

    def chosen(x_BX):
        return spread(x_BX)[:, rows + [r + width // 2 for r in rows if r + width // 2 < width]]

    points = worst_points(chosen, lo_BX, hi_BX, seed=seed)
    with torch.no_grad():
        values = torch.stack([forward(p) for p in points]).reshape(len(points), B, -1)
    lo_f, hi_f = out_lo.reshape(B, -1), out_hi.reshape(B, -1)
    tolerance = _tolerance(values.abs().amax(0))
    below = (lo_f - values - tolerance).max().item()
    above = (values - hi_f - tolerance).max().item()
    assert below <= 0 and above <= 0, (f"{type(layer).__name__}: a sampled output leaves the interval "
                                       f"(by {max(below, above):.3g})")


def check_margin_bounds(layers: list[nn.Module], lo_BX, hi_BX, labels_B,
                        methods=("ibp", "crown_ibp", "crown", "alpha_crown"),
                        seed: int = 0) -> None:
    """Every method's margin lower bound is below the margin at every sampled point, including
    the points gradient descent finds for each margin row."""
    from tapsc.certify.linear import spec_matrix

    bounds = LinearBounds(layers)
    net = nn.Sequential(*copy.deepcopy(bounds.layers))
    with torch.no_grad():
        K = net(lo_BX).shape[1]
    C_BSK = spec_matrix(labels_B, K).to(lo_BX.dtype)

    def margins(x_BX):
        return torch.einsum("bsk,bk->bs", C_BSK, net(x_BX))

    points = worst_points(margins, lo_BX, hi_BX, seed=seed)
    with torch.no_grad():
        true_BS = torch.stack([margins(p) for p in points]).min(0).values
        for method in methods:
            bound_BS = bounds.margin_lower_bounds(lo_BX, hi_BX, labels_B, method)
            excess = (bound_BS - true_BS - _tolerance(true_BS.abs())).max().item()
            assert excess <= 0, f"{method}: margin bound exceeds a sampled margin by {excess:.3g}"
