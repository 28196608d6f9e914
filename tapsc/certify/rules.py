"""Bound rules for each layer class: one table per interpretation (JAX style).

Two tables, keyed by layer class, so the layer classes (owned by the compiler) never
change when certification learns a new trick:

- ``INTERVAL_RULES``: IBP through one layer. tapsc's own layers carry their
  ``interval`` method, which is used when a class has no entry here; plain torch
  modules (the folded export model) get entries below.
- ``BACKWARD_RULES``: back-substitution of a linear lower bound ``A . y + bias``
  through one layer ``y = layer(x)``, given the box of the layer's input. Returns the
  coefficients on ``x``, the added bias, and the bias's magnitude (for the float32
  safety margin, see `tapsc.certify.linear`).

Rules, in words:
- affine layers (conv, linear, eval-mode batchnorm, normalize, flatten, avgpool,
  identity): exact. The transpose is taken with ``torch.func.vjp`` of the layer's own
  forward, so no rule needs to know how a layer stores its weights.
- relu: the CROWN/DeepPoly relaxation. Upper line through (l, 0) and (u, u); lower
  line y >= a x with the adaptive slope a = 1 if u >= -l else 0.
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

from tapsc.certify.graph import register_container
from tapsc.errors import Diagnostic, TapscError

# backward(layer, A_BSY, lo_BX, hi_BX) -> (A_BSX, bias_BS, magnitude_BS)
BackwardRule = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor],
                        tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
IntervalRule = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

BACKWARD_RULES: dict[type, BackwardRule] = {}
INTERVAL_RULES: dict[type, IntervalRule] = {}
RELAXED: set[type] = set()  # classes whose backward rule reads the input box


def _sum_rows(t_BSY: torch.Tensor) -> torch.Tensor:
    return t_BSY.flatten(2).sum(-1)


# ---------------------------------------------------------------- backward rules


def affine_backward(layer: nn.Module, A_BSY, lo_BX, hi_BX):
    """Exact transpose of an affine layer: A J and A . layer(0)."""
    B, S = A_BSY.shape[:2]
    x0_RX = lo_BX.new_zeros((B * S, *lo_BX.shape[1:]))
    f0_RY, pull = torch.func.vjp(layer, x0_RX)
    (A_RX,) = pull(A_BSY.reshape(B * S, *A_BSY.shape[2:]))
    f0_1Y = f0_RY[:1].unsqueeze(0)  # layer(0) is the same for every row
    bias_BS = _sum_rows(A_BSY * f0_1Y)
    magnitude_BS = _sum_rows(A_BSY.abs() * f0_1Y.abs())
    return A_RX.reshape(B, S, *lo_BX.shape[1:]), bias_BS, magnitude_BS


def relu_slopes(lo_BX: torch.Tensor, hi_BX: torch.Tensor):
    """CROWN slopes: (lower slope, upper slope, upper intercept), each like lo_BX."""
    active, dead = lo_BX >= 0, hi_BX <= 0
    unstable = ~active & ~dead
    width = torch.where(unstable, hi_BX - lo_BX, torch.ones_like(lo_BX))
    up_slope = torch.where(unstable, hi_BX / width, active.to(lo_BX.dtype))
    up_icpt = torch.where(unstable, -lo_BX * up_slope, torch.zeros_like(lo_BX))
    low_slope = torch.where(unstable, (hi_BX >= -lo_BX).to(lo_BX.dtype), active.to(lo_BX.dtype))
    return low_slope, up_slope, up_icpt


def relu_backward(layer: nn.Module, A_BSY, lo_BX, hi_BX):
    """CROWN relaxation; positive coefficients take the lower line, negative the upper."""
    low_slope, up_slope, up_icpt = (t.unsqueeze(1) for t in relu_slopes(lo_BX, hi_BX))
    A_pos, A_neg = A_BSY.clamp(min=0), A_BSY.clamp(max=0)
    A_BSX = A_pos * low_slope + A_neg * up_slope
    return A_BSX, _sum_rows(A_neg * up_icpt), _sum_rows(A_neg.abs() * up_icpt)


def _pool_geometry(layer: nn.Module) -> tuple[int, int, int]:
    def first(value):
        return value[0] if isinstance(value, (tuple, list)) else value

    kernel = first(getattr(layer, "kernel_size", None) or layer.kernel)
    stride = first(getattr(layer, "stride", None) or kernel)
    padding = first(getattr(layer, "padding", 0) or 0)
    return int(kernel), int(stride), int(padding)


def _windows(t_BCHW: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """(B, C, P, L) windows, padded with -inf as max pooling pads."""
    B, C = t_BCHW.shape[:2]
    padded = F.pad(t_BCHW, (padding,) * 4, value=float("-inf"))
    return F.unfold(padded, kernel, stride=stride).reshape(B, C, kernel * kernel, -1)


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
    folded = F.fold(spread_BSCPL.reshape(B * S, C * kernel * kernel, -1),
                    (H + 2 * padding, W + 2 * padding), kernel, stride=stride)
    A_BSX = folded[..., padding:padding + H, padding:padding + W].reshape(B, S, C, H, W)
    return A_BSX, _sum_rows(const_BSCL), _sum_rows(const_BSCL.abs())


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


def _batchnorm_interval(layer: nn.modules.batchnorm._BatchNorm, lo, hi):
    scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
    shape = (1, -1) + (1,) * (lo.dim() - 2)
    return _affine_interval(layer, lo, hi, lambda r: r * scale.abs().reshape(shape))


def _monotone_interval(layer, lo, hi):
    return layer(lo), layer(hi)


def register(cls: type, backward: BackwardRule, interval: IntervalRule | None = None,
             relaxed: bool = False) -> None:
    """Add ``cls`` to the tables (``interval=None``: use the layer's own ``interval``)."""
    BACKWARD_RULES[cls] = backward
    if interval is not None:
        INTERVAL_RULES[cls] = interval
    if relaxed:
        RELAXED.add(cls)


register(nn.Linear, affine_backward, _linear_interval)
register(nn.Conv2d, affine_backward, _conv_interval)
register(nn.BatchNorm1d, affine_backward, _batchnorm_interval)
register(nn.BatchNorm2d, affine_backward, _batchnorm_interval)
for _cls in (nn.Flatten, nn.Identity, nn.AvgPool2d):  # avgpool: positive weights, monotone
    register(_cls, affine_backward, _monotone_interval)
register(nn.ReLU, relu_backward, _monotone_interval, relaxed=True)
register(nn.MaxPool2d, maxpool_backward, _monotone_interval, relaxed=True)

# ---------------------------------------------------------------- tapsc layer kinds

KIND_RULES: dict[str, tuple[BackwardRule, bool]] = {
    "conv": (affine_backward, False), "linear": (affine_backward, False),
    "batchnorm": (affine_backward, False), "normalize": (affine_backward, False),
    "flatten": (affine_backward, False), "avgpool": (affine_backward, False),
    "identity": (affine_backward, False), "relu": (relu_backward, True),
    "maxpool": (maxpool_backward, True),
}
_tapsc_registered = False


def _residual_branches(layer: nn.Module):
    return tuple(layer.body), tuple(layer.shortcut or ())


def register_tapsc_layers() -> None:
    """Key the rules by tapsc's layer classes, found through its kind registry."""
    global _tapsc_registered
    if _tapsc_registered:
        return
    from tapsc.layers import LAYERS

    for kind, cls in LAYERS.items():
        if kind in KIND_RULES:
            backward, relaxed = KIND_RULES[kind]
            register(cls, backward, relaxed=relaxed)
        elif kind == "residual":
            register_container(cls, _residual_branches)
    _tapsc_registered = True


def _lookup(table: dict, layer: nn.Module):
    for cls in type(layer).__mro__:
        if cls in table:
            return table[cls]
    return None


def no_rule_error(layer: nn.Module, what: str) -> TapscError:
    kinds = ", ".join(sorted(KIND_RULES))
    return TapscError(Diagnostic(
        code="no-bound-rule", message=f"certification has no {what} rule for layer `{type(layer).__name__}`",
        help=f"layer kinds with bound rules: {kinds}, residual"))


def backward_rule(layer: nn.Module) -> BackwardRule:
    """The back-substitution rule for ``layer``'s class (TapscError if none)."""
    rule = _lookup(BACKWARD_RULES, layer)
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


def is_relaxed(layer: nn.Module) -> bool:
    """Whether the layer's backward rule needs its input box (relu, maxpool)."""
    return any(cls in RELAXED for cls in type(layer).__mro__)
