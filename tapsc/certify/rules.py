"""Bound rules of each layer: on tapsc's layer classes, and in tables for plain torch classes.

tapsc's own layer kinds carry every rule (`tapsc.layers.base.BoundLayer`): ``interval``,
``magnitude``, ``backward`` (one of the rules below, or the kind's own) and ``relaxed``; a
residual block declares ``branches`` (`tapsc.certify.graph`). Plain torch modules (the folded
export model, user-supplied networks) get entries in tables keyed by class, filled by
`register`; a table entry wins over the layer's own rule (tests use that to plant mutants):

- ``INTERVAL_RULES``: IBP through one layer.
- ``BACKWARD_RULES``: back-substitution of a linear lower bound ``A . y + bias``
  through one layer ``y = layer(x)``, given the box of the layer's input. Returns the
  coefficients on ``x``, the added bias, and a bound on the rounding error the step made
  (`tapsc.certify.rounding`): for every x in the box, in exact arithmetic,
  ``A . layer(x) >= A_in . x + bias - error``.
- ``MAGNITUDE_RULES``: a bound on |J| |x| + |f0| per output (`magnitude`), which scales
  the rounding error of every sum an affine layer forms.
- ``RELAXED``: classes whose backward rule relaxes the layer over its input box.

Rules, in words:
- affine layers (conv, linear, eval-mode batchnorm, normalize, flatten, avgpool,
  identity): exact. The transpose is taken with ``torch.func.vjp`` of the layer's own
  forward, so no rule needs to know how a layer stores its weights.
- relu: the CROWN/DeepPoly relaxation. Upper line through (l, 0) and (u, u); lower
  line y >= a x with the adaptive slope a = 1 if u >= -l else 0.
- leaky_relu (y = max(x, s x)): the same with (l, s l) for (l, 0) and s for 0.
- maxpool: DeepPoly's relaxation. Lower: y >= x_k for the window element k with the
  largest lower bound. Upper: y <= x_k when k dominates (its lower bound is at least
  every other element's upper bound), otherwise the constant max of upper bounds.

Shape legend: B batch, S bound rows per sample, X the layer input's per-sample shape
(``*X``), Y its output's, C channels, H/W spatial, L pooling windows, P window size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tapsc.certify import rounding
from tapsc.errors import Diagnostic, TapscError

# backward(layer, A_BSY, lo_BX, hi_BX) -> (A_BSX, bias_BS, error_BS)
BackwardRule = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor],
                        tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
IntervalRule = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# magnitude(layer, m_BX) -> m_BY, see `magnitude`
MagnitudeRule = Callable[[nn.Module, torch.Tensor], torch.Tensor]

BACKWARD_RULES: dict[type, BackwardRule] = {}
INTERVAL_RULES: dict[type, IntervalRule] = {}
MAGNITUDE_RULES: dict[type, MagnitudeRule] = {}
RELAXED: set[type] = set()  # classes whose backward rule reads the input box


# ---------------------------------------------------------------- helpers (a kind's own rule uses them too)


def sum_rows(t_BSY: torch.Tensor) -> torch.Tensor:
    """(B, S, *Y) -> (B, S): each bound row's sum."""
    return t_BSY.flatten(2).sum(-1)


def term_count(lo_BX: torch.Tensor, A_BSY: torch.Tensor) -> int:
    """A bound on the terms of any one sum a rule forms: input plus output size per sample."""
    return lo_BX[0].numel() + A_BSY[0, 0].numel()


def rows_error(A_BSY: torch.Tensor, size_BY: torch.Tensor, terms: int) -> torch.Tensor:
    """Rounding error bound of sums whose terms are bounded by |A| * size (per bound row)."""
    rows_BS = torch.bmm(A_BSY.abs().flatten(2), size_BY.flatten(1).unsqueeze(2)).squeeze(2)
    return rounding.sum_error(rows_BS, terms)


# ---------------------------------------------------------------- backward rules


def affine_backward(layer: nn.Module, A_BSY, lo_BX, hi_BX):
    """Exact transpose of an affine layer y = J x + f0: coefficients A J, bias A . f0.

    Rounding: each entry of A J and the bias are sums of at most ``term_count`` products, so
    (A J - fl(A J)) . x + (A . f0 - fl(A . f0)) is at most gamma (|A| |J| |x| + |A| |f0|)
    <= gamma |A| . magnitude(layer, max|x|) per row, twice over for the two sums.
    """
    B, S = A_BSY.shape[:2]
    x0_RX = lo_BX.new_zeros((B * S, *lo_BX.shape[1:]))
    f0_RY, pull = torch.func.vjp(layer, x0_RX)
    (A_RX,) = pull(A_BSY.reshape(B * S, *A_BSY.shape[2:]))
    f0_1Y = f0_RY[:1].unsqueeze(0)  # layer(0) is the same for every row
    bias_BS = sum_rows(A_BSY * f0_1Y)
    size_BY = magnitude(layer, rounding.magnitude_of(lo_BX, hi_BX))
    error_BS = 2 * rows_error(A_BSY, size_BY, term_count(lo_BX, A_BSY))
    return A_RX.reshape(B, S, *lo_BX.shape[1:]), bias_BS, error_BS


def relu_slopes(lo_BX: torch.Tensor, hi_BX: torch.Tensor, leak: float = 0.0):
    """CROWN slopes of y = max(x, leak * x), 0 <= leak < 1 (relu: leak 0): (lower slope, upper
    slope, upper intercept), each like lo_BX.

    For an unstable neuron (l < 0 < u) the upper line is s x + t with s = (u - leak l) / (u - l),
    through (l, leak l) and (u, u). The intercept is not the rounded leak l - s l: it is raised
    until the line lies on or above the function at both ends of [l, u] in exact arithmetic
    (then everywhere between, the function being convex): t >= leak l - s l and t >= u - s u,
    each with its rounding error added and rounded up. The lower line is y >= a x for any a in
    [leak, 1]; CROWN's adaptive choice is a = 1 if u >= -l, else leak. Stable neurons are
    linear: slope 1 (active) or leak (dead), intercept 0.
    """
    active, dead = lo_BX >= 0, hi_BX <= 0
    unstable = ~active & ~dead
    stable_slope = torch.where(active, torch.ones_like(lo_BX), torch.full_like(lo_BX, leak))
    width = torch.where(unstable, hi_BX - lo_BX, torch.ones_like(lo_BX))
    up_slope = torch.where(unstable, (hi_BX - leak * lo_BX) / width, stable_slope)
    u = rounding.unit_roundoff(lo_BX.dtype)
    ends = torch.maximum(leak * lo_BX - lo_BX * up_slope, hi_BX - hi_BX * up_slope)
    slack = 4 * u * (up_slope.abs() * (lo_BX.abs() + hi_BX.abs()) + hi_BX.abs() + leak * lo_BX.abs()) \
        + torch.finfo(lo_BX.dtype).tiny
    up_icpt = torch.where(unstable, rounding.round_up(ends + slack), torch.zeros_like(lo_BX))
    adaptive = torch.where(hi_BX >= -lo_BX, torch.ones_like(lo_BX), torch.full_like(lo_BX, leak))
    low_slope = torch.where(unstable, adaptive, stable_slope)
    return low_slope, up_slope, up_icpt


def _rectifier_backward(leak: float, A_BSY, lo_BX, hi_BX, alpha_BSX: torch.Tensor | None):
    """CROWN through y = max(x, leak * x); see `relu_backward`."""
    low_slope, up_slope, up_icpt = (t.unsqueeze(1) for t in relu_slopes(lo_BX, hi_BX, leak))
    if alpha_BSX is not None:
        unstable = ((lo_BX < 0) & (hi_BX > 0)).unsqueeze(1)
        inside = alpha_BSX - (alpha_BSX - alpha_BSX.clamp(0, 1)).detach()  # in [0, 1]; gradient 1 at the ends
        lam = leak + inside * (1 - leak)
        lam = lam - (lam - lam.clamp(leak, 1)).detach()  # exactly in [leak, 1] after rounding
        low_slope = torch.where(unstable, lam, low_slope)
    A_pos, A_neg = A_BSY.clamp(min=0), A_BSY.clamp(max=0)
    A_BSX = A_pos * low_slope + A_neg * up_slope
    size_BX = rounding.magnitude_of(lo_BX, hi_BX) + up_icpt.squeeze(1)
    return A_BSX, sum_rows(A_neg * up_icpt), rows_error(A_BSY, size_BX, term_count(lo_BX, A_BSY))


def relu_backward(layer: nn.Module, A_BSY, lo_BX, hi_BX, alpha_BSX: torch.Tensor | None = None):
    """CROWN relaxation; positive coefficients take the lower line, negative the upper.

    ``alpha_BSX`` (optional, values in [0, 1], broadcastable to A's shape): the lower
    slopes of unstable neurons per bound row, as alpha-CROWN optimises them (Xu et al.,
    ICLR 2021, "Fast and Complete", eq. 7); any slope in [0, 1] gives a valid lower line.
    Without it, CROWN's adaptive slope (1 if u >= -l, else 0).

    Rounding: each new coefficient is one product (error <= u |A| for slopes in [0, 1]) and
    the bias a sum of products A- t: bounded by gamma |A| . (max|x| + t).
    """
    return _rectifier_backward(0.0, A_BSY, lo_BX, hi_BX, alpha_BSX)


def leaky_relu_backward(layer: nn.Module, A_BSY, lo_BX, hi_BX, alpha_BSX: torch.Tensor | None = None):
    """CROWN through y = max(x, s x) with s = ``layer.negative_slope`` in [0, 1) (`relu_slopes`).

    ``alpha_BSX`` in [0, 1] maps to the lower slope s + alpha (1 - s) of unstable neurons
    (alpha-CROWN); without it, CROWN's adaptive slope (1 if u >= -l, else s). Rounding as in
    `relu_backward` (slopes stay in [0, 1]).
    """
    return _rectifier_backward(float(layer.negative_slope), A_BSY, lo_BX, hi_BX, alpha_BSX)


# Backward rules that take alpha-CROWN's free lower slopes (``alpha_BSX`` in [0, 1]).
ALPHA_RULES: frozenset[BackwardRule] = frozenset({relu_backward, leaky_relu_backward})


Pair = tuple[int, int]


def _pool_geometry(layer: nn.Module) -> tuple[Pair, Pair, Pair]:
    """(kernel, stride, padding) of a pool, each (height, width): tapsc's pools (``kernel``)
    and torch's (``kernel_size``), sizes written as one number or a pair."""
    def pair(value) -> Pair:
        return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))

    kernel = pair(getattr(layer, "kernel_size", None) or layer.kernel)
    stride = pair(getattr(layer, "stride", None) or kernel)
    padding = pair(getattr(layer, "padding", 0) or 0)
    return kernel, stride, padding


def _windows(t_BCHW: torch.Tensor, kernel: Pair, stride: Pair, padding: Pair) -> torch.Tensor:
    """(B, C, P, L) windows, padded with -inf as max pooling pads."""
    B, C = t_BCHW.shape[:2]
    (ph, pw) = padding
    padded = F.pad(t_BCHW, (pw, pw, ph, ph), value=float("-inf"))
    return F.unfold(padded, kernel, stride=stride).reshape(B, C, kernel[0] * kernel[1], -1)


def maxpool_backward(layer: nn.Module, A_BSY, lo_BX, hi_BX):
    """DeepPoly max-pool relaxation (see the module docstring)."""
    kernel, stride, padding = _pool_geometry(layer)
    B, S, C = A_BSY.shape[:3]
    H, W = lo_BX.shape[-2:]
    lo_BCPL = _windows(lo_BX, kernel, stride, padding)
    hi_BCPL = _windows(hi_BX, kernel, stride, padding)
    best_BC1L = lo_BCPL.argmax(2, keepdim=True)
    best_lo_BCL = lo_BCPL.gather(2, best_BC1L).squeeze(2)
    others_hi = hi_BCPL.scatter(2, best_BC1L, float("-inf")).amax(2)
    dominant_BCL = (best_lo_BCL >= others_hi).to(A_BSY.dtype)
    upper_BCL = hi_BCPL.amax(2)
    A_BSCL = A_BSY.reshape(B, S, C, -1)
    A_pos, A_neg = A_BSCL.clamp(min=0), A_BSCL.clamp(max=0)
    coeff_BSCL = A_pos + A_neg * dominant_BCL.unsqueeze(1)
    const_BSCL = A_neg * ((1 - dominant_BCL) * upper_BCL).unsqueeze(1)
    onehot_BCPL = torch.zeros_like(lo_BCPL).scatter(2, best_BC1L, 1.0)
    spread_BSCPL = coeff_BSCL.unsqueeze(3) * onehot_BCPL.unsqueeze(1)
    (ph, pw) = padding
    folded = F.fold(spread_BSCPL.reshape(B * S, C * kernel[0] * kernel[1], -1),
                    (H + 2 * ph, W + 2 * pw), kernel, stride=stride)
    A_BSX = folded[..., ph:ph + H, pw:pw + W].reshape(B, S, C, H, W)
    # Rounding: fold sums overlapping windows' coefficients, the bias sums A- times the
    # largest upper bound: both bounded by gamma |A| . maxpool(max|x|).
    size_BY = magnitude(layer, rounding.magnitude_of(lo_BX, hi_BX))
    return A_BSX, sum_rows(const_BSCL), 2 * rows_error(A_BSY, size_BY, term_count(lo_BX, A_BSY))


# ---------------------------------------------------------------- interval rules (plain torch)


def _affine_interval(layer, lo, hi, abs_forward):
    centre, radius = (hi + lo) / 2, (hi - lo) / 2
    out_c, out_r = layer(centre), abs_forward(radius)
    return out_c - out_r, out_c + out_r


def _linear_interval(layer: nn.Linear, lo, hi):
    return _affine_interval(layer, lo, hi, lambda r: F.linear(r, layer.weight.abs()))


def _conv_interval(layer: nn.Conv2d, lo, hi):
    return _affine_interval(layer, lo, hi, lambda r: F.conv2d(
        r, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups))


def _batchnorm_affine(layer: nn.modules.batchnorm._BatchNorm, ndim: int):
    """Eval-mode BatchNorm as y = scale * x + shift, both shaped to broadcast over ``ndim``-d inputs."""
    scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
    shape = (1, -1) + (1,) * (ndim - 2)
    return scale.reshape(shape), (layer.bias - layer.running_mean * scale).reshape(shape)


def _batchnorm_interval(layer: nn.modules.batchnorm._BatchNorm, lo, hi):
    scale, _ = _batchnorm_affine(layer, lo.dim())
    return _affine_interval(layer, lo, hi, lambda r: r * scale.abs())


def _monotone_interval(layer, lo, hi):
    return layer(lo), layer(hi)


# ---------------------------------------------------------------- magnitude rules (plain torch)


def _linear_magnitude(layer: nn.Linear, m):
    return F.linear(m, layer.weight.abs(), None if layer.bias is None else layer.bias.abs())


def _conv_magnitude(layer: nn.Conv2d, m):
    return F.conv2d(m, layer.weight.abs(), None if layer.bias is None else layer.bias.abs(),
                    layer.stride, layer.padding, layer.dilation, layer.groups)


def _batchnorm_magnitude(layer: nn.modules.batchnorm._BatchNorm, m):
    scale, shift = _batchnorm_affine(layer, m.dim())
    return m * scale.abs() + shift.abs()


def _positive_magnitude(layer, m):
    """For maps with nonnegative weights and no bias (pools, reshapes, relu, leaky relu): the map itself."""
    return layer(m)


def register(cls: type, backward: BackwardRule, interval: IntervalRule | None = None,
             relaxed: bool = False, magnitude: MagnitudeRule | None = None) -> None:
    """Add the plain torch class ``cls`` to the tables (``interval=None`` / ``magnitude=None``:
    use the layer's own ``interval`` / ``magnitude`` method)."""
    BACKWARD_RULES[cls] = backward
    if interval is not None:
        INTERVAL_RULES[cls] = interval
    if magnitude is not None:
        MAGNITUDE_RULES[cls] = magnitude
    if relaxed:
        RELAXED.add(cls)


register(nn.Linear, affine_backward, _linear_interval, magnitude=_linear_magnitude)
register(nn.Conv2d, affine_backward, _conv_interval, magnitude=_conv_magnitude)
register(nn.BatchNorm1d, affine_backward, _batchnorm_interval, magnitude=_batchnorm_magnitude)
register(nn.BatchNorm2d, affine_backward, _batchnorm_interval, magnitude=_batchnorm_magnitude)
for _cls in (nn.Flatten, nn.Identity, nn.AvgPool2d):  # avgpool: positive weights, monotone
    register(_cls, affine_backward, _monotone_interval, magnitude=_positive_magnitude)
register(nn.ReLU, relu_backward, _monotone_interval, relaxed=True, magnitude=_positive_magnitude)
register(nn.LeakyReLU, leaky_relu_backward, _monotone_interval, relaxed=True, magnitude=_positive_magnitude)
register(nn.MaxPool2d, maxpool_backward, _monotone_interval, relaxed=True, magnitude=_positive_magnitude)


def _lookup(table: dict, layer: nn.Module):
    for cls in type(layer).__mro__:
        if cls in table:
            return table[cls]
    return None


def no_rule_error(layer: nn.Module, what: str) -> TapscError:
    """Every registered kind has every rule (tests/compile/test_layer_kinds.py): they are the help."""
    from tapsc.layers import LAYERS  # the layers import this module

    kinds = ", ".join(sorted(LAYERS))
    return TapscError(Diagnostic(
        code="no-bound-rule", message=f"certification has no {what} rule for layer `{type(layer).__name__}`",
        help=f"layer kinds with bound rules: {kinds}"))


def backward_rule(layer: nn.Module) -> BackwardRule:
    """The back-substitution rule for ``layer``: its class's table entry, else the layer's own
    ``backward`` (TapscError if neither)."""
    rule = _lookup(BACKWARD_RULES, layer) or getattr(type(layer), "backward", None)
    if rule is None:
        raise no_rule_error(layer, "back-substitution")
    return rule


def interval(layer: nn.Module, lo: torch.Tensor, hi: torch.Tensor):
    """IBP through one layer: the table's rule, else the layer's own ``interval``."""
    rule = _lookup(INTERVAL_RULES, layer)
    if rule is not None:
        return rule(layer, lo, hi)
    if hasattr(layer, "interval"):
        return layer.interval(lo, hi)
    raise no_rule_error(layer, "interval")


def magnitude(layer: nn.Module, m: torch.Tensor) -> torch.Tensor:
    """An elementwise bound, for every x with |x| <= m, on |layer(x)| and on the sum of the
    absolute values of the terms each output sums (for an affine layer y = J x + f0:
    |J| m + |f0|). Rounding error bounds are proportional to it. The table's rule, else the
    layer's own ``magnitude``."""
    rule = _lookup(MAGNITUDE_RULES, layer)
    if rule is not None:
        return rule(layer, m)
    if hasattr(layer, "magnitude"):
        return layer.magnitude(m)
    raise no_rule_error(layer, "magnitude")


def is_relaxed(layer: nn.Module) -> bool:
    """Whether the layer's backward rule relaxes it over its input box (relu, maxpool): the
    ``RELAXED`` table, else the layer's own ``relaxed``."""
    return any(cls in RELAXED for cls in type(layer).__mro__) or bool(getattr(type(layer), "relaxed", False))
