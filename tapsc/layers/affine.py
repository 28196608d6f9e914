"""Affine layer kinds with weights: conv and linear (centre/radius interval form).

For y = W x + b over the box with centre c = (lo + hi) / 2 and radius r = (hi - lo) / 2,
the tight bounds are W c + b -+ |W| r. We use this form rather than W+ lo + W- hi
because it costs two products instead of four and has the same result in real
arithmetic.

Shape legend: B batch, C input channels, O output channels/features, H/W spatial, I input features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tapsc.certify import rules
from tapsc.language import ir
from tapsc.language.shapes import Shape, ShapeError
from tapsc.layers.base import BoundLayer, register_layer


def _centre_radius(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (hi + lo) / 2, (hi - lo) / 2


@register_layer("conv")
class Conv(BoundLayer):
    """2-d convolution; parameters ``weight`` (O, C, kh, kw) and ``bias`` (O,) as in nn.Conv2d."""

    autocast = "lowers"
    backward = rules.affine_backward

    def __init__(self, in_channels: int, node: ir.Conv):
        super().__init__()
        # Borrow nn.Conv2d's default initialisation, then keep only the parameters.
        reference = nn.Conv2d(in_channels, node.out_channels, node.kernel, node.stride, node.padding,
                              bias=node.bias)
        self.weight = reference.weight
        self.bias = reference.bias
        self.stride = ir.pair(node.stride)
        self.padding = ir.pair(node.padding)

    @classmethod
    def build(cls, node: ir.Conv, in_shape: Shape):
        out_shape = node.out_shape(tuple(in_shape))
        return cls(in_shape[0], node), out_shape

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x_BCHW, self.weight, self.bias, self.stride, self.padding)

    def interval(self, lo_BCHW, hi_BCHW):
        c_BCHW, r_BCHW = _centre_radius(lo_BCHW, hi_BCHW)
        c_BOHW = F.conv2d(c_BCHW, self.weight, self.bias, self.stride, self.padding)
        r_BOHW = F.conv2d(r_BCHW, self.weight.abs(), None, self.stride, self.padding)
        return c_BOHW - r_BOHW, c_BOHW + r_BOHW

    def magnitude(self, m_BCHW):
        bias = None if self.bias is None else self.bias.abs()
        return F.conv2d(m_BCHW, self.weight.abs(), bias, self.stride, self.padding)

    def onnx_module(self, lower) -> nn.Conv2d:
        out_c, in_c, kh, kw = self.weight.shape
        conv = nn.Conv2d(in_c, out_c, (kh, kw), self.stride, self.padding, bias=True)
        conv.weight.data.copy_(self.weight.detach())
        conv.bias.data.copy_(self.bias.detach() if self.bias is not None else torch.zeros(out_c))
        return conv

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()

    def extra_repr(self) -> str:
        out_c, in_c, kh, kw = self.weight.shape
        return f"{in_c}, {out_c}, kernel={(kh, kw)}, stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"


@register_layer("linear")
class Linear(BoundLayer):
    """Fully connected layer; parameters ``weight`` (O, I) and ``bias`` (O,) as in nn.Linear."""

    autocast = "lowers"
    backward = rules.affine_backward

    def __init__(self, in_features: int, node: ir.Linear):
        super().__init__()
        reference = nn.Linear(in_features, node.out_features, bias=node.bias)
        self.weight = reference.weight
        self.bias = reference.bias

    @classmethod
    def build(cls, node: ir.Linear, in_shape: Shape):
        out_shape = node.out_shape(tuple(in_shape))
        declared = getattr(node, "in_features", None)
        if declared is not None and declared != in_shape[0]:
            raise ShapeError(node, f"linear declares in_features={declared} but receives {in_shape[0]} features",
                             f"write in_features={in_shape[0]} or drop it")
        return cls(in_shape[0], node), out_shape

    def forward(self, x_BI: torch.Tensor) -> torch.Tensor:
        return F.linear(x_BI, self.weight, self.bias)

    def interval(self, lo_BI, hi_BI):
        c_BI, r_BI = _centre_radius(lo_BI, hi_BI)
        c_BO = F.linear(c_BI, self.weight, self.bias)
        r_BO = F.linear(r_BI, self.weight.abs())
        return c_BO - r_BO, c_BO + r_BO

    def magnitude(self, m_BI):
        return F.linear(m_BI, self.weight.abs(), None if self.bias is None else self.bias.abs())

    def onnx_module(self, lower) -> nn.Linear:
        out_f, in_f = self.weight.shape
        linear = nn.Linear(in_f, out_f, bias=True)
        linear.weight.data.copy_(self.weight.detach())
        linear.bias.data.copy_(self.bias.detach() if self.bias is not None else torch.zeros(out_f))
        return linear

    @property
    def fan_in(self) -> int:
        return self.weight.shape[1]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, bias={self.bias is not None}"
