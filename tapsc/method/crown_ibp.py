"""CROWN-IBP for training (Zhang et al., "Towards Stable and Efficient Training of Verifiably
Robust Neural Networks", ICLR 2020, Sec. 3): differentiable, on the live layers, float32.

The box of every layer's input comes from IBP (one interval pass); a linear lower bound
``A . o + 0`` of the margins o_y - o_i (rows e_y - e_i, the row i = y is 0) is pushed back
layer by layer to the input and concretised over the input box:

- affine kinds (conv, linear, batchnorm, normalize, flatten, avgpool, identity): exact,
  A_in = A J and bias += A . f(0). Conv and linear use their weights directly
  (``TRANSPOSES``: a transposed convolution, a matrix product); any other affine kind gets
  J^T A from autograd (``create_graph``, so the bound stays differentiable in the weights),
  so a new affine kind needs no rule here, only speed does;
- relu: CROWN's relaxation (Zhang et al. 2018): upper line through (l, 0) and (u, u) for
  the negative coefficients, lower line y >= a x with a = 1 if u >= -l else 0 for the
  positive ones (the same relaxation as `tapsc.certify.rules.relu_backward`);
- leaky_relu(a): a x + (1 - a) relu(x), the ReLU part relaxed as above;
- residual: the bound is pushed through both branches and the coefficients summed.

No rounding terms: this bound trains, `tapsc.certify` certifies. A kind certification relaxes
(``relaxed``) and this module has no rule for, maxpool among them, is refused (TapscError naming
it), never passed on as if it were affine. Memory: A holds K rows per sample at every layer
(B x K x the layer's input size), as in the authors' implementation.

BatchNorm in training mode reuses the clean batch's statistics, so the clean forward of
the batch must come first (as for every bound pass, see tapsc.compile).

Shape legend: B batch, K classes, X a layer input's per-sample shape.
"""

from __future__ import annotations

import torch

from tapsc.errors import Diagnostic, TapscError
from tapsc.layers import Conv, LeakyReLU, Linear, ReLU, Residual


def _affine_back(layer, A_BKY: torch.Tensor, lo_BX: torch.Tensor):
    """(A J, A . f(0)) for an affine layer f(x) = J x + f(0), differentiable in its weights."""
    B, K = A_BKY.shape[:2]
    x0 = lo_BX.new_zeros((B * K, *lo_BX.shape[1:]), requires_grad=True)
    with torch.enable_grad():
        f0 = layer(x0)
        A_flat = A_BKY.reshape(B * K, *A_BKY.shape[2:])
        (A_in,) = torch.autograd.grad(f0, x0, A_flat, create_graph=True)
    bias_BK = (A_BKY * f0[:1].unsqueeze(0)).flatten(2).sum(-1)  # f(0) is the same for every row
    return A_in.reshape(B, K, *lo_BX.shape[1:]), bias_BK


def _linear_back(layer: Linear, A_BKO: torch.Tensor, lo_BI: torch.Tensor):
    bias = A_BKO.new_zeros(A_BKO.shape[:2]) if layer.bias is None else A_BKO @ layer.bias
    return A_BKO @ layer.weight, bias


def _conv_back(layer: Conv, A_BKOHW: torch.Tensor, lo_BCHW: torch.Tensor):
    B, K = A_BKOHW.shape[:2]
    A_in = torch.nn.grad.conv2d_input((B * K, *lo_BCHW.shape[1:]), layer.weight, A_BKOHW.flatten(0, 1),
                                      layer.stride, layer.padding)
    bias = A_BKOHW.new_zeros((B, K)) if layer.bias is None else A_BKOHW.sum((3, 4)) @ layer.bias
    return A_in.reshape(B, K, *lo_BCHW.shape[1:]), bias


TRANSPOSES = {Linear: _linear_back, Conv: _conv_back}  # fast paths; other affine kinds: _affine_back


def _relu_back(A_BKY: torch.Tensor, lo_BX: torch.Tensor, hi_BX: torch.Tensor):
    """CROWN's ReLU relaxation for a LOWER bound: positive coefficients take the lower line."""
    active, dead = lo_BX >= 0, hi_BX <= 0
    unstable = ~active & ~dead
    width = torch.where(unstable, hi_BX - lo_BX, torch.ones_like(lo_BX))
    up_slope = torch.where(unstable, hi_BX / width, active.to(lo_BX.dtype))
    up_icpt = torch.where(unstable, -lo_BX * up_slope, torch.zeros_like(lo_BX))
    low_slope = torch.where(unstable, (hi_BX >= -lo_BX).to(lo_BX.dtype), active.to(lo_BX.dtype))
    A_pos, A_neg = A_BKY.clamp(min=0), A_BKY.clamp(max=0)
    A_in = A_pos * low_slope.unsqueeze(1) + A_neg * up_slope.unsqueeze(1)
    return A_in, (A_neg * up_icpt.unsqueeze(1)).flatten(2).sum(-1)


def _leaky_relu_back(layer: LeakyReLU, A_BKY: torch.Tensor, lo_BX: torch.Tensor, hi_BX: torch.Tensor):
    """leaky_relu(x) = a x + (1 - a) relu(x) for every slope a: the linear part passes A through,
    the ReLU part takes CROWN's relaxation with coefficients (1 - a) A (of either sign)."""
    a = layer.negative_slope
    A_relu, bias = _relu_back((1 - a) * A_BKY, lo_BX, hi_BX)
    return a * A_BKY + A_relu, bias


def back_substitute(layers, A_BKY: torch.Tensor, lo_BX: torch.Tensor, hi_BX: torch.Tensor,
                    boxes: list | None = None):
    """(A_in, bias) with A . layers(x) >= A_in . x + bias over the box [lo, hi] of the input.

    ``boxes``: the IBP box of every layer's input (computed when None).
    """
    if boxes is None:
        boxes = [(lo_BX, hi_BX)]
        for layer in layers[:-1]:
            boxes.append(layer.interval(*boxes[-1]))
    bias_BK = A_BKY.new_zeros(A_BKY.shape[:2])
    for layer, (lo, hi) in zip(reversed(list(layers)), reversed(boxes)):
        if isinstance(layer, ReLU):
            A_BKY, bias = _relu_back(A_BKY, lo, hi)
        elif isinstance(layer, LeakyReLU):
            A_BKY, bias = _leaky_relu_back(layer, A_BKY, lo, hi)
        elif isinstance(layer, Residual):
            A_body, bias = back_substitute(layer.body, A_BKY, lo, hi)
            if layer.shortcut:
                A_short, bias_short = back_substitute(layer.shortcut, A_BKY, lo, hi)
            else:
                A_short, bias_short = A_BKY, 0.0
            A_BKY, bias = A_body + A_short, bias + bias_short
        elif layer.relaxed:  # a kind certification relaxes (maxpool among them) and this module does not
            raise TapscError(Diagnostic(
                code="no-training-relaxation", message=f"CROWN-IBP training has no relaxation for `{layer.kind}`",
                help="use avgpool or a strided conv, or train with `ibp`"))
        else:
            A_BKY, bias = TRANSPOSES.get(type(layer), _affine_back)(layer, A_BKY, lo)
        bias_BK = bias_BK + bias
    return A_BKY, bias_BK


def margin_matrix(y_B: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """Rows e_y - e_i for every class i (the row i = y is 0): shape (B, K, K)."""
    eye_KK = torch.eye(num_classes, dtype=dtype, device=y_B.device)
    return eye_KK[y_B].unsqueeze(1) - eye_KK.unsqueeze(0)


def crown_ibp_margin_upper(network, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor,
                           boxes: list | None = None) -> torch.Tensor:
    """Upper bounds of o_i - o_y (B, K), 0 at y, over the input box [lo, hi], by CROWN-IBP.

    ``boxes``: the IBP boxes of every layer's input, if an interval pass already made them.
    """
    C_BKK = margin_matrix(y, network.num_classes, lo.dtype)
    with network.frozen_batchnorm(detach=False):
        A_BKX, bias_BK = back_substitute(network.layers, C_BKK, lo, hi, boxes)
        center, radius = (hi + lo) / 2, (hi - lo) / 2
        lower_BK = (A_BKX * center.unsqueeze(1)).flatten(2).sum(-1) \
            - (A_BKX.abs() * radius.unsqueeze(1)).flatten(2).sum(-1) + bias_BK
    return (-lower_BK).scatter(1, y[:, None], 0.0)
